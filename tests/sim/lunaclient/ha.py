"""HA groups as LunaCM keeps them in Chrystoki.conf, and how their members drop out and come back.

Configuration (lunacm writes it; lunacm and the estate daemon read it):
    VirtualToken = { VirtualToken00Label = L; VirtualToken00SN = 1<first member SN>;
                     VirtualToken00Members = sn1,sn2; }
    HASynchronize = { L = 1; }
    HAConfiguration = { reconnAtt = N; AutoReconnectInterval = S; HAOnly = 0|1; }
Member state, the client library's view, kept by the estate daemon (world.s["lunaclient"]["ha"]):
    {label: {member SN: {"status": "alive"|"down", "since", "attempts", "next_try"}}}
Rules (troubleshooting guide, "Failed HA Group member doesn't recover"):
  - a member whose appliance stops serving NTLS (off, rebooting, hung, cut off, NTLS
    stopped or blocked) or whose partition is gone or zeroized drops out of the group;
  - it comes back by `hagroup recover`, or by itself only when reconnAtt is not 0 (the
    default; -1 = unlimited): one attempt every AutoReconnectInterval seconds of sim time
    after the drop, which succeeds once the member serves again; after reconnAtt failed
    attempts only `hagroup recover` brings it back.
Functions here change plain dicts and say what happened; nothing does I/O.
"""
import re

from appliance import model

VIRTUAL = "VirtualToken"
SYNC = "HASynchronize"
CONFIG = "HAConfiguration"
DEFAULT_INTERVAL, MIN_INTERVAL, MAX_INTERVAL = 60, 60, 1200
_VIRTUAL_KEY = re.compile(r"VirtualToken(\d+)(Label|SN|Members)")
ALIVE, DOWN = "alive", "down"


class Group:
    def __init__(self, label, members, serial=None):
        self.label, self.members = label, list(members)
        self.serial = serial or group_serial(self.members)


def group_serial(members):
    """Luna numbers a group after its first member; removing that member renumbers the group."""
    return "1" + members[0] if members else ""


def groups(conf):
    found = {}
    for key, value in conf.items(VIRTUAL):
        match = _VIRTUAL_KEY.fullmatch(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value.strip()
    return [Group(g.get("Label", ""), [m.strip() for m in g.get("Members", "").split(",") if m.strip()],
                  g.get("SN")) for _, g in sorted(found.items())]


def write_groups(conf, new_groups):
    items = []
    for number, group in enumerate(new_groups):
        items += [(f"VirtualToken{number:02d}Label", group.label), (f"VirtualToken{number:02d}SN", group.serial),
                  (f"VirtualToken{number:02d}Members", ",".join(group.members))]
    conf.replace_items(VIRTUAL, items)
    synced = dict(conf.items(SYNC))
    conf.replace_items(SYNC, [(g.label, synced.get(g.label, "1")) for g in new_groups])


class Settings:
    def __init__(self, conf):
        self.retry = _int(conf.get(CONFIG, "reconnAtt"), 0)
        self.interval = _int(conf.get(CONFIG, "AutoReconnectInterval"), DEFAULT_INTERVAL)
        self.ha_only = _int(conf.get(CONFIG, "HAOnly"), 0) == 1


def _int(text, default):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


# member state ------------------------------------------------------------------------
def new_record(alive, now):
    return {"status": ALIVE if alive else DOWN, "since": now, "attempts": 0, "next_try": None}


def step(record, alive, settings, now):
    """One look at a member (the daemon's tick); True when RECORD changed."""
    if record["status"] == ALIVE:
        if alive:
            return False
        record.update(status=DOWN, since=now, attempts=0, next_try=now + settings.interval)
        return True
    if record["next_try"] is None:  # down since it joined (or since `hagroup recover` found it down)
        record["next_try"] = now + settings.interval
        return True
    if settings.retry == 0 or now < record["next_try"]:
        return False
    if 0 < settings.retry <= record["attempts"]:
        return False  # out of tries: `hagroup recover` only
    if alive:
        record.update(status=ALIVE, since=now, attempts=0, next_try=None)
    else:
        record.update(attempts=record["attempts"] + 1, next_try=now + settings.interval)
    return True


def recover(record, alive, now):
    """`hagroup recover`: True when the member is (now) back in the group."""
    if record["status"] == DOWN and alive:
        record.update(status=ALIVE, since=now, attempts=0, next_try=None)
    return record["status"] == ALIVE


# liveness ------------------------------------------------------------------------------
def partition_index(appliances):
    """{Luna partition serial: (appliance state, partition)} over every appliance."""
    return {part["serial"]: (state, part) for state in appliances.values() for part in state["partitions"].values()}


def serving(state, part):
    """Would the member answer the client library right now? (network and NTLS, not certificates)"""
    return (state["status"] == "up" and state["resource"] is not None and model.ntls_listening(state)
            and state["faults"]["ntls"] == "open" and not part["zeroized"])


def alive(index, serial):
    found = index.get(serial)
    return bool(found) and serving(*found)
