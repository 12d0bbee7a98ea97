"""The appliance's SSH server (paramiko): authentication, shells, exec requests, files.

User `tenantadmin` logs in with the password of DIR/secrets/NAME_password or a key
listed in DIR/appliances/NAME/authorized_keys (the estate's DIR/secrets/id_ed25519
is there). The server announces itself as the appliance's OpenSSH 7.4, and logs
sshd lines to the appliance syslog. Every connection is a Session, so the device
can close, freeze or reset it when the appliance reboots, powers off or loses its
network path.
"""
import logging
import socket
import struct
import threading

import paramiko
from paramiko.common import MSG_CHANNEL_FAILURE, MSG_CHANNEL_SUCCESS

from appliance import filexfer, keys, model
from appliance.listener import GatedSocket
from appliance.shell import LunaShell
from appliance.terminal import Terminal

SERVER_VERSION = "SSH-2.0-OpenSSH_7.4"
LOGIN_GRACE_SECONDS = 120  # "Login must happen within 2 min"
SSHD_PID = 2214
logging.getLogger("paramiko").setLevel(logging.WARNING)  # its INFO lines are per-connection noise


class Session:
    """One SSH connection, as the device sees it."""

    def __init__(self, device, sock, addr):
        self.device, self.addr = device, addr
        self.gate = GatedSocket(sock)
        self.transport = None
        self.previous_login = device.state.get("last_login")

    def close(self):
        if self.transport:
            self.transport.close()

    def freeze(self):
        self.gate.freeze()

    def reset(self):
        self.gate.reset()
        self.close()


class ApplianceTransport(paramiko.Transport):
    """paramiko replies to a shell/exec request only after check_channel_*_request has
    returned; a command fast enough to finish and close its channel first would make the
    client see "Channel closed". Workers wait for that reply: this transport signals it."""

    def __init__(self, sock):
        super().__init__(sock)
        self._awaiting = {}  # remote channel id -> Event set once the reply is sent

    def reply_sent(self, channel):
        event = threading.Event()
        self._awaiting[channel.remote_chanid] = event
        return event

    def _send_user_message(self, data):
        super()._send_user_message(data)
        raw = data.asbytes()
        if raw[:1] in (bytes([MSG_CHANNEL_SUCCESS]), bytes([MSG_CHANNEL_FAILURE])):
            event = self._awaiting.pop(struct.unpack(">I", raw[1:5])[0], None)
            if event:
                event.set()


class LunaServer(paramiko.ServerInterface):
    def __init__(self, session):
        self.session, self.device = session, session.device
        self.ptys = set()

    def get_allowed_auths(self, username):
        return "publickey,password"

    def check_auth_password(self, username, password):
        ok = username == model.USER and model.check_secret(self.device.state["admin"], password)
        self._log_auth(ok, "password", username)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        accepted = keys.read_authorized_keys(self.device.paths.authorized_keys)
        ok = username == model.USER and (key.get_name(), key.get_base64()) in accepted
        if ok:
            self._log_auth(True, "publickey", username)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def _log_auth(self, ok, method, username):
        host, port = self.session.addr
        verdict = "Accepted" if ok else "Failed"
        self.device.syslog.write("sshd", SSHD_PID, f"{verdict} {method} for {username} from {host} port {port} ssh2")
        if ok:
            with self.device.mutate() as state:
                state["last_login"] = {"time": self.device.now(), "from": host}
                self.device.world.changed()

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        self.ptys.add(channel.get_id())
        return True

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        return True

    def check_channel_shell_request(self, channel):
        self._spawn(channel, lambda shell: shell.interactive())
        return True

    def check_channel_exec_request(self, channel, command):
        line = command.decode(errors="replace")
        if filexfer.is_scp(line):
            self._spawn(channel, lambda shell: filexfer.run_scp(self.device, channel, line))
        else:
            self._spawn(channel, lambda shell: shell.exec_command(line))
        return True

    def _spawn(self, channel, body):
        term = Terminal(channel, pty=channel.get_id() in self.ptys)
        shell = LunaShell(self.device, term, self.session)
        replied = self.session.transport.reply_sent(channel)
        threading.Thread(target=_run_channel, args=(channel, shell, body, replied), daemon=True,
                         name=f"{self.device.name}-chan{channel.get_id()}").start()


def _run_channel(channel, shell, body, replied):
    replied.wait(5)
    try:
        status = body(shell)
    except (OSError, EOFError, paramiko.SSHException):
        return  # the connection went away (or was cut on purpose)
    try:
        channel.send_exit_status(status)
        channel.shutdown_write()
        channel.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def serve(device, sock, addr):
    """Handle one TCP connection to the SSH port until it ends."""
    # Interactive sessions echo byte by byte: without TCP_NODELAY, Nagle and
    # the client's delayed ACK add ~40 ms to every command (OpenSSH sets it too).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = Session(device, sock, addr)
    transport = ApplianceTransport(session.gate)
    transport.local_version = SERVER_VERSION
    transport.auth_timeout = LOGIN_GRACE_SECONDS
    for key in device.host_keys:  # RSA and ed25519; the client picks (by its known_hosts, as OpenSSH does)
        transport.add_server_key(key)
    transport.set_subsystem_handler("sftp", filexfer.HomeSftpServer, filexfer.HomeSftp, device)
    session.transport = transport
    device.add_session(session)
    try:
        transport.start_server(server=LunaServer(session))
        transport.join()
    except (paramiko.SSHException, EOFError, OSError):
        pass
    finally:
        device.remove_session(session)
        transport.close()
