"""One running appliance: its listeners, SSH sessions, clock, syslog and power states.

Reachability follows `status`:
  up         SSH and NTLS answer (NTLS subject to `service stop ntls` and the ntls fault)
  rebooting  `sysconf appliance reboot` with the KB0019789 fix: unreachable for
             reboot_seconds (sim time), then up again; sessions were closed
  hung       the same reboot without the fix: never comes back until the control
             action hard-reboot (the guide's support request)
  off        powered off (control `down`): sessions freeze, ports drop SYNs
  cut        a network change moved the admin interface: the session freezes and the
             appliance stays unreachable until the control action support-reset
  pool       not bound to any ARM dedicatedHSMs resource (returned to Microsoft)
Unreachable ports drop SYNs (connect timeout), they do not refuse.
"""
import contextlib
import os
import shutil
import threading
import time

from appliance import hsmops, keys, model, ntls, sshd
from appliance.listener import Listener
from appliance.paths import Paths
from appliance.syslog import Syslog

SESSION_ACTIONS = ("close", "freeze", "reset")


class Device:
    def __init__(self, estate, name, tokens):
        self.estate, self.world, self.name, self.tokens = estate, estate.world, name, tokens
        self.paths = Paths(estate.dir, name)
        self.syslog = Syslog(self.paths.syslog, self.now, lambda: self.state["hostname"])
        self.ntls = ntls.NtlsServer(self)
        self.host_key = self.ssh_listener = self.ntls_listener = None
        self.host_keys = []
        self._sessions, self._sessions_lock = set(), threading.Lock()
        self.on_identity_change = lambda: None  # the service rewrites known_hosts and estate.json

    @property
    def state(self):
        return self.world.s["appliances"][self.name]

    def now(self):
        """The appliance's own clock (syslog, `status date`, certificates): wall time plus the
        clock_skew fault. Timers (Auditor lockout, reboots) run on the sim clock, world.now(),
        so `estate advance` can skip them without making the appliance's date wrong."""
        return time.time() + self.state["faults"]["clock_skew"]

    @contextlib.contextmanager
    def mutate(self):
        with self.world.lock:
            yield self.state
            self.world.save_if_dirty()

    # lifecycle ----------------------------------------------------------------------
    def start(self):
        os.makedirs(self.paths.home, mode=0o700, exist_ok=True)
        self._load_host_keys()
        if not os.path.exists(self.paths.ntls_cert):
            self.regen_cert()
        self._publish_server_cert()
        ports = self.state["ports"]
        self.ssh_listener = Listener(f"{self.name}-ssh", ports["ssh"], lambda conn, addr: sshd.serve(self, conn, addr))
        self.ntls_listener = Listener(f"{self.name}-ntls", ports["ntls"], self.ntls.handle)
        ports.update(ssh=self.ssh_listener.port, ntls=self.ntls_listener.port)
        self.ntls.load()
        self.world.changed()
        self.apply()

    def stop(self):
        for listener in (self.ssh_listener, self.ntls_listener):
            if listener:
                listener.close()
        self.sessions("close")

    def apply(self):
        """Set both listeners from status, NTLS service state and faults."""
        state = self.state
        up = state["status"] == "up"
        self.ssh_listener.set_mode("open" if up else "blackhole")
        ntls_mode = {"open": "open", "refuse": "refuse", "drop": "blackhole"}[state["faults"]["ntls"]]
        if not model.ntls_listening(state):
            ntls_mode = "refuse"
        self.ntls_listener.set_mode(ntls_mode if up else "blackhole")

    # sessions -----------------------------------------------------------------------
    def add_session(self, session):
        with self._sessions_lock:
            self._sessions.add(session)

    def remove_session(self, session):
        with self._sessions_lock:
            self._sessions.discard(session)

    def sessions(self, action):
        """close (clean), freeze (path gone) or reset (RST) every SSH session."""
        with self._sessions_lock:
            current = list(self._sessions)
        for session in current:
            getattr(session, action)()

    # status -------------------------------------------------------------------------
    def set_status(self, status, sessions=None, until=None):
        self.state.update(status=status, until=until)
        self.world.changed()
        self.apply()  # the ports first: a client whose session ends must find them as the status says
        if sessions:
            self.sessions(sessions)

    def reboot(self, hard=False):
        """`sysconf appliance reboot` (hard=False) or the support hard reboot (hard=True)."""
        self.syslog.write("kernel", 0, "reboot: Restarting system")
        if hard or self.state["packages"][model.REBOOT_FIX]:
            self.set_status("rebooting", "close", until=self.world.now() + self.world.knob("reboot_seconds"))
        else:
            self.set_status("hung", "close")  # the guide: the system stops responding during reboot

    def power(self, on):
        if on:
            self._boot()
            self.set_status("up", "reset")
        else:
            self.set_status("off", "freeze")

    def cut_network(self):
        self.set_status("cut", "freeze")

    def support_reset(self):
        """The guide's reset after a network change: "all configuration and key material is lost" -
        factory state (hsmops.factory_reset) and new SSH host keys, which DIR/known_hosts does not
        learn (the operator's file still holds the old ones, as in reality). -> the new keys'
        fingerprints, {"rsa": "SHA256:...", "ed25519": "SHA256:..."}."""
        hsmops.factory_reset(self)
        self.new_host_key(publish=False)
        self._boot()
        self.set_status("up", "reset")
        return {"host_keys": keys.fingerprints(self.host_keys)}

    def release_to_pool(self):
        hsmops.factory_reset(self)
        self.state["resource"] = None
        self.set_status("pool", "close")

    def bind(self, resource_id, resource_name, ip):
        self.state.update(resource={"id": resource_id, "name": resource_name}, provisioned_ip=ip)
        self.state["network"] = model.default_network(ip, self.state["serial"])
        self._boot()
        self.set_status("up", "reset")

    def tick(self, now):
        if self.state["status"] == "rebooting" and now >= self.state["until"]:
            self._boot()
            self.set_status("up")

    def _boot(self):
        self.syslog.write("kernel", 0, "Linux version 3.10.0-1062.el7.x86_64 (Luna Network HSM 7)")
        self.set_ntls(True, apply=False)

    def set_ntls(self, running, apply=True):
        """Start (with the newest certificate and binding) or stop the NTLS service."""
        ntls = self.state["ntls"]
        if running:
            ntls.update(pid=model.new_ntls_pid(), running=True, bound=ntls["bind"])
            self.ntls.load()
            self.syslog.write("NTLS", ntls["pid"], "info : 0 : NTLS service started")
        else:
            ntls["running"] = False
            self.syslog.write("NTLS", ntls["pid"], "info : 0 : NTLS service stopped")
        self.world.changed()
        if apply:
            self.apply()

    # identity -----------------------------------------------------------------------
    def regen_cert(self):
        """A new NTLS key pair (used by NTLS only after its next start)."""
        os.makedirs(os.path.dirname(self.paths.ntls_cert), mode=0o700, exist_ok=True)
        keys.make_server_cert(self.paths.ntls_key, self.paths.ntls_cert, self.state["hostname"],
                              ["127.0.0.1", model.admin_ip(self.state) or "127.0.0.1"], self.now())
        self._publish_server_cert()

    def _publish_server_cert(self):
        os.makedirs(self.paths.home, mode=0o700, exist_ok=True)
        shutil.copyfile(self.paths.ntls_cert, self.paths.home_file("server.pem"))

    def _load_host_keys(self):
        """RSA first: the key the real appliance offered (and known_hosts lists); ed25519 too."""
        self.host_key = keys.ensure_key_pair(self.paths.host_key_rsa, f"root@{self.name}", "rsa")
        self.host_keys = [self.host_key, keys.ensure_key_pair(self.paths.host_key, f"root@{self.name}")]

    def new_host_key(self, publish=True):
        """New RSA and ed25519 host keys; PUBLISH: DIR/known_hosts (and estate.json) follow."""
        keys.make_key_pair(self.paths.host_key_rsa, f"root@{self.name}", "rsa")
        keys.make_key_pair(self.paths.host_key, f"root@{self.name}")
        self._load_host_keys()
        if publish:
            self.on_identity_change()
