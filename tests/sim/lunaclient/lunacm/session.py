"""A LunaCM session: start-up, the `lunacm:>` loop or one `-c` command, and what lasts between commands.

At start-up LunaCM connects to every registered server over NTLS (as the library does)
and prints the `Available HSMs:` blocks; the slots found then are the session's slots.
Between commands the session keeps the current slot and who is logged in on which slot.
`lunacm -c <command>` prints the banner, runs the command and exits 0 whatever its result:
Thales documents LunaCM's return codes as unsupported, so a caller must read the `Command
Result` line, and exiting 0 on failures too keeps anything from leaning on the status.
"""
import shlex
import sys

from appliance.cli import ParseError
from appliance.softhsm import TokenStore
from estate_client import EstateError
from lunaclient import ha, slots, toollog
from lunaclient.conf import ConfError
from lunaclient.estate_view import EstateView
from lunaclient.install import NotFound, locate
from lunaclient.lunacm import cmd_slot
from lunaclient.lunacm.commands import TREE
from lunaclient.lunacm.console import Console
from lunaclient.lunacm.context import INDENT, NO_ERROR, Context, LunaCmError, result_text

BANNER = "lunacm (64-bit) v7.2.0-220. Copyright (c) 2018 SafeNet. All rights reserved."
PROMPT = "lunacm:>"
EXIT_WORDS = ("exit", "quit")


class Session:
    def __init__(self, install, view, console):
        self.install, self.view, self.console = install, view, console
        self.tokens = TokenStore(view.dir)
        self.conf = install.load()
        self.physical = slots.discover(install, self.conf, view)
        visible = self.visible()
        self.current = visible[0].id if visible else None
        self.logins = {}  # slot id -> "so" | "co"

    def reload(self):
        """Chrystoki.conf was rewritten (HA changes): groups and settings follow; slots stay."""
        self.conf = self.install.load()

    @property
    def groups(self):
        return ha.groups(self.conf)

    @property
    def settings(self):
        return ha.Settings(self.conf)

    def virtual(self):
        return slots.virtual(self.groups, len(self.physical))

    def visible(self):
        return ([] if self.settings.ha_only else self.physical) + self.virtual()

    def find(self, slot_id):
        try:
            wanted = int(slot_id)
        except (TypeError, ValueError):
            return None
        return next((s for s in self.physical + self.virtual() if s.id == wanted), None)

    def by_serial(self, serial):
        return next((s for s in self.physical if s.serial == serial), None)

    # running -----------------------------------------------------------------------------
    def banner(self):
        self.console.write(f"{BANNER}\n\n\n{INDENT}Available HSMs:\n\n")
        self.console.write("".join(f"{INDENT}{line}\n" if line else "\n" for line in cmd_slot.available(self)))
        current = "None" if self.current is None else self.current
        self.console.write(f"{INDENT}Current Slot Id: {current}\n")

    def run(self, line):
        """One command; True when its result was No Error."""
        result, ctx, extra = NO_ERROR, None, []
        self.console.write("\n")  # LunaCM leaves a blank line after the command, before anything it prints
        try:
            invocation = TREE.parse(line)
            ctx = Context(self, invocation)
            invocation.command.fn(ctx)
        except ParseError as e:
            result, extra = result_text("CKR_ARGUMENTS_BAD"), [f"{INDENT}{e}"]
        except LunaCmError as e:
            result, extra = e.result, [f"{INDENT}{text}" for text in e.lines]
        except EstateError as e:
            result, extra = result_text("CKR_DEVICE_ERROR"), [f"{INDENT}The simulated estate did not answer: {e}"]
        lines = (ctx.lines if ctx else []) + extra
        body = "".join(text + "\n" for text in lines) + ("\n" if lines else "")
        self.console.write(f"{body}Command Result : {result}\n")
        toollog.record(self.view.dir, "lunacm", ctx.inv.logged() if ctx else f"(a line that is not a command, {len(line)} characters)", result)
        return result == NO_ERROR

    def interactive(self):
        while True:
            self.console.write(f"\n{PROMPT}")
            line = self.console.read_line()
            if line is None or line.strip().lower() in EXIT_WORDS:
                self.console.write("\n")
                return 0
            if line.strip():
                self.run(line)


def main(argv):
    toollog.keep_going_without_reader()
    try:
        install, estate_dir = locate()
    except NotFound as e:
        print(f"lunacm: {e}", file=sys.stderr)
        return 1
    if estate_dir is None:
        print(f"lunacm: {install.conf_path} is not the client of a simulated estate; set DHSM_ESTATE_DIR",
              file=sys.stderr)
        return 1
    try:
        session = Session(install, EstateView(estate_dir), Console())
    except ConfError as e:
        print(f"lunacm: {install.conf_path}: {e}", file=sys.stderr)
        return 1
    session.banner()
    if argv[:1] == ["-c"]:
        session.run(shlex.join(argv[1:]))
        return 0
    if argv:
        print("usage: lunacm [-c <command>]", file=sys.stderr)
        return 1
    return session.interactive()
