"""The control endpoint: /_sim/... on the ARM server, for tests and the `estate` tool.

Authenticated with the random control token of DIR/estate.json, sent as
`X-Sim-Token` (never an ARM bearer token). Plain JSON in and out:
  GET  /_sim/health                      {"ok": true}           (no token needed)
  GET  /_sim/stats                       {connections, requests, by_service}
  POST /_sim/stats/reset
  GET  /_sim/state                       state.json + derived facts (orphans)
  GET  /_sim/faults                      every knob: value, category, help
  POST /_sim/faults {name: value, ...}   set knobs (strings as on the command line)
  POST /_sim/faults/clear                faults back to defaults (settings kept)
  POST /_sim/hsms/{name}/zeroized {"zeroized": true, "resource_group"?: "..."}
  POST /_sim/advance {"seconds": N} | {"idle": true}   move the sim clock
  POST /_sim/tokens {"principal": "user"|"app"}        a bearer token (for bin/az)
  .../_sim/appliances/..., .../_sim/partitions/SERIAL/...  appliance routes (appliance/routes.py)
"""
import hmac
import json

import knobs
import resources
from httpserver import Response

HSM_TYPE = resources.HSM_TYPE
MAX_IDLE_STEPS = 10000


def _ok(obj, status=200):
    return Response.json(status, obj)


def _bad(status, code, message):
    return Response.json(status, {"error": {"code": code, "message": message}})


class Control:
    def __init__(self, world, tokens, stats, secret):
        self.world, self.tokens, self.stats, self.secret = world, tokens, stats, secret
        self.routes = {("GET", "health"): self.health, ("GET", "stats"): self.get_stats,
                       ("POST", "stats/reset"): self.reset_stats, ("GET", "state"): self.state,
                       ("GET", "faults"): self.get_faults, ("POST", "faults"): self.set_faults,
                       ("POST", "faults/clear"): self.clear_faults, ("POST", "advance"): self.advance,
                       ("POST", "tokens"): self.issue_token}

    def handle(self, req):
        path = req.path[len("/_sim/"):].strip("/")
        if path != "health" and not hmac.compare_digest((req.header("X-Sim-Token") or "").encode(), self.secret.encode()):
            return _bad(401, "ControlTokenRequired", "Send the control token of estate.json as X-Sim-Token.")
        try:
            body = req.json() or {}
        except ValueError as e:
            return _bad(400, "InvalidJson", str(e))
        if path.startswith("hsms/") and path.endswith("/zeroized") and req.method == "POST":
            return self.set_zeroized(path.split("/")[1], body)
        extension = self.world.control_routes.get(path.split("/")[0])
        if extension:
            return self._extension(extension, req.method, path.partition("/")[2], body)
        handler = self.routes.get((req.method, path))
        if handler is None:
            return _bad(404, "NotFound", f"No control route {req.method} /_sim/{path}.")
        with self.world.lock:
            self.world.tick()
            try:
                return handler(body)
            finally:
                self.world.save_if_dirty()

    def _extension(self, handler, method, rest, body):
        with self.world.lock:
            self.world.tick()
            try:
                status, doc = handler(method, rest, body)
                return Response.json(status, doc)
            finally:
                self.world.save_if_dirty()

    def health(self, body):
        return _ok({"ok": True})

    def get_stats(self, body):
        return _ok(self.stats.snapshot())

    def reset_stats(self, body):
        self.stats.reset()
        return _ok(self.stats.snapshot())

    def state(self, body):
        doc = json.loads(json.dumps(self.world.s))
        doc["tokens"] = {"count": len(doc["tokens"])}
        hsms = self.world.find(HSM_TYPE)
        doc["derived"] = {"now": self.world.now(),
                          "orphaned_hsms": [r["id"] for r in hsms if resources.is_orphaned(self.world, r)],
                          "billed_hsms": [r["id"] for r in hsms if r["sim"].get("allocated")]}
        return _ok(doc)

    def get_faults(self, body):
        return _ok(knobs.describe(self.world.s["knobs"]))

    def set_faults(self, body):
        try:
            values = knobs.parse_assignments(body)
        except knobs.KnobError as e:
            return _bad(400, "InvalidFault", str(e))
        if values.pop("expire_tokens", False):
            self.tokens.expire_all()  # an action, not a state: nothing to keep
        self.world.set_knobs(values)
        return self.get_faults(body)

    def clear_faults(self, body):
        self.world.s["knobs"] = knobs.cleared(self.world.s["knobs"])
        for hook in self.world.clear_hooks:
            hook()
        self.world.changed()
        return self.get_faults(body)

    def set_zeroized(self, name, body):
        with self.world.lock:
            group = body.get("resource_group")
            found = self.world.find(HSM_TYPE, rg=group, where=lambda r: r["name"].lower() == name.lower())
            if len(found) != 1:
                why = "no" if not found else "more than one (give resource_group)"
                return _bad(404 if not found else 409, "HsmNotFound", f"There is {why} HSM named '{name}'.")
            found[0]["sim"]["zeroized"] = bool(body.get("zeroized", True))
            self.world.changed()
            self.world.save_if_dirty()
            return _ok({"id": found[0]["id"], "zeroized": found[0]["sim"]["zeroized"]})

    def advance(self, body):
        if body.get("idle"):
            steps = 0
            while steps < MAX_IDLE_STEPS:
                deadline = self._next_deadline()
                if deadline is None:
                    break
                self.world.advance(max(deadline - self.world.now(), 0) + 0.001)
                self.world.tick()
                steps += 1
        else:
            try:
                seconds = float(body.get("seconds", 0))
            except (TypeError, ValueError):
                return _bad(400, "InvalidSeconds", "seconds must be a number")
            self.world.advance(max(seconds, 0))
            self.world.tick()
        return _ok({"now": self.world.now(), "clock_offset": self.world.s["clock_offset"]})

    def _next_deadline(self):
        pending = [r["until"] for r in self.world.s["resources"].values() if r["until"] is not None]
        pending += [g["done_at"] for g in self.world.s["groups"].values() if g["state"] == "Deleting"]
        running = [d for d in self.world.s.get("deployments", {}).values()
                   if d["state"] in ("Accepted", "Running")]
        if running and not pending:
            pending.append(self.world.now())  # one more tick concludes them
        return min(pending) if pending else None

    def issue_token(self, body):
        if body.get("principal") == "user":
            principal = {"oid": self.world.s["user"]["object_id"], "type": "User",
                         "name": self.world.s["user"]["upn"]}
        else:
            p = self.world.s["principal"]
            principal = {"oid": p["object_id"], "type": "Application", "name": p["client_id"]}
        token, expires, lifetime = self.tokens.issue(principal)
        return _ok({"access_token": token, "expires_on": expires, "expires_in": lifetime})
