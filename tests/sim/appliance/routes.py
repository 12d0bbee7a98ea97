"""Control endpoint routes for the appliances, under /_sim/appliances (same token as the rest).

  GET  /_sim/appliances                          {name: summary}
  GET  /_sim/appliances/NAME                     the state (password hashes left out)
  POST /_sim/appliances/NAME/action {"action": A}
       down | up | reboot | hard-reboot | support-reset | install-fix | uninstall-fix |
       zeroize | new-host-key    -> the summary; support-reset adds host_keys {rsa, ed25519}
       (SHA256 fingerprints of the new keys, which DIR/known_hosts does not get)
  POST /_sim/appliances/NAME/faults {fault: value}    (model.FAULTS); .../faults/clear
  POST /_sim/appliances/NAME/partitions/P/login {"role": "so"|"co", "ok": bool}
       one Partition SO / Crypto Officer login, as the client side saw it: applies the
       guide's thresholds and answers {accepted, error (CKR name), zeroize, *_attempts_left,
       co_locked, co_permanent, zeroized}
  POST /_sim/appliances/NAME/partitions/P/resetpw {"new_pin"?}   the PSO's `role resetpw -name co`:
       unlocks the CO (409 when policy 15 is off or the lockout is permanent) and sets NEW_PIN
  POST /_sim/appliances/NAME/partitions/P/init {"label"?, "domain"?, "so_pin"?, "co_pin"?, "co"?}
       LunaCM `partition init` + `role init -name co`: a new empty token (after the PSO
       threshold zeroized the partition, or to give it another cloning domain or chosen PINs;
       what is not given is kept (label, domain) or generated (PINs)); "co": false is
       `partition init` alone (lunacm's): the Crypto Officer left uninitialised; on a partition
       `partition create` left uninitialised (7.x) this makes its token; the answer names its token_serial
  POST /_sim/appliances/NAME/partitions/P/initco {"co_pin"}   LunaCM `role init -name co` (the client
       checked the Partition SO's login): the CO's first password, C_InitPIN as the Partition SO;
       409 CoAlreadyInitialized when it has one, 409 NotInitialized before `partition init`

  GET  /_sim/partitions/SERIAL                   {appliance, partition, serial, pso_failures,
       co_failures, so_attempts_left, co_attempts_left, co_locked, co_permanent, zeroized}
  POST /_sim/partitions/SERIAL/login {"role": "so"|"co", "ok": bool}
       the login above, the partition found by its serial among every appliance's (the
       Luna partition serial, which is the token serial a PKCS#11 client sees; a zeroized
       partition keeps it): what the client library reports (lunaclient/report_login.py);
       the answer names {appliance, partition} too. 404 PartitionNotFound: no appliance has it
Handlers run with the world lock held; they return (HTTP status, JSON document).
"""
import copy

from appliance import hsmops, model, roles


def _set_fix(installed):
    def act(dev):
        dev.state["packages"][model.REBOOT_FIX] = installed
        dev.world.changed()
    return act


ACTIONS = {
    "down": lambda dev: dev.power(False),
    "up": lambda dev: dev.power(True),
    "reboot": lambda dev: dev.reboot(),
    "hard-reboot": lambda dev: dev.reboot(hard=True),
    "support-reset": lambda dev: dev.support_reset(),
    "install-fix": _set_fix(True),
    "uninstall-fix": _set_fix(False),
    "zeroize": lambda dev: hsmops.zeroize_hsm(dev, "control endpoint"),
    "new-host-key": lambda dev: dev.new_host_key(),
}


def _error(status, code, message):
    return status, {"error": {"code": code, "message": message}}


def summary(dev):
    state = dev.state
    return {"resource": (state["resource"] or {}).get("name"), "status": state["status"],
            "ssh_port": state["ports"]["ssh"], "ntls_port": state["ports"]["ntls"],
            "zeroized": model.is_zeroized(state), "partitions": sorted(state["partitions"]),
            "reboot_fix": state["packages"][model.REBOOT_FIX], "faults": state["faults"]}


def redacted(state):
    doc = copy.deepcopy(state)
    doc.pop("admin", None)
    doc["hsm"].pop("so", None)
    doc["hsm"]["audit"].pop("secret", None)
    return doc


class ApplianceRoutes:
    def __init__(self, devices):
        self.devices = devices  # name -> Device

    def handle(self, method, path, body):
        parts = [p for p in path.split("/") if p]
        if not parts:
            return 200, {name: summary(dev) for name, dev in self.devices.items()}
        dev = self.devices.get(parts[0])
        if dev is None:
            return _error(404, "ApplianceNotFound", f"No appliance named '{parts[0]}'.")
        route = (method, tuple(parts[1:2]))
        if route == ("GET", ()):
            return 200, redacted(dev.state)
        if method != "POST":
            return _error(405, "MethodNotAllowed", "Use POST for appliance changes.")
        if parts[1:] == ["action"]:
            return self.action(dev, body.get("action"))
        if parts[1:2] == ["faults"]:
            return self.faults(dev, body, clear=parts[2:] == ["clear"])
        if parts[1:2] == ["partitions"] and len(parts) == 4:
            return self.partition(dev, parts[2], parts[3], body)
        return _error(404, "NotFound", f"No appliance route {method} {path}.")

    def action(self, dev, name):
        if name not in ACTIONS:
            return _error(400, "InvalidAction", f"action must be one of {', '.join(ACTIONS)}")
        if dev.state["status"] == "pool":
            return _error(409, "ApplianceInPool", f"{dev.name} is in the free pool (no HSM resource).")
        result = ACTIONS[name](dev)
        return 200, {**summary(dev), **(result if isinstance(result, dict) else {})}

    def faults(self, dev, body, clear=False):
        try:
            values = model.default_faults() if clear else model.parse_faults(body)
        except ValueError as e:
            return _error(400, "InvalidFault", str(e))
        dev.state["faults"].update(values)
        dev.world.changed()
        dev.apply()
        return 200, dev.state["faults"]

    def partition(self, dev, name, verb, body):
        part = dev.state["partitions"].get(name)
        if part is None:
            return _error(404, "PartitionNotFound", f"{dev.name} has no partition '{name}'.")
        if verb == "login":
            return self._login(dev, name, part, body)
        if verb == "resetpw":
            refused = roles.reset_co(part, dev.state["hsm"])
            dev.world.changed()
            if refused:
                return _error(409, "ResetRefused", refused)
            if body.get("new_pin"):
                hsmops.set_co_pin(dev, name, body["new_pin"])
            return 200, roles.role_status(part)
        if verb == "initco":
            if not body.get("co_pin"):
                return _error(400, "InvalidBody", 'send {"co_pin": "..."}')
            refused = hsmops.init_co(dev, name, body["co_pin"])
            if refused:
                return _error(409, refused[0], f"{dev.name} partition {name}: {refused[1]}")
            return 200, roles.role_status(part)
        if verb == "init":
            hsmops.init_partition(dev, name, body.get("label"), body.get("domain"), body.get("so_pin"),
                                  body.get("co_pin"), with_co=body.get("co", True) is not False)
            return 200, {**roles.role_status(part), "token_serial": part["token_serial"]}
        return _error(404, "NotFound", f"No partition action '{verb}'.")

    def by_serial(self, method, path, body):
        """/_sim/partitions/SERIAL[/login]: a partition wherever it is, by its serial."""
        parts = [p for p in path.split("/") if p]
        if len(parts) not in (1, 2) or parts[1:] not in ([], ["login"]):
            return _error(404, "NotFound", f"No partition route {method} {path}.")
        found = self.find_serial(parts[0])
        if found is None:
            return _error(404, "PartitionNotFound", f"No appliance has a partition with serial '{parts[0]}'.")
        dev, name, part = found
        where = {"appliance": dev.name, "partition": name}
        if parts[1:] == ["login"] and method == "POST":
            status, answer = self._login(dev, name, part, body)
            return status, ({**answer, **where} if status == 200 else answer)
        if parts[1:] == [] and method == "GET":
            return 200, {**where, "serial": part["serial"], "pso_failures": part["pso_failures"],
                         "co_failures": part["co_failures"], **roles.role_status(part)}
        return _error(405, "MethodNotAllowed", f"No partition route {method} {path}.")

    def find_serial(self, serial):
        """(device, partition name, partition) whose serial or token serial is SERIAL; None if none.
        Appliances in the free pool hold no partitions."""
        for dev in self.devices.values():
            for name, part in dev.state["partitions"].items():
                if serial in (part["serial"], part.get("token_serial")):
                    return dev, name, part
        return None

    @staticmethod
    def _login(dev, name, part, body):
        role = body.get("role")
        if role not in ("so", "co") or not isinstance(body.get("ok"), bool):
            return _error(400, "InvalidLogin", 'send {"role": "so"|"co", "ok": true|false}')
        answer = roles.partition_login(part, role, body["ok"], dev.state["hsm"])
        if answer["zeroize"]:
            hsmops.zeroize_partition(dev, name)
        dev.world.changed()
        return 200, answer
