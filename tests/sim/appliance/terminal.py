"""Line input and output on an SSH channel, the way LunaSH sees its terminal.

With a PTY (ssh -t, an interactive login) the appliance's line discipline echoes
what is typed, turns Enter into CR LF, handles backspace, Ctrl-U and Ctrl-C, and
password prompts echo '*'. Without one (exec requests, commands piped on stdin)
input is read as plain lines and nothing is echoed.
"""
BACKSPACES = (b"\x7f", b"\x08")
CTRL_C, CTRL_D, CTRL_U, ESC = b"\x03", b"\x04", b"\x15", b"\x1b"


class Terminal:
    def __init__(self, channel, pty):
        self.channel, self.pty = channel, pty
        self._pending = b""

    def write(self, text):
        data = text.replace("\n", "\r\n") if self.pty else text
        self.channel.sendall(data.encode())

    def _next_byte(self):
        if not self._pending:
            chunk = self.channel.recv(4096)
            if not chunk:
                return None
            self._pending = chunk
        byte, self._pending = self._pending[:1], self._pending[1:]
        return byte

    def read_line(self, mask=None):
        """One line without its end, or None at end of input. MASK: echo this instead of each
        character ("" for nothing)."""
        return self._read_edited(mask) if self.pty else self._read_plain()

    def _read_plain(self):
        line = b""
        while True:
            byte = self._next_byte()
            if byte is None:
                return line.decode(errors="replace") if line else None
            if byte == b"\n":
                return line.rstrip(b"\r").decode(errors="replace")
            line += byte

    def _read_edited(self, mask):
        line = b""
        while True:
            byte = self._next_byte()
            if byte is None or (byte == CTRL_D and not line):
                return None
            if byte in (b"\r", b"\n"):
                if byte == b"\r" and self._pending[:1] == b"\n":
                    self._pending = self._pending[1:]
                self.write("\n")
                return line.decode(errors="replace")
            line = self._edit(line, byte, mask)
            if line is None:
                self.write("^C\n")
                return ""

    def _edit(self, line, byte, mask):
        """Apply one typed byte to LINE, echoing it; None means the line was cancelled."""
        if byte == CTRL_C:
            return None
        if byte in BACKSPACES:
            if line:
                self.write("\b \b")
            return line[:-1]
        if byte == CTRL_U:
            self.write("\b \b" * len(line))
            return b""
        if byte == ESC:
            self._skip_escape_sequence()
            return line
        if byte < b" ":
            return line  # other control characters do nothing
        if mask is None:
            self.channel.sendall(byte)
        elif mask:
            self.channel.sendall(mask.encode())  # mask "" echoes nothing (Linux passwd)
        return line + byte

    def _skip_escape_sequence(self):
        """Arrow keys and friends (ESC [ ... letter): no history or cursor movement here."""
        byte = self._next_byte()
        if byte != b"[":
            return
        while byte is not None and not byte.isalpha() and byte != b"~":
            byte = self._next_byte()
