"""Files in the admin's home folder over SFTP and SCP (certificates, update packages).

The home is flat, as the appliance presents it: `server.pem`, uploaded `<client>.pem`,
update packages. Any path is reduced to its last component inside the home
(`/home/tenantadmin/x.pem`, `./x.pem` and `x.pem` are the same file).
SFTP serves OpenSSH's sftp and scp (which speaks SFTP by default since 9.0);
the classic SCP protocol (`scp -O`, libssh2's scp functions) runs as the exec
commands `scp -t PATH` (upload) and `scp -f PATH` (download).
"""
import os
import shlex
import posixpath

import paramiko
from paramiko.sftp import SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED

HOME = "/home/tenantadmin"


def _name(path):
    """The home-folder file PATH means, or "" for the home itself."""
    name = posixpath.basename(posixpath.normpath(path or "."))
    return "" if name in (".", "/", "", posixpath.basename(HOME)) else name


class HomeSftpServer(paramiko.SFTPServer):
    def finish_subsystem(self):
        try:
            self.sock.send_exit_status(0)  # as sftp-server exiting; scp counts a missing status as failure
        except (OSError, EOFError, paramiko.SSHException):
            pass
        super().finish_subsystem()


class HomeHandle(paramiko.SFTPHandle):
    def chattr(self, attr):
        return SFTP_OK  # scp sets modes and times after an upload; the home does not keep them


class HomeSftp(paramiko.SFTPServerInterface):
    def __init__(self, server, device, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.paths = device.paths

    def _real(self, path):
        name = _name(path)
        return self.paths.home if not name else self.paths.home_file(name)

    def canonicalize(self, path):
        name = _name(path)
        return f"{HOME}/{name}" if name else HOME

    def list_folder(self, path):
        if _name(path):
            return SFTP_NO_SUCH_FILE
        return [paramiko.SFTPAttributes.from_stat(os.stat(os.path.join(self.paths.home, n)), n)
                for n in sorted(os.listdir(self.paths.home))]

    def stat(self, path):
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    lstat = stat

    def open(self, path, flags, attr):
        if not _name(path):
            return SFTP_PERMISSION_DENIED
        try:
            fd = os.open(self._real(path), flags, 0o644)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        handle = HomeHandle(flags)
        handle.readfile = handle.writefile = os.fdopen(fd, _mode(flags))
        return handle

    def remove(self, path):
        try:
            os.unlink(self._real(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return SFTP_OK

    def rename(self, oldpath, newpath):
        try:
            os.rename(self._real(oldpath), self._real(newpath))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return SFTP_OK

    def chattr(self, path, attr):
        return SFTP_OK

    def mkdir(self, path, attr):
        return SFTP_OP_UNSUPPORTED


def _mode(flags):
    if flags & os.O_WRONLY:
        return "ab" if flags & os.O_APPEND else "wb"
    if flags & os.O_RDWR:
        return "a+b" if flags & os.O_APPEND else "r+b"
    return "rb"


# classic SCP --------------------------------------------------------------------------
def is_scp(command):
    return command.split()[:1] == ["scp"]


def run_scp(device, channel, command):
    """Serve one `scp -t|-f [-p] PATH` exec request; returns the exit status.
    The path may be shell-quoted (libssh2 sends `scp -f 'server.pem'`)."""
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    flags = "".join(w[1:] for w in words if w.startswith("-") and w != "--")
    targets = [w for w in words if not w.startswith("-")]
    target = targets[-1] if targets else "."
    if "f" in flags:
        return _send_file(device, channel, _name(target), "p" in flags)
    if "t" in flags:
        return _receive_files(device, channel, _name(target))
    channel.sendall(b"\x01scp: unsupported mode\n")
    return 1


def _read_ack(channel):
    return channel.recv(1) == b"\0"


def _read_line(channel):
    line = b""
    while not line.endswith(b"\n"):
        byte = channel.recv(1)
        if not byte:
            return None
        line += byte
    return line.decode(errors="replace").rstrip("\n")


def _send_file(device, channel, name, keep_times):
    path = device.paths.home_file(name) if name else None
    if not _read_ack(channel):
        return 1
    if path is None or not os.path.isfile(path):
        channel.sendall(f"\x01scp: {name or HOME}: No such file or directory\n".encode())
        return 1
    with open(path, "rb") as f:
        data = f.read()
    if keep_times:
        mtime = int(os.path.getmtime(path))
        channel.sendall(f"T{mtime} 0 {mtime} 0\n".encode())
        if not _read_ack(channel):
            return 1
    channel.sendall(f"C0644 {len(data)} {name}\n".encode())
    if not _read_ack(channel):
        return 1
    channel.sendall(data + b"\0")
    return 0 if _read_ack(channel) else 1


def _receive_files(device, channel, target):
    channel.sendall(b"\0")
    while True:
        line = _read_line(channel)
        if line is None:
            return 0
        if line.startswith("T"):
            channel.sendall(b"\0")
            continue
        if not line.startswith("C"):
            channel.sendall(b"\x01scp: directories are not supported here\n")
            return 1
        _, size, name = line.split(" ", 2)
        path = device.paths.home_file(target or _name(name))
        channel.sendall(b"\0")
        _write_upload(channel, path, int(size))
        channel.sendall(b"\0")


def _write_upload(channel, path, size):
    received = bytearray()
    while len(received) < size:
        chunk = channel.recv(min(32768, size - len(received)))
        if not chunk:
            raise EOFError("scp upload cut short")
        received.extend(chunk)
    channel.recv(1)  # the sender's trailing \0
    with open(path, "wb") as f:
        f.write(received)
