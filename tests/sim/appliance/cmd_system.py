"""LunaSH `syslog tail`, `package list/update`, `sysconf appliance reboot/poweroff`, `status ...`.

Reboot is where the guide's KB0019789 matters: without the fix installed the
appliance never comes back from `sysconf appliance reboot` (control action
hard-reboot is the support request). Install it like the real patch: copy
DIR/patches/KB0019789.spkg to the admin's home, then
`package update KB0019789.spkg -authcode <anything>`; or the control action
install-fix. `sysconf reboot` is accepted as the older spelling.
"""
import datetime
import os

from appliance import layouts, model, rc
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

LOGNAMES = ("messages", "lunalogs")
DEFAULT_ENTRIES = 20
# The 5.1 layout (luna-field.md 6.5) is the only one published; names in the style of its entries.
SYSTEM_PACKAGES = ("configurator-7.2.0-220", "lunacm-7.2.0-220", "lush-utils-7.2.0-220", "salogin-7.2.0-220",
                   "sysstatd-7.2.0-220", "sa_cmd_processor-7.2.0-220", "openssh-server-7.4p1-21.el7",
                   "glibc-2.17-260.el7")
# The real name of the fix's package is unconfirmed (dhsm matches the inventory's reboot_fix_package,
# default "KB0019789", as a substring); this one is the simulator's.
FIX_PACKAGE = "lunasa-reboot-fix-KB0019789-7.2.0-1"


def syslog_tail(ctx):
    if ctx.opt("logname").lower() not in LOGNAMES:
        raise LunaError(rc.BAD_PARAMETER, f"Unknown log name; use one of {', '.join(LOGNAMES)}.")
    try:
        entries = int(ctx.opt("entries", DEFAULT_ENTRIES))
    except ValueError:
        raise LunaError(rc.BAD_PARAMETER, "-entries takes a number.")
    ctx.out(*ctx.device.syslog.tail(entries, ctx.opt("search")))


def package_list(ctx):
    software = [FIX_PACKAGE] if ctx.state["packages"][model.REBOOT_FIX] else []
    ctx.out(*layouts.package_list(SYSTEM_PACKAGES, software))


def package_update(ctx):
    filename = ctx.inv.args[0]
    path = ctx.device.paths.home_file(filename)
    if path is None or not os.path.exists(path):
        raise LunaError(rc.FILE_NOT_FOUND, f"{filename} was not found in the admin's home directory.")
    if model.REBOOT_FIX not in filename:
        raise LunaError(rc.BAD_PARAMETER, f"{filename} is not a valid update package for this appliance.")
    ctx.confirm("continue with the update")
    with ctx.mutate():
        ctx.state["packages"][model.REBOOT_FIX] = True
        ctx.device.world.changed()
    ctx.out(f"Installing {FIX_PACKAGE} ...", "Update Successfully Installed.")


def reboot(ctx):
    ctx.confirm("reboot the appliance", "WARNING: This command will reboot the appliance. All connections "
                                        "will be lost.")
    ctx.out("Broadcast message from root: The system is going down for reboot NOW!")
    ctx.then(ctx.device.reboot)


def poweroff(ctx):
    ctx.confirm("power off the appliance", "WARNING: This command will power off the appliance. It can only be "
                                           "powered on from the front panel (control action up).")
    ctx.out("Broadcast message from root: The system is going down for power off NOW!")
    ctx.then(lambda: ctx.device.power(False))


def status_date(ctx):
    now = datetime.datetime.fromtimestamp(ctx.device.now(), datetime.timezone.utc)
    ctx.out(now.strftime("%a %b %e %H:%M:%S UTC %Y"))


def status_interface(ctx):
    for name, nic in ctx.state["network"]["interfaces"].items():
        ctx.out(f"{name}: flags=4163<UP,BROADCAST,RUNNING,MULTICAST>  mtu 1500",
                f"        inet {nic['ip'] or '0.0.0.0'}  netmask {nic['netmask'] or '0.0.0.0'}",
                f"        ether {nic['mac'].lower()}  txqueuelen 1000  (Ethernet)", "")


def status_sensors(ctx):
    ctx.out("Sensor                   Value      Status", "CPU Temp                 41 C       ok",
            "System Temp              35 C       ok", "Fan 1                    5400 RPM   ok",
            "Fan 2                    5350 RPM   ok", "Power Supply 1           on         ok",
            "Power Supply 2           on         ok")


COMMANDS = [
    Command("syslog tail", syslog_tail, [Opt("logname", "l", required=True), Opt("entries", "e"),
                                         Opt("search", "s")]),
    Command("package list", package_list),
    Command("package update", package_update, [Opt("authcode", "a"), Opt("useevp", "u", flag=True), FORCE],
            args=["file"]),
    Command("sysconf appliance reboot", reboot, [FORCE]),
    Command("sysconf appliance poweroff", poweroff, [FORCE]),
    Command("sysconf reboot", reboot, [FORCE]),
    Command("status date", status_date),
    Command("status interface", status_interface),
    Command("status sensors", status_sensors),
]
