"""An appliance's state: one JSON document in world.s["appliances"][NAME].

Pure data and the rules that need no I/O, so the same facts drive LunaSH, NTLS,
the control endpoint and the ARM delete check. Layout:
  name, serial, hostname, resource {id, name} | None, provisioned_ip (the ARM NIC address)
  status      up | rebooting | hung | off | cut | pool   (see device.py)
  until       sim time a reboot ends
  network     {admin_device, interfaces {ethN: {ip, netmask, gateway, mac}}}
  ports       {ssh, ntls} kept across restarts when free
  admin       hashed tenantadmin password
  hsm         {initialized, label, so (hash), so_failures, domain (domain_id of `hsm init`'s cloning domain,
              None while zeroized), policies {code: 0|1}, audit {...}}
  partitions  {name: {serial, label, token_serial, initialized, domain, pso_failures, co_failures, co_locked, ...}}
              token_serial: the SoftHSM token's serial, = serial (states made before: SoftHSM's own);
              None while zeroized or not initialised
              initialized: False from a 7.x `partition create` until LunaCM's `partition init` (no token,
              no label yet; states saved before: missing, read as True)
              domain: domain_id() of the cloning domain (HA members must share it)
  clients     {name: {kind "ip"|"hostname", address, ip_map, fingerprint, partitions []}}
  ntls        {bind, ipcheck, pid, running}
  packages    {KB0019789: bool}
  faults      see FAULTS
Secrets are kept as salted PBKDF2 hashes; the clear text only exists in DIR/secrets.
"""
import hashlib
import hmac
import os
import random
import secrets

from appliance import policies

SOFTWARE_VERSION = "7.2.0-220"
FIRMWARE = "7.0.3"
USER = "tenantadmin"
REBOOT_FIX = "KB0019789"
MAX_PARTITIONS = 10
HSM_STORAGE = 33554432
PARTITION_SIZE = 102400
NTLS_PORT = 1792  # what the appliance believes; the estate maps it to a free loopback port
STATUSES = ("up", "rebooting", "hung", "off", "cut", "pool")
NTLS_MODES = ("open", "refuse", "drop")
DEFAULT_DOMAIN = "defaultdomain"  # what `-defaultdomain` means on Luna; every partition starts in it


def _parse_count(raw):
    value = int(str(raw).strip())
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _parse_ntls(raw):
    mode = str(raw).strip().lower()
    if mode not in NTLS_MODES:
        raise ValueError(f"'{raw}' is not one of {', '.join(NTLS_MODES)}")
    return mode


def _parse_slow_command(raw):
    """"MS:command words" (e.g. "3000:hsm zeroize") -> that, normalised; "" or "0" -> "" (off)."""
    text = str(raw).strip()
    if text in ("", "0"):
        return ""
    ms, sep, words = text.partition(":")
    if not sep or not words.split():
        raise ValueError(f"'{raw}' is not MS:COMMAND (e.g. 3000:hsm zeroize)")
    return f"{_parse_count(ms)}:{' '.join(words.lower().split())}"


def _parse_text(raw):
    """Any text, kept as given ("" = off); a line end inside it would end the question early."""
    text = str(raw)
    if "\n" in text or "\r" in text:
        raise ValueError("one line of text, without a line end")
    return text


def _parse_stall(raw):
    """"MS:TEXT" (e.g. "400:Checking? ") -> that; "" -> "" (off)."""
    text = str(raw)
    if text == "":
        return ""
    ms, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"'{raw}' is not MS:TEXT (e.g. 400:Checking? )")
    return f"{_parse_count(ms)}:{_parse_text(rest)}"


def _parse_layout(raw):
    value = int(str(raw).strip())
    if value not in (5, 6, 7):
        raise ValueError(f"'{raw}' is not a LunaSH layout (5, 6 or 7)")
    return value


def _parse_flag(raw):
    text = str(raw).strip().lower()
    if text not in ("0", "1", "true", "false", "yes", "no", "on", "off", ""):
        raise ValueError(f"'{raw}' is not a boolean (use 1 or 0)")
    return text in ("1", "true", "yes", "on")


def _parse_reword(raw):
    text = str(raw)
    if text and "=>" not in text:
        raise ValueError(f"'{raw}' is not OLD=>NEW")
    return text


# fault name -> (parser, default, help)
FAULTS = {
    "shell_delay_ms": (_parse_count, 0, "every LunaSH command answers this many ms late (slow shell)"),
    "slow_command": (_parse_slow_command, "",
                     "MS:COMMAND: that command (its full name, however abbreviated) runs MS ms late, then acts"),
    "clock_skew": (lambda raw: int(float(raw)), 0,
                   "seconds added to the appliance clock (syslog, status date, NTLS certificate checks)"),
    "ntls": (_parse_ntls, "open", "NTLS port: open, refuse (connection refused) or drop (SYNs dropped: timeout)"),
    "drop_next": (_parse_count, 0, "the next N commands are cut half-way and the SSH connection reset"),
    "hang_next": (_parse_count, 0, "the next N commands never answer (the session stays open, silent)"),
    "lunash_layout": (_parse_layout, 7, "LunaSH output layout: 7 (7.x, the default, as Azure's 7.2), 6 or 5"),
    "reword": (_parse_reword, "",
               "OLD=>NEW: OLD becomes NEW in every line a command prints (a layout no published output "
               "shows, for dhsm's fail-closed tests; not the reference)"),
    "ask_next": (_parse_text, "",
                 "TEXT: the next command first asks TEXT (one line, no input mark: a question no published "
                 "output has, e.g. 'Proceed? [y/N] ') and goes on only when answered y; one-shot"),
    "stall_next": (_parse_stall, "",
                   "MS:TEXT: the next command's output starts with TEXT, its line left open MS ms before it ends "
                   "(output cut mid-line, e.g. '400:Checking? '); one-shot"),
    "force_password_change": (_parse_flag, False,
                              "1 = fresh from Microsoft: the next interactive login must change the tenantadmin "
                              "password first (starred box, then a passwd dialogue); cleared by the change"),
}


def default_faults():
    return {name: default for name, (_, default, _) in FAULTS.items()}


def parse_faults(values):
    """{name: raw} -> {name: typed}; ValueError names the bad fault."""
    parsed = {}
    for name, raw in values.items():
        if name not in FAULTS:
            raise ValueError(f"unknown appliance fault '{name}'; valid names: {', '.join(sorted(FAULTS))}")
        try:
            parsed[name] = FAULTS[name][0](raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: {e}")
    return parsed


# secrets ------------------------------------------------------------------------
def new_password():
    """A password the estate makes (a factory admin password, seeded SO and Auditor passwords)."""
    return "Sim-" + secrets.token_urlsafe(12)


def hash_secret(text):
    salt = os.urandom(16)
    return {"salt": salt.hex(), "hash": _digest(text, salt).hex()}


def check_secret(record, text):
    if not record or text is None:
        return False
    return hmac.compare_digest(_digest(text, bytes.fromhex(record["salt"])).hex(), record["hash"])


def _digest(text, salt):
    return hashlib.pbkdf2_hmac("sha256", text.encode(), salt, 1000)


# construction ---------------------------------------------------------------------
# Serials, as luna-field.md shows them: HSM serials have 6 digits on every generation (2.1: 572413 on
# Azure's 7.2; 2.2-2.4: 534071, 156155, 157541). Partition serials on 5.x/6.x are the HSM serial and
# 3 digits (157541008, 534071009: 9 digits); on 7.x they have 12-13 digits (3.3: 1582775433934, 8.3:
# 1682975235230, 7.1: 154438865287) and two partitions of one appliance (sehsm3, 3.3 and 8.3) share
# no prefix with each other. They read as the partition's creation time in epoch milliseconds
# (2020-02-27, 2023-05-01; the 12-digit one in hundredths of a second, 2018-12-09): the simulator
# makes 7.x serials that way (an inference, tests/sim/README.md, Assumptions).
#
# Partition serials are the partitions' SoftHSM token serials, and SoftHSM numbers a token's slot
# after the last 8 characters of its serial read as hex, masked to 31 bits; it aborts on two equal
# numbers, and its free slot takes the token count. So every serial made here has a slot number of
# its own in the estate, and a large one.
SLOT_MASK = 0x7FFFFFFF
SMALLEST_SLOT = 0x10000


def slot_number(serial):
    """The slot number SoftHSM gives a token with this serial."""
    return int(str(serial)[-8:], 16) & SLOT_MASK


def new_serial(taken=()):
    """A 6-digit HSM serial. Its 5-digit stem (the last 5 digits, which 5.x/6.x partition serials
    keep before their 3-digit number, the 8 characters SoftHSM reads) starts with 1-7 (8 and 9 mask
    to 0 and 1) and is not the stem of a serial in TAKEN: such partitions never share a slot number."""
    used = {slot_number(f"{serial}000") for serial in taken}
    while True:
        serial = str(random.randint(100_000, 999_999))
        if serial[-5] in "1234567" and slot_number(f"{serial}000") not in used:
            return serial


def partition_serial(state, prefixed, now, taken):
    """The Luna serial of the next partition of appliance STATE, created at NOW (its clock): 7.x's,
    the creation time in milliseconds (one later while it would share a slot number with TAKEN, the
    slot numbers of the estate's partitions), or when PREFIXED (5.x/6.x) <HSM serial><3 digits> (the
    next number that does not), advancing state["next_partition"] past the one used."""
    if not prefixed:
        serial = int(now * 1000)
        while slot_number(serial) < SMALLEST_SLOT or slot_number(serial) in taken:
            serial += 1
        return str(serial)
    while True:
        serial = f"{state['serial']}{state['next_partition']:03d}"
        state["next_partition"] += 1
        if slot_number(serial) not in taken:
            return serial


def new_ntls_pid():
    return random.randint(2000, 32000)


def default_network(ip, serial):
    mac = "00:15:B2:" + ":".join(f"{b:02X}" for b in int(serial).to_bytes(3, "big"))
    gateway = ".".join(ip.split(".")[:3] + ["1"])
    interfaces = {"eth0": {"ip": ip, "netmask": "255.255.255.0", "gateway": gateway, "mac": mac}}
    for n in (1, 2, 3):
        interfaces[f"eth{n}"] = {"ip": None, "netmask": None, "gateway": None, "mac": mac[:-2] + f"{n:02X}"}
    return {"admin_device": "eth0", "interfaces": interfaces}


def factory_audit():
    return {"initialized": False, "secret": None, "failures": 0, "locked_until": None}


def factory_hsm():
    return {"initialized": False, "label": "", "so": None, "so_failures": 0, "domain": None,
            "policies": policies.defaults(), "audit": factory_audit()}


def new_appliance(name, ip, taken=()):
    """TAKEN: the serials of the estate's other appliances (see new_serial)."""
    serial = new_serial(taken)
    return {"name": name, "serial": serial, "hostname": name, "resource": None, "provisioned_ip": ip,
            "status": "up", "until": None,
            "network": default_network(ip, serial), "ports": {"ssh": None, "ntls": None}, "admin": None,
            "hsm": factory_hsm(), "partitions": {}, "clients": {}, "next_partition": 1,
            "ntls": {"bind": "all", "ipcheck": True, "pid": new_ntls_pid(), "running": True},
            "packages": {REBOOT_FIX: False}, "faults": default_faults(), "last_login": None}


def factory_admin(state, write_secret):
    """The admin account as Microsoft hands an appliance over (a spare, or after a factory reset): a
    new password (WRITE_SECRET("password", it): DIR/secrets/NAME_password) that the first interactive
    login must change (luna-field.md 1.1: fault force_password_change)."""
    password = new_password()
    write_secret("password", password)
    state["admin"] = hash_secret(password)
    state["faults"]["force_password_change"] = True


def domain_id(domain):
    """What the state keeps of a cloning domain: a digest, equal for equal domains on any appliance
    (so the client side can compare HA members) but not the domain itself, which is a secret."""
    return hashlib.sha256(b"luna cloning domain\0" + domain.encode()).hexdigest()[:16]


def partition_domain(part):
    return part.get("domain") or domain_id(DEFAULT_DOMAIN)  # states saved before domains existed


def new_partition(name, label, serial, token_serial):
    """SERIAL: its Luna serial (partition_serial); TOKEN_SERIAL: the serial its SoftHSM token
    reports, the same unless the token predates that; None: not initialised yet (7.x's
    `partition create`: no token until LunaCM's `partition init`; LABEL is then LunaSH's, which
    clients do not see: token_label). The cloning
    domain is the default one whatever the HSM's: a partition's comes from `partition init -domain`."""
    return {"serial": serial, "name": name, "label": label,
            "token_serial": token_serial, "initialized": token_serial is not None,
            "domain": domain_id(DEFAULT_DOMAIN), "zeroized": False,
            "pso_failures": 0, "co_failures": 0, "co_locked": False, "co_permanent": False}


def partition_initialized(part):
    return part.get("initialized", True)  # states saved before 7.x partitions started uninitialised


def token_label(part):
    """The label clients see (NTLS, LunaCM's `Label ->`, vtl verify): none before `partition init`
    (luna-field.md 7.1's empty `Label ->`)."""
    return part["label"] if partition_initialized(part) else ""


# questions ------------------------------------------------------------------------
def lunash_layout(state):
    return state["faults"].get("lunash_layout", FAULTS["lunash_layout"][1])  # a world saved before the knob


def is_zeroized(state):
    """What `hsm show` reports as "HSM IS ZEROIZED !!!!" (never initialised counts too)."""
    return not state["hsm"]["initialized"]


def admin_ip(state):
    net = state["network"]
    return net["interfaces"][net["admin_device"]]["ip"]


def partition(state, name):
    """Partition names are case-sensitive on Luna; commands are not."""
    return state["partitions"].get(name)


def clients_of(state, partition_name):
    return [c for c, rec in state["clients"].items() if partition_name in rec["partitions"]]


def ntls_listening(state):
    """NTLS runs and is bound to an address clients can reach (all, or the admin interface)."""
    ntls = state["ntls"]
    bound = ntls.get("bound", ntls["bind"])
    reachable = bound == "all" or state["network"]["interfaces"].get(bound, {}).get("ip") == admin_ip(state)
    return ntls["running"] and reachable
