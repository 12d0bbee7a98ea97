"""An appliance's state: one JSON document in world.s["appliances"][NAME].

Pure data and the rules that need no I/O, so the same facts drive LunaSH, NTLS,
the control endpoint and the ARM delete check. Layout:
  name, serial, hostname, resource {id, name} | None, provisioned_ip (the ARM NIC address)
  status      up | rebooting | hung | off | cut | pool   (see device.py)
  until       sim time a reboot ends
  network     {admin_device, interfaces {ethN: {ip, netmask, gateway, mac}}}
  ports       {ssh, ntls} kept across restarts when free
  admin       hashed tenantadmin password
  hsm         {initialized, label, so (hash), so_failures, policies {code: 0|1}, audit {...}}
  partitions  {name: {serial, label, token_serial, domain, pso_failures, co_failures, co_locked, ...}}
              token_serial: the SoftHSM token's serial, = serial (states made before: SoftHSM's own);
              None while zeroized
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
def new_serial(taken=()):
    """A 7-digit HSM serial. Partition serials are <HSM serial><3 digits> and are the partitions'
    SoftHSM token serials, whose last 8 characters SoftHSM reads as hex to number its slots
    (two tokens on one number abort it; its free slot takes a small number): so the last 5
    digits differ from those of every serial in TAKEN, and do not start with 0."""
    used = {str(serial)[-5:] for serial in taken}
    while True:
        serial = str(random.randint(1_100_000, 1_999_999))
        if serial[-5] != "0" and serial[-5:] not in used:
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
    return {"initialized": False, "label": "", "so": None, "so_failures": 0,
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


def domain_id(domain):
    """What the state keeps of a cloning domain: a digest, equal for equal domains on any appliance
    (so the client side can compare HA members) but not the domain itself, which is a secret."""
    return hashlib.sha256(b"luna cloning domain\0" + domain.encode()).hexdigest()[:16]


def partition_domain(part):
    return part.get("domain") or domain_id(DEFAULT_DOMAIN)  # states saved before domains existed


def next_partition_serial(state):
    """The Luna serial the next partition created will have (its token is made with it first)."""
    return f"{state['serial']}{state['next_partition']:03d}"


def new_partition(state, name, label, token_serial):
    """TOKEN_SERIAL: the serial its SoftHSM token reports, the Luna serial (next_partition_serial)
    unless the token predates that."""
    serial = next_partition_serial(state)
    state["next_partition"] += 1
    return {"serial": serial, "name": name, "label": label,
            "token_serial": token_serial, "domain": domain_id(DEFAULT_DOMAIN), "zeroized": False,
            "pso_failures": 0, "co_failures": 0, "co_locked": False, "co_permanent": False}


# questions ------------------------------------------------------------------------
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
