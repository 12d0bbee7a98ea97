"""A LunaSH session: banner, prompt, one command at a time, `Command Result` lines.

Used for interactive logins (`ssh admin@hsm`, with or without a PTY, so commands
may also come piped on stdin) and for exec requests (`ssh admin@hsm "hsm show"`),
which run one command and exit 0 when it succeeded, 1 otherwise (the exit code is
the simulator's choice; scripts parse `Command Result`). Per-session state is
whether the HSM SO and the Auditor are logged in, as on the appliance.

Shell faults (device state "faults"): shell_delay_ms before each answer;
slow_command "MS:NAME": that command waits MS more before it acts (it still acts
when the client has gone: what a killed client leaves behind);
hang_next: the command never answers; drop_next: half the answer, then a TCP RST;
ask_next "TEXT": the next command first asks TEXT (no input mark), y goes on;
stall_next "MS:TEXT": the next command's output opens with TEXT, its line left
open MS ms.
"""
import datetime
import logging
import threading
import time
import types

from appliance import cli, commands, firstlogin, layouts, model, rc
from appliance.context import Context, LunaError

RESULT_OK = "Command Result : 0 (Success)"
RESULT_FAILED = "Command Result : 65535 (Luna Shell execution)"
EXIT_WORDS = ("exit", "logout")

log = logging.getLogger("estate.appliance")


class LunaShell:
    def __init__(self, device, term, session):
        self.device, self.term, self.session = device, term, session
        self.logged_in = {"so": False, "audit": False}

    @property
    def layout(self):
        return model.lunash_layout(self.device.state)

    def prompt(self):
        return f"[{self.device.state['hostname']}] lunash:>"

    def interactive(self):
        self._banner()
        if firstlogin.required(self.device):
            self.term.write("\n")  # 1.1: two blank lines between the banner and the box
            if not firstlogin.run(self):
                return 1
        ran = False
        while True:
            if self.term.pty:  # 1.3: commands fed on stdin get no prompt (and no echo: terminal.py)
                self.term.write(self.prompt())
            line = self.term.read_line()
            if line is None or line.strip().lower() in EXIT_WORDS:
                return 0
            if not line.strip():
                continue
            if ran and not self.term.pty:
                self.term.write("\n")  # 1.3: one blank line between two commands' outputs
            self.run(line)
            ran = True

    def spacing(self, command, lines):
        """Blank lines before and after a command's output: the layout's on a PTY, else 1.3's."""
        return layouts.spacing(self.layout, command, lines) if self.term.pty else layouts.NO_PTY_SPACING

    def exec_command(self, line):
        if firstlogin.required(self.device):
            self.term.write(firstlogin.NO_TTY + "\n")
            return 1
        return 0 if self.run(line) == 0 else 1

    def _banner(self):
        last = self.session.previous_login
        if self.term.pty and last:
            when = datetime.datetime.fromtimestamp(last["time"], datetime.timezone.utc)
            self.term.write(f"Last login: {when.strftime('%a %b %e %H:%M:%S %Y')} from {last['from']}\n")
        self.term.write(f"\n{layouts.BANNERS[self.layout]}\n\n")

    # one command ------------------------------------------------------------------
    def run(self, line):
        """Run LINE; returns 0 or 65535 like `Command Result`."""
        if not line.strip():
            return 0
        if self._take_fault("hang_next"):
            self._hang()
        drop = self._take_fault("drop_next")
        delay = self._delay_ms(line)
        if delay:  # a slow command is logged when it arrives too: tests kill clients mid-command
            log.info("%s lunash received: %s", self.device.name, logged_command(self._parse_only(line), line))
            time.sleep(delay / 1000)
        ctx, code, errors = self._dispatch(line)
        note = " (cancelled: no input)" if errors and rc.CANCELLED[0] in errors[0] else ""  # no attempt was made
        log.info("%s lunash: %s -> %d%s", self.device.name, logged_command(ctx, line), code, note)  # never a password
        self._finish(ctx, code, errors, drop)
        for action in ctx.after if ctx else ():
            action()
        return code

    @staticmethod
    def _parse_only(line):
        """What logged_command needs of a line not run yet (None: it does not parse)."""
        try:
            return types.SimpleNamespace(inv=commands.TREE.parse(line))
        except cli.ParseError:
            return None

    def _dispatch(self, line):
        try:
            invocation = commands.TREE.parse(line)
        except cli.ParseError as e:
            return None, 65535, [f"Error:  {e}"]
        ctx = Context(self, invocation)
        try:
            self._unpublished_question(ctx)
            invocation.command.fn(ctx)
            return ctx, 0, []
        except LunaError as e:
            return ctx, 65535, failure_lines(ctx.name, e.code, e.extra, e.before)

    def _finish(self, ctx, code, errors, drop):
        if ctx:
            ctx.begin()
            lines, gap = [ctx.reworded(line) for line in ctx.lines], ctx.gap()
            after = self.spacing(ctx.name.lower(), lines)[1]
            result = RESULT_OK if code == 0 else layouts.FAILED_RESULT.get((self.layout, ctx.name.lower()),
                                                                             RESULT_FAILED)
        else:  # a line that does not parse: one blank line each side on a PTY
            before, after = (1, 1) if self.term.pty else layouts.NO_PTY_SPACING
            self.term.write("\n" * before)
            lines, gap, result = [], "", RESULT_FAILED
        text = gap + "".join(line + "\n" for line in lines + errors) + "\n" * after + result + "\n"
        if drop:
            self.term.write(text[:len(text) // 2])
            time.sleep(0.05)  # let the half reach the client before the RST overtakes it
            self.session.reset()
            raise ConnectionResetError("drop_next fault")
        self.term.write(text)

    def _delay_ms(self, line):
        faults = self.device.state["faults"]
        delay = faults["shell_delay_ms"]
        if faults.get("slow_command"):  # .get: a world saved before the knob existed
            ms, name = faults["slow_command"].split(":", 1)
            try:
                if commands.TREE.parse(line).command.name.lower() == name:
                    delay += int(ms)
            except cli.ParseError:
                pass
        return delay

    def _unpublished_question(self, ctx):
        """The one-shot faults ask_next and stall_next (model.FAULTS): what no published appliance
        prints, for dhsm's handling of questions it does not know and of lines cut mid-way."""
        stall = self._take_text_fault("stall_next")
        if stall:
            ms, text = stall.split(":", 1)
            ctx.begin()
            self.term.write(text)
            time.sleep(int(ms) / 1000)
            self.term.write("done\n")
        question = self._take_text_fault("ask_next")
        if question and ctx.ask_bare(question).strip().lower() != "y":
            raise LunaError(rc.CANCELLED, "Command aborted.")

    def _take_text_fault(self, name):
        with self.device.mutate() as state:
            text = state["faults"].get(name, "")  # .get: a world saved before the knob existed
            if text:
                state["faults"][name] = ""
                self.device.world.changed()
            return text

    def _take_fault(self, name):
        with self.device.mutate() as state:
            if state["faults"][name] > 0:
                state["faults"][name] -= 1
                self.device.world.changed()
                return True
        return False

    def _hang(self):
        """Never answer; give the thread back when the client goes away."""
        while not self.term.channel.closed:
            threading.Event().wait(0.2)
        raise ConnectionAbortedError("hang_next fault")


def failure_lines(name, code, extra=(), before=()):
    """`Error:  '<cmd>' failed. (<HEX> : <NAME>)` with its free-text `Error:` lines as luna-field.md
    5.2 and 4.2 print them: BEFORE ahead of it, line after line (`client fingerprint`); EXTRA after
    it, past a blank line (`client show`, `hsm login`). A text's further lines are continuation
    lines indented 8 spaces (5.2)."""
    failed = [f"Error:  '{name}' failed. ({code[0]} : {code[1]})"]
    after = [""] + _error_lines(extra) if extra else []
    return _error_lines(before) + failed + after


def _error_lines(texts):
    return [line for text in texts for line in ("Error:  " + text).replace("\n", "\n        ").split("\n")]


def logged_command(ctx, line):
    """The command as estate.log shows it: its full name, options and arguments, the
    value of any password-like option masked.  A line that does not parse is not shown
    (it could be a password typed at the wrong prompt)."""
    if ctx is None:
        return f"(a line that is not a command, {len(line)} characters)"
    return ctx.inv.logged()
