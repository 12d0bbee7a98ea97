"""The services an estate runs, each contributing to estate.json and inventory.json.

A service has start(estate), stop(), describe() -> its estate.json entry
({url, port, probe}) and contribute(inventory). The daemon starts SERVICES in
order: ARM and identity, then the Luna appliances (inventory["hsms"]), then the
client install the lunacm/vtl stand-ins work on (inventory["client"]).
`probe` tells `estate start` how to check the service answers: "tls" (TCP +
TLS handshake against DIR/ca.pem) or "tcp".
"""
import os

import arm
import control
import deployments
import hsm
import identity
import network
import resources
import seed
from appliance.service import ApplianceService
from faultgate import FaultGate
from httpserver import SimHTTPServer
from lunaclient.service import ClientService

ARM_PROVIDERS = (resources, network, hsm, deployments)


class Estate:
    """What services share: the directory, CA, world, tokens, stats, control secret and start options."""

    def __init__(self, estate_dir, pki, world, tokens, stats, control_secret, options=None):
        self.dir, self.pki, self.world, self.tokens = estate_dir, pki, world, tokens
        self.stats, self.control_secret, self.options = stats, control_secret, options or {}
        self.urls = {}  # service name -> base URL, filled as services start
        self.devices = {}  # appliance name -> Device, filled by the appliance service

    def url(self, name):
        return lambda: self.urls[name]

    def gate(self, service):
        return lambda errors: FaultGate(self.world, service, errors)


class HttpService:
    name, tls = None, True

    def __init__(self):
        self.server = None

    def app(self, estate):
        raise NotImplementedError

    def start(self, estate):
        ctx = estate.pki.server_context() if self.tls else None
        self.server = SimHTTPServer(self.name, self.app(estate), estate.stats, ctx)
        estate.urls[self.name] = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.port}"
        self.url = estate.urls[self.name]
        self.server.serve_in_thread()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def describe(self):
        return {"url": self.url, "port": self.server.port, "probe": "tls" if self.tls else "tcp"}

    def contribute(self, inventory):
        pass


class LoginService(HttpService):
    """The authority (login.microsoftonline.com stand-in)."""
    name = "aad"

    def app(self, estate):
        return identity.LoginApp(estate.world, estate.tokens, estate.gate("aad")(identity.OAuthFaults(estate.url("aad"))),
                                 estate.url("aad"), estate.url("arm"))


class ArmService(HttpService):
    name = "arm"

    def app(self, estate):
        self.estate = estate
        ctl = control.Control(estate.world, estate.tokens, estate.stats, estate.control_secret)
        app = arm.ArmApp(estate.world, estate.tokens, estate.gate("arm"), ctl, estate.url("aad"))
        for provider in ARM_PROVIDERS:
            provider.register(app)
        self.app_obj = app
        return app

    def start(self, estate):
        super().start(estate)
        self.app_obj.port = self.server.port

    def describe(self):
        return {**super().describe(), "control_url": self.url + "/_sim"}

    def contribute(self, inventory):
        s, estate = self.estate.world.s, self.estate
        inventory["azure"] = {
            "subscription": next(iter(s["subscriptions"].values()))["id"], "tenant": s["tenant"],
            "resource_group": s.get("resource_group", "hsm-rg"), "location": s["location"],
            "credential": {"type": "client_secret", "client_id": s["principal"]["client_id"],
                           "secret": "file:" + os.path.join(estate.dir, seed.SECRET_FILE)},
            "endpoint": self.url, "authority": estate.urls["aad"], "ca_file": estate.pki.ca_file}


class ImdsService(HttpService):
    """Managed identity, plain HTTP like 169.254.169.254."""
    name, tls = "imds", False

    def app(self, estate):
        return identity.ImdsApp(estate.world, estate.tokens, estate.gate("imds")(identity.ImdsFaults()),
                                estate.url("arm"))

    def describe(self):
        return {**super().describe(), "token_url": self.url + "/metadata/identity/oauth2/token"}


SERVICES = [LoginService, ArmService, ImdsService, ApplianceService, ClientService]
