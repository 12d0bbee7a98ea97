"""LunaSH `hsm ...`: show, login/logout, init, zeroize, factoryReset, restart, policies.

`hsm show` follows the real 7.2.0-220 / fw 7.0.3 layout (luna-field.md 2.1; 5.x/6.x: layouts.py);
the HSM SO threshold is the guide's: three wrong passwords zeroize the HSM, the
last try is announced, a zeroized HSM refuses every SO login.
"""
from appliance import hsmops, layouts, model, policies, rc, roles
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

SO_PROMPT = "Please enter the HSM Administrators' password:"
# 4.2 (S15): the line after the `failed.` line of the zeroizing login, with its four spaces after
# `Error:`; here also for every later login, the HSM being in that state. A wrong password with tries
# left prints the `failed.` line alone: only its code was published (4.2, S2).
ZEROIZED = "  The HSM is in the factory reset (zeroized) state."


def _attempts(state):
    if model.is_zeroized(state):
        return "HSM IS ZEROIZED !!!!"
    return f"{roles.so_attempts_left(state['hsm'])} before HSM zeroization!"


def show(ctx):
    """The layout of the appliance's generation (layouts.hsm_show; 7.x as the real 7.2.0-220)."""
    state, hsm = ctx.state, ctx.state["hsm"]
    used = len(state["partitions"]) * model.PARTITION_SIZE
    ctx.out(*layouts.hsm_show(ctx.layout, {
        "serial": state["serial"], "label": hsm["label"], "logged_in": ctx.shell.logged_in["so"],
        "attempts": _attempts(state), "audit_initialized": hsm["audit"]["initialized"],
        "partitions": [(p["serial"], p["name"]) for p in state["partitions"].values()],
        "max_partitions": model.MAX_PARTITIONS, "storage": model.HSM_STORAGE, "used": used, "fips": False}))


def login(ctx):
    hsm = ctx.state["hsm"]
    if hsm["initialized"] and roles.so_attempts_left(hsm) == 1:
        # 4.2: the caution and proceed/quit come first; `quit` (unpublished: our choice) aborts
        # the command with RC_OPERATION_CANCELLED, no attempt counted
        ctx.confirm()
    password = ctx.opt("password")
    if password is None:
        password = ctx.ask(SO_PROMPT, secret=True)
    with ctx.mutate():
        outcome = roles.so_login(hsm, password)
        if outcome.zeroize:
            hsmops.zeroize_hsm(ctx.device, "HSM Admin login failure threshold")
        ctx.device.world.changed()
    if not outcome.ok:
        ctx.device.syslog.write("lunash", hsmops.LUNASH_PID, f"info : 0 : HSM Admin login failed ({outcome.code[1]})")
        if outcome.code == rc.SO_LOGIN_THRESHOLD:
            raise LunaError(outcome.code, ZEROIZED)
    ctx.logged_in_as("so", outcome)


def logout(ctx):
    ctx.logged_out("so")


def init(ctx):
    if ctx.state["hsm"]["initialized"]:
        ctx.require_so()  # re-initialising needs the current SO; a zeroized HSM does not
    password = ctx.new_password(ctx.opt("password"), "Please enter a password for the HSM Administrator:")
    domain = model.DEFAULT_DOMAIN
    if not ctx.opt("defaultdomain"):
        domain = ctx.new_secret(ctx.opt("domain"), "Please enter a cloning domain to use for initializing this HSM:",
                                "Please re-enter cloning domain to confirm:")
    ctx.confirm()  # 4.3
    with ctx.mutate():
        hsmops.init_hsm(ctx.device, ctx.opt("label"), password, domain)
    ctx.shell.logged_in["so"] = False
    ctx.success()


def zeroize(ctx):
    ctx.confirm("zeroize the HSM", "CAUTION:  Are you sure you wish to zeroize this HSM? All partitions "
                                   "and their contents will be lost.")
    with ctx.mutate():
        hsmops.zeroize_hsm(ctx.device, "hsm zeroize")
    ctx.shell.logged_in["so"] = False
    ctx.success()


def factory_reset(ctx):
    raise LunaError(rc.SHELL_NOT_ALLOWED, "This command can only be run from the serial console.")


def restart(ctx):
    """6.7 (1346-1351): the published question, then `Proceeding...`; the HSM card restarts. Here the
    appliance reboots as `sysconf appliance reboot` does (without the KB0019789 fix it hangs): every
    session and login on it ends (our assumption: tests/sim/README.md). `quit` changes nothing."""
    ctx.confirm()
    ctx.out(*layouts.RESTART_LINES)
    ctx.then(ctx.device.reboot)


def show_policies(ctx):
    ctx.out(*policies.render(ctx.state["hsm"], ctx.state["serial"], model.FIRMWARE))


def change_policy(ctx):
    ctx.require_so()
    try:
        code, value = int(ctx.opt("policy")), int(ctx.opt("value"))
    except ValueError:
        raise LunaError(rc.BAD_PARAMETER, "-policy and -value take numbers.")
    if code not in policies.POLICIES or value not in (0, 1):
        raise LunaError(rc.BAD_PARAMETER, f"Policy {code} cannot be set to {value} on this HSM.")
    description, _, destructive = policies.POLICIES[code]
    if destructive:
        ctx.confirm(policy=description)  # 4.5
    with ctx.mutate():
        if destructive and policies.value(ctx.state["hsm"], code) != value:
            hsmops.delete_all_partitions(ctx.device)
        ctx.state["hsm"]["policies"][str(code)] = value
        ctx.device.world.changed()
    ctx.out(f"Policy {description} is now set to value: {value}", "'hsm changePolicy' successful.")


COMMANDS = [
    Command("hsm show", show),
    Command("hsm login", login, [Opt("password", "p")]),
    Command("hsm logout", logout),
    Command("hsm init", init, [Opt("label", "l", required=True), Opt("domain", "d"), Opt("password", "p"),
                               Opt("defaultdomain", "def", flag=True), Opt("applytemplate", "at"),
                               Opt("authtimeconfig", "auth", flag=True), FORCE]),
    Command("hsm zeroize", zeroize, [FORCE]),
    Command("hsm factoryReset", factory_reset, [FORCE]),
    Command("hsm restart", restart, [FORCE]),
    Command("hsm showPolicies", show_policies, [Opt("exporttemplate", "et")]),
    Command("hsm changePolicy", change_policy, [Opt("policy", "po", required=True),
                                                Opt("value", "v", required=True), FORCE]),
]
