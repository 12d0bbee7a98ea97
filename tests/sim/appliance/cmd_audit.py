"""LunaSH `audit ...`: the Auditor role, with the guide's lockout (10 failures, 10 minutes).

The Thales 7.x pages say 3 failures; the Azure guide says 10 - the simulator
follows the guide, like the rest of dhsm. The lockout runs on the sim clock,
so `estate advance --dir DIR 600` ends it.
"""
from appliance import hsmops, roles
from appliance.cli import FORCE, Command, Opt


def login(ctx):
    password = ctx.opt("password")
    if password is None:
        password = ctx.ask("Please enter the password:", secret=True)
    with ctx.mutate():
        outcome = roles.audit_login(ctx.state["hsm"]["audit"], password, ctx.device.world.now())
        ctx.device.world.changed()
    ctx.logged_in_as("audit", outcome)


def logout(ctx):
    ctx.logged_out("audit")


def init(ctx):
    ctx.require_initialized()
    password = ctx.new_password(ctx.opt("password"), "Please enter a password for the Audit role:")
    ctx.new_secret(ctx.opt("domain"), "Please enter a cloning domain for the Audit role:",
                   "Please re-enter cloning domain to confirm:")
    ctx.confirm("initialize the Audit role", "CAUTION:  Are you sure you wish to initialize the Audit role?")
    with ctx.mutate():
        hsmops.init_audit(ctx.device, password)
    ctx.shell.logged_in["audit"] = False
    ctx.success()


def show(ctx):
    audit = ctx.state["hsm"]["audit"]
    with ctx.mutate():
        roles.audit_unlock_if_due(audit, ctx.device.world.now())
    locked = audit["locked_until"] is not None
    ctx.out(f"Audit Role Initialized:           {'Yes' if audit['initialized'] else 'No'}",
            f"Audit Role Login Status:          {'Logged In' if ctx.shell.logged_in['audit'] else 'Not Logged In'}",
            f"Audit Role Login Attempts Left:   {max(roles.AUDIT_THRESHOLD - audit['failures'], 0)}",
            f"Audit Role Locked Out:            {'Yes' if locked else 'No'}")


COMMANDS = [
    Command("audit login", login, [Opt("password", "p"), Opt("serial", "s")]),
    Command("audit logout", logout),
    Command("audit init", init, [Opt("password", "p"), Opt("domain", "d"), FORCE]),
    Command("audit show", show),
]
