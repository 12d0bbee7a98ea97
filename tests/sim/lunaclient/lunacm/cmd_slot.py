"""LunaCM `slot list` / `slot set`, and the `Available HSMs:` blocks of the start-up banner.

Layout from the Thales 7.x pages (luna.md section 5): one block per slot, `Slot Id ->`
... `Slot Description -> Net Token Slot` for a partition reached over NTLS, `HSM Label
->` ... `HSM Status -> N/A - HA Group` for an HA group's virtual slot. With HA-only
mode on, the partitions' own slots are hidden (their numbers do not change).
"""
from appliance import model
from appliance.cli import Command, Opt

MODEL = "LunaSA " + model.SOFTWARE_VERSION.split("-")[0]


def _field(name, value):
    return f"{name + ' ->':<24}{value}".rstrip()  # 7.1: an empty `Label ->` has no trailing blank


def block(slot):
    if slot.virtual:
        return [_field("Slot Id", slot.id), _field("HSM Label", slot.label), _field("HSM Serial Number", slot.serial),
                _field("HSM Model", "LunaVirtual"), _field("HSM Firmware Version", model.FIRMWARE),
                _field("HSM Configuration", "Luna Virtual HSM (PW) Key Export With Cloning Mode"),
                _field("HSM Status", "N/A - HA Group")]
    return [_field("Slot Id", slot.id), _field("Label", slot.label), _field("Serial Number", slot.serial),
            _field("Model", MODEL), _field("Firmware Version", model.FIRMWARE),
            _field("Configuration", "Luna User Partition With SO (PW) Signing With Cloning Mode"),  # 7.1, 7.2
            _field("Slot Description", "Net Token Slot")]


def available(session):
    """Lines (untabbed) of every visible slot's block, blank-separated."""
    lines = []
    for slot in session.visible():
        lines += block(slot) + [""]
    return lines


def list_(ctx):
    ctx.out(*available(ctx.session)[:-1])


def set_(ctx):
    slot = ctx.slot()
    ctx.session.current = slot.id
    ctx.out(f"Current Slot Id: {slot.id}")


COMMANDS = [Command("slot list", list_), Command("slot set", set_, [Opt("slot", "s", required=True)])]
