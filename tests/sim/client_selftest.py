#!/usr/bin/python3
"""Self-test of the simulated Luna client tools (bin/vtl, bin/lunacm) and the client install.
Last line: "N passed, N failed".

    /usr/bin/python3 tests/sim/client_selftest.py [-v] [TestName ...]

Two estates of two appliances each: EMPTY starts with an empty client (the operator's
certificate exchange, step by step over real SSH/SFTP), READY with `--client-ready`
(HA groups, roles, restart). ExchangeTest and HaTest are stories told in name order
(test_a_..., test_b_...); run them whole.
"""
import contextlib
import ctypes
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from appliance_selftest import Box, opensc_tokens, p11_tokens, published, read  # noqa: E402
from arm_selftest import main as run_tests  # noqa: E402
from arm_selftest import run_estate, wait_for  # noqa: E402
from estate_client import EstateClient  # noqa: E402
from lunaclient import ha  # noqa: E402
from lunaclient.conf import ChrystokiConf, ConfError  # noqa: E402
from appliance import cloning, model, p11  # noqa: E402
from appliance.softhsm import TokenStore  # noqa: E402
from lunaclient.install import Install, pkcs11_library  # noqa: E402

BIN = os.path.join(HERE, "bin")
CRYPTOKI = pkcs11_library()[0] if pkcs11_library()[1] is None else None  # the simulated libCryptoki2, when built
GUIDE_WARNING = ("Warning: Synchronize may fail.  The members in slot 0 and slot 1 have conflicting settings for "
                 "private key cloning.")
EMPTY = READY = None
# 8.3 (S10): only this substring of vtl's no-slot error is published; the simulator prints it alone
NO_SLOTS = "Error: Unable to find any Luna SA slots/partitions\n"


def setUpModule():
    global EMPTY, READY
    EMPTY, READY = tempfile.mkdtemp(prefix="dhsm-client-empty-"), tempfile.mkdtemp(prefix="dhsm-client-ready-")
    failures = []

    def start(*args):
        try:
            run_estate("start", *args)
        except AssertionError as e:
            failures.append(e)
    starts = [threading.Thread(target=start, args=("--dir", EMPTY)),
              threading.Thread(target=start, args=("--dir", READY, "--client-ready"))]
    for thread in starts:  # in parallel: each start is mostly waiting
        thread.start()
    for thread in starts:
        thread.join()
    if failures:
        tearDownModule()  # unittest does not call it when setUpModule fails
        raise failures[0]


def tearDownModule():
    for estate in (EMPTY, READY):
        run_estate("stop", "--dir", estate, check=False)
        shutil.rmtree(estate, ignore_errors=True)


# running the tools -----------------------------------------------------------------------
def tool(estate, name, *args, stdin="", env=None):
    """bin/NAME ARGS with the estate in DHSM_ESTATE_DIR -> CompletedProcess (text)."""
    base = {k: v for k, v in os.environ.items() if k not in ("ChrystokiConfigurationPath", "DHSM_ESTATE_DIR")}
    environment = {**base, "DHSM_ESTATE_DIR": estate} if estate else base
    return subprocess.run([os.path.join(BIN, name), *args], input=stdin, capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=30)


def vtl(estate, *args):
    return tool(estate, "vtl", *args)


def lunacm(estate, *words, stdin=""):
    """`lunacm -c WORDS` -> (0 when the Command Result is No Error else 1, output after the start-up
    banner). The exit status itself is always 0, failures included, as LunaCM's is no interface."""
    proc = tool(estate, "lunacm", "-c", *words, stdin=stdin)
    assert proc.returncode == 0, f"lunacm exited {proc.returncode}: {proc.stdout}{proc.stderr}"
    out = proc.stdout.split("Current Slot Id:", 1)[-1]
    return (0 if "Command Result : No Error" in out else 1), out


def verified(estate):
    """`vtl verify` rows -> [(slot, serial, label)]."""
    out = vtl(estate, "verify").stdout
    return [(int(m[0]), m[1], m[2]) for m in re.findall(r"^\s+(\d+)\s+(\d+) \t(\S*)$", out, re.M)]


def members(listing):
    """`hagroup listGroups` member rows -> {serial: status}."""
    return dict(re.findall(r"^\s+[\d-]+\s+(\d+)\s+\S+\s+(alive|down)$", listing, re.M))


def conf(estate):
    return ChrystokiConf.load(os.path.join(estate, "client", "Chrystoki.conf"))


def control(estate, method, path, body=None):
    return EstateClient(estate).control(method, path, body)


def advance(estate, seconds):
    run_estate("advance", "--dir", estate, str(seconds))


def power(estate, appliance, on):
    control(estate, "POST", f"appliances/{appliance}/action", {"action": "up" if on else "down"})


def ha_status(estate, label):
    """The daemon's member statuses of group LABEL -> {serial: status}."""
    group = next(g for g in control(estate, "GET", "client")["groups"] if g["label"] == label)
    return {m["serial"]: m["status"] for m in group["members"]}


def partition_serial(estate, appliance, partition):
    return control(estate, "GET", f"appliances/{appliance}")["partitions"][partition]["serial"]


def secret(estate, name):
    return read(os.path.join(estate, "secrets", name))


# the configuration file and the HA rules, without an estate ---------------------------------
class ConfTest(unittest.TestCase):
    TEXT = ("# kept\nChrystoki2 = {\n   LibUNIX64 = /lib/a.so;\n}\n\n"
            "LunaSA Client = { ReceiveTimeout = 20000; NetClient = 1; }\nMisc = {\n  ToolsDir = /x; # tools\n}\n")

    def test_round_trip_and_edits_keep_everything_else(self):
        c = ChrystokiConf(self.TEXT)
        self.assertEqual(c.text, self.TEXT)
        self.assertEqual(c.get("LunaSA Client", "NetClient"), "1")
        c.set("LunaSA Client", "ServerName00", "127.0.0.1")
        c.set("Misc", "PE1746Enabled", "0")
        c.set("Chrystoki2", "LibUNIX64", "/lib/b.so")
        c.set("HAConfiguration", "reconnAtt", "-1")
        c.delete("LunaSA Client", "NetClient")
        self.assertIn("LunaSA Client = { ReceiveTimeout = 20000; ServerName00 = 127.0.0.1; }", c.text)
        self.assertIn("  ToolsDir = /x; # tools\n  PE1746Enabled = 0;\n}", c.text)
        self.assertTrue(c.text.startswith("# kept\nChrystoki2 = {\n   LibUNIX64 = /lib/b.so;\n}"))
        self.assertTrue(c.text.endswith("\nHAConfiguration = {\n   reconnAtt = -1;\n}\n"))
        self.assertEqual(ChrystokiConf(c.text).get("HAConfiguration", "reconnAtt"), "-1")

    def test_malformed_files_name_line_and_column(self):
        for text, line, column in (("A = {\n  x = 1\n}\n", 2, 3), ("A = { x = 1;", 1, 5), ("\n\nA {\n}", 3, 1)):
            with self.assertRaises(ConfError) as caught:
                ChrystokiConf(text)
            self.assertEqual((caught.exception.line, caught.exception.column), (line, column), str(caught.exception))

    def test_member_rules(self):
        def settings(retry, interval=60):
            s = ha.Settings(ChrystokiConf())
            s.retry, s.interval = retry, interval
            return s
        rec = ha.new_record(True, 0)
        self.assertTrue(ha.step(rec, False, settings(0), 10))
        self.assertEqual(rec["status"], ha.DOWN)
        self.assertFalse(ha.step(rec, True, settings(0), 1000))  # retry 0: stays down
        self.assertTrue(ha.recover(rec, True, 1000))
        ha.step(rec, False, settings(2), 1000)
        ha.step(rec, False, settings(2), 1060)  # attempt 1 fails
        ha.step(rec, False, settings(2), 1120)  # attempt 2 fails: out of tries
        self.assertFalse(ha.step(rec, True, settings(2), 1180))
        self.assertEqual(rec["status"], ha.DOWN)
        self.assertTrue(ha.step(rec, True, settings(-1), 1180))  # unlimited
        self.assertEqual(rec["status"], ha.ALIVE)


# the operator's certificate exchange, from an empty client -----------------------------------
class ExchangeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dhsm-client-test-")
        cls.hsm1, cls.hsm2 = Box("hsm1", EMPTY), Box("hsm2", EMPTY)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def fetch_server_pem(self, box):
        local = os.path.join(self.tmp, f"{box.name}.pem")
        box.sftp(get=[("server.pem", local)])  # scp tenantadmin@hsm:server.pem hsm.pem
        return local

    def syslog(self, box):
        return read(box.info["syslog"])

    def test_a_tutorial_from_an_empty_client(self):
        proc = vtl(EMPTY, "verify")
        self.assertEqual((proc.returncode, proc.stdout.strip()), (1, "Error: There are no registered servers"))
        out = vtl(EMPTY, "createCert", "-n", "web1").stdout
        cert = os.path.join(EMPTY, "client", "cert", "client", "web1.pem")
        self.assertIn(f"Certificate created and written to: {cert}", out)
        self.assertIn("Private Key created and written to: ", out)
        self.assertEqual(conf(EMPTY).get("LunaSA Client", "ClientCertFile"), cert)

        server_pem = self.fetch_server_pem(self.hsm1)
        proc = vtl(EMPTY, "addServer", "-n", "127.0.0.1", "-c", server_pem)
        self.assertEqual(proc.stdout.strip(), "New server 127.0.0.1 successfully added to server list.")
        self.assertEqual(conf(EMPTY).get("LunaSA Client", "ServerPort00"), str(self.hsm1.ntls_port))
        again = vtl(EMPTY, "addServer", "-n", "127.0.0.1", "-c", server_pem)
        self.assertEqual((again.returncode, again.stdout.strip()), (1, "This server is already registered"))

        # the appliance does not know this client yet: its NTLS refuses the handshake and says so
        proc = vtl(EMPTY, "verify")
        self.assertEqual((proc.returncode, proc.stdout), (1, NO_SLOTS))
        self.assertIn("ssl3_get_client_certificate:certificate verify failed", self.syslog(self.hsm1))

        self.hsm1.sftp(put=[(cert, "127.0.0.1.pem")])
        out = self.hsm1.as_so("client register -client web1 -ip 127.0.0.1\npartition create -partition par1 -force\n"
                              "client assignPartition -client web1 -partition par1", answers="")
        self.assertEqual(out.count("Command Result : 0 (Success)"), 4, out)  # with the SO login
        proc = vtl(EMPTY, "verify")
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertIn("The following Luna SA Slots/Partitions were found:", proc.stdout)
        serial = partition_serial(EMPTY, "hsm1", "par1")
        self.assertEqual(verified(EMPTY), [(0, serial, "")])  # 7.2: not initialised yet, no label
        self.assertIn('NTLS Client "web1" Connection instance added', self.syslog(self.hsm1))
        status, out = lunacm(EMPTY, "slot", "list")
        self.assertEqual(status, 0)
        self.assertIn("  Label ->\n  Serial Number ->        " + serial + "\n", out)  # 7.1's empty Label ->
        self.assertNotIn(serial, p11_tokens(os.path.join(EMPTY, "softhsm2.conf")))
        # the Partition SO initialises it from the client (7.1), passwords and domain on stdin, then the CO
        status, out = lunacm(EMPTY, "partition", "init", "-label", "par1",
                             stdin="Pso-Pass-1\nPso-Pass-1\nmy-domain\nmy-domain\nproceed\n")
        self.assertEqual(status, 0, out)
        self.assertIn("\n  Enter password for Partition SO: \n\n  Re-enter password for Partition SO: \n\n"
                      "  Enter the domain name: \n\n  Re-enter the domain name: \n\n"
                      "  You are about to initialize the partition.\n", out)
        part = control(EMPTY, "GET", "appliances/hsm1")["partitions"]["par1"]
        self.assertEqual((part["initialized"], part["domain"]), (True, model.domain_id("my-domain")))
        self.assertEqual(verified(EMPTY), [(0, serial, "par1")])
        self.assertEqual(p11_tokens(os.path.join(EMPTY, "softhsm2.conf")).get(serial), "par1")
        self.assertIn(f"{'Crypto Officer Initialized:':<43}no", self.hsm1.ok("partition show -partition par1"))
        proc = tool(EMPTY, "lunacm", stdin="role init -name co\nrole login -name po -password Wrong-Pso\n"
                                           "role login -name po\nPso-Pass-1\nrole init -name co\nCo-Pass-1\n"
                                           "Co-Pass-1\nrole init -name co -password Co-Pass-2\nexit\n")
        self.assertEqual(re.findall(r"Command Result : (.*)", proc.stdout),
                         ["0x00000101 (CKR_USER_NOT_LOGGED_IN)", "0x000000a0 (CKR_PIN_INCORRECT)", "No Error",
                          "No Error", "0x00000006 (CKR_FUNCTION_FAILED)"], proc.stdout)
        self.assertIn("\n  Enter password for Crypto Officer: \n\n  Re-enter password for Crypto Officer: \n", proc.stdout)
        self.assertIn("  The Crypto Officer is already initialized.\n", proc.stdout)
        for pin in ("Pso-Pass-1", "Co-Pass-1", "Co-Pass-2"):
            self.assertNotIn(pin, proc.stdout)
            self.assertNotIn(pin, read(os.path.join(EMPTY, "estate.log")))
        self.assertIn("lunacm: role init -name co -password **** -> 0x00000006 (CKR_FUNCTION_FAILED)",
                      read(os.path.join(EMPTY, "estate.log")))
        self.assertEqual(secret(EMPTY, "hsm1_par1_co_pin"), "Co-Pass-1")
        self.assertIn(f"{'Crypto Officer Initialized:':<43}yes", self.hsm1.ok("partition show -partition par1"))
        status, out = lunacm(EMPTY, "role", "login", "-name", "co", "-password", "Co-Pass-1")
        self.assertEqual(status, 0, out)

    def test_b_regen_cert_breaks_verify_until_the_exchange_is_redone(self):
        self.hsm1.run("sysconf regenCert", stdin="proceed\n")
        self.assertEqual(len(verified(EMPTY)), 1, "the old certificate is served until NTLS restarts")
        self.hsm1.ok("service restart ntls")
        self.assertIn("Unable to find any Luna SA slots/partitions", vtl(EMPTY, "verify").stdout)
        log = self.syslog(self.hsm1)
        self.assertRegex(log, r"NTLS\[\d+\]: Error message from SSLAccept is : error:14094418:SSL routines:"
                              r"ssl3_read_bytes:tlsv1 alert unknown ca\n.*NTLS\[\d+\]: Error during SSL accept "
                              r"\( RC_SSL_ERROR \)\n.*RC_SSL_FAILED_HANDSHAKE\n.*NTLS Client \"Unknown host name\" "
                              r"Connection instance removed")
        self.assertEqual(vtl(EMPTY, "deleteServer", "-n", "127.0.0.1").stdout.strip(),
                         "Server 127.0.0.1 successfully removed from server list.")
        vtl(EMPTY, "addServer", "-n", "127.0.0.1", "-c", self.fetch_server_pem(self.hsm1))
        self.assertEqual(len(verified(EMPTY)), 1)

    def test_c_unregistered_client_fails_with_the_appliances_ntls_lines(self):
        proc = vtl(EMPTY, "addServer", "-n", "127.0.0.1", "-c", self.fetch_server_pem(self.hsm2))
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertEqual(conf(EMPTY).get("LunaSA Client", "ServerPort01"), str(self.hsm2.ntls_port))
        self.assertEqual([row[2] for row in verified(EMPTY)], ["par1"])  # hsm2 adds nothing
        self.assertRegex(self.syslog(self.hsm2), r"Incoming connection request\.\.\. : 127\.0\.0\.1/(\d+)\n"
                                                 r".*ssl3_get_client_certificate:certificate verify failed\n"
                                                 r".*RC_SSL_ERROR.*\n.*RC_SSL_FAILED_HANDSHAKE\n"
                                                 r".*\"Unknown host name\" Connection instance removed")
        proc = vtl(EMPTY, "deleteServer", "-n", "127.0.0.1")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("-p", proc.stdout)  # two appliances share 127.0.0.1: say which port
        vtl(EMPTY, "deleteServer", "-n", "127.0.0.1", "-p", str(self.hsm2.ntls_port))
        self.assertEqual(vtl(EMPTY, "listServers").stdout.strip(),
                         f"Server: 127.0.0.1 Port: {self.hsm1.ntls_port} HTL required: no")


# serials: LunaCM, the appliance and PKCS#11 agree ------------------------------------------------
class SerialTest(unittest.TestCase):
    def test_slot_list_serial_is_the_pkcs11_token_serial(self):
        """What a real client shows: LunaCM's `Serial Number`, `vtl verify`'s `Serial #`, the appliance's
        `partition list` and the token serial its PKCS#11 library reports (SoftHSM's, and the client
        library's) are one number, the Luna partition serial: 12-13 digits on 7.x (luna-field.md 3.3, 7.1, 8.3)."""
        _, out = lunacm(READY, "slot", "list")
        slots = re.findall(r"Label ->\s+(\S+)\n\s+Serial Number ->\s+(\d+)\n", out)
        self.assertGreaterEqual(len(slots), 2, out)  # par1 of each appliance, and what other tests added
        conf_file = os.path.join(READY, "softhsm2.conf")
        tokens = p11_tokens(conf_file)
        listed = {}
        for name in ("hsm1", "hsm2"):
            listed.update(re.findall(r"^(\d{12,13}) +(\S+) +\d", Box(name, READY).ok("partition list"), re.M))
        verified_serials = {serial: label for _, serial, label in verified(READY)}
        for label, serial in slots:
            self.assertRegex(serial, r"^\d{12,13}$")
            self.assertEqual(tokens.get(serial), label)
            self.assertIn(serial, listed)
            self.assertEqual(verified_serials.get(serial), label)
        modules = [("/usr/lib/softhsm/libsofthsm2.so", {"SOFTHSM2_CONF": conf_file})]
        if CRYPTOKI:
            modules.append((CRYPTOKI, {"SOFTHSM2_CONF": conf_file,
                                       "ChrystokiConfigurationPath": os.path.join(READY, "client")}))
        for module, env in modules if shutil.which("pkcs11-tool") else ():
            seen = opensc_tokens(module, env)
            self.assertEqual({serial: seen.get(serial) for _, serial in slots}, {s: l for l, s in slots}, module)


# vtl verify, against the published bytes of luna-field.md 8.3 -----------------------------------------
def offered(estate, client="dhsm-client"):
    """[(serial, label)] of the partitions every appliance offers CLIENT over NTLS, in slot order
    (servers as registered, then the appliance's order), read from the estate's state."""
    rows = []
    for name in ("hsm1", "hsm2"):  # --client-ready registers the servers in this order
        state = control(estate, "GET", f"appliances/{name}")
        assigned = state["clients"][client]["partitions"]
        rows += [(p["serial"], p["label"]) for p in state["partitions"].values()
                 if p["name"] in assigned and not p["zeroized"]]
    return rows


class VtlVerifyTest(unittest.TestCase):
    def test_the_published_tab_layout(self):
        """8.3, S8 with its TABs intact: a blank line, the title, a blank line, header and rule joined
        by TABs, one row per slot (the reference's `%4d<TAB>%16s <TAB>%s`), a blank line: the published
        block, byte for byte, with its one row replaced by this estate's slots."""
        block = published("8.3-vtl-verify-6-tabs").split("+ vtl verify\n", 1)[1].split("+ pkcs11-daemon", 1)[0]
        head, row, tail = block.partition("   0\t       500752010 \tpartition1\n")
        self.assertTrue(row, "the published row")
        rows = "".join(f"{slot:4d}\t{serial:>16} \t{label}\n" for slot, (serial, label) in enumerate(offered(READY)))
        proc = vtl(READY, "verify")
        self.assertEqual((proc.returncode, proc.stdout), (0, head + rows + tail))

    def test_10_7_2_rendering_with_tabs_expanded(self):
        """The 10.7.2 copy (8.3, S6) shows the same table with the TABs expanded: so does ours, after
        its banner line (which a 7.2 client does not print, see tests/sim/README.md)."""
        published_lines = published("8.3-vtl-verify-10.7.2").splitlines()[2:]  # from the blank after the banner
        ours = [line.expandtabs(8) for line in vtl(READY, "verify").stdout.splitlines()]
        self.assertEqual(ours[:6], published_lines[:5] + [ours[5]])
        self.assertRegex(ours[5], r"^   0 {7,}\d{9,13} {8}\S")  # label at column 32, serial ending at 24

    def test_no_slots_prints_the_published_substring_alone(self):
        control(READY, "POST", "appliances/hsm1/faults", {"ntls": "refuse"})
        control(READY, "POST", "appliances/hsm2/faults", {"ntls": "refuse"})
        try:
            proc = vtl(READY, "verify")
        finally:
            for name in ("hsm1", "hsm2"):
                control(READY, "POST", f"appliances/{name}/faults", {"ntls": "open"})
        self.assertEqual((proc.returncode, proc.stdout), (1, NO_SLOTS))


# the client's PKCS#11 library: SoftHSM2's slots and the HA groups' virtual slots ----------------------
CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS = 2, 3
VIRTUAL_BASE = 0x80000000


class CkSessionInfo(ctypes.Structure):
    _fields_ = [("slotID", ctypes.c_ulong), ("state", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("ulDeviceError", ctypes.c_ulong)]


def session_info(lib, session):
    info = CkSessionInfo()
    lib._call("C_GetSessionInfo", session, ctypes.byref(info))
    return info


@unittest.skipUnless(CRYPTOKI, "the simulated libCryptoki2 is not built (make)")
class CryptokiTest(unittest.TestCase):
    """build/sim/libcryptoki-sim.so, called through its function list (appliance/p11.py) as the
    client's applications load it, and by OpenSC's pkcs11-tool. Runs before HaTest (name order):
    its group is gone again when it ends."""

    @classmethod
    def setUpClass(cls):
        cls.pin = secret(READY, "hsm1_par1_co_pin")
        cls.s1, cls.s2 = partition_serial(READY, "hsm1", "par1"), partition_serial(READY, "hsm2", "par1")
        cls.env = {"ChrystokiConfigurationPath": os.path.join(READY, "client"),
                   "SOFTHSM2_CONF": os.path.join(READY, "softhsm2.conf")}
        cls.saved = {name: os.environ.get(name) for name in cls.env}
        os.environ.update(cls.env)  # the library reads them at C_Initialize, in this process
        created = lunacm(READY, "hagroup", "createGroup", "-label", "p11HA", "-serialNumber", cls.s1,
                         "-password", cls.pin, stdin="copy\n")
        added = lunacm(READY, "hagroup", "addMember", "-group", "p11HA", "-serialNumber", cls.s2,
                       "-password", cls.pin)
        assert created[0] == 0 and added[0] == 0, created[1] + added[1]
        cls.library = p11.Library(cls.env["SOFTHSM2_CONF"], CRYPTOKI, function_list=True)

    @classmethod
    def tearDownClass(cls):
        lunacm(READY, "hagroup", "deleteGroup", "-label", "p11HA")
        for name, value in cls.saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)

    def state(self, lib, session):
        return session_info(lib, session)

    def member_states(self, lib):
        """{member serial: session state} of a fresh session on each member's own slot."""
        states = {}
        for serial in (self.s1, self.s2):
            with lib._session(lib.slot_of(serial)) as session:
                states[serial] = self.state(lib, session).state
        return states

    def virtual_slot(self, lib):
        slot = next(s for s in lib.slots() if lib.token_info(s).label.decode().strip() == "p11HA")
        self.assertGreaterEqual(slot, VIRTUAL_BASE)
        return slot

    def test_virtual_slot_lists_the_group(self):
        with self.library as lib:
            infos = {slot: lib.token_info(slot) for slot in lib.slots()}
        virtual = [i for slot, i in infos.items() if slot >= VIRTUAL_BASE]
        self.assertEqual([(i.label.decode().strip(), i.serialNumber.decode().strip(), i.model.decode().strip())
                          for i in virtual], [("p11HA", "1" + self.s1, "LunaVirtual")])
        self.assertEqual(virtual[0].flags, next(i.flags for i in infos.values()
                                                if i.serialNumber.decode().strip() == self.s1))
        physical = {i.serialNumber.decode().strip() for slot, i in infos.items() if slot < VIRTUAL_BASE}
        self.assertLessEqual({self.s1, self.s2}, physical)  # the partitions' own slots, unchanged
        if shutil.which("pkcs11-tool"):
            seen = opensc_tokens(CRYPTOKI, self.env)
            self.assertEqual(seen.get("1" + self.s1), "p11HA", seen)
            self.assertEqual((seen.get(self.s1), seen.get(self.s2)), ("hsm1-par1", "hsm2-par1"), seen)
            out = subprocess.run(["pkcs11-tool", "--module", CRYPTOKI, "-L"], capture_output=True, text=True,
                                 env={**os.environ, **self.env}, timeout=30).stdout
            self.assertRegex(out, r"HA Virtual Card Slot\n\s+token label\s+: p11HA\n.*\n\s+token model\s+: "
                                  r"LunaVirtual\n")
        # HA-only: the partitions' slots are hidden
        lunacm(READY, "hagroup", "haOnly", "-enable")
        try:
            with self.library as lib:
                self.assertEqual([s >= VIRTUAL_BASE for s in lib.slots()], [True])
        finally:
            lunacm(READY, "hagroup", "haOnly", "-disable")

    def test_login_reaches_every_member_and_objects_land_on_the_first(self):
        with self.library as lib, lib._session(self.virtual_slot(lib)) as session:
            self.assertEqual(self.state(lib, session).slotID, self.virtual_slot(lib))
            self.assertEqual(set(self.member_states(lib).values()), {CKS_RW_PUBLIC_SESSION})
            pin = self.pin.encode()
            lib._call("C_Login", session, ctypes.c_ulong(p11.CKU_USER), pin, ctypes.c_ulong(len(pin)))
            self.assertEqual(self.member_states(lib), {self.s1: CKS_RW_USER_FUNCTIONS, self.s2: CKS_RW_USER_FUNCTIONS})
            rv = lib._lib.C_Login(session, ctypes.c_ulong(p11.CKU_USER), pin, ctypes.c_ulong(len(pin)))
            self.assertEqual(rv, 0x100)  # CKR_USER_ALREADY_LOGGED_IN: the group is logged in
            # an object made through the virtual slot lands on the first member only
            p11.create_object(lib._lib, session, {p11.CKA_CLASS: (0).to_bytes(8, "little"), 0x1: b"\1", 0x2: b"\1",
                                            p11.CKA_LABEL: b"through-ha", p11.CKA_VALUE: b"x"})
            lib._call("C_Logout", session)
            self.assertEqual(set(self.member_states(lib).values()), {CKS_RW_PUBLIC_SESSION})
        store = TokenStore(READY)
        try:
            self.assertEqual(store.usage(self.s1)[0], 1)
            self.assertEqual(store.usage(self.s2)[0], 0)
        finally:
            store.destroy_objects(self.s1, self.pin)  # HaTest expects empty members

    def test_wrong_pin_fails_and_a_refusing_member_undoes_the_others(self):
        with self.library as lib, lib._session(self.virtual_slot(lib)) as session:
            wrong = b"Wrong-PIN-1"
            rv = lib._lib.C_Login(session, ctypes.c_ulong(p11.CKU_USER), wrong, ctypes.c_ulong(len(wrong)))
            self.assertEqual(rv, p11.CKR_PIN_INCORRECT)
            self.assertEqual(set(self.member_states(lib).values()), {CKS_RW_PUBLIC_SESSION})
        # the second member with another CO PIN: the first accepts, the second refuses, the first is undone
        store, so_pin = TokenStore(READY), secret(READY, "hsm2_par1_so_pin")
        store.set_user_pin(self.s2, so_pin, "Other-CO-PIN-2")
        try:
            with self.library as lib, lib._session(self.virtual_slot(lib)) as session:
                pin = self.pin.encode()
                rv = lib._lib.C_Login(session, ctypes.c_ulong(p11.CKU_USER), pin, ctypes.c_ulong(len(pin)))
                self.assertEqual(rv, p11.CKR_PIN_INCORRECT)
                self.assertEqual(self.state(lib, session).state, CKS_RW_PUBLIC_SESSION)
                self.assertEqual(set(self.member_states(lib).values()), {CKS_RW_PUBLIC_SESSION})
        finally:
            store.set_user_pin(self.s2, so_pin, secret(READY, "hsm2_par1_co_pin"))

    def test_unreadable_configuration_fails_initialize(self):
        folder = tempfile.mkdtemp(prefix="dhsm-chrystoki-")
        self.addCleanup(shutil.rmtree, folder, True)
        with open(os.path.join(folder, "Chrystoki.conf"), "w") as f:
            f.write("VirtualToken = {\n   VirtualToken00Label = broken\n}\n")  # no ';'
        for where in (folder, os.path.join(folder, "missing")):
            os.environ["ChrystokiConfigurationPath"] = where
            try:
                with self.assertRaises(p11.P11Error) as caught:
                    with p11.Library(self.env["SOFTHSM2_CONF"], CRYPTOKI, function_list=True):
                        pass
                self.assertEqual((caught.exception.function, caught.exception.rv), ("C_Initialize", 0x5))
            finally:
                os.environ["ChrystokiConfigurationPath"] = self.env["ChrystokiConfigurationPath"]


class CloneRecordsTest(unittest.TestCase):
    """cloning.py's reading and rewriting of SoftHSM object files, on crafted bytes."""

    EXTRACTABLE = cloning.CKA_EXTRACTABLE

    @staticmethod
    def record(kind_type, kind, value, length=None):
        head = kind_type.to_bytes(8, "big") + kind.to_bytes(8, "big")
        return head + (b"" if length is None else length.to_bytes(8, "big")) + value

    def object_file(self, *records):
        folder = tempfile.mkdtemp(prefix="clone-records-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "0a1b.object")
        with open(path, "wb") as f:
            f.write((7).to_bytes(8, "big") + b"".join(records))
        return path

    def test_records_of_each_kind(self):
        data = (7).to_bytes(8, "big") + self.record(self.EXTRACTABLE, 1, b"\0") + self.record(0x3, 3, b"ab", 2) \
            + self.record(0x2, 2, (1).to_bytes(8, "big")) + self.record(0x400, 5, bytes(16), 2)
        self.assertEqual(cloning.records(data), (7, [(self.EXTRACTABLE, 1, 24, 1), (0x3, 3, 49, 2),
                                                     (0x2, 2, 67, 8), (0x400, 5, 99, 16)]))

    def test_cut_short_is_a_clone_error(self):
        whole = (7).to_bytes(8, "big") + self.record(0x3, 3, b"label", 5)
        for cut in (4, 20, 30, len(whole) - 1):
            with self.assertRaisesRegex(cloning.CloneError, "not a SoftHSM object file: .*(cut short|shorter than)"):
                cloning.records(whole[:cut])
        with self.assertRaisesRegex(cloning.CloneError, "attribute kind 9"):
            cloning.records((7).to_bytes(8, "big") + self.record(0x3, 9, b""))

    def test_no_bool_record_is_a_clone_error(self):
        path = self.object_file(self.record(self.EXTRACTABLE, 2, bytes(8)))  # the type, but not a bool
        with self.assertRaisesRegex(cloning.CloneError, "0a1b.object has no boolean attribute 0x162"):
            cloning.set_bool(path, self.EXTRACTABLE, True)

    def test_set_bool_moves_the_generation(self):
        path = self.object_file(self.record(self.EXTRACTABLE, 1, b"\0"))
        cloning.set_bool(path, self.EXTRACTABLE, True)
        self.assertEqual(cloning.records(open(path, "rb").read())[0], 8)
        self.assertEqual(open(path, "rb").read()[24:], b"\1")

    def test_a_failed_restore_says_the_key_was_left_extractable(self):
        path = self.object_file(self.record(self.EXTRACTABLE, 1, b"\0"))
        with self.assertRaises(cloning.CloneError) as caught:
            with cloning.extractable_meanwhile(path):
                self.assertEqual(open(path, "rb").read()[24:], b"\1")
                os.unlink(path)  # putting it back now fails
                raise p11.P11Error("C_WrapKey", 0x6A)
        self.assertRegex(str(caught.exception), r"key of 0a1b.object was left extractable: .*No such file.*"
                                                r"\(after: C_WrapKey failed: CKR 0x0000006A\)")
        self.assertIsInstance(caught.exception.__cause__, cloning.CloneError)


# HA groups on the ready client --------------------------------------------------------------
class HaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pin = secret(READY, "hsm1_par1_co_pin")
        cls.s1, cls.s2 = partition_serial(READY, "hsm1", "par1"), partition_serial(READY, "hsm2", "par1")
        cls.created = lunacm(READY, "hagroup", "createGroup", "-label", "myHA", "-serialNumber", cls.s1,
                             "-password", cls.pin, stdin="copy\n")
        cls.added = lunacm(READY, "hagroup", "addMember", "-group", "myHA", "-slot", "1", "-password", cls.pin)

    def list_groups(self):
        status, out = lunacm(READY, "hagroup", "listGroups")
        self.assertEqual(status, 0, out)
        return out

    def test_a_create_list_and_the_ha_slot(self):
        self.assertEqual(self.created[0], 0, self.created[1])
        self.assertIn(f'New group with label "myHA" created with group number 1{self.s1}.', self.created[1])
        self.assertIn(f"Member {self.s2} successfully added to group myHA.", self.added[1])
        listing = self.list_groups()
        self.assertRegex(listing, r"HA Group Slot ID:  2\n")
        self.assertEqual(members(listing), {self.s1: "alive", self.s2: "alive"})
        c = conf(READY)
        self.assertEqual([c.get("VirtualToken", f"VirtualToken00{key}") for key in ("Label", "SN", "Members")],
                         ["myHA", "1" + self.s1, f"{self.s1},{self.s2}"])
        self.assertEqual(c.get("HASynchronize", "myHA"), "1")
        status, out = lunacm(READY, "hagroup", "createGroup", "-label", "myHA", "-slot", "0", "-password", self.pin)
        self.assertEqual(status, 1)
        self.assertIn("for the new group has already been used", out)
        status, out = lunacm(READY, "hagroup", "addMember", "-g", "myHA", "-se", self.s2, "-password", self.pin)
        self.assertIn("The member you specified is already part of an", out)
        self.assertRegex(lunacm(READY, "slot", "list")[1],
                         r"HSM Label ->\s+myHA\n(.*\n)*.*HSM Status ->\s+N/A - HA Group")
        lunacm(READY, "hagroup", "haOnly", "-enable")
        _, out = lunacm(READY, "slot", "list")
        self.assertNotIn("Net Token Slot", out)
        self.assertIn("HA Only mode is enabled.", lunacm(READY, "hagroup", "haOnly", "-show")[1])
        lunacm(READY, "hagroup", "haOnly", "-disable")
        self.assertEqual(conf(READY).get("HAConfiguration", "HAOnly"), "0")

    def test_b_a_member_drops_with_its_appliance_and_needs_recover(self):
        power(READY, "hsm2", False)
        self.addCleanup(power, READY, "hsm2", True)
        self.assertEqual(members(self.list_groups()), {self.s1: "alive", self.s2: "down"})
        status, out = lunacm(READY, "hagroup", "recover", "-group", "myHA")
        self.assertEqual(status, 1)
        self.assertIn(f"Member {self.s2} could not be recovered", out)
        power(READY, "hsm2", True)
        advance(READY, 300)
        self.assertEqual(ha_status(READY, "myHA")[self.s2], "down", "no retry count: no auto-recovery")
        status, out = lunacm(READY, "hagroup", "recover", "-group", "myHA")
        self.assertEqual(status, 0, out)
        self.assertIn(f"Member {self.s2} recovered.", out)
        self.assertEqual(members(self.list_groups())[self.s2], "alive")

    def test_c_auto_recovery_needs_a_retry_count(self):
        self.addCleanup(lunacm, READY, "hagroup", "retry", "-count", "0")
        self.assertIn("HA Auto Recovery Count has been set to 2", lunacm(READY, "hagroup", "retry", "-count", "2")[1])
        self.assertEqual(lunacm(READY, "hagroup", "interval", "-interval", "30")[0], 1)  # 60..1200
        lunacm(READY, "hagroup", "interval", "-interval", "60")
        c = conf(READY)
        self.assertEqual((c.get("HAConfiguration", "reconnAtt"), c.get("HAConfiguration", "AutoReconnectInterval")),
                         ("2", "60"))
        power(READY, "hsm2", False)
        self.addCleanup(power, READY, "hsm2", True)
        wait_for(lambda: ha_status(READY, "myHA")[self.s2] == "down")
        power(READY, "hsm2", True)
        self.assertEqual(ha_status(READY, "myHA")[self.s2], "down", "back only after the interval")
        advance(READY, 61)
        self.assertEqual(members(self.list_groups())[self.s2], "alive")
        # two failed attempts while it is off use up the retry count: then only recover helps
        power(READY, "hsm2", False)
        wait_for(lambda: ha_status(READY, "myHA")[self.s2] == "down")
        advance(READY, 61)
        advance(READY, 61)
        power(READY, "hsm2", True)
        advance(READY, 61)
        self.assertEqual(ha_status(READY, "myHA")[self.s2], "down")
        self.assertEqual(lunacm(READY, "hagroup", "recover", "-group", "myHA")[0], 0)

    def test_d_synchronize_warns_when_cloning_domains_differ(self):
        status, out = lunacm(READY, "hagroup", "synchronize", "-group", "myHA", "-password", self.pin)
        self.assertEqual(status, 0, out)
        self.assertNotIn("Warning", out)
        pins = {"so_pin": secret(READY, "hsm2_par1_so_pin"), "co_pin": secret(READY, "hsm2_par1_co_pin")}
        control(READY, "POST", "appliances/hsm2/partitions/par1/init", {"domain": "another-domain", **pins})
        self.addCleanup(control, READY, "POST", "appliances/hsm2/partitions/par1/init",
                        {"domain": "defaultdomain", **pins})
        status, out = lunacm(READY, "hagroup", "synchronize", "-group", "myHA", "-password", self.pin)
        self.assertEqual(status, 0, out)  # nothing to clone yet
        self.assertIn("  " + GUIDE_WARNING + "\n", out)
        self.import_key("hsm1-par1", self.pin)
        status, out = lunacm(READY, "hagroup", "synchronize", "-group", "myHA", "-password", self.pin)
        self.assertIn(GUIDE_WARNING, out)
        self.assertIn("Command Result : 0x00000030 (CKR_DEVICE_ERROR)", out)

    def test_e_synchronize_clones_sensitive_keys_with_their_value(self):
        """A real group clones every object within one cloning domain, keys PKCS#11 keeps inside
        included: the clone keeps its attributes and its value (hsm1 encrypts, hsm2 decrypts; hsm2's
        clone of a private key signs what hsm1's public key verifies)."""
        with partitions(READY, self.pin, self.s1) as (one,):
            aes = one.generate_aes(b"sync-aes", b"\x42")
            ec_public, _ = one.generate_ec(b"sync-ec")
            self.assertEqual(one.bools(aes), {SENSITIVE: True, EXTRACTABLE: False})
            with self.assertRaises(p11.P11Error):
                one.value(aes)  # nothing PKCS#11 would give
        status, out = lunacm(READY, "hagroup", "synchronize", "-group", "myHA", "-password", self.pin)
        self.assertEqual(status, 0, out)
        self.assertIn("Command Result : No Error", out)
        self.assertRegex(out, r"  \d+ object\(s\) cloned to the members missing them\.")
        self.assertNotIn(self.pin, out)
        with partitions(READY, self.pin, self.s1, self.s2) as (one, two):
            clone = two.find(AES_CLASS, b"sync-aes")
            self.assertEqual(two.bools(clone), {SENSITIVE: True, EXTRACTABLE: False})
            self.assertEqual(two.attribute(clone, 0x102), b"\x42")  # CKA_ID
            self.assertEqual(two.attribute(clone, 0x100), bytes(p11.CK_ULONG(0x1F)))  # CKK_AES
            self.assertEqual(two.bools(clone, 0x104, 0x105), {0x104: True, 0x105: True})  # encrypt, decrypt
            source = one.find(AES_CLASS, b"sync-aes")
            self.assertEqual(one.bools(source), {SENSITIVE: True, EXTRACTABLE: False})  # put back as it was
            message = b"cloned keys share their value!!!"
            self.assertEqual(two.decrypt(clone, one.encrypt(source, message)), message)
            signer = two.find(PRIVATE_CLASS, b"sync-ec")
            self.assertEqual(two.bools(signer), {SENSITIVE: True, EXTRACTABLE: False})
            self.assertTrue(one.verify(one.find(PUBLIC_CLASS, b"sync-ec"), b"data", two.sign(signer, b"data")))
        status, again = lunacm(READY, "hagroup", "synchronize", "-group", "myHA", "-password", self.pin)
        self.assertIn("  0 object(s) cloned to the members missing them.", again)

    @staticmethod
    def import_key(label, pin):
        """An object in a partition, the way an application would leave one (softhsm2-util)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:
            f.write(key)
            f.flush()
            env = {**os.environ, "SOFTHSM2_CONF": os.path.join(READY, "softhsm2.conf")}
            subprocess.run(["softhsm2-util", "--import", f.name, "--token", label, "--label", "k1", "--id", "01",
                            "--pin", pin], check=True, capture_output=True, env=env)

    def test_z_remove_member_renames_the_group_then_delete_it(self):
        status, out = lunacm(READY, "hagroup", "removeMember", "-group", "myHA", "-serialNumber", self.s1)
        self.assertEqual(status, 0, out)
        self.assertEqual(conf(READY).get("VirtualToken", "VirtualToken00SN"), "1" + self.s2)
        self.assertEqual(lunacm(READY, "hagroup", "deleteGroup", "-label", "myHA")[0], 0)
        self.assertIsNone(conf(READY).section("VirtualToken"))
        self.assertIn("There are no HA groups configured.", self.list_groups())


# one partition through SoftHSM2's own library (the store), for what a test makes and checks --------
SENSITIVE, EXTRACTABLE = 0x103, 0x162
PUBLIC_CLASS, PRIVATE_CLASS, AES_CLASS = (bytes(p11.CK_ULONG(c)) for c in (2, 3, 4))
CKM_AES_KEY_GEN, CKM_AES_CBC_PAD, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA = 0x1080, 0x1085, 0x1040, 0x1041
P256 = bytes.fromhex("06082a8648ce3d030107")


class Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", p11.CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", p11.CK_ULONG)]


@contextlib.contextmanager
def partitions(estate, pin, *serials):
    """A Partition per serial of ESTATE's store, through one SoftHSM2 library (one per process)."""
    with p11.Library(os.path.join(estate, "softhsm2.conf")) as lib:
        opened = [Partition(lib, serial, pin) for serial in serials]
        try:
            yield opened
        finally:
            for part in opened:
                lib._lib.C_CloseSession(part.session)


class Partition:
    """The partition token with SERIAL, logged in as its Crypto Officer: keys made as dhsm's pkcs11
    generate_aes makes them (sensitive, not extractable), and crypto with them."""

    def __init__(self, lib, serial, pin):
        self.lib, self.iv = lib, ctypes.create_string_buffer(b"\1" * 16, 16)
        self.session = p11.CK_ULONG(0)
        lib._call("C_OpenSession", p11.CK_ULONG(lib.slot_of(serial)), p11.CK_ULONG(6), None, None,
                  ctypes.byref(self.session))
        lib._call("C_Login", self.session, p11.CK_ULONG(p11.CKU_USER), pin.encode(), p11.CK_ULONG(len(pin)))

    def call(self, name, *args):
        self.lib._call(name, self.session, *args)

    def generate_aes(self, label, key_id):
        attrs = {0x0: AES_CLASS, 0x100: bytes(p11.CK_ULONG(0x1F)), 0x161: bytes(p11.CK_ULONG(32)), 0x1: b"\1",
                 0x2: b"\1", 0x3: label, 0x102: key_id, SENSITIVE: b"\1", EXTRACTABLE: b"\0", 0x104: b"\1",
                 0x105: b"\1"}
        template, _keep = p11.template(attrs)
        handle = p11.CK_ULONG(0)
        self.call("C_GenerateKey", ctypes.byref(Mechanism(CKM_AES_KEY_GEN, None, 0)), template,
                  p11.CK_ULONG(len(attrs)), ctypes.byref(handle))
        return handle.value

    def generate_ec(self, label):
        public = {0x0: PUBLIC_CLASS, 0x100: bytes(p11.CK_ULONG(3)), 0x1: b"\1", 0x3: label, 0x180: P256, 0x10A: b"\1"}
        private = {0x0: PRIVATE_CLASS, 0x100: bytes(p11.CK_ULONG(3)), 0x1: b"\1", 0x2: b"\1", 0x3: label,
                   SENSITIVE: b"\1", EXTRACTABLE: b"\0", 0x108: b"\1"}
        (pub, keep1), (prv, keep2) = p11.template(public), p11.template(private)
        handles = p11.CK_ULONG(0), p11.CK_ULONG(0)
        self.call("C_GenerateKeyPair", ctypes.byref(Mechanism(CKM_EC_KEY_PAIR_GEN, None, 0)), pub,
                  p11.CK_ULONG(len(public)), prv, p11.CK_ULONG(len(private)), *map(ctypes.byref, handles))
        return handles[0].value, handles[1].value

    def find(self, cls, label):
        template, _keep = p11.template({0x0: cls, 0x3: label})
        found, count = (p11.CK_ULONG * 2)(), p11.CK_ULONG(0)
        self.call("C_FindObjectsInit", template, p11.CK_ULONG(2))
        self.call("C_FindObjects", found, p11.CK_ULONG(2), ctypes.byref(count))
        self.call("C_FindObjectsFinal")
        assert count.value == 1, f"{count.value} objects labelled {label!r}"
        return found[0]

    def attribute(self, handle, kind):
        probe = p11.CkAttribute(kind, None, 0)
        self.call("C_GetAttributeValue", p11.CK_ULONG(handle), ctypes.byref(probe), p11.CK_ULONG(1))
        buf = ctypes.create_string_buffer(probe.ulValueLen)
        probe.pValue = ctypes.cast(buf, ctypes.c_void_p)
        self.call("C_GetAttributeValue", p11.CK_ULONG(handle), ctypes.byref(probe), p11.CK_ULONG(1))
        return buf.raw[:probe.ulValueLen]

    def value(self, handle):
        return self.attribute(handle, 0x11)

    def bools(self, handle, *kinds):
        return {kind: self.attribute(handle, kind) == b"\1" for kind in kinds or (SENSITIVE, EXTRACTABLE)}

    def _run(self, init, step, mechanism, handle, data, size=256):
        self.call(init, ctypes.byref(mechanism), p11.CK_ULONG(handle))
        out, length = ctypes.create_string_buffer(size), p11.CK_ULONG(size)
        self.call(step, data, p11.CK_ULONG(len(data)), out, ctypes.byref(length))
        return out.raw[:length.value]

    def _cbc(self):
        return Mechanism(CKM_AES_CBC_PAD, ctypes.cast(self.iv, ctypes.c_void_p), 16)

    def encrypt(self, handle, data):
        return self._run("C_EncryptInit", "C_Encrypt", self._cbc(), handle, data)

    def decrypt(self, handle, data):
        return self._run("C_DecryptInit", "C_Decrypt", self._cbc(), handle, data)

    def sign(self, handle, data):
        return self._run("C_SignInit", "C_Sign", Mechanism(CKM_ECDSA, None, 0), handle, data)

    def verify(self, handle, data, signature):
        self.call("C_VerifyInit", ctypes.byref(Mechanism(CKM_ECDSA, None, 0)), p11.CK_ULONG(handle))
        return self.lib._lib.C_Verify(self.session, data, p11.CK_ULONG(len(data)), signature,
                                      p11.CK_ULONG(len(signature))) == 0


# logins through the client's PKCS#11 library: counted by the appliances ---------------------------
CKR_GENERAL_ERROR, CKR_DEVICE_ERROR, CKR_PIN_LOCKED, CKR_TOKEN_NOT_PRESENT = 0x5, 0x30, 0xA4, 0xE0


@unittest.skipUnless(CRYPTOKI, "the simulated libCryptoki2 is not built (make)")
class LibraryCountTest(unittest.TestCase):
    """C_Login through build/sim/libcryptoki-sim.so travels to the appliance as on a real client:
    SoftHSM checks the PIN, lunaclient/report_login.py reports the verdict, the appliance counts
    it and may refuse. Partitions of its own (cnt1 on hsm1, cnt2 on hsm2, an HA group of both;
    cnt3 on hsm1 for the zeroization), so the other classes' counters stay as they were."""

    @classmethod
    def setUpClass(cls):
        cls.env = {"ChrystokiConfigurationPath": os.path.join(READY, "client"),
                   "SOFTHSM2_CONF": os.path.join(READY, "softhsm2.conf")}
        cls.saved = {name: os.environ.get(name) for name in (*cls.env, "DHSM_ESTATE_DIR")}
        os.environ.update(cls.env)
        os.environ.pop("DHSM_ESTATE_DIR", None)  # the estate is found from Chrystoki.conf, as by an application
        for appliance, name in (("hsm1", "cnt1"), ("hsm2", "cnt2"), ("hsm1", "cnt3")):
            RoleTest.new_partition(Box(appliance, READY), name)
        cls.serial = {name: partition_serial(READY, appliance, name)
                      for appliance, name in (("hsm1", "cnt1"), ("hsm2", "cnt2"), ("hsm1", "cnt3"))}
        cls.library = p11.Library(cls.env["SOFTHSM2_CONF"], CRYPTOKI, function_list=True)

    @classmethod
    def tearDownClass(cls):
        lunacm(READY, "hagroup", "deleteGroup", "-label", "cntHA")
        for appliance, name in (("hsm1", "cnt1"), ("hsm2", "cnt2"), ("hsm1", "cnt3")):
            Box(appliance, READY).as_so(f"partition delete -partition {name} -force", answers="")
        for name, value in cls.saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)

    @staticmethod
    def appliance_of(name):
        return "hsm2" if name == "cnt2" else "hsm1"

    def part(self, name):
        """The appliance's record of partition NAME, from the estate state."""
        return control(READY, "GET", f"appliances/{self.appliance_of(name)}")["partitions"][name]

    def pin(self, name, role="co"):
        return secret(READY, f"{self.appliance_of(name)}_{name}_{role}_pin")

    @staticmethod
    def login(lib, session, pin, user=p11.CKU_USER):
        data = pin.encode()
        return lib._lib.C_Login(session, ctypes.c_ulong(user), data, ctypes.c_ulong(len(data)))

    def physical_login(self, name, pin, user=p11.CKU_USER, library=None):
        """One C_Login on partition NAME's own slot -> (CK_RV, session state after it)."""
        with (library or self.library) as lib, lib._session(lib.slot_of(self.serial[name])) as session:
            rv = self.login(lib, session, pin, user)
            return rv, session_info(lib, session).state

    def slot(self, name):
        """NAME's LunaCM slot now (numbers move as partitions come and go)."""
        return str(next(slot for slot, serial, _ in verified(READY) if serial == self.serial[name]))

    def role_show(self, name):
        """`lunacm -c role show` -> (Crypto Officer status, attempts left)."""
        status, out = lunacm(READY, "role", "show", "-slot", self.slot(name))
        self.assertEqual(status, 0, out)
        found = re.search(r"Crypto Officer\s+(\S+(?: \S+)*?)\s+(\d+)\n", out)
        return found[1], int(found[2])

    def test_a_wrong_pin_on_a_physical_slot_is_counted_once_and_lunacm_agrees(self):
        self.assertEqual(self.part("cnt1")["co_failures"], 0)
        rv, state = self.physical_login("cnt1", "Wrong-PIN-1")
        self.assertEqual((rv, state), (p11.CKR_PIN_INCORRECT, CKS_RW_PUBLIC_SESSION))
        self.assertEqual(self.part("cnt1")["co_failures"], 1)
        self.assertEqual(self.role_show("cnt1"), ("Not Logged In", 9))
        # lunacm's own login reaches SoftHSM directly, not through this library: counted once too
        status, out = lunacm(READY, "role", "login", "-name", "co", "-slot", self.slot("cnt1"),
                             "-password", "Wrong-PIN-2")
        self.assertIn("CKR_PIN_INCORRECT", out)
        self.assertEqual(self.part("cnt1")["co_failures"], 2)
        self.assertEqual(self.role_show("cnt1"), ("Not Logged In", 8))
        log = read(os.path.join(READY, "estate.log"))
        self.assertIn(f"cryptoki: C_Login co {self.serial['cnt1']} fail -> CKR_PIN_INCORRECT", log)
        self.assertNotIn("Wrong-PIN-1", log)

    def test_b_the_right_pin_resets_the_count(self):
        self.physical_login("cnt1", "Wrong-PIN-3")
        self.assertGreater(self.part("cnt1")["co_failures"], 0)
        rv, state = self.physical_login("cnt1", self.pin("cnt1"))
        self.assertEqual((rv, state), (0, CKS_RW_USER_FUNCTIONS))
        self.assertEqual(self.part("cnt1")["co_failures"], 0)
        self.assertEqual(self.role_show("cnt1"), ("Not Logged In", 10))
        # a right PIN that changes nothing on the appliance is answered from a read: no write in the log
        posts = f"arm POST /_sim/partitions/{self.serial['cnt1']}/login"
        before = read(os.path.join(READY, "estate.log")).count(posts)
        self.assertGreater(before, 0)  # the reset above was one
        self.assertEqual(self.physical_login("cnt1", self.pin("cnt1")), (0, CKS_RW_USER_FUNCTIONS))
        self.assertEqual(read(os.path.join(READY, "estate.log")).count(posts), before)

    def test_c_a_wrong_pin_through_the_ha_slot_counts_on_every_member(self):
        created = lunacm(READY, "hagroup", "createGroup", "-label", "cntHA", "-serialNumber", self.serial["cnt1"],
                         "-password", self.pin("cnt1"))
        added = lunacm(READY, "hagroup", "addMember", "-group", "cntHA", "-serialNumber", self.serial["cnt2"],
                       "-password", self.pin("cnt2"))
        self.assertEqual((created[0], added[0]), (0, 0), created[1] + added[1])
        before = {name: self.part(name)["co_failures"] for name in ("cnt1", "cnt2")}
        self.assertEqual(before, {"cnt1": 0, "cnt2": 0})
        with self.library as lib:
            slot = next(s for s in lib.slots() if lib.token_info(s).label.decode().strip() == "cntHA")
            with lib._session(slot) as session:
                self.assertEqual(self.login(lib, session, "Wrong-PIN-4"), p11.CKR_PIN_INCORRECT)
                self.assertEqual(session_info(lib, session).state, CKS_RW_PUBLIC_SESSION)
                self.assertEqual({name: self.part(name)["co_failures"] for name in ("cnt1", "cnt2")},
                                 {"cnt1": 1, "cnt2": 1})
                # each member has a CO PIN of its own here: the right one for the first still fails the
                # group on the second; both attempts reach their appliance
                self.assertEqual(self.login(lib, session, self.pin("cnt1")), p11.CKR_PIN_INCORRECT)
                self.assertEqual(session_info(lib, session).state, CKS_RW_PUBLIC_SESSION)
        self.assertEqual({name: self.part(name)["co_failures"] for name in ("cnt1", "cnt2")},
                         {"cnt1": 0, "cnt2": 2})
        self.assertEqual(self.role_show("cnt2"), ("Not Logged In", 8))

    def test_d_ten_wrong_pins_lock_the_co_and_the_right_one_is_refused(self):
        with self.library as lib, lib._session(lib.slot_of(self.serial["cnt1"])) as session:
            rvs = [self.login(lib, session, f"Wrong-PIN-{n}") for n in range(10)]
            self.assertEqual(rvs, [p11.CKR_PIN_INCORRECT] * 9 + [CKR_PIN_LOCKED])  # the 10th locks
            self.assertEqual(self.login(lib, session, self.pin("cnt1")), CKR_PIN_LOCKED)
            self.assertEqual(session_info(lib, session).state, CKS_RW_PUBLIC_SESSION)  # undone
        part = self.part("cnt1")
        self.assertEqual((part["co_failures"], part["co_locked"]), (10, True))
        self.assertEqual(self.role_show("cnt1"), ("Locked out", 0))
        rv, _ = self.physical_login("cnt1", self.pin("cnt1"))
        self.assertEqual(rv, CKR_PIN_LOCKED)  # a new process' worth of library: still locked

    def test_e_the_partition_so_threshold_zeroizes_the_partition(self):
        so_pin = self.pin("cnt3", "so")  # its file goes with the partition
        with self.library as lib, lib._session(lib.slot_of(self.serial["cnt3"])) as session:
            rvs = [self.login(lib, session, f"Wrong-SO-{n}", p11.CKU_SO) for n in range(10)]
            self.assertEqual(rvs, [p11.CKR_PIN_INCORRECT] * 10)
            # the token's files are gone under this process' SoftHSM: no login, whatever the PIN (SoftHSM
            # answers CKR_GENERAL_ERROR itself; had it checked the PIN, the appliance would say
            # CKR_TOKEN_NOT_PRESENT)
            self.assertIn(self.login(lib, session, so_pin, p11.CKU_SO), (CKR_TOKEN_NOT_PRESENT, CKR_GENERAL_ERROR))
            self.assertEqual(session_info(lib, session).state, CKS_RW_PUBLIC_SESSION)
        part = self.part("cnt3")
        self.assertEqual((part["zeroized"], part["token_serial"]), (True, None))
        with self.library as lib:  # SoftHSM reads its tokens at C_Initialize: the token is gone
            self.assertNotIn(self.serial["cnt3"], {lib.token_info(s).serialNumber.decode().strip() for s in lib.slots()})
        self.assertRegex(Box("hsm1", READY).ok("partition show -partition cnt3"), r"Partition SO Zeroized:\s+yes")
        # what a login that reached the zeroized partition would hear from its appliance
        self.assertEqual(report(self.serial["cnt3"], "so", "ok"), (0, CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"))

    def test_f_no_report_no_login(self):
        """The estate not found, or down: CKR_DEVICE_ERROR, even with the right PIN, and nothing counted."""
        folder = tempfile.mkdtemp(prefix="dhsm-count-")
        self.addCleanup(shutil.rmtree, folder, True)
        os.makedirs(os.path.join(folder, "client"))
        shutil.copy(os.path.join(READY, "client", "Chrystoki.conf"), os.path.join(folder, "client"))
        before = self.part("cnt2")
        os.environ["ChrystokiConfigurationPath"] = os.path.join(folder, "client")
        try:
            # a client whose configuration is in no estate (no estate.json above client/)
            self.assertEqual(self.physical_login("cnt2", self.pin("cnt2")), (CKR_DEVICE_ERROR, CKS_RW_PUBLIC_SESSION))
            # an estate that does not answer: its control endpoint on a port nobody listens on
            info = json.load(open(os.path.join(READY, "estate.json")))
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                closed = s.getsockname()[1]
            info["control"]["url"] = f"https://127.0.0.1:{closed}/_sim"
            with open(os.path.join(folder, "estate.json"), "w") as f:
                json.dump(info, f)
            self.assertEqual(self.physical_login("cnt2", "Wrong-PIN-5"), (CKR_DEVICE_ERROR, CKS_RW_PUBLIC_SESSION))
            self.assertEqual(self.physical_login("cnt2", self.pin("cnt2")), (CKR_DEVICE_ERROR, CKS_RW_PUBLIC_SESSION))
        finally:
            os.environ["ChrystokiConfigurationPath"] = self.env["ChrystokiConfigurationPath"]
        self.assertEqual(self.part("cnt2"), before)
        # a serial no appliance has
        self.assertEqual(report("999999", "co", "fail")[:2], (1, CKR_DEVICE_ERROR))


def report(serial, role, outcome):
    """lunaclient/report_login.py run as the library runs it -> (exit status, rv, error)."""
    proc = subprocess.run(["/usr/bin/python3", "-I", os.path.join(HERE, "lunaclient", "report_login.py"),
                           "--dir", READY, serial, role, outcome], capture_output=True, text=True, timeout=30)
    answer = json.loads(proc.stdout)
    assert proc.stdout.startswith('{"rv": ') and proc.stdout.count("\n") == 1, proc.stdout
    return proc.returncode, answer["rv"], answer["error"]


# a restart keeps the client, its HA state, and follows moved NTLS ports --------------------------
class PersistenceTest(unittest.TestCase):
    def test_restart_keeps_the_client_and_follows_new_ports(self):
        pin = secret(READY, "hsm1_par1_co_pin")
        lunacm(READY, "hagroup", "deleteGroup", "-label", "myHA")  # left by HaTest, when it ran
        self.assertEqual(lunacm(READY, "hagroup", "createGroup", "-label", "keepHA", "-slot", "0", "-password", pin,
                                stdin="copy\n")[0], 0)
        lunacm(READY, "hagroup", "addMember", "-group", "keepHA", "-slot", "1", "-password", pin)
        power(READY, "hsm2", False)
        self.addCleanup(power, READY, "hsm2", True)
        s2 = partition_serial(READY, "hsm2", "par1")
        wait_for(lambda: ha_status(READY, "keepHA")[s2] == "down")
        old_port = Box("hsm1", READY).ntls_port
        run_estate("stop", "--dir", READY)
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old connections' TIME_WAIT
        blocker.bind(("127.0.0.1", old_port))
        blocker.listen(1)  # someone else listens there now: hsm1's NTLS must move
        try:
            run_estate("start", "--dir", READY)
        finally:
            blocker.close()
        new_port = Box("hsm1", READY).ntls_port
        self.assertNotEqual(new_port, old_port)
        ports = [s.port for s in Install.servers(conf(READY))]
        self.assertIn(new_port, ports)
        self.assertEqual(ha_status(READY, "keepHA")[s2], "down")  # still off, still out of the group
        self.assertEqual([row[1] for row in verified(READY)], [partition_serial(READY, "hsm1", "par1")])
        inventory = json.load(open(os.path.join(READY, "inventory.json")))["client"]
        self.assertEqual(sorted(inventory), ["chrystoki_conf", "key_passphrase", "lunacm", "pkcs11_lib", "softhsm_conf", "vtl"])
        self.assertEqual(inventory["pkcs11_lib"], pkcs11_library()[0])  # the simulated libCryptoki2 once built
        self.assertEqual(conf(READY).get("Chrystoki2", "LibUNIX64"), inventory["pkcs11_lib"])


# partition roles through lunacm: the appliance's thresholds apply -----------------------------------
class RoleTest(unittest.TestCase):
    def session(self, *lines):
        """One interactive lunacm session fed LINES on stdin -> its output."""
        proc = tool(READY, "lunacm", stdin="".join(line + "\n" for line in lines) + "exit\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    @staticmethod
    def new_partition(box, name, domain="defaultdomain"):
        """PARTITION on BOX, assigned to the ready client and made ready as the initialize playbook
        does: LunaSH `partition create` (7.2: uninitialised), then lunacm `partition init` (PSO password
        and cloning domain on stdin), `role login -name po`, `role init -name co` -> its slot number.
        Its PSO and CO PINs are new ones, in DIR/secrets as usual (the appliance keeps them there)."""
        box.as_so(f"partition create -partition {name} -force\n"
                  f"client assignPartition -client dhsm-client -partition {name}", answers="")
        serial = partition_serial(READY, box.name, name)
        slot = next(slot for slot, s, _ in verified(READY) if s == serial)
        pso, co = f"Pso-{name}-1", f"Co-{name}-1"
        answers = [f"partition init -label {name} -slot {slot}", pso, pso, domain, domain, "proceed",
                   f"role login -name po -slot {slot}", pso, f"role init -name co -slot {slot}", co, co]
        proc = tool(READY, "lunacm", stdin="".join(line + "\n" for line in answers) + "exit\n")
        results = re.findall(r"Command Result : (.*)", proc.stdout)
        assert results == ["No Error"] * 3, proc.stdout
        assert pso not in proc.stdout and co not in proc.stdout, proc.stdout
        return slot

    def test_co_threshold_and_lockout_through_role_login(self):
        box = Box("hsm1", READY)
        slot, pin = self.new_partition(box, "par2"), secret(READY, "hsm1_par2_co_pin")
        wrong = [f"role login -name co -slot {slot} -password Wrong{n}" for n in range(10)]
        out = self.session(*wrong[:9], f"role show -slot {slot}", wrong[9],
                           f"role login -name co -slot {slot} -password {pin}", f"role show -slot {slot}")
        results = re.findall(r"Command Result : (.*)", out)
        self.assertEqual(results[:9], ["0x000000a0 (CKR_PIN_INCORRECT)"] * 9)
        self.assertRegex(out, r"Crypto Officer\s+Not Logged In\s+1\n")
        self.assertEqual(results[10:12], ["0x000000a4 (CKR_PIN_LOCKED)"] * 2)  # the 10th, then the right PIN
        self.assertRegex(out, r"Crypto Officer\s+Locked out\s+0\n")
        self.assertNotIn(pin, out)
        self.assertRegex(box.ok("partition show -partition par2"), r"Crypto Officer Locked Out:\s+yes")
        out = self.session(f"role login -name so -slot {slot} -password {secret(READY, 'hsm1_par2_so_pin')}",
                           f"role resetpw -name co -slot {slot} -password Another1")
        self.assertIn("policy 15", out)  # off by default: the lockout is permanent

    def test_co_reset_by_the_partition_so_under_policy_15(self):
        box = Box("hsm2", READY)
        box.as_so("hsm changePolicy -policy 15 -value 1 -force")  # destructive: hsm2's partitions are gone
        slot = self.new_partition(box, "par3")
        wrong = [f"role login -name co -slot {slot} -password Wrong{n}" for n in range(10)]
        out = self.session(*wrong, f"role login -name so -slot {slot}", secret(READY, "hsm2_par3_so_pin"),
                           f"role resetpw -name co -slot {slot} -password NewCoPin1", f"role logout -slot {slot}",
                           f"role login -name co -slot {slot} -password NewCoPin1")
        self.assertEqual(re.findall(r"Command Result : (.*)", out)[-4:], ["No Error"] * 4, out)
        self.assertEqual(secret(READY, "hsm2_par3_co_pin"), "NewCoPin1")

    def test_password_prompt_masks_on_a_terminal(self):
        pin = secret(READY, "hsm1_par1_co_pin")
        master, slave = pty.openpty()
        env = {**os.environ, "DHSM_ESTATE_DIR": READY}
        proc = subprocess.Popen([os.path.join(BIN, "lunacm")], stdin=slave, stdout=subprocess.PIPE, env=env)
        os.close(slave)
        try:
            os.write(master, b"role login -name co -slot 0\n")
            seen = b""
            while b"Enter the password: " not in seen:
                ready, _, _ = select.select([proc.stdout], [], [], 10)
                self.assertTrue(ready, seen)
                seen += os.read(proc.stdout.fileno(), 4096)
            os.write(master, pin.encode() + b"\r")
            time.sleep(0.3)
            os.write(master, b"exit\n")
            out = seen + proc.communicate(timeout=10)[0]
        finally:
            os.close(master)
        self.assertIn(b"*" * len(pin), out)
        self.assertNotIn(pin.encode(), out)
        self.assertIn(b"Command Result : No Error", out)


# finding the install ------------------------------------------------------------------------------
class LocateTest(unittest.TestCase):
    def test_chrystoki_configuration_path_or_estate_dir(self):
        env = {"ChrystokiConfigurationPath": os.path.join(READY, "client")}
        self.assertEqual(tool(None, "vtl", "listServers", env=env).returncode, 0)
        proc = tool(None, "vtl", "listServers", env={"ChrystokiConfigurationPath": "/nonexistent"})
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot find the Luna client configuration", proc.stdout)
        self.assertIn("DHSM_ESTATE_DIR", tool(None, "lunacm", "-c", "slot", "list").stderr)


if __name__ == "__main__":
    run_tests(sys.modules[__name__])
