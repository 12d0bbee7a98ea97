"""The client tools' lines in DIR/estate.log, so tests count what `vtl` and `lunacm` did.

The daemon logs every ARM request and LunaSH command; vtl and lunacm run in the operator's
own processes, so each appends one line per command to the same file (opened O_APPEND, as
the daemon's is: lines from several processes do not overwrite each other), in the daemon's
format:
  2026-11-30 22:24:07,123 estate.client INFO vtl: addServer -cert PATH -name 127.0.0.1 -> 0
  2026-11-30 22:24:08,456 estate.client INFO lunacm: hagroup recover -group myHA -> No Error
Never a secret: password-like options show as `****` (appliance/shell.py's rule), a line
that does not parse only by its length (appliance/cli.py's logged_words).
"""
import os
import sys
import time

LOG_FILE = "estate.log"


def record(estate_dir, tool, command, result):
    """Append `TOOL: COMMAND -> RESULT` to ESTATE_DIR/estate.log (nothing without an estate)."""
    if not estate_dir:
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    line = f"{stamp} estate.client INFO {tool}: {command} -> {result}\n"
    fd = os.open(os.path.join(estate_dir, LOG_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class _Unbreakable:
    """stdout that keeps working when its reader has gone: the tool carries on and logs
    its line, as a real tool does what it was asked before it notices (a killed dhsm
    leaves the vtl or lunacm it started running)."""
    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text):
        if not self._gone:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):
                self._gone = True
        return len(text)

    def flush(self):
        if not self._gone:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._gone = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def keep_going_without_reader():
    """Call first in a tool's main: stdout and stderr survive a reader that has gone."""
    sys.stdout, sys.stderr = _Unbreakable(sys.stdout), _Unbreakable(sys.stderr)
