"""LunaCM `hagroup ...`: HA groups of partitions on several appliances.

Groups live in Chrystoki.conf (VirtualToken, HASynchronize, HAConfiguration; ha.py),
rewritten here under the configuration lock as LunaCM does. Whether a member is in the
group right now (it drops out when its appliance stops serving, and comes back by
`hagroup recover` or auto-recovery) is the estate daemon's view, read through
/_sim/client. Member passwords are Crypto Officer logins and count as such.

Texts: [V] the openstack role's `already been used` / `already part of an` and the
`HA Group Slot ID` line; the synchronize warning is the troubleshooting guide's, byte for
byte (two blanks after "fail.", the slots as this run numbers them); `HA Auto Recovery Count
has been set to N` is Luna 6's. The rest is ours, and so is all that follows the warning: one
line for the first member found in another domain than the first reachable one, then, with
objects to clone, a failure in our words (luna-field.md 16: no real synchronize output).
"""
from appliance import model, p11
from appliance.cli import Command, Opt
from lunaclient import ha
from lunaclient.lunacm import auth
from lunaclient.lunacm.context import LunaCmError

SERIAL, SLOT = Opt("serialNumber", "se"), Opt("slot", "sl")
GROUP, PASSWORD = Opt("group", "g", required=True), Opt("password", "p")
SYNC_WARNING = ("Warning: Synchronize may fail.  The members in slot {} and slot {} have conflicting settings "
                "for private key cloning.")


def _label_width(text):
    return f"{text:>24}  "


def _group(session, label):
    group = next((g for g in session.groups if g.label == label), None)
    if group is None:
        raise LunaCmError("CKR_ARGUMENTS_BAD", f"There is no HA group labelled {label}.")
    return group


def _member_serial(ctx):
    """-serialNumber SN or -slot N (a partition's slot) -> the member's serial number."""
    serial, slot_id = ctx.opt("serialNumber"), ctx.opt("slot")
    if bool(serial) == (slot_id is not None):
        raise LunaCmError("CKR_ARGUMENTS_BAD", "Give the member with exactly one of -serialNumber or -slot.")
    if serial:
        return serial
    slot = ctx.session.find(slot_id)
    if slot is None or slot.virtual:
        raise LunaCmError("CKR_SLOT_ID_INVALID", f"Slot {slot_id} is not a partition's slot.")
    return slot.serial


def _member_slot(ctx, serial):
    slot = ctx.session.by_serial(serial)
    if slot is None:
        raise LunaCmError("CKR_SLOT_ID_INVALID", f"No slot holds partition {serial}: is it assigned to this client "
                                                 "and its appliance reachable (vtl verify)?")
    return slot


def _not_a_member_yet(session, serial):
    if any(serial in g.members for g in session.groups):
        raise LunaCmError("CKR_ARGUMENTS_BAD", "The member you specified is already part of an HA group.")


def _save(session, change):
    """CHANGE(groups) under the configuration lock; the session sees the result."""
    with session.install.editing() as conf:
        groups = ha.groups(conf)
        change(groups)
        ha.write_groups(conf, groups)
    session.reload()


def _configuration(session, group):
    virtual = next(v for v in session.virtual() if v.group.label == group.label)
    synced = dict(session.conf.items(ha.SYNC)).get(group.label, "1") == "1"
    return [_label_width("HA Group Label:") + group.label, _label_width("HA Group Number:") + group.serial,
            _label_width("HA Group Slot ID:") + str(virtual.id),
            _label_width("Synchronization:") + ("enabled" if synced else "disabled"),
            _label_width("Group Members:") + ", ".join(group.members), _label_width("Needs sync:") + "no",
            _label_width("Standby Members:") + "<none>"]


# commands ----------------------------------------------------------------------------------
def create_group(ctx):
    session, label = ctx.session, ctx.opt("label")
    if any(g.label == label for g in session.groups):
        raise LunaCmError("CKR_ARGUMENTS_BAD", "The HA group label specified for the new group has already been used.")
    slot = _member_slot(ctx, _member_serial(ctx))
    _not_a_member_yet(session, slot.serial)
    pin = ctx.password()
    auth.partition_login(session, slot, "co", pin)
    objects, _ = session.tokens.usage(slot.token_serial)
    if objects:
        ctx.out(f"The member you specified, {slot.serial}, holds {objects} objects.")
        answer = ctx.ask("Type 'copy' to keep and replicate them, 'remove' to delete them, or 'quit' to quit now.\n"
                         "  > ").lower()
        if answer == "remove":
            session.tokens.destroy_objects(slot.token_serial, pin)
        elif answer != "copy":
            raise LunaCmError("CKR_CANCEL", "Command aborted.")
    group = ha.Group(label, [slot.serial])
    _save(session, lambda groups: groups.append(group))
    ctx.out(f'New group with label "{label}" created with group number {group.serial}.', "Group configuration is:",
            "", *_configuration(session, group))


def add_member(ctx):
    session, group = ctx.session, _group(ctx.session, ctx.opt("group"))
    slot = _member_slot(ctx, _member_serial(ctx))
    _not_a_member_yet(session, slot.serial)
    auth.partition_login(session, slot, "co", ctx.password())
    _save(session, lambda groups: next(g for g in groups if g.label == group.label).members.append(slot.serial))
    ctx.out(f"Member {slot.serial} successfully added to group {group.label}. New group configuration is:", "",
            *_configuration(session, _group(session, group.label)))


def remove_member(ctx):
    session, group = ctx.session, _group(ctx.session, ctx.opt("group"))
    serial = _member_serial(ctx)
    if serial not in group.members:
        raise LunaCmError("CKR_ARGUMENTS_BAD", f"{serial} is not a member of group {group.label}.")
    if len(group.members) == 1:
        raise LunaCmError("CKR_ARGUMENTS_BAD", "A group keeps at least one member; use hagroup deleteGroup.")

    def remove(groups):
        changed = next(g for g in groups if g.label == group.label)
        changed.members.remove(serial)
        changed.serial = ha.group_serial(changed.members)  # the group is renamed after its new first member
    _save(session, remove)
    ctx.out(f"Member {serial} successfully removed from group {group.label}.")


def delete_group(ctx):
    label = _group(ctx.session, ctx.opt("label")).label
    _save(ctx.session, lambda groups: groups.remove(next(g for g in groups if g.label == label)))
    ctx.out(f"Group {label} successfully deleted.")


def list_groups(ctx):
    session = ctx.session
    settings = session.settings
    if session.groups and not settings.ha_only:
        ctx.out("If you would like to see synchronization data for the groups,",
                "please enter the password for the group members. Sync info",
                "not available in HA Only mode.", "")
        ctx.flush()
        session.console.read_secret("  Enter the password: ")  # sync data is always "no" here: not checked
    ctx.out(f"HA auto recovery: {'enabled' if settings.retry else 'disabled'}", "HA recovery mode: activeBasic",
            f"Maximum auto recovery retry: {settings.retry}",
            f"Auto recovery poll interval: {settings.interval} seconds", "HA logging: disabled",
            f"Only Show HA Slots: {'yes' if settings.ha_only else 'no'}", "")
    if not session.groups:
        ctx.out("There are no HA groups configured.")
        return
    members = {g["label"]: g["members"] for g in session.view.control("GET", "client")["groups"]}
    for number, group in enumerate(session.groups):
        ctx.raw(*([""] if number else []))
        ctx.out(*_configuration(session, group), "")
        ctx.raw(f"{'Slot #':<10}{'Member S/N':<32}{'Member Label':<16}Status",
                f"{'======':<10}{'==========':<32}{'============':<16}======")
        for member in members.get(group.label, []):
            slot = session.by_serial(member["serial"])
            ctx.raw(f"{slot.id if slot else '-':>6}    {member['serial']:<32}{member['label'] or '-':<16}"
                    f"{member['status']}")


def recover(ctx):
    group = _group(ctx.session, ctx.opt("group"))
    before = {m["serial"]: m["status"] for g in ctx.session.view.control("GET", "client")["groups"]
              if g["label"] == group.label for m in g["members"]}
    after = ctx.session.view.control("POST", "client/ha/recover", {"group": group.label})["members"]
    failed = [m["serial"] for m in after if m["status"] != ha.ALIVE]
    recovered = [m["serial"] for m in after if m["status"] == ha.ALIVE and before.get(m["serial"]) != ha.ALIVE]
    ctx.out(*[f"Member {serial} recovered." for serial in recovered])
    if failed:
        raise LunaCmError("CKR_DEVICE_ERROR", *[f"Member {serial} could not be recovered: its appliance does not "
                                                "answer." for serial in failed])
    if not recovered:
        ctx.out(f"Group {group.label} has no failed members.")


def _set(ctx, key, value):
    with ctx.session.install.editing() as conf:
        conf.set(ha.CONFIG, key, value)
    ctx.session.reload()


def retry(ctx):
    count = ctx.opt("count")
    if not (count.lstrip("-").isdigit() and -1 <= int(count) <= 500):
        raise LunaCmError("CKR_ARGUMENTS_BAD", "The retry count is 0 (off), 1 to 500, or -1 (unlimited).")
    _set(ctx, "reconnAtt", int(count))
    ctx.out(f"HA Auto Recovery Count has been set to {int(count)}")


def interval(ctx):
    seconds = ctx.opt("interval")
    if not (seconds.isdigit() and ha.MIN_INTERVAL <= int(seconds) <= ha.MAX_INTERVAL):
        raise LunaCmError("CKR_ARGUMENTS_BAD", f"The interval is {ha.MIN_INTERVAL} to {ha.MAX_INTERVAL} seconds.")
    _set(ctx, "AutoReconnectInterval", int(seconds))
    ctx.out(f"HA Auto Recovery Interval has been set to {int(seconds)} seconds")


def ha_only(ctx):
    chosen = [flag for flag in ("enable", "disable", "show") if ctx.opt(flag)]
    if len(chosen) != 1:
        raise LunaCmError("CKR_ARGUMENTS_BAD", "Give exactly one of -enable, -disable or -show.")
    if chosen[0] != "show":
        _set(ctx, "HAOnly", 1 if chosen[0] == "enable" else 0)
    ctx.out(f"HA Only mode is {'enabled' if ctx.session.settings.ha_only else 'disabled'}.")


def synchronize(ctx):
    """Logs in to every member it reaches; members in different cloning domains get the guide's
    warning, and cannot clone private keys: with objects to copy, the synchronization fails.
    Otherwise every object is cloned to the members missing it (by class and label), sensitive and
    non-extractable keys with their value (appliance/cloning.py)."""
    session, group = ctx.session, _group(ctx.session, ctx.opt("group"))
    reached = [slot for slot in map(session.by_serial, group.members) if slot is not None]
    if not reached:
        raise LunaCmError("CKR_DEVICE_ERROR", f"No member of group {group.label} can be reached.")
    pin = ctx.password()
    for slot in reached:
        auth.partition_login(session, slot, "co", pin)
    domains = [model.partition_domain(auth.partition_state(session, slot)) for slot in reached]
    odd = next((slot for slot, domain in zip(reached, domains) if domain != domains[0]), None)
    if odd is not None:
        ctx.out(SYNC_WARNING.format(reached[0].id, odd.id))
        if any(session.tokens.usage(slot.token_serial)[0] for slot in reached):
            raise LunaCmError("CKR_DEVICE_ERROR", "Private keys cannot be cloned between the members' cloning "
                                                  "domains.")
    try:
        copied = session.tokens.synchronize([slot.token_serial for slot in reached], pin)
    except p11.NotClonable as e:
        raise LunaCmError("CKR_DEVICE_ERROR", str(e))
    ctx.out(f"{copied} object(s) cloned to the members missing them.",
            f"Synchronization of group {group.label} completed.")


COMMANDS = [
    Command("hagroup listGroups", list_groups),
    Command("hagroup createGroup", create_group, [Opt("label", "l", required=True), SERIAL, SLOT, PASSWORD]),
    Command("hagroup addMember", add_member, [GROUP, SERIAL, SLOT, PASSWORD]),
    Command("hagroup removeMember", remove_member, [GROUP, SERIAL, SLOT]),
    Command("hagroup deleteGroup", delete_group, [Opt("label", "l", required=True)]),
    Command("hagroup recover", recover, [GROUP, Opt("force", "f", flag=True)]),
    Command("hagroup retry", retry, [Opt("count", "c", required=True), Opt("group", "g")]),
    Command("hagroup interval", interval, [Opt("interval", "i", required=True), Opt("group", "g")]),
    Command("hagroup haOnly", ha_only, [Opt("enable", "e", flag=True), Opt("disable", "d", flag=True),
                                        Opt("show", "s", flag=True)]),
    Command("hagroup synchronize", synchronize, [GROUP, PASSWORD]),
]
