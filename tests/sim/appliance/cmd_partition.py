"""LunaSH `partition create/list/show/delete` (HSM SO logged in for changes).

`partition show` prints no cloning domain: no real one does (luna-field.md 3.5, 3.6), so
nothing may be read from it; the domain is in the state for `hagroup synchronize`'s warning.

On 7.x (the default layout) `partition create` leaves the partition uninitialised, as 7.2
does (luna-field.md 3.4, 7.1): no SoftHSM token, no Partition SO, no Crypto Officer, until
LunaCM's `partition init` (and `role init -name co`); clients see it with an empty label.
On 5.x/6.x it is created initialised (a SoftHSM token with generated PSO and CO PINs in
DIR/secrets), as those generations' `partition create` made a usable partition.
`partition show` says which (`Partition Initialized:`, `Crypto Officer Initialized:`: our fields).
"""
import re

from appliance import hsmops, layouts, model, rc, roles
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
PARTITION = Opt("partition", "par", required=True)


def _usage(ctx, part):
    return ctx.device.tokens.usage(part["token_serial"]) if part["token_serial"] else (0, 0)


def create(ctx):
    ctx.require_so()
    ctx.require_initialized()
    name, label = ctx.opt("partition"), ctx.opt("label")
    if not NAME_RE.match(name) or (label and len(label) > 32):
        raise LunaError(rc.BAD_PARAMETER, "Partition names are 1 to 32 letters, digits, '.', '_' or '-'.")
    if name in ctx.state["partitions"]:
        raise LunaError(rc.ALREADY_EXISTS, f"A partition named {name} already exists.")
    count = len(ctx.state["partitions"])
    if count >= model.MAX_PARTITIONS:
        raise LunaError(rc.TOO_MANY_PARTITIONS)
    if ctx.layout != 7:  # 3.4: 6.2.2 says these first; 7.x asks proceed at once
        ctx.out(f"On completion, you will have this number of partitions: {count + 1}", "")
        if not label:
            ctx.out("-label:  Not provided; using name for label.", "")
    ctx.confirm()
    with ctx.mutate():
        hsmops.create_partition(ctx.device, name, label or name, initialise=ctx.layout != 7)
    ctx.success()


def list_(ctx):
    rows = []
    for part in ctx.state["partitions"].values():
        objects, used = _usage(ctx, part)
        rows.append((part["serial"], part["name"], objects, model.PARTITION_SIZE, used))
    ctx.out(*layouts.partition_list(ctx.layout, rows))


def _yes(flag):
    return "yes" if flag else "no"


def _show_one(ctx, part):
    objects, used = _usage(ctx, part)
    status = roles.role_status(part)
    ctx.out(f"{'Partition Name:':<43}{part['name']}", f"{'Partition SN:':<43}{part['serial']}",
            f"{'Partition Label:':<43}{model.token_label(part)}".rstrip(),
            f"{'Partition Initialized:':<43}{_yes(model.partition_initialized(part))}",
            f"{'Crypto Officer Initialized:':<43}{_yes(hsmops.co_initialized(ctx.device, part))}",
            f"{'Partition SO PIN To Be Changed:':<43}no",
            f"{'Partition SO Zeroized:':<43}{_yes(part['zeroized'])}",
            f"{'Partition SO Login Attempts Left:':<43}{status['so_attempts_left']}",
            f"{'Crypto Officer PIN To Be Changed:':<43}no",
            f"{'Crypto Officer Locked Out:':<43}{_yes(part['co_locked'])}",
            f"{'Crypto Officer Login Attempts Left:':<43}{status['co_attempts_left']}",
            "Crypto User is not initialized.", f"{'Legacy Domain Has Been Set:':<43}no", "Partition Storage:",
            f"{'   Total Storage Space:':<43}{model.PARTITION_SIZE}", f"{'   Used Storage Space:':<43}{used}",
            f"{'   Free Storage Space:':<43}{model.PARTITION_SIZE - used}", f"{'   Object Count:':<43}{objects}")


def show(ctx):
    name = ctx.opt("partition")
    parts = [ctx.partition(name)] if name else list(ctx.state["partitions"].values())
    if not parts:
        ctx.out("There are no partitions.")
    for number, part in enumerate(parts):
        if number:
            ctx.out("")
        _show_one(ctx, part)


def delete(ctx):
    ctx.require_so()
    name = ctx.opt("partition")
    ctx.partition(name)
    ctx.delete_confirmed(name, f"CAUTION:  Are you sure you wish to delete the partition named: {name}",
                         hsmops.delete_partition)


COMMANDS = [
    Command("partition create", create, [PARTITION, Opt("label", "l"), Opt("size", "s"),
                                         Opt("allfreestorage", "all", flag=True), FORCE]),
    Command("partition list", list_),
    Command("partition show", show, [Opt("partition", "par")]),
    Command("partition delete", delete, [PARTITION, FORCE]),
]
