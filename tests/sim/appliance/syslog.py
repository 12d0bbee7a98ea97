"""The appliance's syslog "messages" file, as `syslog tail -logname messages` shows it.

Lines use the classic BSD format with the appliance's own clock (skew included)
and hostname: `Nov 28 10:15:02 hsm1 NTLS[8508]: info : 0 : Incoming connection ...`.
"""
import datetime
import os
import threading


def stamp(ts):
    t = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return f"{t.strftime('%b')} {t.day:2d} {t.strftime('%H:%M:%S')}"


class Syslog:
    def __init__(self, path, clock, hostname):
        self.path, self.clock, self.hostname = path, clock, hostname  # clock(), hostname(): callables
        self._lock = threading.Lock()

    def write(self, program, pid, message):
        line = f"{stamp(self.clock())} {self.hostname()} {program}[{pid}]: {message}\n"
        with self._lock:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)

    def lines(self):
        try:
            with open(self.path, errors="replace") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def tail(self, entries, search=None):
        found = [line for line in self.lines() if search is None or search.lower() in line.lower()]
        return found[-entries:] if entries else []

    def clear(self):
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
