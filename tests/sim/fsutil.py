"""Small file helpers shared by the daemon, the launcher and the tools.

Every file the estate writes is written atomically (temp file + rename) so a
reader never sees half a JSON document, and private files are created 0600 from
the start rather than chmod-ed after the fact.
"""
import json
import os
import tempfile


def _write_atomic(path, data, mode):
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private(path, data):
    _write_atomic(path, data if isinstance(data, bytes) else data.encode(), 0o600)


def write_public(path, data):
    _write_atomic(path, data if isinstance(data, bytes) else data.encode(), 0o644)


def write_json(path, obj, private=False):
    data = (json.dumps(obj, indent=2) + "\n").encode()
    (write_private if private else write_public)(path, data)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
