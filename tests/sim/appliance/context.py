"""What a LunaSH command handler works with: options, output, prompts, failures.

Handlers append output lines with out(), ask questions with ask()/confirm()
(prompts are answered on the same channel: typed in a shell, or the next lines
of stdin for `ssh host "cmd"`), and fail by raising LunaError, which the shell
prints as `Error:  '<cmd>' failed. (<HEX> : <NAME>)`.
"""
from appliance import layouts, rc

# luna-field.md 5.2 (5.x `client show`); the other client commands say the same here (our assumption)
NO_SUCH_CLIENT = "Specified client does not exist."


class LunaError(Exception):
    """CODE: (hex, name). EXTRA: the free-text `Error:` lines after the `failed.` line; BEFORE: those
    printed ahead of it instead (`client fingerprint`, luna-field.md 5.2). A line of a text after its
    first becomes an 8-space continuation line."""

    def __init__(self, code, *extra, before=()):
        super().__init__(code[1])
        self.code, self.extra, self.before = code, extra, tuple(before)


class Context:
    def __init__(self, shell, invocation):
        self.shell, self.inv = shell, invocation
        self.device = shell.device
        self.lines = []
        self.after = []  # run once the output is on its way (reboot, network cut)
        self._begun = False
        self._answered = False  # a prompt of this command was answered: the next one follows a blank line
        self._gap = 0  # blank lines owed after an answer, before the next output (layouts.ANSWER_SPACING)

    @property
    def state(self):
        return self.device.state

    @property
    def name(self):
        return self.inv.command.name

    def opt(self, name, default=None):
        return self.inv.opt(name, default)

    def mutate(self):
        return self.device.mutate()

    def then(self, action):
        """ACTION (no arguments) runs once the command's output is on its way, under the device's lock:
        what goes down with the session (a reboot, a power-off)."""
        def run():
            with self.mutate():
                action()
        self.after.append(run)

    # output ---------------------------------------------------------------------
    def out(self, *lines):
        self.lines.extend(lines)

    @property
    def layout(self):
        return self.shell.layout

    def begin(self):
        """LunaSH leaves 0-3 blank lines between the command and what it prints (LunaShell.spacing)."""
        if not self._begun:
            self._begun = True
            self.shell.term.write("\n" * self.shell.spacing(self.name.lower(), self.lines)[0])

    def flush(self):
        self.begin()
        if self.lines:
            self.shell.term.write(self.gap() + "".join(self.reworded(line) + "\n" for line in self.lines))
            self.lines = []

    def gap(self):
        """The blank lines owed after the last answer (once), before what the command prints next."""
        gap, self._gap = self._gap, 0
        return "\n" * gap

    def reworded(self, line):
        """The fault `reword=OLD=>NEW`: a layout the reference does not show (model.FAULTS)."""
        old, _, new = self.state["faults"].get("reword", "").partition("=>")
        return line.replace(old, new) if old else line

    def success(self):
        self.out(f"'{self.name}' successful.")

    def logged_in_as(self, role, outcome):
        """The end of `hsm login` / `audit login`: the role is logged in for this session, or the error."""
        if not outcome.ok:
            raise LunaError(outcome.code)
        self.shell.logged_in[role] = True
        self.success()

    def logged_out(self, role):
        self.shell.logged_in[role] = False
        self.success()

    def delete_confirmed(self, name, caution, remove):
        """The destructive `... delete` commands: proceed/quit, then REMOVE(device, NAME)."""
        self.confirm(f"delete {name}", caution, name=name)
        with self.mutate():
            remove(self.device, name)
        self.success()

    # prompts ---------------------------------------------------------------------
    def ask(self, text, secret=False):
        indent = "  " if secret and self.layout == 7 else ""  # 7.x password prompts (4.1, 4.2, 3.6)
        before = layouts.PASSWORD_SPACING.get((self.layout, self.name.lower())) if secret else None
        return self._read_answer(f"{indent}{text}\n{indent}> ", secret, before)

    def ask_bare(self, text):
        """TEXT as it stands, no input mark after it (no published question looks so) -> the answer."""
        return self._read_answer(text)

    def _read_answer(self, prompt, secret=False, before=None):
        """Write PROMPT (it ends with the "> " marker) and read the answer. BEFORE: blank lines
        before it when it opens the output (None: the layout's). A prompt after an answered one
        follows a blank line (3.4, 4.2, 4.3, 4.4)."""
        if before is not None and not self._begun:
            self._begun = True
            self.shell.term.write("\n" * before)
        self.flush()
        self._gap = 0  # a prompt that follows an answer keeps its own spacing
        self.shell.term.write(("\n" if self._answered else "") + prompt)
        answer = self.shell.term.read_line(mask="*" if secret else None)
        if not self.shell.term.pty:
            self.shell.term.write("\n")  # nothing was echoed: end the prompt line ourselves
        if answer is None or (secret and not answer):
            # End of input (`ssh host "hsm login" </dev/null`) or an empty password is no
            # credential at all: nothing is tried, so no failed login is counted.
            raise LunaError(rc.CANCELLED, "No input was given.")
        self._answered = True
        self._gap = layouts.ANSWER_SPACING.get((self.layout, self.name.lower()), 0)
        return answer

    def confirm(self, action=None, caution=None, **values):
        """The proceed/quit question (layouts.question: the published text of this command and
        layout, else the invented template with ACTION and CAUTION); -force skips it. Anything
        but `proceed` aborts the command, nothing changed."""
        if self.opt("force"):
            return
        before, text = layouts.question(self.layout, self.name.lower(), action, caution, **values)
        if self._read_answer(text, before=before).strip().lower() != "proceed":
            raise LunaError(rc.CANCELLED, "Command aborted.")

    def new_secret(self, given, first, again="Please re-enter password to confirm:"):
        """A new password or domain: from its option, or prompted twice."""
        if given is not None:
            return given
        value = self.ask(first, secret=True)
        if self.ask(again, secret=True) != value:
            raise LunaError(rc.BAD_PARAMETER, "The two entries do not match.")
        return value

    def new_password(self, given, first):
        value = self.new_secret(given, first)
        if not 7 <= len(value) <= 255:
            raise LunaError(rc.BAD_PARAMETER, "Passwords must be 7 to 255 characters long.")
        return value

    # checks ----------------------------------------------------------------------
    def require_so(self):
        if not self.shell.logged_in["so"]:
            raise LunaError(rc.NOT_LOGGED_IN, "The HSM Admin must be logged in (hsm login).")

    def require_initialized(self):
        if not self.state["hsm"]["initialized"]:
            raise LunaError(rc.NOT_INITIALIZED, "The HSM is zeroized or not initialized (hsm init).")

    def partition(self, name):
        part = self.state["partitions"].get(name)
        if part is None:
            raise LunaError(rc.OBJECT_NOT_IN_LIST, f"Partition {name} does not exist.")
        return part

    def client(self, name):
        rec = self.state["clients"].get(name)
        if rec is None:
            raise LunaError(rc.OBJECT_NOT_IN_LIST, NO_SUCH_CLIENT)
        return rec
