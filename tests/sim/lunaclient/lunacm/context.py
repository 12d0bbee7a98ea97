"""What a LunaCM command handler works with: options, output, prompts, the current slot, failures.

Output follows LunaCM: the command's lines indented by two blanks (7.2's client, luna-field.md
7.1), a blank line, then
`Command Result : No Error` or `Command Result : 0x000000a0 (CKR_PIN_INCORRECT)` (luna.md
section 5 calls that format likely; the codes are PKCS#11's). Handlers fail by raising
LunaCmError with a CKR name and optional lines; tables are written unindented with raw().
"""
NO_ERROR = "No Error"
INDENT = "  "  # 7.2's client indents its listing and questions by 2 (luna-field.md 7.1)
CKR = {"CKR_CANCEL": 0x01, "CKR_SLOT_ID_INVALID": 0x03, "CKR_GENERAL_ERROR": 0x05, "CKR_FUNCTION_FAILED": 0x06,
       "CKR_ARGUMENTS_BAD": 0x07,
       "CKR_DEVICE_ERROR": 0x30, "CKR_FUNCTION_NOT_SUPPORTED": 0x54, "CKR_PIN_INCORRECT": 0xA0,
       "CKR_PIN_LOCKED": 0xA4, "CKR_TOKEN_NOT_PRESENT": 0xE0, "CKR_USER_ALREADY_LOGGED_IN": 0x100,
       "CKR_USER_NOT_LOGGED_IN": 0x101, "CKR_USER_PIN_NOT_INITIALIZED": 0x102, "CKR_USER_TYPE_INVALID": 0x103}


def result_text(name):
    return f"0x{CKR[name]:08x} ({name})" if name in CKR else name


class LunaCmError(Exception):
    def __init__(self, ckr, *lines):
        super().__init__(ckr)
        self.result, self.lines = result_text(ckr), lines


class Context:
    def __init__(self, session, invocation):
        self.session, self.inv = session, invocation
        self.lines = []

    def opt(self, name, default=None):
        return self.inv.opt(name, default)

    def out(self, *lines):
        self.lines += [INDENT + line if line else "" for line in lines]

    def raw(self, *lines):
        self.lines += list(lines)

    def flush(self):
        if self.lines:
            self.session.console.write("".join(line + "\n" for line in self.lines))
            self.lines = []

    # prompts ---------------------------------------------------------------------------
    def ask(self, prompt):
        self.flush()
        answer = self.session.console.ask(f"{INDENT}{prompt}")
        if answer is None:
            raise LunaCmError("CKR_CANCEL", "No answer was given.")
        return answer.strip()

    def secret(self, prompt, gap=False):
        """A password from stdin; none at all cancels the command (no login is tried, none counted).
        GAP: a blank line first, as between 7.1's `partition init` prompts."""
        self.flush()
        answer = self.session.console.read_secret(f"{chr(10) if gap else ''}{INDENT}{prompt}")
        if not answer:
            raise LunaCmError("CKR_CANCEL", "No password was given.")
        return answer

    def password(self):
        """-password, else the prompt."""
        return self.opt("password") or self.secret("Enter the password: ")

    def new_password(self, first_prompt="Enter new password: ", again_prompt="Re-enter new password: "):
        """-password, else asked twice."""
        given = self.opt("password")
        if given:
            return given
        return self.twice(first_prompt, again_prompt)

    def twice(self, first_prompt, again_prompt):
        """A new secret typed twice, a blank line between the prompts (luna-field.md 7.1)."""
        first = self.secret(first_prompt)
        if self.secret(again_prompt, gap=True) != first:
            raise LunaCmError("CKR_ARGUMENTS_BAD", "The two entries do not match.")
        return first

    # slots -----------------------------------------------------------------------------
    def slot(self):
        """The slot of -slot, else the current one."""
        wanted = self.opt("slot")
        if wanted is None:
            wanted = self.session.current
        slot = self.session.find(wanted)
        if slot is None:
            raise LunaCmError("CKR_SLOT_ID_INVALID", f"There is no slot {wanted}." if wanted is not None
                              else "There are no slots: is the client registered with an appliance (vtl verify)?")
        return slot
