"""LunaSH `ntls ...`, `sysconf regenCert` and `service ...`.

Like the appliance, NTLS picks up a new certificate (`sysconf regenCert`) or a
new binding (`ntls bind`) only when it restarts (`service restart ntls`, or a
reboot); until then clients keep seeing the old one.
"""
from appliance import model, rc
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

DEVICES = ("eth0", "eth1", "eth2", "eth3", "bond0", "bond1", "all")
SERVICES = ("ntls", "ssh", "syslog")


def _bound_address(state, device):
    if device == "all":
        return "0.0.0.0"
    return state["network"]["interfaces"].get(device, {}).get("ip") or "<not configured>"


def show(ctx):
    ntls = ctx.state["ntls"]
    bound = ntls.get("bound", ntls["bind"])
    ctx.out(f'NTLS bound to network device: {bound} IP Address: "{_bound_address(ctx.state, bound)}" ({bound})',
            f"NTLS TCP port: {model.NTLS_PORT}", f"NTLS status: {'running' if ntls['running'] else 'stopped'}",
            f"NTLS IP check: {'enabled' if ntls['ipcheck'] else 'disabled'}")


def bind(ctx):
    device = ctx.inv.args[0].lower()
    if device not in DEVICES:
        raise LunaError(rc.BAD_PARAMETER, f"Network device must be one of {', '.join(DEVICES)}.")
    ctx.confirm("change the NTLS binding")
    with ctx.mutate():
        ctx.state["ntls"]["bind"] = device
        ctx.device.world.changed()
    ctx.out(f"Success: NTLS binding changed to {device}. Restart NTLS (service restart ntls) to apply it.")


def ipcheck(ctx):
    action = ctx.inv.args[0].lower()
    if action not in ("enable", "disable", "show"):
        raise LunaError(rc.BAD_PARAMETER, "Use enable, disable or show.")
    if action == "show":  # 6.1 (Azure 7.2) for show and disable; enable's sentence by analogy (assumed)
        ctx.out(f"NTLS client source IP validation : {'Enable' if ctx.state['ntls']['ipcheck'] else 'Disable'}")
        return
    with ctx.mutate():
        ctx.state["ntls"]["ipcheck"] = action == "enable"
        ctx.device.world.changed()
    ctx.out(f"NTLS client source IP validation {action}d")


def regen_cert(ctx):
    """6.2 (5.x words): the WARNING question, `Proceeding...`, then the success and ntls lines."""
    ctx.confirm()
    with ctx.mutate():
        ctx.device.regen_cert()
    if not ctx.opt("force"):
        ctx.out("Proceeding...")
    ctx.out("'sysconf regenCert' successful. NTLS must be (re)started before clients can connect.",
            "Please use the 'ntls show' command to ensure that NTLS is bound to an appropriate network device "
            "or IP address/hostname",
            "for the network device(s) NTLS should be active on. Use 'ntls bind' to change this binding if necessary.")


def _service(ctx):
    name = ctx.inv.args[0].lower()
    if name not in SERVICES:
        raise LunaError(rc.BAD_PARAMETER, f"Unknown service {name}; services: {', '.join(SERVICES)}.")
    return name


def _set_ntls(ctx, running):
    with ctx.mutate():
        ctx.device.set_ntls(running)


def service_stop(ctx):
    name = _service(ctx)
    if name == "ntls":
        _set_ntls(ctx, False)
    ctx.out(f"Stopping {name}:                                           [  OK  ]")


def service_start(ctx):
    name = _service(ctx)
    if name == "ntls":
        _set_ntls(ctx, True)
    ctx.out(f"Starting {name}:                                           [  OK  ]")


def service_restart(ctx):
    service_stop(ctx)
    service_start(ctx)


def service_status(ctx):
    name = _service(ctx)
    running = ctx.state["ntls"]["running"] if name == "ntls" else True
    ctx.out(f"{name} is {'running' if running else 'stopped'}")


COMMANDS = [
    Command("ntls show", show),
    Command("ntls bind", bind, [Opt("bind", "b"), FORCE], args=["device"]),
    Command("ntls ipcheck", ipcheck, args=["enable|disable|show"]),
    Command("sysconf regenCert", regen_cert, [Opt("startdate", "s"), Opt("days", "d"), FORCE]),
    Command("service stop", service_stop, args=["service"]),
    Command("service start", service_start, args=["service"]),
    Command("service restart", service_restart, args=["service"]),
    Command("service status", service_status, args=["service"]),
]
