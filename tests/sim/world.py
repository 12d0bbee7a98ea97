"""The estate's state: one JSON document behind one lock, persisted after every change.

Everything any service knows lives in World.s (saved to DIR/state.json), so a
restarted estate resumes where it stopped and later parts (appliances, client
tools) see the same facts as ARM. Long-running work is not done by threads per
operation: records carry sim-time deadlines and `tick()` (called before every
request and every 50 ms by a ticker) moves them on. Waits can therefore be
skipped by shifting the sim clock (`advance`).

Layout of state.json (see README.md):
  clock_offset   seconds added to wall time to get sim time
  seq            counter used to order records
  tenant, principal{client_id, secret_sha256}, approved (allowlist approval)
  subscriptions  {sub: {displayName, features{name: state}}}
  groups         {"sub/rg-lower": {sub, name, location, tags, state, created}}
  resources      {lower-id: record}; record = {id, type, sub, rg, name, location,
                  tags, props, state, until, seq, created, modified, sim{...}}
  operations     {op-id: {kind, done_at, result, ...}} for LRO polling URLs
  tokens         {sha256(token): {expires, principal}}
  knobs          faults and settings (knobs.py)
"""
import os
import threading
import time

import armutil
import knobs
from fsutil import read_json, write_json

STATE_FILE = "state.json"


class World:
    def __init__(self, estate_dir, state):
        self.dir = estate_dir
        self.path = os.path.join(estate_dir, STATE_FILE)
        self.s = state
        self.lock = threading.RLock()
        self.dirty = False
        self.tickers = []       # fn(world, now), registered by the providers
        self.zeroize_probe = None  # set by the appliance part; see hsm.is_zeroized
        self.clear_hooks = []      # fn(), run by `estate fault --clear` (appliance faults)
        self.control_routes = {}   # first path word -> fn(method, rest, body) -> (status, doc)

    # persistence -----------------------------------------------------------
    @classmethod
    def load(cls, estate_dir):
        state = read_json(os.path.join(estate_dir, STATE_FILE))
        if state is None:
            return None
        state["knobs"] = {**knobs.defaults(), **state.get("knobs", {})}
        return cls(estate_dir, state)

    @classmethod
    def empty(cls, estate_dir):
        return cls(estate_dir, {"version": 1, "clock_offset": 0.0, "seq": 0, "subscriptions": {},
                                "groups": {}, "resources": {}, "operations": {}, "tokens": {},
                                "knobs": knobs.defaults()})

    def changed(self):
        self.dirty = True

    def save_if_dirty(self):
        if self.dirty:
            write_json(self.path, self.s, private=True)
            self.dirty = False

    # time ------------------------------------------------------------------
    def now(self):
        return time.time() + self.s["clock_offset"]

    def advance(self, seconds):
        self.s["clock_offset"] += seconds
        self.changed()

    def tick(self):
        now = self.now()
        for fn in self.tickers:
            fn(self, now)

    def next_seq(self):
        self.s["seq"] += 1
        self.changed()
        return self.s["seq"]

    # knobs -----------------------------------------------------------------
    def knob(self, name):
        return self.s["knobs"][name]

    def set_knobs(self, values):
        self.s["knobs"].update(values)
        self.changed()

    # resource groups -------------------------------------------------------
    def group(self, sub, name):
        return self.s["groups"].get(f"{sub}/{name}".lower())

    def put_group(self, grp):
        self.s["groups"][f"{grp['sub']}/{grp['name']}".lower()] = grp
        self.changed()

    def remove_group(self, sub, name):
        self.s["groups"].pop(f"{sub}/{name}".lower(), None)
        self.changed()

    # resources -------------------------------------------------------------
    def get(self, rid):
        return self.s["resources"].get(armutil.key(rid))

    def put(self, rec):
        self.s["resources"][armutil.key(rec["id"])] = rec
        self.changed()

    def remove(self, rid):
        self.s["resources"].pop(armutil.key(rid), None)
        self.changed()

    def find(self, rtype=None, sub=None, rg=None, where=None):
        """Records matching type/subscription/group (case-insensitive), oldest first."""
        out = []
        for rec in self.s["resources"].values():
            if rtype and rec["type"].lower() != rtype.lower():
                continue
            if sub and rec["sub"].lower() != sub.lower():
                continue
            if rg and rec["rg"].lower() != rg.lower():
                continue
            if where and not where(rec):
                continue
            out.append(rec)
        return sorted(out, key=lambda r: r["seq"])

    def new_record(self, rtype, sub, rg, names, location=None, tags=None, props=None, state="Succeeded"):
        now = self.now()
        rec = {"id": armutil.resource_id(sub, rg, rtype, *names), "type": rtype, "sub": sub, "rg": rg,
               "name": names[-1], "location": location, "tags": tags or {}, "props": props or {},
               "state": state, "until": None, "seq": self.next_seq(), "created": now, "modified": now,
               "etag": armutil.etag(), "guid": armutil.new_guid(), "sim": {}}
        self.put(rec)
        return rec

    # operations (targets of Location / Azure-AsyncOperation URLs) ----------
    def add_operation(self, op_id, **fields):
        self.s["operations"][op_id] = {"created": self.now(), **fields}
        self.changed()
        return self.s["operations"][op_id]

    def operation(self, op_id):
        return self.s["operations"].get(op_id)
