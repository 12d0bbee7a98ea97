"""LunaCM `role login | logout | show | init | resetpw` on a partition slot (the current one, or -slot N).

Roles: `so` / `po` the Partition SO, `co` the Crypto Officer (logins are counted by the
appliance, see auth.py); there is no Crypto User in the simulator. Logins last for the
lunacm process, so `lunacm -c role login ...` is useful only for its outcome (and its
counting); `role resetpw -name co` needs the Partition SO logged in earlier in the same
interactive session, and HSM policy 15 on. `role init -name co` (the Crypto Officer's first
password after `partition init`) needs the Partition SO logged in the same way; 7.2's names
are `po` and `co` (luna-field.md 7.1's `Partition SO`), the output is ours (16: only the PED
variant's `Please attend to the PED.` was published, 7.2).
"""
from appliance import model, roles
from appliance.cli import Command, Opt
from estate_client import EstateError
from lunaclient.lunacm import auth
from lunaclient.lunacm.context import LunaCmError

NAMES = {"so": "so", "po": "so", "co": "co", "cu": "cu", "au": "au"}
NAME = Opt("name", "n", required=True)
SLOT = Opt("slot", "s")


def _role(ctx):
    role = NAMES.get(ctx.opt("name").lower())
    if role is None:
        raise LunaCmError("CKR_ARGUMENTS_BAD", f"Unknown role '{ctx.opt('name')}' (so, po, co, cu or au).")
    if role == "cu":
        raise LunaCmError("CKR_USER_PIN_NOT_INITIALIZED", "The Crypto User is not initialized.")
    if role == "au":
        raise LunaCmError("CKR_USER_TYPE_INVALID", "The Auditor has no role on a partition slot.")
    return role


def login(ctx):
    slot, role = ctx.slot(), _role(ctx)
    if ctx.session.logins.get(slot.id):
        raise LunaCmError("CKR_USER_ALREADY_LOGGED_IN")
    auth.partition_login(ctx.session, slot, role, ctx.password())
    ctx.session.logins[slot.id] = role


def logout(ctx):
    ctx.session.logins.pop(ctx.slot().id, None)


def show(ctx):
    slot = ctx.slot()
    part = auth.partition_state(ctx.session, slot)
    status = roles.role_status(part)
    current = ctx.session.logins.get(slot.id)
    so = "Zeroized" if part["zeroized"] else "Not Initialized" if not model.partition_initialized(part) \
        else "Logged In" if current == "so" else "Not Logged In"
    co = "Locked out" if part["co_locked"] else "Logged In" if current == "co" else "Not Logged In"
    ctx.out(f"{'Role':<18}{'Status':<16}Login attempts left", f"{'====':<18}{'======':<16}===================",
            f"{'Partition SO':<18}{so:<16}{status['so_attempts_left']}",
            f"{'Crypto Officer':<18}{co:<16}{status['co_attempts_left']}",
            f"{'Crypto User':<18}Not Initialized")


CO_PROMPTS = ("Enter password for Crypto Officer: ", "Re-enter password for Crypto Officer: ")


def init(ctx):
    slot, role = ctx.slot(), _role(ctx)
    if role != "co":
        raise LunaCmError("CKR_ARGUMENTS_BAD", "Only the Crypto Officer is initialized with role init; "
                                               "the Partition SO is set by partition init.")
    if ctx.session.logins.get(slot.id) != "so":
        raise LunaCmError("CKR_USER_NOT_LOGGED_IN", "The Partition SO must be logged in (role login -name po).")
    co_pin = ctx.new_password(*CO_PROMPTS)
    try:
        ctx.session.view.control("POST", f"appliances/{slot.appliance}/partitions/{slot.partition}/initco",
                                 {"co_pin": co_pin})
    except EstateError as e:
        if e.code == "CoAlreadyInitialized":
            raise LunaCmError("CKR_FUNCTION_FAILED", "The Crypto Officer is already initialized.")
        raise LunaCmError("CKR_DEVICE_ERROR", str(e))
    ctx.out("The Crypto Officer was initialized.")


def resetpw(ctx):
    slot, role = ctx.slot(), _role(ctx)
    if role != "co":
        raise LunaCmError("CKR_ARGUMENTS_BAD", "Only the Crypto Officer's password can be reset.")
    if ctx.session.logins.get(slot.id) != "so":
        raise LunaCmError("CKR_USER_NOT_LOGGED_IN", "The Partition SO must be logged in (role login -name so).")
    new_pin = ctx.new_password()
    try:
        ctx.session.view.control("POST", f"appliances/{slot.appliance}/partitions/{slot.partition}/resetpw",
                                 {"new_pin": new_pin})
    except EstateError as e:
        raise LunaCmError("CKR_FUNCTION_NOT_SUPPORTED", str(e))
    ctx.out("The Crypto Officer's password was reset.")


COMMANDS = [
    Command("role login", login, [NAME, Opt("password", "p"), SLOT]),
    Command("role logout", logout, [SLOT]),
    Command("role show", show, [SLOT]),
    Command("role init", init, [NAME, Opt("password", "p"), SLOT]),
    Command("role resetpw", resetpw, [NAME, Opt("password", "p"), SLOT]),
]
