"""The LunaCM command tree (appliance/cli.py: case-insensitive, unambiguous prefixes, shortcuts)."""
from appliance.cli import Command, CommandTree
from lunaclient.lunacm import cmd_hagroup, cmd_partition, cmd_role, cmd_slot

FAMILIES = (cmd_slot, cmd_role, cmd_partition, cmd_hagroup)


def _help(ctx):
    ctx.out("The following commands are available:", "",
            *[f"  {cmd.name}" for family in FAMILIES for cmd in family.COMMANDS], "", "  exit, quit")


TREE = CommandTree([cmd for family in FAMILIES for cmd in family.COMMANDS] + [Command("help", _help)])
