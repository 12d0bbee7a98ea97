"""The estate service for the client side (services.SERVICES, after the appliances).

At start it creates the client install in DIR/client if there is none (empty, or
provisioned by `estate start --client-ready`, see ready.py) and points Chrystoki.conf at
the appliances' new NTLS ports if a restart moved them, and its LibUNIX64 (and
inventory.json's client.pkcs11_lib) at the simulated libCryptoki2 when it is built, else
at SoftHSM2 with one line in estate.log saying so (install.pkcs11_library). On every tick it plays the
client library's HA logic (ha.py): members drop out when their appliance stops serving
and come back by `hagroup recover` or auto-recovery; the configuration is re-read from
Chrystoki.conf whenever the file changes (lunacm, or an operator's editor).

Control routes (same token as the rest of /_sim):
  GET  /_sim/client                   {chrystoki_conf, settings, groups: [{label, serial, slot?,
                                       members: [{serial, status, attempts, appliance, partition, label}]}]}
  POST /_sim/client/ha/recover {"group": L}   `hagroup recover`: {group, members: [...]}, 404 unknown group
  POST /_sim/client/cert/age {"days_left": N}  the client certificate re-issued (same key) to end N days
                                       from now (negative: expired); the appliances' registrations follow
"""
import datetime
import logging
import os
import time

from appliance import hsmops, keys
from appliance.paths import SOFTHSM_CONF, estate_file
from lunaclient import certs, ha, ready
from lunaclient.conf import ConfError
from lunaclient.install import Install, pkcs11_library

log = logging.getLogger("estate.client")
TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin")


class ClientService:
    name = "client"

    def __init__(self):
        self.estate = self.install = self.library = None
        self._seen, self._groups, self._settings = None, [], None

    def start(self, estate):
        self.estate, world = estate, estate.world
        self.install = Install.in_estate(estate.dir)
        self.library, why = pkcs11_library()
        if why:
            log.warning("client library: %s; the client's PKCS#11 library is SoftHSM2 (%s): no HA virtual slots",
                        why, self.library)
        created = self.install.create(self.library, TOOLS_DIR)
        with world.lock:
            mine = world.s.setdefault("lunaclient", {"ha": {}, "ntls_ports": {}})
            if created and estate.options.get("client_ready"):
                ready.provision(estate, self.install)
            self._follow_ports(mine)
            world.changed()
            world.save_if_dirty()
        world.tickers.append(self.tick)
        world.control_routes["client"] = self.route
        estate.urls[self.name] = self.install.conf_path

    def stop(self):
        pass

    def _follow_ports(self, mine):
        ports = {name: state["ports"]["ntls"] for name, state in self.estate.world.s.get("appliances", {}).items()}
        moves = {old: ports[name] for name, old in mine["ntls_ports"].items() if ports.get(name, old) != old}
        if moves:
            self.install.follow_ports(moves)
        mine["ntls_ports"] = ports

    # HA --------------------------------------------------------------------------------
    def _config(self):
        """(groups, settings) from Chrystoki.conf, re-read only when the file changed."""
        try:
            st = os.stat(self.install.conf_path)
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen != self._seen:
                conf = self.install.load()
                self._groups, self._settings, self._seen = ha.groups(conf), ha.Settings(conf), seen
        except (OSError, ConfError) as e:
            log.warning("cannot read %s: %s (keeping the last HA configuration)", self.install.conf_path, e)
        return self._groups, self._settings

    def tick(self, world, now):
        groups, settings = self._config()
        if settings is None:
            return
        records = world.s["lunaclient"]["ha"]
        index = ha.partition_index(world.s.get("appliances", {}))
        changed = False
        for label in [label for label in records if label not in {g.label for g in groups}]:
            del records[label]
            changed = True
        for group in groups:
            members = records.setdefault(group.label, {})
            for serial in [s for s in members if s not in group.members]:
                del members[serial]
                changed = True
            for serial in group.members:
                alive = ha.alive(index, serial)
                if serial not in members:
                    members[serial] = ha.new_record(alive, now)
                    changed = True
                else:
                    changed = ha.step(members[serial], alive, settings, now) or changed
        if changed:
            world.changed()

    def route(self, method, rest, body):
        world = self.estate.world
        groups, settings = self._config()
        if (method, rest) == ("GET", ""):
            return 200, {"chrystoki_conf": self.install.conf_path, "settings": vars(settings) if settings else None,
                         "groups": [self._describe(world, g) for g in groups]}
        if (method, rest) == ("POST", "ha/recover"):
            group = next((g for g in groups if g.label == body.get("group")), None)
            if group is None:
                return 404, {"error": {"code": "GroupNotFound", "message": f"No HA group '{body.get('group')}'."}}
            index, now = ha.partition_index(world.s.get("appliances", {})), world.now()
            for serial, record in world.s["lunaclient"]["ha"].get(group.label, {}).items():
                ha.recover(record, ha.alive(index, serial), now)
            world.changed()
            return 200, self._describe(world, group)
        if (method, rest) == ("POST", "cert/age"):
            return self._age_cert(body.get("days_left"))
        return 404, {"error": {"code": "NotFound", "message": f"No client route {method} /{rest}."}}

    def _age_cert(self, days_left):
        """The client certificate as it will be when DAYS_LEFT days are left of it (negative:
        expired): re-issued with its key, and so on every appliance that registered it."""
        if not isinstance(days_left, (int, float)) or isinstance(days_left, bool):
            return 400, {"error": {"code": "BadRequest", "message": "days_left: expected a number of days"}}
        try:
            old, new = certs.age_client_cert(self.install, time.time(), days_left)
        except (OSError, TypeError, ValueError) as e:
            return 409, {"error": {"code": "NoClientCertificate", "message": f"No client certificate to age: {e}"}}
        cert_file, _ = self.install.client_files(self.install.load())
        old_fp = keys.fingerprint(keys.load_cert(old))
        registered = {name: hsmops.reissue_client_cert(dev, old_fp, cert_file)
                      for name, dev in self.estate.devices.items()}
        not_after = keys.load_cert(new).not_valid_after.replace(tzinfo=datetime.timezone.utc).isoformat()
        return 200, {"cert": cert_file, "not_after": not_after,
                     "appliances": {name: names for name, names in registered.items() if names}}

    @staticmethod
    def _describe(world, group):
        index = ha.partition_index(world.s.get("appliances", {}))
        records = world.s["lunaclient"]["ha"].get(group.label, {})
        members = []
        for serial in group.members:
            state, part = index.get(serial, ({}, {}))
            record = records.get(serial, {"status": ha.DOWN, "attempts": 0})
            members.append({"serial": serial, "status": record["status"], "attempts": record["attempts"],
                            "appliance": state.get("name"), "partition": part.get("name"), "label": part.get("label")})
        return {"label": group.label, "serial": group.serial, "members": members}

    # estate.json / inventory.json ------------------------------------------------------
    def describe(self):
        return {"probe": "none", "chrystoki_conf": self.install.conf_path}

    def _paths(self):
        return {"chrystoki_conf": self.install.conf_path, "lunacm": os.path.join(TOOLS_DIR, "lunacm"),
                "vtl": os.path.join(TOOLS_DIR, "vtl"), "pkcs11_lib": self.library,
                "softhsm_conf": estate_file(self.estate.dir, SOFTHSM_CONF),
                "key_passphrase": "file:" + self.install.key_passphrase_path}

    def contribute(self, inventory):
        inventory["client"] = self._paths()

    def estate_entry(self):
        return {"client": {**self._paths(), "dir": self.install.root, "ca_file": self.install.ca_file(),
                           "ready_client": ready.CLIENT_NAME, "ready_partition": ready.PARTITION}}
