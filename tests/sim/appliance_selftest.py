#!/usr/bin/python3
"""Self-test of the simulated Luna appliances: starts an estate with three appliances
in a temporary directory and drives them over real SSH (paramiko and OpenSSH's ssh/scp),
NTLS (ssl) and SoftHSM2 (softhsm2-util, the ctypes view of appliance/p11.py and OpenSC's
pkcs11-tool). Last line: "N passed, N failed".

    /usr/bin/python3 tests/sim/appliance_selftest.py [-v] [TestName ...]

hsm1 serves the shell, partition, client and NTLS tests; hsm2 is zeroized, deleted in
ARM and re-provisioned; hsm3 takes the reboots, the network cut and the host key change.
"""
import datetime
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

import paramiko

logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # resets are provoked on purpose
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from arm_selftest import HSM_API, Arm, run_estate, wait_for  # noqa: E402
from arm_selftest import main as run_tests  # noqa: E402
from appliance import keys, layouts, model, p11, pool, roles  # noqa: E402
from appliance.paths import Paths  # noqa: E402
from appliance.softhsm import TokenFile, TokenFileError, TokenStore  # noqa: E402
from estate_client import EstateClient, EstateError  # noqa: E402

PROMPT = re.compile(r"\[[\w.-]+\] lunash:>$")
FAST = {"hsm_step_seconds": "0.05", "delete_seconds": "0.1", "reboot_seconds": "1",
        "quota_per_stamp": "50", "quota_per_region": "100"}
ESTATE_DIR = CLIENT = None


def setUpModule():
    global ESTATE_DIR, CLIENT
    ESTATE_DIR = tempfile.mkdtemp(prefix="dhsm-appliances-")
    run_estate("start", "--dir", ESTATE_DIR, "--appliances", "3")
    CLIENT = EstateClient(ESTATE_DIR)


def tearDownModule():
    run_estate("stop", "--dir", ESTATE_DIR, check=False)
    shutil.rmtree(ESTATE_DIR, ignore_errors=True)


def estate_info(estate_dir=None):
    with open(os.path.join(estate_dir or ESTATE_DIR, "estate.json")) as f:
        return json.load(f)


def read(path):
    with open(path) as f:
        return f.read().strip()


def softhsm_labels():
    env = {**os.environ, "SOFTHSM2_CONF": estate_info()["appliances"]["softhsm2_conf"]}
    out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, env=env).stdout
    return {line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Label:")} - {""}


FIXTURES = os.path.join(HERE, "..", "fixtures", "luna")  # the blocks of shared/reference/luna-field.md


def published(name):
    """The published block NAME (tests/fixtures/luna/NAME.txt), as text."""
    with open(os.path.join(FIXTURES, name + ".txt")) as f:
        return f.read()


def as_typed(block):
    """A published LunaSH block from its command's echo (after the first prompt) through its first
    `Command Result` line: what typed() gives of a PTY session's transcript."""
    start = re.search(r"\] lunash:>", block).end()
    return block[start:block.index("\n", block.index("Command Result", start)) + 1]


def typed(transcript):
    """A pty_session transcript without the prompt it ends at."""
    return transcript[:transcript.rindex("\n") + 1]


def stars(block, count, published=8):
    """BLOCK with its password echo of PUBLISHED stars made COUNT long (our password's)."""
    return block.replace("> " + "*" * published + "\n", "> " + "*" * count + "\n")


def p11_tokens(conf):
    """{token serial: label} of every initialised token, through appliance/p11.py (SoftHSM by ctypes)."""
    saved = os.environ.get("SOFTHSM2_CONF")
    try:
        with p11.Library(conf) as lib:
            infos = [lib.token_info(slot) for slot in lib.slots()]
    finally:  # p11.Library sets it for the process: leave the tests' environment as it was
        os.environ.pop("SOFTHSM2_CONF", None) if saved is None else os.environ.__setitem__("SOFTHSM2_CONF", saved)
    return {i.serialNumber.decode().strip(): i.label.decode().strip() for i in infos
            if i.flags & p11.CKF_TOKEN_INITIALIZED}


def opensc_tokens(module, env):
    """{token serial: label} as OpenSC's `pkcs11-tool --module MODULE -L` lists them (ENV: SOFTHSM2_CONF...)."""
    out = subprocess.run(["pkcs11-tool", "--module", module, "-L"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=30, check=True).stdout
    found = {}
    for block in re.split(r"^Slot \d+ ", out, flags=re.M)[1:]:
        fields = dict(re.findall(r"^\s+(token label|serial num)\s*:\s*(.*?)\s*$", block, re.M))
        if "serial num" in fields:
            found[fields["serial num"]] = fields.get("token label", "")
    return found


def listed_partitions(out):
    """`partition list` rows -> {name: Luna serial}."""
    return {m[1]: m[0] for m in re.findall(r"^(\d{9,})\s+(\S+)\s+\d", out, re.M)}


def unreachable(port, timeout=0.25):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return False
    except (socket.timeout, ConnectionRefusedError):
        return True


# certificates as `vtl createCert` makes them ------------------------------------------------
def make_client_cert(folder, name, days=30):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_file, key_file = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}Key.pem")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file


def ntls_hello(port, cert_file, key_file, server_pem):
    """The NTLS mini-protocol: TLS 1.2 with a client certificate, then one JSON line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(server_pem)
    ctx.load_cert_chain(cert_file, key_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock) as tls:
            return json.loads(tls.makefile().readline())


class Shell:
    """An interactive LunaSH session on a paramiko channel."""

    def __init__(self, channel):
        self.channel, self.buffer = channel, ""

    def read_until(self, pattern, timeout=5):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.buffer):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen; got {self.buffer[-400:]!r}")
            self.channel.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.channel.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk.decode(errors="replace")
        text, self.buffer = self.buffer, ""
        return text

    def command(self, line, answers=(), timeout=5):
        self.channel.send(line + "\r")
        for answer in answers:
            self.read_until(r"> $", timeout)
            self.channel.send(answer + "\r")
        return self.read_until(r"lunash:>$", timeout)


class Box:
    """One appliance as a test sees it: estate.json entry, SSH, SFTP, LunaSH. ESTATE_DIR: this module's
    estate unless given (client_selftest.py drives appliances of its own estates with it)."""

    def __init__(self, name, estate_dir=None):
        self.name, self.dir = name, estate_dir or ESTATE_DIR
        self.info = estate_info(self.dir)["appliances"]["devices"][name]
        self.port, self.ntls_port = self.info["ssh_port"], self.info["ntls_port"]
        self.client = EstateClient(self.dir)

    def secret(self, what):
        return read(self.info[f"{what}_file"])

    def pin(self, partition, role):
        return read(self.info["pin_files"].format(partition=partition, role=role))

    def connect(self, password=None, timeout=5):
        client = paramiko.SSHClient()
        client.load_host_keys(os.path.join(self.dir, "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", self.port, "tenantadmin", password=password or self.secret("password"),
                       look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout)
        return client

    def run(self, command, stdin=""):
        """One exec request -> (exit status, output)."""
        client = self.connect()
        try:
            chan = client.get_transport().open_session()
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            out = chan.makefile().read().decode()
            return chan.recv_exit_status(), out
        finally:
            client.close()

    def ok(self, command, stdin=""):
        status, out = self.run(command, stdin)
        assert status == 0 and "Command Result : 0 (Success)" in out, out
        return out

    def piped(self, text):
        """TEXT piped into one shell session without a PTY, as `ssh host <<EOF` does -> all it printed."""
        client = self.connect()
        try:
            chan = client.get_transport().open_session()
            chan.invoke_shell()  # no PTY: commands and answers come as lines, like a heredoc
            chan.sendall(text.encode())
            chan.shutdown_write()
            return chan.makefile().read().decode()
        finally:
            client.close()

    def as_so(self, command, answers="proceed\n"):
        """COMMAND as the HSM SO: login, command and its answers piped into one shell session."""
        return self.piped(f"hsm login -password {self.secret('so_password')}\n{command}\n{answers}exit\n")

    def first_login(self, new_password, client=None):
        """The forced password change of a factory-fresh appliance (1.1), on CLIENT (default: a new
        connection with the secrets' password); the appliance writes NEW_PASSWORD to DIR/secrets."""
        client = client or self.connect()
        try:
            shell = Shell(client.invoke_shell())
            for prompt in (r"New password:$", r"Retype new password:$"):
                shell.read_until(prompt)
                shell.channel.send(new_password + "\r")
            shell.read_until(r"lunash:>$")
        finally:
            client.close()

    def new_partition(self, name, options="", **init):
        """LunaSH `partition create` as the HSM SO, then what LunaCM's `partition init` and `role init
        -name co` do (the control hook): 7.x leaves a created partition uninitialised, without a token."""
        out = self.as_so(f"partition create -partition {name} {options}".rstrip())
        self.client.control("POST", f"appliances/{self.name}/partitions/{name}/init", init)
        return out

    def shell(self, client):
        chan = client.invoke_shell()
        shell = Shell(chan)
        shell.read_until(r"lunash:>$")
        return shell

    def sftp(self, put=None, get=None):
        client = self.connect()
        try:
            sftp = client.open_sftp()
            for local, remote in put or ():
                sftp.put(local, remote)
            for remote, local in get or ():
                sftp.get(remote, local)
        finally:
            client.close()

    def control(self, action):
        return self.client.control("POST", f"appliances/{self.name}/action", {"action": action})

    def faults(self, **values):
        return self.client.control("POST", f"appliances/{self.name}/faults", values)

    def role_login(self, partition, role, ok):
        return self.client.control("POST", f"appliances/{self.name}/partitions/{partition}/login",
                                   {"role": role, "ok": ok})

    def syslog(self, search, entries=50):
        return self.ok(f"syslog tail -logname messages -entries {entries} -search {search}")


class ApplianceCase(unittest.TestCase):
    def setUp(self):
        CLIENT.control("POST", "faults/clear")
        CLIENT.control("POST", "faults", FAST)
        self.tmp = tempfile.mkdtemp(prefix="dhsm-appliance-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)


class ShellTest(ApplianceCase):
    def test_banner_prompt_and_echo(self):
        box = Box("hsm1")
        client = box.connect()
        self.addCleanup(client.close)
        chan = client.invoke_shell()
        shell = Shell(chan)
        banner = shell.read_until(r"lunash:>$")
        self.assertIn("Luna Network HSM Command Line Shell v7.2.0-220. Copyright (c) 2018 SafeNet. "
                      "All rights reserved.", banner)
        self.assertTrue(PROMPT.search(banner), banner)
        out = shell.command("hsm show")
        # the PTY echoes; then 7.2's two blank lines, the 3-space indent, three blank lines before the trailer
        self.assertTrue(out.startswith("hsm show\r\n\r\n\r\n   Appliance Details:\r\n"), out[:60])
        self.assertIn("deg. C\r\n\r\n\r\n\r\nCommand Result : 0 (Success)\r\n", out)
        self.assertIn("\r\nCommand Result : 0 (Success)\r\n", out)
        out = shell.command("hsm login", answers=["not-the-password"])
        self.assertIn("*" * len("not-the-password") + "\r\n", out)  # passwords echo as stars
        self.assertNotIn("not-the-password", out)
        self.assertIn("'hsm login' successful.", shell.command("hsm login", answers=[box.secret("so_password")]))

    def test_exec_abbreviations_and_errors(self):
        box = Box("hsm1")
        status, out = box.run("hsm show")
        self.assertEqual(status, 0)
        self.assertRegex(out, r"HSM Admin login attempts left: +3 before HSM zeroization!")
        self.assertIn("Command Result : 0 (Success)", box.ok("PAR LI"))
        for line, error in (("hsm sh", "Ambiguous hsm command: sh"), ("hsm show -bogus", "Unknown option: -bogus"),
                            ("frobnicate", "Unknown command: frobnicate"),
                            ("client show", "Missing required option: -client")):
            status, out = box.run(line)
            self.assertEqual(status, 1, out)
            self.assertIn(f"Error:  {error}", out)
            self.assertTrue(out.rstrip().endswith("Command Result : 65535 (Luna Shell execution)"), out)
        status, out = box.run("hsm login")  # no stdin: nothing tried, nothing counted
        self.assertIn("RC_OPERATION_CANCELLED", out)
        self.assertRegex(box.ok("hsm show"), r"attempts left: +3 before")
        status, out = box.run("client show -client nobody")
        self.assertIn("Error:  'client show' failed. (C000040A : RC_OBJECT_NOT_IN_LIST)", out)
        status, out = box.run("hsm factoryReset -force")
        self.assertEqual(status, 1)
        self.assertIn("Error:  'hsm factoryReset' failed.", out)  # serial console only

    def test_estate_log_has_each_command_never_a_password(self):
        box = Box("hsm3")
        box.run("hsm show")
        box.run("hsm init -label x -password not-logged-anywhere")  # refused: no SO login, nothing counted
        box.run("not-a-command-either")
        with open(os.path.join(ESTATE_DIR, "estate.log")) as f:
            lines = [line for line in f if " hsm3 lunash: " in line]
        text = "".join(lines)
        self.assertIn("hsm3 lunash: hsm show -> 0\n", text)
        self.assertIn("hsm3 lunash: hsm init -label x -password **** -> 65535 (cancelled: no input)\n", text)
        self.assertIn("hsm3 lunash: (a line that is not a command, 20 characters) -> 65535\n", text)
        self.assertNotIn("not-logged-anywhere", text)
        self.assertNotIn("not-a-command-either", text)

    def test_many_commands_one_session_and_piped_stdin(self):
        box = Box("hsm1")
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        started = time.monotonic()
        for _ in range(25):
            self.assertIn("Command Result : 0 (Success)", shell.command("hsm show"))
        self.assertLess(time.monotonic() - started, 5)
        out = box.as_so("partition list", answers="")
        self.assertEqual(out.count("Command Result : 0 (Success)"), 2, out)
        self.assertNotIn("Last login", out)  # no PTY: no sshd login line, no echo

    def test_every_command_family_answers(self):
        box = Box("hsm1")
        for line in ("hsm showPolicies", "partition list", "partition show", "client list", "ntls show",
                     "ntls ipcheck show", "network show", "package list", "status date", "status interface",
                     "status sensors", "service status ntls", "audit show", "syslog tail -logname messages -e 3",
                     "help"):
            self.assertIn("Command Result : 0 (Success)", box.run(line)[1], line)
        self.assertIn("NTLS TCP port: 1792", box.ok("ntls show"))
        self.assertRegex(box.ok("network show"), r"IP Address \(eth0\): +10\.2\.1\.\d+")

    def test_password_and_key_authentication(self):
        box = Box("hsm1")
        with self.assertRaises(paramiko.AuthenticationException):
            box.connect(password="wrong-password")
        key = paramiko.Ed25519Key(filename=estate_info()["appliances"]["client_key"])
        client = paramiko.SSHClient()
        client.load_host_keys(os.path.join(ESTATE_DIR, "known_hosts"))
        client.connect("127.0.0.1", box.port, "tenantadmin", pkey=key, look_for_keys=False, allow_agent=False)
        client.close()
        self.assertIn("Failed password for tenantadmin from 127.0.0.1", box.syslog("sshd"))

    @unittest.skipUnless(shutil.which("ssh") and shutil.which("scp"), "needs Debian's openssh-client")
    def test_openssh_client_exec_and_scp(self):
        box = Box("hsm1")
        ssh = ["-o", f"UserKnownHostsFile={ESTATE_DIR}/known_hosts", "-o", "StrictHostKeyChecking=yes", "-o",
               "BatchMode=yes", "-i", estate_info()["appliances"]["client_key"]]
        proc = subprocess.run(["ssh", *ssh, "-p", str(box.port), "tenantadmin@127.0.0.1", "hsm show"],
                              capture_output=True, text=True, timeout=10)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("HSM Admin login attempts left:", proc.stdout)
        askpass = os.path.join(self.tmp, "askpass")
        with open(askpass, "w") as f:
            f.write(f"#!/bin/sh\ncat {box.info['password_file']}\n")
        os.chmod(askpass, 0o700)
        proc = subprocess.run(["ssh", "-o", f"UserKnownHostsFile={ESTATE_DIR}/known_hosts", "-o",
                               "PubkeyAuthentication=no", "-p", str(box.port), "tenantadmin@127.0.0.1", "client list"],
                              capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                              env={**os.environ, "SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force"})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for legacy in ([], ["-O"]):  # SFTP (OpenSSH 9 default) and the classic SCP protocol
            local = os.path.join(self.tmp, f"server{len(legacy)}.pem")
            proc = subprocess.run(["scp", *legacy, *ssh, "-P", str(box.port), "tenantadmin@127.0.0.1:server.pem",
                                   local], capture_output=True, text=True, timeout=10)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(read(local), read(box.info["server_cert"]))
            proc = subprocess.run(["scp", *legacy, *ssh, "-P", str(box.port), local,
                                   f"tenantadmin@127.0.0.1:up{len(legacy)}.pem"], capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertTrue(os.path.exists(os.path.join(box.info["home"], f"up{len(legacy)}.pem")))


    @unittest.skipUnless(shutil.which("ssh"), "needs Debian's openssh-client")
    def test_openssh_picks_the_rsa_host_key_and_meets_the_first_login_change(self):
        """OpenSSH asks for the key type known_hosts holds (RSA, as the real 7.2 offered), and an
        appliance fresh from Microsoft makes the first interactive login change the password."""
        box = Box("hsm1")
        ssh = ["ssh", "-v", "-tt", "-o", f"UserKnownHostsFile={ESTATE_DIR}/known_hosts", "-o",
               "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-i", estate_info()["appliances"]["client_key"],
               "-p", str(box.port), "tenantadmin@127.0.0.1"]
        old = box.secret("password")
        box.faults(force_password_change="1")
        self.addCleanup(box.faults, force_password_change="0")
        status, out = box.run("hsm show")  # no TTY: the change cannot happen, the command does not run
        self.assertEqual((status, out), (1, "Password change required but no TTY available.\n"))
        proc = subprocess.run([*ssh], input="Sh0rt\nSh0rt\n", capture_output=True, text=True, timeout=10)
        self.assertIn("BAD PASSWORD", proc.stdout)
        self.assertEqual(box.secret("password"), old)
        proc = subprocess.run([*ssh], input="N3w-Passw0rd!\nN3w-Passw0rd!\nexit\n", capture_output=True, text=True,
                              timeout=10)
        self.assertIn("Server host key: ssh-rsa SHA256:", proc.stderr)
        out = proc.stdout.replace("\r\n", "\n")
        published = read(os.path.join(HERE, "..", "fixtures", "luna", "1.1-login-first-7.2.txt"))
        box_and_dialogue = published[published.index("*****"):published.index("[local_host]")]
        self.assertIn(box_and_dialogue, out)  # byte for byte (1.1), the typed passwords echoing nothing
        self.assertIn("Luna Network HSM Command Line Shell v7.2.0-220. Copyright (c) 2018 SafeNet. "
                      "All rights reserved.\n\n\n*****", out)
        self.assertNotIn("N3w-Passw0rd!", out)  # passwd echoes nothing
        self.assertEqual(box.secret("password"), "N3w-Passw0rd!")
        self.assertEqual(box.run("hsm show")[0], 0)  # changed once: no longer demanded
        with self.assertRaises(paramiko.AuthenticationException):
            box.connect(password=old)


class LoginThresholdTest(ApplianceCase):
    def test_so_threshold_zeroizes_then_arm_delete_and_reprovision(self):
        box, arm = Box("hsm2"), Arm(ESTATE_DIR)
        so_password = box.secret("so_password")
        self.assertIn("'partition create' successful.", box.new_partition("doomed"))
        self.assertIn("doomed", softhsm_labels())
        self.assertEqual(arm.call("DELETE", arm.hsm("hsm2"), HSM_API).error_code(), "HsmNotZeroized")
        for attempt in (1, 2):
            out = box.run("hsm login -password wrong-guess")[1]
            self.assertIn("(A00000 : LUNA_RET_UM_PIN_INCORRECT)", out)
        self.assertRegex(box.ok("hsm show"), r"HSM Admin login attempts left: +1 before HSM zeroization!")
        out = box.run("hsm login", stdin="proceed\nwrong-again\n")[1]
        self.assertIn("Caution:  This is your LAST available HSM Admin login attempt", out)
        self.assertIn("(30000F : LUNA_RET_SO_LOGIN_FAILURE_THRESHOLD)", out)
        shown = box.ok("hsm show")
        self.assertRegex(shown, r"HSM Admin login attempts left: +HSM IS ZEROIZED !!!!")
        self.assertIn("There are no partitions.", shown)
        self.assertNotIn("doomed", softhsm_labels())
        self.assertIn("LUNA_RET_SO_LOGIN_FAILURE_THRESHOLD", box.run(f"hsm login -p {so_password}")[1])
        reply = arm.call("DELETE", arm.hsm("hsm2"), HSM_API)
        self.assertEqual(reply.status, 202, reply.raw)
        wait_for(lambda: arm.call("GET", reply.headers["location"]).status == 200)
        wait_for(lambda: unreachable(box.port))  # returned to the pool
        names = [h["name"] for h in json.load(open(os.path.join(ESTATE_DIR, "inventory.json")))["hsms"]]
        self.assertNotIn("hsm2", names)
        # a new HSM takes the free appliance, factory-fresh
        body = arm.hsm_body(arm.subnet_id(), ip="10.2.1.40")
        self.assertEqual(arm.call("PUT", arm.hsm("hsm-new"), HSM_API, body).status, 200)
        wait_for(lambda: arm.call("GET", arm.hsm("hsm-new"), HSM_API).json["properties"]["provisioningState"]
                 == "Succeeded")
        wait_for(lambda: not unreachable(box.port))
        entry = next(h for h in json.load(open(os.path.join(ESTATE_DIR, "inventory.json")))["hsms"]
                     if h["resource"] == "hsm-new")
        self.assertEqual(entry["ssh_port"], box.port)
        # factory-fresh from Microsoft: a factory admin password the first interactive login must change (1.1)
        self.assertEqual(box.run("hsm show"), (1, "Password change required but no TTY available.\n"))
        self.assertTrue(CLIENT.control("GET", "appliances/hsm2")["faults"]["force_password_change"])
        self.assertEqual(entry["password"], "file:" + box.info["password_file"])
        box.first_login("Fresh-Adm1n!")
        self.assertIn("HSM IS ZEROIZED", box.ok("hsm show"))
        self.assertIn("10.2.1.40", box.ok("network show"))
        self.assertIn("'hsm init' successful.", box.ok("hsm init -label fresh -password Fresh-Pass1 "
                                                       "-defaultdomain -force"))
        self.assertRegex(box.ok("hsm show"), r"attempts left: +3 before")

    def test_auditor_locks_for_ten_minutes(self):
        box = Box("hsm1")
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        for attempt in range(1, 10):
            self.assertIn("LUNA_RET_UM_PIN_INCORRECT", shell.command("audit login -password nope-nope"))
        self.assertIn("LUNA_RET_AUDIT_LOGIN_FAILURE_THRESHOLD", shell.command("audit login -password nope-nope"))
        right = box.secret("audit_password")
        self.assertIn("LUNA_RET_AUDIT_LOGIN_FAILURE_THRESHOLD", shell.command(f"audit login -password {right}"))
        run_estate("advance", "--dir", ESTATE_DIR, "590")  # the sim clock also follows the wall clock: slack for a loaded machine
        self.assertIn("Audit Role Locked Out:            Yes", shell.command("audit show"))
        run_estate("advance", "--dir", ESTATE_DIR, "11")
        self.assertIn("'audit login' successful.", shell.command("audit login", answers=[right]))

    def test_partition_roles_and_policy_15(self):
        box = Box("hsm1")
        box.new_partition("cop")
        for _ in range(9):
            self.assertEqual(box.role_login("cop", "co", False)["error"], "CKR_PIN_INCORRECT")
        locked = box.role_login("cop", "co", False)
        self.assertTrue(locked["co_locked"] and locked["co_permanent"], locked)  # policy 15 = 0: for good
        self.assertFalse(box.role_login("cop", "co", True)["accepted"])
        shown = box.ok("partition show -partition cop")
        self.assertIn("Crypto Officer Locked Out:                 yes", shown)
        self.assertNotIn("Cloning", shown)  # no real partition show gives the cloning domain (luna-field.md 3.5)
        with self.assertRaises(Exception):
            CLIENT.control("POST", "appliances/hsm1/partitions/cop/resetpw", {})
        out = box.as_so("hsm changePolicy -policy 15 -value 1")
        self.assertIn("'hsm changePolicy' successful.", out)
        self.assertNotIn("cop", softhsm_labels())  # destructive: every partition erased
        self.assertIn("Enable SO reset of partition PIN             On", box.ok("hsm showPolicies"))
        box.new_partition("cop2")
        for _ in range(10):
            answer = box.role_login("cop2", "co", False)
        self.assertTrue(answer["co_locked"] and not answer["co_permanent"], answer)
        CLIENT.control("POST", "appliances/hsm1/partitions/cop2/resetpw", {})
        self.assertTrue(box.role_login("cop2", "co", True)["accepted"])
        for _ in range(10):
            answer = box.role_login("cop2", "so", False)
        self.assertTrue(answer["zeroized"])  # Partition SO threshold
        self.assertNotIn("cop2", softhsm_labels())
        self.assertIn("Partition SO Zeroized:                     yes", box.ok("partition show -partition cop2"))
        box.as_so("hsm changePolicy -policy 15 -value 0")


class PartitionTest(ApplianceCase):
    def test_partitions_are_softhsm_tokens(self):
        box = Box("hsm1")
        box.new_partition("alpha", "-label alpha-label")
        box.new_partition("beta")
        self.assertLessEqual({"alpha-label", "beta"}, softhsm_labels())
        listing = box.ok("partition list")
        self.assertRegex(listing, r"(?m)^\d{13} +alpha +0 +0 +102400")
        self.assertTrue(os.path.exists(box.info["pin_files"].format(partition="beta", role="co")))
        out = box.as_so("partition delete -partition beta")
        self.assertIn("CAUTION:  Are you sure you wish to delete the partition named: beta", out)
        self.assertNotIn("beta", softhsm_labels())
        self.assertFalse(os.path.exists(box.info["pin_files"].format(partition="beta", role="co")))
        self.assertIn("RC_OPERATION_CANCELLED", box.as_so("partition delete -partition alpha", answers="quit\n"))
        self.assertIn("alpha-label", softhsm_labels())


    def test_token_serial_is_the_luna_serial_through_pkcs11(self):
        """A real Luna client's PKCS#11 library reports a partition's Luna serial as the token serial:
        so does the estate's SoftHSM store, to the ctypes view and to a third-party tool alike."""
        box, conf = Box("hsm1"), estate_info()["appliances"]["softhsm2_conf"]
        for name in ("sn-a", "sn-b"):
            box.new_partition(name)
        listed = listed_partitions(box.ok("partition list"))
        state = CLIENT.control("GET", "appliances/hsm1")["partitions"]
        for name in ("sn-a", "sn-b"):
            serial = listed[name]
            self.assertEqual(serial, state[name]["serial"])
            self.assertEqual(state[name]["token_serial"], serial)  # the state's field follows
            self.assertEqual(p11_tokens(conf).get(serial), name)
        if shutil.which("pkcs11-tool"):
            seen = opensc_tokens(estate_info()["appliances"]["pkcs11_lib"], {"SOFTHSM2_CONF": conf})
            self.assertEqual({listed[n]: seen.get(listed[n]) for n in ("sn-a", "sn-b")},
                             {listed["sn-a"]: "sn-a", listed["sn-b"]: "sn-b"}, seen)
        # a PIN check and a PIN reset find the token by that serial
        self.assertTrue(box.role_login("sn-a", "co", True)["accepted"])
        # zeroized (Partition SO threshold): exactly that token goes; re-initialised: a new token, same serial
        before = p11_tokens(conf)
        for _ in range(10):
            answer = box.role_login("sn-a", "so", False)
        self.assertTrue(answer["zeroized"], answer)
        after = p11_tokens(conf)
        self.assertEqual(set(before) - set(after), {listed["sn-a"]})
        self.assertEqual(set(after), set(before) - {listed["sn-a"]})
        CLIENT.control("POST", "appliances/hsm1/partitions/sn-a/init", {})
        self.assertEqual(set(p11_tokens(conf)), set(before))
        self.assertEqual(p11_tokens(conf)[listed["sn-a"]], "sn-a")
        # deleted: exactly that token goes
        before = p11_tokens(conf)
        self.assertIn("successful", box.as_so("partition delete -partition sn-b -force", answers=""))
        self.assertEqual(set(p11_tokens(conf)), set(before) - {listed["sn-b"]})
        box.as_so("partition delete -partition sn-a -force", answers="")
        self.assertNotIn(listed["sn-a"], p11_tokens(conf))


    def test_7x_partition_create_leaves_it_uninitialised_until_lunacm(self):
        """7.2's `partition create` makes a partition LunaCM initialises (3.4, 7.1): no token, an empty
        label for clients, `partition show` saying so; `partition init` then `role init -name co`."""
        box, conf = Box("hsm1"), estate_info()["appliances"]["softhsm2_conf"]
        self.assertIn("'partition create' successful.", box.as_so("partition create -partition fresh"))
        self.addCleanup(box.as_so, "partition delete -partition fresh -force", "")
        part = CLIENT.control("GET", "appliances/hsm1")["partitions"]["fresh"]
        self.assertEqual((part["initialized"], part["token_serial"]), (False, None))
        self.assertIn(f"Partition:            {part['serial']}, Name: fresh", box.ok("hsm show"))
        self.assertIn(part["serial"], listed_partitions(box.ok("partition list")).values())
        shown = box.ok("partition show -partition fresh")
        for line in ("Partition Label:\n", f"{'Partition Initialized:':<43}no\n",
                     f"{'Crypto Officer Initialized:':<43}no\n"):
            self.assertIn(line, shown)
        self.assertNotIn(part["serial"], p11_tokens(conf))  # PKCS#11 sees no token yet
        self.assertFalse(box.role_login("fresh", "so", True)["accepted"])  # nothing to log in to
        with self.assertRaises(EstateError) as refused:
            CLIENT.control("POST", "appliances/hsm1/partitions/fresh/initco", {"co_pin": "Co-Pin-123"})
        self.assertEqual(refused.exception.code, "NotInitialized")
        # LunaCM's partition init (the Crypto Officer left for role init), in a cloning domain of its own
        CLIENT.control("POST", "appliances/hsm1/partitions/fresh/init",
                       {"label": "fresh-label", "domain": "dom-fresh", "so_pin": "Pso-Pin-123", "co": False})
        part = CLIENT.control("GET", "appliances/hsm1")["partitions"]["fresh"]
        self.assertEqual((part["initialized"], part["token_serial"]), (True, part["serial"]))
        self.assertEqual(part["domain"], model.domain_id("dom-fresh"))
        self.assertEqual(p11_tokens(conf).get(part["serial"]), "fresh-label")
        self.assertIn(f"{'Crypto Officer Initialized:':<43}no\n", box.ok("partition show -partition fresh"))
        CLIENT.control("POST", "appliances/hsm1/partitions/fresh/initco", {"co_pin": "Co-Pin-123"})
        shown = box.ok("partition show -partition fresh")
        self.assertIn(f"{'Partition Initialized:':<43}yes\n", shown)
        self.assertIn(f"{'Crypto Officer Initialized:':<43}yes\n", shown)
        self.assertIn(f"{'Partition Label:':<43}fresh-label\n", shown)
        self.assertEqual(box.pin("fresh", "co"), "Co-Pin-123")
        self.assertTrue(box.role_login("fresh", "co", True)["accepted"])
        with self.assertRaises(EstateError) as refused:
            CLIENT.control("POST", "appliances/hsm1/partitions/fresh/initco", {"co_pin": "Other-Pin-123"})
        self.assertEqual(refused.exception.code, "CoAlreadyInitialized")
        self.assertEqual(box.pin("fresh", "co"), "Co-Pin-123")


class SerialTest(ApplianceCase):
    """Serials as luna-field.md prints them: HSM serials of 6 digits (2.1: 572413 on Azure's 7.2; 2.2-2.4);
    partition serials of 12-13 digits on 7.x (3.3: 1582775433934; 7.1: 154438865287; 8.3), of the HSM
    serial and 3 digits on 5.x/6.x (2.2: 534071009; 2.4: 157541008); the same number as the token serial."""

    def test_widths_per_layout_and_the_token_serial(self):
        box, conf = Box("hsm1"), estate_info()["appliances"]["softhsm2_conf"]
        hsm_serial = re.search(r"^   Serial #: +(\d+)$", box.ok("hsm show"), re.M)[1]
        self.assertRegex(hsm_serial, r"^\d{6}$")
        self.assertEqual(hsm_serial, CLIENT.control("GET", "appliances/hsm1")["serial"])
        names = {7: "width7", 6: "width6", 5: "width5"}
        for layout, name in names.items():
            box.faults(lunash_layout=layout)
            self.addCleanup(box.as_so, f"partition delete -partition {name} -force", "")
            box.as_so(f"partition create -partition {name} -force", answers="")
        box.faults(lunash_layout=7)
        made = CLIENT.control("GET", "appliances/hsm1")["partitions"]
        self.assertEqual({name: made[name]["initialized"] for name in names.values()},
                         {"width7": False, "width6": True, "width5": True})  # 7.x: LunaCM's partition init
        self.assertIsNone(made["width7"]["token_serial"])
        CLIENT.control("POST", "appliances/hsm1/partitions/width7/init", {})
        state = CLIENT.control("GET", "appliances/hsm1")["partitions"]
        self.assertRegex(state["width7"]["serial"], r"^\d{12,13}$")
        for layout in (6, 5):
            self.assertRegex(state[names[layout]]["serial"], rf"^{hsm_serial}\d{{3}}$")
        listed, tokens = listed_partitions(box.ok("partition list")), p11_tokens(conf)
        for name in names.values():
            self.assertEqual(listed[name], state[name]["serial"])
            self.assertEqual(tokens.get(state[name]["serial"]), name)


def pty_session(test, box):
    """A PTY LunaSH session on BOX, closed when TEST ends -> run(line, *answers): LINE typed, then each
    answer at the next "> "; the whole transcript up to the prompt (CR LF read as LF)."""
    client = box.connect()
    test.addCleanup(client.close)
    shell = box.shell(client)

    def run(line, *answers):
        shell.channel.send(line + "\r")
        text = ""
        for answer in answers:
            text += shell.read_until(r"> $")
            shell.channel.send(answer + "\r")
        return (text + shell.read_until(r"lunash:>$")).replace("\r\n", "\n")
    return run


def registered_client(test, box, name, hostname):
    """Client NAME registered on BOX by HOSTNAME (its certificate uploaded first), deleted when TEST
    ends -> the certificate's file."""
    cert, _ = make_client_cert(test.tmp, hostname)
    box.sftp(put=[(cert, f"{hostname}.pem")])
    box.ok(f"client register -client {name} -hostname {hostname}")
    test.addCleanup(box.run, f"client delete -client {name} -force")
    return cert


class PromptTest(ApplianceCase):
    """The proceed/quit questions, byte for byte as a PTY session shows them (CR LF read as LF),
    against tests/fixtures/luna (layouts.PROMPTS); `quit` changes nothing, `proceed` acts."""

    def session(self, box):
        return pty_session(self, box)

    def question(self, layout, command, **values):
        return layouts.question(layout, command, **values)[1]

    def test_partition_create_7_and_6(self):
        box = Box("hsm1")
        run = self.session(box)
        self.assertIn("'hsm login' successful.", run(f"hsm login -password {box.secret('so_password')}"))
        q7 = self.question(7, "partition create")
        out = run("partition create -partition askpar", "quit")
        self.assertTrue(out.startswith("partition create -partition askpar\n\n\n" + q7 + "quit\n"), out)
        self.assertIn("RC_OPERATION_CANCELLED", out)
        self.assertNotIn("askpar", run("partition list"))
        out = run("partition create -partition askpar", "proceed")
        self.addCleanup(box.as_so, "partition delete -partition askpar -force")
        self.assertEqual(out[:out.rindex("\n") + 1], "partition create -partition askpar\n\n\n" + q7 + "proceed\n"
                         "'partition create' successful.\n\n\nCommand Result : 0 (Success)\n")  # 3.4 (7.0, 7.2)
        box.faults(lunash_layout=6)
        out = run("partition create -partition askpar6", "proceed")
        self.addCleanup(box.as_so, "partition delete -partition askpar6 -force")
        self.assertIn("\n-label:  Not provided; using name for label.\n\n" + self.question(6, "partition create")
                      + "proceed\n'partition create' successful.\n\nCommand Result : 0 (Success)\n", out)  # 3.4 (6.2.2)

    def test_hsm_init_and_change_policy_6(self):
        box = Box("hsm1")
        run = self.session(box)
        run(f"hsm login -password {box.secret('so_password')}")
        box.faults(lunash_layout=6)
        label = re.search(r"HSM Label: *(\S*)", run("hsm show")).group(1)
        out = run("hsm init -label other", "Other-Pass1", "Other-Pass1", "dom-dom", "dom-dom", "quit")
        self.assertIn("> ***********\n\nPlease re-enter password to confirm:\n> ***********\n\n", out)
        self.assertIn("> *******\n\n" + self.question(6, "hsm init") + "quit\n", out)  # 4.3
        self.assertIn("RC_OPERATION_CANCELLED", out)
        self.assertRegex(run("hsm show"), rf"HSM Label: *{re.escape(label)}\n")
        parts = listed_partitions(run("partition list"))
        q = self.question(6, "hsm changepolicy", policy="Allow non-FIPS algorithms")
        out = run("hsm changePolicy -policy 12 -value 0", "quit")
        self.assertTrue(out.startswith("hsm changePolicy -policy 12 -value 0\n\n" + q + "quit\n"), out)  # 4.5
        self.assertRegex(run("hsm showPolicies"), r"Allow non-FIPS algorithms +On +12 ")
        out = run("hsm changePolicy -policy 12 -value 1", "proceed")  # already 1: nothing to erase
        self.assertIn("'hsm changePolicy' successful.", out)
        self.assertEqual(listed_partitions(run("partition list")), parts)

    def test_hsm_login_last_attempt(self):
        box = Box("hsm1")
        so = box.secret("so_password")
        # from a known count: a failed login an earlier test left (its cleanup cut short on a loaded
        # machine) would make the second wrong guess below the zeroizing one
        box.run(f"hsm login -password {so}", stdin="proceed\n")
        self.assertRegex(box.run("hsm show")[1], r"attempts left: +3 before")
        run = self.session(box)
        for attempt in (1, 2):
            self.assertIn("LUNA_RET_UM_PIN_INCORRECT", run("hsm login -password wrong-guess"))
        self.addCleanup(box.run, f"hsm login -password {so}", stdin="proceed\n")
        q = self.question(7, "hsm login")
        out = run("hsm login", "quit")
        self.assertTrue(out.startswith("hsm login\n\n" + q + "quit\n"), out)  # 4.2
        self.assertIn("RC_OPERATION_CANCELLED", out)
        self.assertRegex(run("hsm show"), r"attempts left: +1 before HSM zeroization!")  # quit: no attempt counted
        out = run("hsm login", "proceed", so)
        self.assertTrue(out.startswith("hsm login\n\n" + q + "proceed\n\n  Please enter the HSM Administrators' "
                                       "password:\n  > " + "*" * len(so) + "\n"), out)  # 4.2, byte for byte
        self.assertIn("'hsm login' successful.", out)
        self.assertRegex(run("hsm show"), r"attempts left: +3 before")
        box.faults(lunash_layout=5)  # unpublished for 5/6: the 7.x question, password prompt not indented
        for attempt in (1, 2):
            run("hsm login -password wrong-guess")
        out = run(f"hsm login -password {so}", "proceed")
        self.assertTrue(out.startswith(f"hsm login -password {so}\n\n" + q + "proceed\n"), out)
        self.assertIn("'hsm login' successful.", out)

    def test_client_delete_5_and_regen_cert(self):
        box = Box("hsm1")
        registered_client(self, box, "asker", "asker.example")
        box.faults(lunash_layout=5)
        run = self.session(box)
        q = self.question(5, "client delete", name="asker")
        out = run("client delete -client asker", "quit")
        self.assertTrue(out.startswith("client delete -client asker\n\n" + q + "quit\n"), out)
        self.assertIn("asker", run("client list"))
        out = run("client delete -client asker", "proceed")
        self.assertIn("'client delete' successful.", out)
        self.assertNotIn("asker", run("client list"))
        server = os.path.join(self.tmp, "server.pem")
        box.sftp(get=[("server.pem", server)])
        before = read(server)
        out = run("sysconf regenCert", "quit")
        self.assertTrue(out.startswith("sysconf regenCert\n\n" + self.question(5, "sysconf regencert") + "quit\n"), out)
        box.sftp(get=[("server.pem", server)])
        self.assertEqual(read(server), before)
        out = run("sysconf regenCert", "proceed")
        self.assertIn("> proceed\nProceeding...\n'sysconf regenCert' successful.", out)
        box.sftp(get=[("server.pem", server)])
        self.assertNotEqual(read(server), before)
        box.ok("service restart ntls")  # NTLS serves what server.pem says again

    def test_hsm_restart_6_7(self):
        """6.7: `quit` leaves the appliance up and the session open; `proceed` prints the published lines,
        then the appliance goes down as `sysconf appliance reboot` takes it (back with the fix)."""
        box = Box("hsm3")
        box.control("install-fix")
        self.addCleanup(box.control, "uninstall-fix")
        run = self.session(box)
        q = self.question(7, "hsm restart")
        out = run("hsm restart", "quit")
        self.assertTrue(out.startswith("hsm restart\n" + q + "quit\n"), out)  # 1346-1348, byte for byte
        self.assertIn("RC_OPERATION_CANCELLED", out)
        self.assertIn("Command Result", run("hsm show"))  # the same session, still there
        self.assertEqual(box.control("install-fix")["status"], "up")
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        shell.channel.send("hsm restart\r")
        shell.read_until(r"> $")
        shell.channel.send("proceed\r")
        self.assertTrue(shell.read_until("Command Result").startswith(
            "proceed\r\nProceeding...\r\nRestarting HSM card in progress. Please wait...\r\n"))  # 1348-1351
        self.assertTrue(wait_for(lambda: unreachable(box.port)))
        wait_for(lambda: not unreachable(box.port))
        box.ok("hsm show")


class ErrorLayoutTest(ApplianceCase):
    """Failures byte for byte as luna-field.md 5.2 published them (5.x; 7.x prints the same here, with
    the same blank lines: our assumption), through a PTY session."""

    def test_client_show_unknown_5_2(self):
        box = Box("hsm1")
        run = pty_session(self, box)
        for layout in (5, 7):
            box.faults(lunash_layout=layout)
            self.assertEqual(typed(run("client show -c client3")), as_typed(published("5.2-client-show-5-error")))

    def test_client_fingerprint_5_2(self):
        box = Box("hsm1")
        cert = registered_client(self, box, "client1", "client1.example")
        box.faults(lunash_layout=5)
        run = pty_session(self, box)
        ours = x509.load_pem_x509_certificate(read(cert).encode()).fingerprint(hashes.MD5())
        block = published("5.2-client-fingerprint-5").replace(
            "D9:9E:25:B3:A9:68:06:50:8F:C4:90:FC:E5:50:E2:BC", ":".join(f"{b:02X}" for b in ours))
        self.assertEqual(typed(run("client fingerprint -c client1")), as_typed(block))
        self.assertEqual(typed(run("client fingerprint -c client2")),
                         as_typed(published("5.2-client-fingerprint-5-error")))


class NoPtyTest(ApplianceCase):
    """1.3 (7.8.5, commands on stdin, no PTY): the banner between blank lines, then each command's output
    with no prompt and no echo; the fullest published copy (b) byte for byte, our banner in its place."""

    def test_stdin_fed_session_1_3(self):
        box = Box("hsm1")
        client, host, partition = "vciphertrust-i.daenerys.home", "vciphertrust-i.daenerys.home", "sp_sehsm4"
        box.as_so(f"partition create -partition {partition} -force", answers="")
        self.addCleanup(box.as_so, f"partition delete -partition {partition} -force", "")
        cert, _ = make_client_cert(self.tmp, host)
        box.sftp(put=[(cert, f"{host}.pem")])
        self.addCleanup(box.run, f"client delete -client {client} -force")
        block = published("1.3-stdin-7.8.5-b")
        commands = [line[2:] for line in block.splitlines() if line.startswith("> ") and line != "> EOF"]
        expected = block.split("password:\n", 1)[1].replace(
            "Luna Network HSM Command Line Shell v7.8.5-20. Copyright (c) 2024 Thales Group. All rights reserved.",
            layouts.BANNERS[7])
        self.assertEqual(box.piped("".join(c + "\n" for c in commands)), expected)  # copies a and c lost blank lines

    def test_no_prompt_no_echo_and_a_question(self):
        """A question on a channel without a PTY is printed as on one and answered by the next line, which
        is not echoed (our assumption: tests/sim/README.md)."""
        box = Box("hsm1")
        self.addCleanup(self.reset_so_failures, box)  # the wrong password counts: other tests see 3 attempts
        out = box.piped("hsm show\nhsm login\nnot-the-password\nfrobnicate\n")
        self.assertNotIn("lunash:>", out)
        self.assertNotIn("hsm show", out)
        self.assertNotIn("not-the-password", out)
        self.assertIn("\n  Please enter the HSM Administrators' password:\n  > \n\n\nError:  'hsm login' failed.", out)
        self.assertTrue(out.endswith("\n\nError:  Unknown command: frobnicate\n\nCommand Result : 65535 "
                                     "(Luna Shell execution)\n"), out[-200:])

    def reset_so_failures(self, box):
        """A right HSM SO login sets the failure count back to 0 (roles.so_login)."""
        out = box.as_so("hsm show", "")
        self.assertIn(f"{roles.SO_THRESHOLD} before HSM zeroization!", out)


class NtlsIpcheckTest(ApplianceCase):
    def test_words_of_6_1(self):
        """6.1 (Azure 7.2, blank lines removed by the publisher): each command's lines, blank lines aside."""
        box = Box("hsm1")
        self.addCleanup(box.run, "ntls ipcheck enable")
        published_lines = published("6.1-ntls-ipcheck-7.2").splitlines()
        for command in ("ntls ipcheck disable", "ntls ipcheck show"):
            at = published_lines.index("[hsm01] lunash:>" + command)
            self.assertEqual([line for line in box.ok(command).splitlines() if line], published_lines[at + 1:at + 3])


class HsmLoginLayoutTest(ApplianceCase):
    """`hsm login` byte for byte as published: 7.2's success (4.1, S4), 6.2.2's (4.1, S3), and the
    7.x zeroizing attempt ending `Command Result : 0 (Success)` (4.2, S15)."""

    def test_success_7_and_6_4_1(self):
        box = Box("hsm1")
        so = box.secret("so_password")
        run = pty_session(self, box)
        for layout, block in ((7, "3.4-partition-create-7.2"), (6, "4.1-hsm-login-6.2.2")):
            box.faults(lunash_layout=layout)
            self.assertEqual(typed(run("hsm login", so)), stars(as_typed(published(block)), len(so)), layout)

    def test_zeroizing_attempt_7_4_2(self):
        box = Box("hsm1")
        so, label = box.secret("so_password"), CLIENT.control("GET", "appliances/hsm1")["hsm"]["label"]
        self.addCleanup(box.ok, f"hsm init -label {label} -password {so} -defaultdomain -force")
        run = pty_session(self, box)
        for attempt in (1, 2):
            self.assertEqual(typed(run("hsm login", "wrong-guess")), "hsm login\n  Please enter the HSM "
                             "Administrators' password:\n  > ***********\n\n\nError:  'hsm login' failed. "
                             "(A00000 : LUNA_RET_UM_PIN_INCORRECT)\n\n\nCommand Result : 0 (Success)\n")
        password = "wrong-guess-14"  # as long as the published echo
        self.assertEqual(typed(run("hsm login", "proceed", password)),
                         stars(as_typed(published("4.2-hsm-login-last-7")), len(password), 14))
        out = typed(run("hsm login", so))  # zeroized: every login says so
        self.assertTrue(out.endswith("Error:  'hsm login' failed. (30000F : LUNA_RET_SO_LOGIN_FAILURE_THRESHOLD)\n"
                                     "\nError:    The HSM is in the factory reset (zeroized) state.\n\n\n"
                                     "Command Result : 0 (Success)\n"), out)
        box.faults(lunash_layout=5)  # 5.x failures end 65535 (5.2)
        self.assertTrue(typed(run("hsm login", so)).endswith("Command Result : 65535 (Luna Shell execution)\n"))


class PoolTest(unittest.TestCase):
    def test_spares_come_factory_fresh_from_microsoft(self):
        """A spare waits in the pool as Microsoft hands an appliance over: zeroized, a factory admin
        password in DIR/secrets that the first interactive login must change (1.1)."""
        world, tmp = type("World", (), {"s": {}, "changed": lambda self: None})(), tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        pool.seed_spares(world, 3, 1, tmp)
        state = world.s["appliances"]["hsm3"]
        self.assertEqual((state["status"], state["faults"]["force_password_change"]), ("pool", True))
        self.assertTrue(model.is_zeroized(state))
        password = read(Paths(tmp, "hsm3").secret("password"))
        self.assertTrue(model.check_secret(state["admin"], password))


class TokenStoreTest(unittest.TestCase):
    """softhsm.TokenStore on a store of its own: the token.object rewrite, and tokens made the old way."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dhsm-tokens-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = TokenStore(self.dir).ensure()
        saved = os.environ.get("SOFTHSM2_CONF")
        self.addCleanup(lambda: os.environ.pop("SOFTHSM2_CONF", None) if saved is None
                        else os.environ.__setitem__("SOFTHSM2_CONF", saved))

    def test_serial_rewritten_in_token_object(self):
        serial, so_pin, co_pin = self.store.create("rewritten", serial="1234567001")
        self.assertEqual(serial, "1234567001")
        folder = self.store._folder(serial)
        generation, records = TokenFile.parse(open(os.path.join(folder, "token.object"), "rb").read())
        self.assertGreater(generation, 1)
        self.assertIn((TokenFile.SERIAL, TokenFile.BYTES, b"1234567001"), records)
        self.assertIn((TokenFile.LABEL, TokenFile.BYTES, b"rewritten".ljust(32)), records)
        self.assertFalse(os.path.basename(folder).replace("-", "").endswith(serial))  # SoftHSM's UUID stays
        self.assertEqual(p11_tokens(self.store.conf), {"1234567001": "rewritten"})
        self.assertTrue(self.store.check_pin(serial, p11.CKU_USER, co_pin))
        self.assertFalse(self.store.check_pin(serial, p11.CKU_SO, co_pin))
        self.store.set_user_pin(serial, so_pin, "Another-1")
        self.assertTrue(self.store.check_pin(serial, p11.CKU_USER, "Another-1"))
        self.assertEqual(self.store.usage(serial), (0, 0))
        # a leftover token with the serial (a delete that failed) is replaced, never doubled
        self.store.create("again", serial="1234567001")
        self.assertEqual(p11_tokens(self.store.conf), {"1234567001": "again"})
        self.store.delete(serial)
        self.assertFalse(self.store.exists(serial))
        self.assertEqual(p11_tokens(self.store.conf), {})

    def test_tokens_made_before_are_found_by_their_folder(self):
        own, _, co_pin = self.store.create("old-style")  # no serial given: SoftHSM's own, as states made before
        self.assertRegex(own, r"^[0-9a-f]{16}$")
        self.assertTrue(self.store.exists(own))
        self.assertTrue(self.store.check_pin(own, p11.CKU_USER, co_pin))
        luna, _, _ = self.store.create("new-style", serial="7654321002")
        self.assertEqual(p11_tokens(self.store.conf), {own: "old-style", luna: "new-style"})
        self.store.delete(own)
        self.assertEqual(p11_tokens(self.store.conf), {luna: "new-style"})

    def test_malformed_token_object_is_refused(self):
        for data in (b"", b"\0" * 7, b"\0" * 8 + b"\0" * 15, (1).to_bytes(8, "big") + (5).to_bytes(8, "big") * 2):
            with self.assertRaises(ValueError):
                TokenFile.parse(data)

    def test_unreadable_flags_are_an_error_not_no(self):
        """No token, or a token.object without its flags record: an error naming it, never "the Crypto
        Officer has no PIN" (`role init` would then replace the one it has)."""
        serial, _, _ = self.store.create("flags", serial="7654321003")
        self.assertTrue(self.store.user_pin_initialized(serial))
        folder = self.store._folder(serial)
        path = os.path.join(folder, TokenFile.NAME)
        generation, records = TokenFile.parse(open(path, "rb").read())
        with open(path, "wb") as f:
            f.write(TokenFile.build(generation, [r for r in records if r[0] != TokenFile.FLAGS]))
        with self.assertRaisesRegex(TokenFileError, f"{re.escape(path)}: no record 0x{TokenFile.FLAGS:x}"):
            self.store.user_pin_initialized(serial)
        os.unlink(path)
        with self.assertRaisesRegex(TokenFileError, "7654321003"):  # no token.object: no folder holds the serial
            self.store.user_pin_initialized(serial)
        with self.assertRaisesRegex(TokenFileError, re.escape(path)):
            TokenFile(folder).flags()


class NtlsTest(ApplianceCase):
    def register(self, box, name):
        cert, key = make_client_cert(self.tmp, "127.0.0.1")
        server = os.path.join(self.tmp, "server.pem")
        box.sftp(put=[(cert, "127.0.0.1.pem")], get=[("server.pem", server)])
        box.as_so(f"partition create -partition {name}-par")
        self.assertIn("'client register' successful.", box.ok(f"client register -client {name} -ip 127.0.0.1"))
        box.ok(f"client assignPartition -client {name} -partition {name}-par")
        self.addCleanup(box.run, f"client delete -client {name} -force")
        return cert, key, server

    def assert_handshake_failure_logged(self, box, ssl_error):
        lines = box.syslog("NTLS", entries=200).splitlines()
        pattern = [r"NTLS\[\d+\]: info : 0 : Incoming connection request\.\.\. : 127\.0\.0\.1/(\d+)$",
                   rf"NTLS\[\d+\]: Error message from SSLAccept is : {re.escape(ssl_error)}$",
                   r"NTLS\[\d+\]: Error during SSL accept \( RC_SSL_ERROR \)$",
                   r"NTLS\[\d+\]: info : 0xc0000711 : Fail to establish a secure channel with client : "
                   r"127\.0\.0\.1/(\d+) : RC_SSL_FAILED_HANDSHAKE$",
                   r'NTLS\[\d+\]: info : 0 : NTLS Client "Unknown host name" Connection instance removed : '
                   r"127\.0\.0\.1/(\d+)$"]
        for start in range(len(lines) - 4):
            window = lines[start:start + 5]
            if all(re.search(p, line) for p, line in zip(pattern, window)):
                self.assertRegex(window[0], r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d hsm1 NTLS\[")
                return
        self.fail(f"no handshake failure with {ssl_error} in:\n" + "\n".join(lines[-12:]))

    def test_registered_client_sees_its_partitions(self):
        box = Box("hsm1")
        cert, key, server = self.register(box, "web1")
        hello = ntls_hello(box.ntls_port, cert, key, server)
        self.assertEqual(hello["client"], "web1")
        self.assertEqual([p["name"] for p in hello["partitions"]], ["web1-par"])
        self.assertIn('Partitions:   "web1-par"', box.ok("client show -client web1"))
        self.assertIn('NTLS Client "web1" Connection instance added', box.syslog("NTLS"))

    def test_unregistered_client_fails_with_the_guides_log_lines(self):
        box = Box("hsm1")
        cert, key = make_client_cert(self.tmp, "stranger")
        server = os.path.join(self.tmp, "server.pem")
        box.sftp(get=[("server.pem", server)])
        with self.assertRaises(ssl.SSLError):
            ntls_hello(box.ntls_port, cert, key, server)
        self.assert_handshake_failure_logged(
            box, "error:14089086:SSL routines:ssl3_get_client_certificate:certificate verify failed")

    def test_regen_cert_needs_restart_then_breaks_stale_clients(self):
        box = Box("hsm1")
        cert, key, server = self.register(box, "web2")
        out = box.run("sysconf regenCert", stdin="proceed\n")[1]
        self.assertIn("NTLS must be (re)started before clients can connect.", out)
        self.assertEqual(ntls_hello(box.ntls_port, cert, key, server)["client"], "web2")  # old cert still served
        self.assertIn("Starting ntls", box.ok("service restart ntls"))
        with self.assertRaises(ssl.SSLCertVerificationError):
            ntls_hello(box.ntls_port, cert, key, server)
        self.assert_handshake_failure_logged(box, "error:14094418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca")
        box.sftp(get=[("server.pem", server)])  # the re-exchange
        self.assertEqual(ntls_hello(box.ntls_port, cert, key, server)["client"], "web2")

    def test_ipcheck_hostname_clients_and_binding(self):
        box = Box("hsm1")
        cert, key = make_client_cert(self.tmp, "web4.example")
        server = os.path.join(self.tmp, "server.pem")
        box.sftp(put=[(cert, "web4.example.pem")], get=[("server.pem", server)])
        box.as_so("partition create -partition web4-par")
        box.ok("client register -client web4 -hostname web4.example")
        self.addCleanup(box.run, "client delete -client web4 -force")
        box.ok("client assignPartition -client web4 -partition web4-par")
        self.assertEqual(len(ntls_hello(box.ntls_port, cert, key, server)["partitions"]), 1)
        box.ok("client hostip map -client web4 -ip 10.9.9.9")  # the client is behind NAT: ipcheck hides all
        self.assertEqual(ntls_hello(box.ntls_port, cert, key, server)["partitions"], [])
        box.ok("ntls ipcheck disable")
        self.addCleanup(box.run, "ntls ipcheck enable")
        self.assertEqual(len(ntls_hello(box.ntls_port, cert, key, server)["partitions"]), 1)
        self.assertIn("Success: NTLS binding", box.ok("ntls bind eth1 -force"))  # eth1 has no address
        self.addCleanup(box.run, "service restart ntls")
        self.addCleanup(box.run, "ntls bind all -force")
        self.assertEqual(len(ntls_hello(box.ntls_port, cert, key, server)["partitions"]), 1)  # not restarted yet
        box.ok("service restart ntls")
        self.assertIn("NTLS bound to network device: eth1", box.ok("ntls show"))
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", box.ntls_port), timeout=1)

    def test_clock_skew_and_blocked_port(self):
        box = Box("hsm1")
        cert, key, server = self.register(box, "web3")
        box.faults(clock_skew=60 * 86400)  # the appliance lives two months ahead: the client cert has expired
        self.assertIn(str((datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=60)).year),
                      box.ok("status date"))
        with self.assertRaises(ssl.SSLError):
            ntls_hello(box.ntls_port, cert, key, server)
        box.faults(clock_skew=0, ntls="refuse")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", box.ntls_port), timeout=1)
        box.faults(ntls="drop")
        self.assertTrue(unreachable(box.ntls_port))
        box.faults(ntls="open")
        self.assertEqual(ntls_hello(box.ntls_port, cert, key, server)["client"], "web3")


class FaultTest(ApplianceCase):
    def test_slow_shell_drop_and_hang(self):
        box = Box("hsm1")
        box.faults(shell_delay_ms=300)
        started = time.monotonic()
        box.ok("status date")
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        box.faults(shell_delay_ms=0, slow_command="300:status date")
        started = time.monotonic()
        box.ok("stat da")                      # abbreviated: still that command
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        box.faults(slow_command="")
        box.faults(drop_next=1)
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        with self.assertRaises((EOFError, OSError)):
            shell.command("hsm show")
        box.faults(hang_next=1)
        shell = box.shell(box.connect())
        with self.assertRaises(AssertionError):
            shell.command("hsm show", timeout=0.5)
        shell.channel.close()

    def test_unpublished_question_and_a_line_left_open(self):
        """ask_next: the next command asks a question with no input mark, y goes on, anything else aborts;
        stall_next: the next command's first line stays open a while, then ends; both one-shot."""
        box = Box("hsm1")
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        box.faults(ask_next="Proceed? [y/N] ")
        shell.channel.send("hsm show\r")
        self.assertTrue(shell.read_until(r"\[y/N\] $").endswith("\r\nProceed? [y/N] "))
        shell.channel.send("n\r")
        self.assertIn("RC_OPERATION_CANCELLED", shell.read_until("lunash:>$"))
        self.assertIn("Serial #", shell.command("hsm show"))  # one-shot: asked no more
        box.faults(ask_next="Enter value ->")
        shell.channel.send("hsm show\r")
        shell.read_until(r"Enter value ->$")
        shell.channel.send("y\r")
        self.assertIn("Serial #", shell.read_until("lunash:>$"))
        box.faults(stall_next="600:Checking? ")
        shell.channel.send("hsm show\r")
        started = time.monotonic()
        self.assertTrue(shell.read_until(r"Checking\? $").endswith("\r\nChecking? "))
        out = shell.read_until("lunash:>$")
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertTrue(out.startswith("done\r\n"), out)
        self.assertIn("Command Result : 0 (Success)", out)
        with self.assertRaises(EstateError):
            box.faults(ask_next="two\nlines")

    def test_reboot_hangs_without_the_fix(self):
        box = Box("hsm3")
        box.control("uninstall-fix")
        self.assertNotIn("KB0019789", box.ok("package list"))
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        shell.channel.send("sysconf appliance reboot -force\r")
        self.assertIn("going down for reboot", shell.read_until("Command Result"))
        self.assertTrue(wait_for(lambda: unreachable(box.port)))
        run_estate("advance", "--dir", ESTATE_DIR, "30")
        self.assertTrue(unreachable(box.port))
        self.assertIn("hung", run_estate("appliance", "--dir", ESTATE_DIR).stdout)
        hard = run_estate("appliance", "--dir", ESTATE_DIR, "hsm3", "hard-reboot").stdout  # the support request
        self.assertEqual(json.loads(hard)["status"], "rebooting")
        run_estate("advance", "--dir", ESTATE_DIR, "2")
        wait_for(lambda: not unreachable(box.port))

    def test_reboot_with_the_fix_comes_back(self):
        box = Box("hsm3")
        box.control("uninstall-fix")
        box.sftp(put=[(estate_info()["appliances"]["patch_file"], "KB0019789.spkg")])
        self.assertIn("Update Successfully Installed.", box.ok("package update KB0019789.spkg -authcode x -f"))
        self.assertIn("KB0019789", box.ok("package list"))
        # the sim clock follows the wall clock too: a reboot long enough not to be over
        # before it is looked at on a loaded machine, then skipped
        run_estate("fault", "--dir", ESTATE_DIR, "reboot_seconds=120")
        self.addCleanup(run_estate, "fault", "--dir", ESTATE_DIR, "reboot_seconds=" + FAST["reboot_seconds"])
        box.run("sysconf appliance reboot", stdin="proceed\n")
        self.assertTrue(unreachable(box.port))
        run_estate("advance", "--dir", ESTATE_DIR, "121")
        wait_for(lambda: not unreachable(box.port))
        box.ok("hsm show")

    def test_network_change_cuts_the_session(self):
        box = Box("hsm3")
        client = box.connect()
        self.addCleanup(client.close)
        shell = box.shell(client)
        shell.channel.send("network interface static -device eth0 -ip 10.2.1.99 -netmask 255.255.255.0 -force\r")
        with self.assertRaises(AssertionError):
            shell.read_until("Command Result", timeout=1)  # the answer never comes
        self.assertTrue(unreachable(box.port))
        old_password, known = box.secret("password"), read(os.path.join(ESTATE_DIR, "known_hosts"))
        answer = box.control("support-reset")  # the guide: "all configuration and key material is lost"
        self.assertEqual(answer["status"], "up")
        self.assertEqual(sorted(answer["host_keys"]), ["ed25519", "rsa"])
        # new host keys; DIR/known_hosts (the operator's file) still holds the old one, as in reality
        self.assertEqual(read(os.path.join(ESTATE_DIR, "known_hosts")), known)
        with self.assertRaises(paramiko.BadHostKeyException):
            box.connect(password=box.secret("password"))
        # the factory admin password, a new one, which the first interactive login must change
        new_password = box.secret("password")
        self.assertNotEqual(new_password, old_password)
        self.assertTrue(CLIENT.control("GET", "appliances/hsm3")["faults"]["force_password_change"])
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the operator checks the fingerprint
        self.addCleanup(client.close)
        with self.assertRaises(paramiko.AuthenticationException):
            client.connect("127.0.0.1", box.port, "tenantadmin", password=old_password, look_for_keys=False,
                           allow_agent=False, timeout=5)
        client.connect("127.0.0.1", box.port, "tenantadmin", password=new_password, look_for_keys=False,
                       allow_agent=False, timeout=5)
        offered = client.get_transport().get_remote_server_key()
        self.assertIn(keys.fingerprint_sha256(offered), answer["host_keys"].values())
        box.first_login("Fact0ry-Fresh!", client)
        self.assertEqual(box.secret("password"), "Fact0ry-Fresh!")
        host = f"[127.0.0.1]:{box.port} "  # the operator replaces the old key with the one checked
        lines = [line for line in known.splitlines() if not line.startswith(host)]
        with open(os.path.join(ESTATE_DIR, "known_hosts"), "w") as f:
            f.write("".join(line + "\n" for line in lines + [host + f"{offered.get_name()} {offered.get_base64()}"]))
        shown = box.ok("hsm show")
        self.assertIn("HSM IS ZEROIZED", shown)  # the reset loses everything
        self.assertNotIn("10.2.1.99", box.ok("network show"))
        # hsm init on the zeroized HSM (no login), secrets answered at 4.3's prompts, never on the command line
        out = box.ok("hsm init -label fresh3", stdin="Init-Pass1\nInit-Pass1\ndom-three\ndom-three\nproceed\n")
        prompts = ["Please enter a password for the HSM Administrator:", "Please re-enter password to confirm:",
                   "Please enter a cloning domain to use for initializing this HSM:",
                   "Please re-enter cloning domain to confirm:", "CAUTION:  Are you sure you wish to initialize this HSM?"]
        self.assertEqual([out.find(p) >= 0 for p in prompts], [True] * 5, out)
        self.assertEqual(sorted(out.find(p) for p in prompts), [out.find(p) for p in prompts])  # in 4.3's order
        self.assertNotIn("Init-Pass1", out)
        self.assertNotIn("dom-three", out)
        hsm = CLIENT.control("GET", "appliances/hsm3")["hsm"]
        self.assertEqual((hsm["label"], hsm["domain"]), ("fresh3", model.domain_id("dom-three")))
        self.assertEqual(box.secret("so_password"), "Init-Pass1")
        box.as_so("partition create -partition p3 -force", answers="")  # inherits nothing of the HSM's domain
        self.assertEqual(CLIENT.control("GET", "appliances/hsm3")["partitions"]["p3"]["domain"],
                         model.domain_id(model.DEFAULT_DOMAIN))
        box.as_so("partition delete -partition p3 -force", answers="")
        box.control("zeroize")  # left as the reset left it, for the tests that follow

    def test_host_key_change_is_detected(self):
        box = Box("hsm3")
        known = os.path.join(self.tmp, "known_hosts")
        shutil.copy(os.path.join(ESTATE_DIR, "known_hosts"), known)
        self.assertRegex(read(known), rf"\[127\.0\.0\.1\]:{box.port} ssh-rsa AAAA")
        box.control("new-host-key")
        client = paramiko.SSHClient()
        client.load_host_keys(known)
        with self.assertRaises(paramiko.BadHostKeyException):
            client.connect("127.0.0.1", box.port, "tenantadmin", password=box.secret("password"),
                           look_for_keys=False, allow_agent=False)
        box.connect().close()  # DIR/known_hosts has the new key


class RestartTest(unittest.TestCase):
    def test_restart_resumes_the_appliances(self):
        estate_dir = tempfile.mkdtemp(prefix="dhsm-appliances-restart-")
        self.addCleanup(shutil.rmtree, estate_dir, True)
        self.addCleanup(run_estate, "stop", "--dir", estate_dir, check=False)
        run_estate("start", "--dir", estate_dir, "--appliances", "1")
        global ESTATE_DIR
        saved, ESTATE_DIR = ESTATE_DIR, estate_dir
        self.addCleanup(globals().__setitem__, "ESTATE_DIR", saved)
        box = Box("hsm1")
        box.new_partition("kept")
        known = read(os.path.join(estate_dir, "known_hosts"))
        run_estate("stop", "--dir", estate_dir)
        run_estate("start", "--dir", estate_dir)
        self.assertEqual(read(os.path.join(estate_dir, "known_hosts")), known)  # same ports, same host key
        self.assertIn("Partition: ", Box("hsm1").ok("hsm show"))
        self.assertIn("kept", softhsm_labels())


if __name__ == "__main__":
    run_tests(sys.modules[__name__])
