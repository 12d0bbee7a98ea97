"""LunaCM's terminal: lines in, text out, and password prompts that never show the password.

On a terminal a password is read without echo, one '*' per character (what `expect`
scripts such as the openstack role wait for); piped, it is simply the next line of
stdin, as `echo PW | lunacm -c role login -name co` gives it.
"""
import os
import sys
import termios

BACKSPACES = (b"\x7f", b"\x08")


class Console:
    def __init__(self, stdin=None, stdout=None):
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout

    def write(self, text):
        self.stdout.write(text)
        self.stdout.flush()

    def read_line(self):
        """The next line without its end, or None at end of input."""
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def ask(self, prompt):
        """PROMPT's answer (None at end of input); the terminal echoes it, a pipe does not."""
        self.write(prompt)
        answer = self.read_line()
        if not self.stdin.isatty():
            self.write("\n")  # nothing was echoed: end the prompt line
        return answer

    def read_secret(self, prompt):
        if not self.stdin.isatty():
            return self.ask(prompt)
        self.write(prompt)
        return self._read_masked()

    def _read_masked(self):
        fd = self.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
        typed = b""
        try:
            while True:
                char = os.read(fd, 1)
                if not char:
                    return typed.decode(errors="replace") if typed else None
                if char in (b"\r", b"\n"):
                    return typed.decode(errors="replace")
                if char == b"\x03":
                    raise KeyboardInterrupt
                if char in BACKSPACES:
                    if typed:
                        typed = typed[:-1]
                        self.write("\b \b")
                    continue
                typed += char
                self.write("*")
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self.write("\n")
