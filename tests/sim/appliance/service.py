"""The estate service that runs every appliance (services.SERVICES).

It creates the shared pieces once (SoftHSM store, the test client key pair, the
KB0019789 update package, DIR/known_hosts), starts one Device per appliance in
world.s["appliances"], answers ARM's zeroize question, follows ARM creates and
deletes (pool.sync, on every tick), and fills inventory.json "hsms", the
rehearsal's address map (address-map.json) and the "appliances" entry of
estate.json.
"""
import os

from appliance import keys, model, pool
from appliance.device import Device
from appliance.paths import ADDRESS_MAP, CLIENT_KEY, KNOWN_HOSTS, PATCH_FILE, estate_file
from appliance.routes import ApplianceRoutes
from appliance.softhsm import LIBRARY, TokenStore
from fsutil import write_json, write_public

PATCH_CONTENT = b"KB0019789 reboot fix for Luna Network HSM 7.2 (simulated update package)\n"


class ApplianceService:
    name = "appliances"

    def __init__(self):
        self.devices = {}
        self.estate = None

    def start(self, estate):
        self.estate, world = estate, estate.world
        self.tokens = TokenStore(estate.dir).ensure()
        self.client_key = estate_file(estate.dir, CLIENT_KEY)
        keys.ensure_key_pair(self.client_key, "dhsm-tests")
        if not os.path.exists(estate_file(estate.dir, PATCH_FILE)):
            write_public(estate_file(estate.dir, PATCH_FILE), PATCH_CONTENT)
        with world.lock:
            for name in world.s.setdefault("appliances", {}):
                self.devices[name] = self._start_device(name)
            world.save_if_dirty()
        self.write_known_hosts()
        estate.devices = self.devices
        estate.urls[self.name] = ", ".join(f"{name} ssh://127.0.0.1:{dev.state['ports']['ssh']}"
                                           for name, dev in self.devices.items()) or "(none)"
        world.zeroize_probe = pool.zeroize_probe(world)
        world.tickers.append(self.tick)
        world.clear_hooks.append(self.clear_faults)
        routes = ApplianceRoutes(self.devices)
        world.control_routes["appliances"] = routes.handle
        world.control_routes["partitions"] = routes.by_serial

    def _start_device(self, name):
        dev = Device(self.estate, name, self.tokens)
        if not os.path.exists(dev.paths.authorized_keys):
            with open(self.client_key + ".pub") as f:
                write_public(dev.paths.authorized_keys, f.read())
        dev.on_identity_change = self.write_known_hosts
        dev.start()
        return dev

    def stop(self):
        for dev in self.devices.values():
            dev.stop()

    def tick(self, world, now):
        for dev in self.devices.values():
            dev.tick(now)
        if pool.sync(world, list(self.devices.values())):
            refresh = getattr(self.estate, "refresh", None)
            if refresh:
                refresh()  # inventory.json and estate.json follow the new bindings

    def clear_faults(self):
        for dev in self.devices.values():
            dev.state["faults"] = model.default_faults()
            dev.apply()
        self.estate.world.changed()

    def write_known_hosts(self):
        entries = [("127.0.0.1", dev.state["ports"]["ssh"], dev.host_key) for dev in self.devices.values()]
        keys.write_known_hosts(estate_file(self.estate.dir, KNOWN_HOSTS), entries)

    # estate.json / inventory.json ------------------------------------------------------
    def describe(self):
        return {"probe": "none", "count": len(self.devices)}

    def _inventory_entry(self, dev):
        state = dev.state
        return {"name": state["resource"]["name"], "host": "127.0.0.1", "ssh_port": state["ports"]["ssh"],
                "user": model.USER, "password": "file:" + dev.paths.secret("password"),
                "known_hosts": estate_file(self.estate.dir, KNOWN_HOSTS), "ntls_port": state["ports"]["ntls"],
                "resource": state["resource"]["name"], "serial": state["serial"],
                "partitions": sorted(p["serial"] for p in state["partitions"].values())}

    def contribute(self, inventory):
        bound = [dev for dev in self.devices.values() if dev.state["resource"] is not None]
        inventory["hsms"] = [self._inventory_entry(dev) for dev in bound]
        self.write_address_map(bound)

    def write_address_map(self, bound):
        """Rehearsal only: where the appliance behind each NIC address (10.2.1.x) really listens,
        for `dhsm inventory discover --address-map` (a real estate's NIC address is the appliance's)."""
        entries = {dev.state["provisioned_ip"]: {"host": "127.0.0.1", "ssh_port": dev.state["ports"]["ssh"],
                                                  "ntls_port": dev.state["ports"]["ntls"]}
                   for dev in bound if dev.state.get("provisioned_ip")}
        write_json(estate_file(self.estate.dir, ADDRESS_MAP), entries)

    def _estate_entry(self, dev):
        paths, state = dev.paths, dev.state
        return {"resource": (state["resource"] or {}).get("name"), "serial": state["serial"], "host": "127.0.0.1",
                "ssh_port": state["ports"]["ssh"], "ntls_port": state["ports"]["ntls"], "user": model.USER,
                "password_file": paths.secret("password"), "so_password_file": paths.secret("so_password"),
                "audit_password_file": paths.secret("audit_password"),
                "pin_files": paths.secret("{partition}_{role}_pin"), "home": paths.home,
                "server_cert": paths.home_file("server.pem"), "syslog": paths.syslog,
                "control": f"appliances/{dev.name}"}

    def estate_entry(self):
        return {"appliances": {
            "softhsm2_conf": self.tokens.conf, "pkcs11_lib": LIBRARY, "client_key": self.client_key,
            "known_hosts": estate_file(self.estate.dir, KNOWN_HOSTS),
            "patch_file": estate_file(self.estate.dir, PATCH_FILE),
            "actions": ["down", "up", "reboot", "hard-reboot", "support-reset", "install-fix", "uninstall-fix",
                        "zeroize", "new-host-key"],
            "faults": {name: {"default": default, "help": text} for name, (_, default, text) in model.FAULTS.items()},
            "devices": {name: self._estate_entry(dev) for name, dev in self.devices.items()}}}
