"""The LunaSH command tree: every command family in one place, plus `help`."""
from appliance import cmd_audit, cmd_client, cmd_hsm, cmd_network, cmd_ntls, cmd_partition, cmd_system
from appliance.cli import Command, CommandTree

FAMILIES = (cmd_hsm, cmd_audit, cmd_partition, cmd_client, cmd_ntls, cmd_network, cmd_system)


def _help(ctx):
    ctx.out("The following top-level commands are available:", "",
            *[f"  {name}" for name in TREE.top_level()], "",
            "Commands and options may be abbreviated; type a command to see its sub-commands.")


TREE = CommandTree([cmd for family in FAMILIES for cmd in family.COMMANDS] + [Command("help", _help)])
