#!/usr/bin/python3
"""Self-test of the simulated ARM: starts an estate in a temporary directory,
drives every main flow and every fault over HTTPS (urllib + ssl, verified
against DIR/ca.pem), stops it. Last line: "N passed, N failed".

    /usr/bin/python3 tests/sim/arm_selftest.py [-v] [TestName ...]
"""
import base64
import datetime
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ESTATE = os.path.join(HERE, "estate")
AZ = os.path.join(HERE, "bin", "az")
sys.path.insert(0, HERE)

from estate_client import EstateClient  # noqa: E402

HSM_API, HSM_API_2024, HSM_API_2018 = "2021-11-30", "2024-06-30-preview", "2018-10-31-preview"
NET_API, RES_API = "2023-04-01", "2021-04-01"
A790 = "SafeNet Luna Network HSM A790"
# Fast timings (a whole HSM lifecycle in ~0.2 s), restored before every test so a failed
# test cannot leave a slow or short-lived setting behind for the next one.
SETTINGS = {"hsm_step_seconds": "0.05", "gateway_seconds": "0.3", "delete_seconds": "0.2",
            "network_seconds": "0.05", "token_lifetime": "3599", "retry_after": "1"}
# No Luna appliances: their seeded HSM resources would count against the quotas tested here.
START_FLAGS = ["--appliances", "0"] + [arg for name, value in SETTINGS.items()
                                       for arg in ("--set", f"{name}={value}")]
# Tests share one subscription: quota stays out of the way except where a test sets it.
GENEROUS = {"quota_per_stamp": "50", "quota_per_region": "100"}


def run_estate(*args, check=True):
    proc = subprocess.run([ESTATE, *args], capture_output=True, text=True, timeout=90)
    if check and proc.returncode != 0:
        raise AssertionError(f"estate {' '.join(args)} failed: {proc.stderr}")
    return proc


class Reply:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, {k.lower(): v for k, v in headers.items()}, raw
        self.json = json.loads(raw) if raw.strip() else None

    def error_code(self):
        return (self.json or {}).get("error", {}).get("code")


class Arm:
    """A minimal ARM client over urllib, with the estate's CA."""

    def __init__(self, estate_dir):
        self.client = EstateClient(estate_dir)
        inv = json.load(open(os.path.join(estate_dir, "inventory.json")))["azure"]
        self.inv, self.endpoint, self.sub = inv, inv["endpoint"], inv["subscription"]
        self.ctx = ssl.create_default_context(cafile=inv["ca_file"])
        self.secret = open(inv["credential"]["secret"][len("file:"):]).read().strip()
        self.token = self.new_token()

    def form_token(self, **overrides):
        form = {"client_id": self.inv["credential"]["client_id"], "client_secret": self.secret,
                "grant_type": "client_credentials", "scope": "https://management.azure.com/.default"}
        form.update(overrides)
        tenant = form.pop("tenant", self.inv["tenant"])
        return self.raw("POST", f"{self.inv['authority']}/{tenant}/oauth2/v2.0/token",
                        urllib.parse.urlencode(form).encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})

    def new_token(self):
        reply = self.form_token()
        assert reply.status == 200, reply.raw
        return reply.json["access_token"]

    def raw(self, method, url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, dict(e.headers), e.read())

    def url(self, path, api):
        if path.startswith("https://"):
            return path
        sep = "&" if "?" in path else "?"
        return f"{self.endpoint}{path}{sep}api-version={api}" if api else f"{self.endpoint}{path}"

    def call(self, method, path, api=None, body=None, headers=None, token=None):
        hdrs = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return self.raw(method, self.url(path, api), data, hdrs)

    # paths -----------------------------------------------------------------
    def rg(self, rg=""):
        return f"/subscriptions/{self.sub}/resourceGroups/{rg}"

    def hsm(self, name, rg="hsm-rg"):
        return f"{self.rg(rg)}/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs/{name}"

    def net(self, rtype, name, rg="hsm-rg"):
        return f"{self.rg(rg)}/providers/Microsoft.Network/{rtype}/{name}"

    def subnet_id(self, subnet="hsm", vnet="hsm-vnet", rg="hsm-rg"):
        return self.net("virtualNetworks", f"{vnet}/subnets/{subnet}", rg)

    def hsm_body(self, subnet_id, ip=None, stamp=None, field="id", location="eastus"):
        props = {"networkProfile": {"subnet": {field: subnet_id},
                                    "networkInterfaces": [{"privateIpAddress": ip}] if ip else []}}
        if stamp:
            props["stampId"] = stamp
        return {"location": location, "sku": {"name": A790}, "properties": props}

    def control(self, method, path, body=None):
        return self.client.control(method, path, body)


def wait_for(fn, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


ESTATE_DIR = None
ARM = None


def setUpModule():
    global ESTATE_DIR, ARM
    ESTATE_DIR = tempfile.mkdtemp(prefix="dhsm-estate-")
    run_estate("start", "--dir", ESTATE_DIR, *START_FLAGS)
    ARM = Arm(ESTATE_DIR)


def tearDownModule():
    run_estate("stop", "--dir", ESTATE_DIR, check=False)
    shutil.rmtree(ESTATE_DIR, ignore_errors=True)


class EstateCase(unittest.TestCase):
    def setUp(self):
        self.arm = ARM
        self.arm.control("POST", "faults/clear")
        self.arm.control("POST", "faults", {**SETTINGS, **GENEROUS})

    def faults(self, **values):
        self.arm.control("POST", "faults", {k: str(v) for k, v in values.items()})

    def create_hsm(self, name, rg="hsm-rg", subnet="hsm", **kw):
        reply = self.arm.call("PUT", self.arm.hsm(name, rg), HSM_API,
                              self.arm.hsm_body(self.arm.subnet_id(subnet), **kw))
        self.assertEqual(reply.status, 200, reply.raw)
        return reply

    def hsm_state(self, name, rg="hsm-rg", api=HSM_API):
        return self.arm.call("GET", self.arm.hsm(name, rg), api).json["properties"]

    def wait_terminal(self, name, rg="hsm-rg"):
        return wait_for(lambda: (lambda p: p if p["provisioningState"] in ("Succeeded", "Failed") else None)(
            self.hsm_state(name, rg)))

    def poll_location(self, reply, final_status, timeout=5):
        location = reply.headers["location"]
        seen = []

        def done():
            r = self.arm.call("GET", location)
            seen.append(r.status)
            return r if r.status != 202 else None
        final = wait_for(done, timeout)
        self.assertEqual(final.status, final_status, seen)
        return final, seen

    def wait_async(self, reply, timeout=5):
        url = reply.headers["azure-asyncoperation"]
        return wait_for(lambda: (lambda j: j if j["status"] not in ("InProgress", "Running", "Accepted") else None)(
            self.arm.call("GET", url).json), timeout)

    def make_network(self, rg, location="eastus", prefix="10.9", gateway=True):
        """A group with a delegated hsm subnet, GatewaySubnet and (optionally) an ER gateway being created."""
        self.assertIn(self.arm.call("PUT", self.arm.rg(rg), RES_API, {"location": location}).status, (200, 201))
        vnet = {"location": location, "properties": {
            "addressSpace": {"addressPrefixes": [f"{prefix}.0.0/16"]},
            "subnets": [{"name": "hsm", "properties": {"addressPrefix": f"{prefix}.1.0/24", "delegations": [
                {"name": "0", "properties": {"serviceName": "Microsoft.HardwareSecurityModules/dedicatedHSMs"}}]}},
                        {"name": "GatewaySubnet", "properties": {"addressPrefix": f"{prefix}.255.0/26"}}]}}
        reply = self.arm.call("PUT", self.arm.net("virtualNetworks", "vnet", rg), NET_API, vnet)
        self.assertEqual(reply.status, 201, reply.raw)
        self.wait_async(reply)
        if not gateway:
            return None
        reply = self.arm.call("PUT", self.arm.net("publicIPAddresses", "gw-pip", rg), NET_API,
                              {"location": location, "sku": {"name": "Standard"},
                               "properties": {"publicIPAllocationMethod": "Static"}})
        self.wait_async(reply)
        gw = {"location": location, "properties": {
            "gatewayType": "ExpressRoute", "vpnType": "RouteBased", "sku": {"name": "Standard", "tier": "Standard"},
            "ipConfigurations": [{"name": "cfg0", "properties": {
                "subnet": {"id": self.arm.subnet_id("GatewaySubnet", "vnet", rg)},
                "publicIPAddress": {"id": self.arm.net("publicIPAddresses", "gw-pip", rg)}}}]}}
        reply = self.arm.call("PUT", self.arm.net("virtualNetworkGateways", "ergw", rg), NET_API, gw)
        self.assertEqual(reply.status, 201, reply.raw)
        return reply


class TokenTest(EstateCase):
    def test_client_credentials_errors_are_aadsts_shaped(self):
        cases = [({"client_secret": "wrong"}, 401, "invalid_client", 7000215),
                 ({"client_id": "00000000-0000-0000-0000-000000000000"}, 400, "unauthorized_client", 700016),
                 ({"tenant": "11111111-1111-1111-1111-111111111111"}, 400, "invalid_request", 90002),
                 ({"scope": "https://management.azure.com/user_impersonation"}, 400, "invalid_scope", 1002012),
                 ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003)]
        for overrides, status, error, code in cases:
            reply = self.arm.form_token(**overrides)
            self.assertEqual(reply.status, status, overrides)
            self.assertEqual(reply.json["error"], error)
            self.assertEqual(reply.json["error_codes"], [code])
            self.assertTrue(reply.json["error_description"].startswith(f"AADSTS{code}:"))
            for key in ("timestamp", "trace_id", "correlation_id"):
                self.assertIn(key, reply.json)
            self.assertNotIn(self.arm.secret, reply.raw.decode())

    def test_token_shape_and_lifetime(self):
        self.faults(token_lifetime=1)
        reply = self.arm.form_token()
        self.assertEqual(list(reply.json), ["token_type", "expires_in", "ext_expires_in", "access_token"])
        self.assertEqual(reply.json["expires_in"], 1)
        token = reply.json["access_token"]
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, token=token).status, 200)
        time.sleep(1.1)
        expired = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, token=token)
        self.assertEqual((expired.status, expired.error_code()), (401, "ExpiredAuthenticationToken"))

    def test_missing_invalid_and_expired_bearer(self):
        missing = self.arm.raw("GET", self.arm.url(self.arm.rg("hsm-rg"), RES_API))
        self.assertEqual((missing.status, missing.error_code()), (401, "AuthenticationFailed"))
        self.assertIn('error="invalid_token"', missing.headers["www-authenticate"])
        bogus = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, token="not-a-token")
        self.assertEqual((bogus.status, bogus.error_code()), (401, "InvalidAuthenticationToken"))
        self.faults(expire_tokens=1)
        expired = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API)
        self.assertEqual((expired.status, expired.error_code()), (401, "ExpiredAuthenticationToken"))
        self.assertRegex(expired.json["error"]["message"],
                         r"^The access token expiry UTC time '.+' is earlier than current UTC time '.+'\.$")
        self.assertIn("The access token has expired.", expired.headers["www-authenticate"])
        self.arm.token = self.arm.new_token()  # refresh: the new token works
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API).status, 200)

    def test_managed_identity(self):
        url = self.arm.client.info["services"]["imds"]["token_url"] + \
              "?api-version=2018-02-01&resource=https://management.azure.com/"
        no_header = self.arm.raw("GET", url)
        self.assertEqual((no_header.status, no_header.json["error"]), (400, "bad_request_102"))
        reply = self.arm.raw("GET", url, headers={"Metadata": "true"})
        self.assertEqual(reply.status, 200)
        for key in ("expires_in", "expires_on", "not_before"):
            self.assertIsInstance(reply.json[key], str)
        self.assertEqual(reply.json["token_type"], "Bearer")
        ok = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, token=reply.json["access_token"])
        self.assertEqual(ok.status, 200)
        self.faults(managed_identity=0)
        gone = self.arm.raw("GET", url, headers={"Metadata": "true"})
        self.assertEqual((gone.status, gone.json["error_description"]), (400, "Identity not found"))

    def test_az_stand_in(self):
        env = {**os.environ, "DHSM_ESTATE_DIR": ESTATE_DIR}
        out = subprocess.run([AZ, "account", "get-access-token", "--resource", "https://management.azure.com/",
                              "--output", "json"], capture_output=True, text=True, env=env, check=True)
        doc = json.loads(out.stdout)
        self.assertEqual(sorted(doc), sorted(["accessToken", "expiresOn", "expires_on", "subscription", "tenant",
                                              "tokenType"]))
        self.assertIsInstance(doc["expires_on"], int)
        self.assertRegex(doc["expiresOn"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
        hsm_reply = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, token=doc["accessToken"])
        self.assertEqual(hsm_reply.status, 200)
        env.pop("DHSM_ESTATE_DIR")
        logged_out = subprocess.run([AZ, "account", "get-access-token"], capture_output=True, text=True, env=env)
        self.assertEqual(logged_out.returncode, 1)
        self.assertIn("az login", logged_out.stderr)


class ProtocolTest(EstateCase):
    def test_standard_headers(self):
        reply = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API, headers={"x-ms-correlation-request-id": "c-1"})
        self.assertEqual(reply.headers["x-ms-correlation-request-id"], "c-1")
        self.assertTrue(reply.headers["x-ms-request-id"])
        self.assertIn("x-ms-ratelimit-remaining-subscription-reads", reply.headers)
        put = self.arm.call("PATCH", self.arm.rg("hsm-rg"), RES_API, {"tags": {"t": "1"}})
        self.assertIn("x-ms-ratelimit-remaining-subscription-writes", put.headers)
        gone = self.arm.call("DELETE", self.arm.hsm("never-was"), HSM_API)
        self.assertEqual(gone.status, 204)
        self.assertIn("x-ms-ratelimit-remaining-subscription-deletes", gone.headers)
        self.assertEqual(gone.headers["server"], "Microsoft-IIS/10.0")

    def test_api_version_errors(self):
        missing = self.arm.call("GET", self.arm.hsm("x1x"))
        self.assertEqual((missing.status, missing.error_code()), (400, "MissingApiVersionParameter"))
        unknown = self.arm.call("GET", self.arm.hsm("x1x"), "2099-01-01")
        self.assertEqual((unknown.status, unknown.error_code()), (400, "NoRegisteredProviderFound"))
        self.assertIn("2021-11-30", unknown.json["error"]["message"])
        malformed = self.arm.call("GET", self.arm.rg("hsm-rg"), "yesterday")
        self.assertEqual((malformed.status, malformed.error_code()), (400, "InvalidApiVersionParameter"))

    def test_bad_input(self):
        bad_json = self.arm.call("PUT", self.arm.hsm("hsm-bad"), HSM_API, b"{not json")
        self.assertEqual((bad_json.status, bad_json.error_code()), (400, "InvalidRequestContent"))
        bad_sub = self.arm.call("GET", "/subscriptions/not-a-guid/resourceGroups/x", RES_API)
        self.assertEqual((bad_sub.status, bad_sub.error_code()), (400, "InvalidSubscriptionId"))
        bad_name = self.arm.call("PUT", self.arm.hsm("a_b"), HSM_API, self.arm.hsm_body(self.arm.subnet_id()))
        self.assertEqual((bad_name.status, bad_name.error_code()), (400, "InvalidResourceName"))
        self.assertNotIn("details", bad_name.json["error"])  # HSM RP dialect
        no_sku = self.arm.call("PUT", self.arm.hsm("hsm-nosku"), HSM_API, {"location": "eastus", "properties": {}})
        self.assertEqual(no_sku.json["error"]["innererror"]["code"], "MissingRequiredProperty")
        no_group = self.arm.call("GET", self.arm.hsm("x1x", rg="no-such-rg"), HSM_API)
        self.assertEqual((no_group.status, no_group.error_code()), (404, "ResourceGroupNotFound"))
        no_hsm = self.arm.call("GET", self.arm.hsm("nothere"), HSM_API)
        self.assertEqual((no_hsm.status, no_hsm.error_code()), (404, "ResourceNotFound"))
        net_err = self.arm.call("PUT", self.arm.net("virtualNetworks", "v-bad"), NET_API, {"location": "eastus"})
        self.assertEqual(net_err.status, 400)
        self.assertIn("details", net_err.json["error"])  # common dialect

    def test_keep_alive_and_connection_count(self):
        self.arm.control("POST", "stats/reset")
        host = urllib.parse.urlsplit(self.arm.endpoint)
        conn = http.client.HTTPSConnection(host.hostname, host.port, context=self.arm.ctx)
        for _ in range(10):
            conn.request("GET", self.arm.url(self.arm.hsm("x1x"), HSM_API)[len(self.arm.endpoint):],
                         headers={"Authorization": f"Bearer {self.arm.token}"})
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 404)
        conn.close()
        stats = self.arm.control("GET", "stats")
        self.assertEqual((stats["connections"], stats["requests"]), (1, 10))

    def test_control_endpoint_needs_its_token(self):
        reply = self.arm.raw("GET", self.arm.endpoint + "/_sim/state")
        self.assertEqual(reply.status, 401)
        bad = run_estate("fault", "--dir", ESTATE_DIR, "nonsense=1", check=False)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("valid names", bad.stderr)
        again = run_estate("start", "--dir", ESTATE_DIR, check=False)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("already running", again.stderr)


class TransportFaultTest(EstateCase):
    def test_throttle_targets_a_path(self):
        self.faults(throttle="2:dedicatedHSMs", retry_after=3)
        other = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API)
        self.assertEqual(other.status, 200)
        for _ in range(2):
            reply = self.arm.call("GET", self.arm.hsm("x1x"), HSM_API)
            self.assertEqual((reply.status, reply.error_code()), (429, "SubscriptionRequestsThrottled"))
            self.assertEqual(reply.headers["retry-after"], "3")
        self.assertEqual(self.arm.call("GET", self.arm.hsm("x1x"), HSM_API).status, 404)

    def test_5xx_burst(self):
        self.faults(fail5xx=2)
        first, second = (self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API) for _ in range(2))
        self.assertEqual((first.status, first.error_code()), (500, "InternalServerError"))
        self.assertEqual((second.status, second.error_code()), (503, "ServiceUnavailable"))
        self.assertIn("retry-after", second.headers)
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API).status, 200)

    def test_5xx_after_processing(self):
        self.faults(fail5xx_after="1:PUT")
        reply = self.arm.call("PUT", self.arm.rg("rg-taken"), RES_API, {"location": "eastus"})
        self.assertEqual((reply.status, reply.error_code()), (500, "InternalServerError"))
        # the PUT took effect although its reply said it failed
        self.assertEqual(self.arm.call("GET", self.arm.rg("rg-taken"), RES_API).status, 200)

    def test_connection_reset_mid_response(self):
        self.faults(reset=1)
        with self.assertRaises((ConnectionError, http.client.HTTPException, urllib.error.URLError, ssl.SSLError)):
            self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API)
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API).status, 200)

    def test_slow_responses(self):
        self.faults(delay_ms="300:resourceGroups/hsm-rg")
        started = time.monotonic()
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API).status, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.3)

    def test_forbidden(self):
        self.faults(forbid=1)
        reply = self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API)
        self.assertEqual((reply.status, reply.error_code()), (403, "AuthorizationFailed"))

    def test_denied_by_policy(self):
        self.faults(deny_policy="1:PUT /subscriptions")
        self.assertEqual(self.arm.call("GET", self.arm.rg("hsm-rg"), RES_API).status, 200, "a GET is not matched")
        reply = self.arm.call("PUT", self.arm.rg("rg-denied"), RES_API, {"location": "eastus"})
        self.assertEqual((reply.status, reply.error_code()), (403, "RequestDisallowedByPolicy"))
        message = reply.json["error"]["message"]
        self.assertIn("'rg-denied' was disallowed by policy", message)
        self.assertNotIn("authorization to perform action", message, "no permission is named")
        self.assertEqual(self.arm.call("GET", self.arm.rg("rg-denied"), RES_API).status, 404,
                         "the denied PUT created nothing")
        self.assertEqual(self.arm.call("PUT", self.arm.rg("rg-denied"), RES_API, {"location": "eastus"}).status, 201)


class ResourceGroupTest(EstateCase):
    def test_create_get_delete_with_location_polling(self):
        path = self.arm.rg("rg-life")
        self.assertEqual(self.arm.call("PUT", path, RES_API, {"location": "eastus"}).status, 201)
        self.assertEqual(self.arm.call("PUT", path, RES_API, {"location": "eastus"}).status, 200)
        self.assertEqual(self.arm.call("HEAD", path, RES_API).status, 204)
        got = self.arm.call("GET", path, RES_API).json
        self.assertEqual(list(got), ["id", "name", "type", "location", "properties"])
        reply = self.arm.call("DELETE", path, RES_API)
        self.assertEqual(reply.status, 202)
        self.assertIn("/operationresults/", reply.headers["location"])
        self.assertIn("retry-after", reply.headers)
        final, seen = self.poll_location(reply, 200)
        self.assertEqual(final.raw, b"")
        self.assertEqual(self.arm.call("GET", path, RES_API).error_code(), "ResourceGroupNotFound")

    def test_features(self):
        path = (f"/subscriptions/{self.arm.sub}/providers/Microsoft.Features/providers/"
                "Microsoft.HardwareSecurityModules/features/AzureDedicatedHSM")
        self.assertEqual(self.arm.call("GET", path, "2015-12-01").json["properties"]["state"], "Registered")
        reply = self.arm.call("POST", path + "/register", "2015-12-01")
        self.assertEqual(reply.json["properties"]["state"], "Registered")


class NetworkTest(EstateCase):
    def test_vnet_subnets_gateway_lifecycle(self):
        reply = self.make_network("rg-net", prefix="10.20")
        self.assertEqual(reply.json["properties"]["provisioningState"], "Updating")
        self.assertEqual(reply.headers["azure-asyncnotification"], "Enabled")
        self.assertEqual(self.arm.call("GET", reply.headers["azure-asyncoperation"]).json, {"status": "InProgress"})
        self.assertEqual(self.wait_async(reply), {"status": "Succeeded"})
        gw = self.arm.call("GET", self.arm.net("virtualNetworkGateways", "ergw", "rg-net"), NET_API).json
        self.assertEqual((gw["properties"]["provisioningState"], gw["properties"]["gatewayType"]),
                         ("Succeeded", "ExpressRoute"))
        subnet = self.arm.call("GET", self.arm.subnet_id("hsm", "vnet", "rg-net"), NET_API).json
        delegation = subnet["properties"]["delegations"][0]
        self.assertEqual(delegation["type"], "Microsoft.Network/virtualNetworks/subnets/delegations")
        self.assertIn("Microsoft.Network/virtualNetworks/subnets/join/action", delegation["properties"]["actions"])
        self.assertEqual(subnet["properties"]["purpose"], "HostedWorkloads")
        in_use = self.arm.call("DELETE", self.arm.subnet_id("GatewaySubnet", "vnet", "rg-net"), NET_API)
        self.assertEqual((in_use.status, in_use.error_code()), (400, "InUseSubnetCannotBeDeleted"))
        deleting = self.arm.call("DELETE", self.arm.net("virtualNetworkGateways", "ergw", "rg-net"), NET_API)
        self.assertEqual(deleting.status, 202)
        self.assertIn("azure-asyncoperation", deleting.headers)
        self.poll_location(deleting, 204)


class HsmTest(EstateCase):
    def test_lifecycle_as_recorded(self):
        self.faults(hsm_step_seconds=0.15)
        reply = self.create_hsm("hsm-life", ip="10.2.1.20")
        self.assertNotIn("azure-asyncoperation", reply.headers)
        self.assertNotIn("location", reply.headers)
        self.assertEqual(list(reply.json), ["sku", "id", "name", "type", "location", "systemData", "properties"])
        self.assertEqual(reply.json["type"], "Microsoft.HardwareSecurityModules/dedicatedHSMs")
        self.assertEqual(reply.json["properties"]["provisioningState"], "CheckingQuota")
        self.assertEqual(reply.json["properties"]["networkProfile"]["networkInterfaces"],
                         [{"privateIpAddress": "10.2.1.20"}])
        seen = ["CheckingQuota"]

        def succeeded():
            state = self.hsm_state("hsm-life")["provisioningState"]
            if state != seen[-1]:
                seen.append(state)
            return state == "Succeeded"
        wait_for(succeeded, interval=0.03)
        self.assertEqual(seen, ["CheckingQuota", "Allocating", "Connecting", "Provisioning", "Succeeded"])
        props = self.hsm_state("hsm-life")
        self.assertEqual(props["statusMessage"], "The Dedicated HSM device is provisioned successfully and ready to use.")
        nic_id = props["networkProfile"]["networkInterfaces"][0]["id"]
        self.assertTrue(nic_id.endswith("/networkInterfaces/hsm-life_HSMnic"))
        nic = self.arm.call("GET", nic_id, NET_API).json
        self.assertEqual(nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"], "10.2.1.20")
        patched = self.arm.call("PATCH", self.arm.hsm("hsm-life"), HSM_API, {"tags": {"Dept": "hsm"}})
        self.assertEqual((patched.status, patched.json["tags"]), (200, {"Dept": "hsm"}))
        self.delete_zeroized("hsm-life")

    def delete_zeroized(self, name, api=HSM_API):
        refused = self.arm.call("DELETE", self.arm.hsm(name), api)
        self.assertEqual((refused.status, refused.error_code()), (409, "HsmNotZeroized"))
        self.assertIn("innererror", refused.json["error"])
        run_estate("zeroize", "--dir", ESTATE_DIR, name)
        reply = self.arm.call("DELETE", self.arm.hsm(name), api)
        self.assertEqual((reply.status, reply.raw), (202, b""))
        self.assertRegex(reply.headers["location"], r"/subscriptions/[^/]+/providers/Microsoft\.HardwareSecurityModules"
                                                    r"/locations/eastus/operationResults/[^/?]+\?api-version=" + api)
        token = reply.headers["location"].split("/operationResults/")[1].split("?")[0]
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        self.assertTrue(decoded.endswith(f"/HSM-RG/{name.upper()}"), decoded)
        self.assertNotIn("retry-after", reply.headers)
        self.assertEqual(self.hsm_state(name)["provisioningState"], "Deleting")
        final, seen = self.poll_location(reply, 204 if api == HSM_API_2018 else 200)
        self.assertEqual(final.raw, b"")
        self.assertIn(202, seen)
        self.assertEqual(self.arm.call("GET", self.arm.hsm(name), api).status, 404)

    def test_2018_preview_delete_ends_204_without_system_data(self):
        self.create_hsm("hsm-old")
        self.wait_terminal("hsm-old")
        self.assertNotIn("systemData", self.arm.call("GET", self.arm.hsm("hsm-old"), HSM_API_2018).json)
        self.delete_zeroized("hsm-old", HSM_API_2018)

    def test_2024_field_names(self):
        body = self.arm.hsm_body(self.arm.subnet_id(), field="id")
        wrong = self.arm.call("PUT", self.arm.hsm("hsm-new"), HSM_API_2024, body)
        self.assertEqual(wrong.status, 400)
        self.assertIn("resourceId", wrong.json["error"]["message"])
        body = self.arm.hsm_body(self.arm.subnet_id(), field="resourceId")
        self.assertEqual(self.arm.call("PUT", self.arm.hsm("hsm-new"), HSM_API_2024, body).status, 200)
        props = self.wait_terminal("hsm-new")
        self.assertIn("id", props["networkProfile"]["subnet"])
        new_props = self.hsm_state("hsm-new", api=HSM_API_2024)
        self.assertIn("resourceId", new_props["networkProfile"]["subnet"])
        self.assertIn("resourceId", new_props["networkProfile"]["networkInterfaces"][0])

    def test_list_paging(self):
        for name in ("hsm-p1", "hsm-p2", "hsm-p3"):
            self.create_hsm(name)
        self.faults(page_size=1)
        for path in (self.arm.hsm("")[:-1], f"/subscriptions/{self.arm.sub}/providers/"
                                              "Microsoft.HardwareSecurityModules/dedicatedHSMs"):
            names, url, pages = [], self.arm.url(path, HSM_API), 0
            while url:
                page = self.arm.call("GET", url).json
                self.assertLessEqual(len(page["value"]), 1)
                names += [v["name"] for v in page["value"]]
                url, pages = page.get("nextLink"), pages + 1
            self.assertTrue({"hsm-p1", "hsm-p2", "hsm-p3"} <= set(names))
            self.assertEqual(pages, len(names))
        self.faults(page_size=100)
        last = self.arm.call("GET", self.arm.hsm("")[:-1], HSM_API).json
        self.assertNotIn("nextLink", last)

    def test_advance_skips_waits(self):
        self.faults(hsm_step_seconds=3600)
        self.create_hsm("hsm-slow")
        self.assertEqual(self.hsm_state("hsm-slow")["provisioningState"], "CheckingQuota")
        run_estate("advance", "--dir", ESTATE_DIR, "idle")
        self.assertEqual(self.hsm_state("hsm-slow")["provisioningState"], "Succeeded")


class GuideFailureTest(EstateCase):
    """Every failure the troubleshooting guide names."""

    def assert_failed(self, name, code, rg="hsm-rg"):
        props = self.wait_terminal(name, rg)
        self.assertEqual(props["provisioningState"], "Failed")
        self.assertIn(code, props["statusMessage"])

    def test_gateway_race_fault(self):
        self.faults(gateway_race=1)
        self.create_hsm("hsm-race")
        self.assert_failed("hsm-race", "GatewayNotReady")

    def test_field_shaped_race_while_the_gateway_reads_succeeded(self):
        self.faults(gateway_race_next=1, field_errors=1)
        self.create_hsm("hsm-fr")
        props = self.wait_terminal("hsm-fr")
        gw = self.arm.call("GET", self.arm.net("virtualNetworkGateways", "hsm-ergw"), NET_API).json
        self.assertEqual((props["provisioningState"], gw["properties"]["provisioningState"]), ("Failed", "Succeeded"))
        self.assertNotIn("GatewayNotReady", props["statusMessage"])
        self.assertIn("dependent network resource was not ready", props["statusMessage"])
        self.create_hsm("hsm-fr")  # the rerun: the fault was counted once
        self.assertEqual(self.wait_terminal("hsm-fr")["provisioningState"], "Succeeded")

    def test_nic_while_connecting_and_no_spec_change(self):
        self.faults(hsm_step_seconds=3600)
        self.create_hsm("hsm-nic", stamp="stamp1")
        self.arm.control("POST", "advance", {"seconds": 7201})
        props = self.hsm_state("hsm-nic")
        self.assertEqual(props["provisioningState"], "Connecting")
        self.assertTrue(props["networkProfile"]["networkInterfaces"][0]["id"].endswith("/hsm-nic_HSMnic"))
        changed = self.arm.call("PUT", self.arm.hsm("hsm-nic"), HSM_API,
                                self.arm.hsm_body(self.arm.subnet_id("hsm"), stamp="stamp2"))
        self.assertEqual((changed.status, changed.json["error"]["innererror"]["code"]), (400, "PropertyChangeNotAllowed"))
        self.faults(hsm_step_seconds=0.3)

    def test_gateway_still_updating(self):
        self.make_network("rg-updating", prefix="10.30")
        reply = self.arm.call("PUT", self.arm.hsm("hsm-early", "rg-updating"), HSM_API,
                              self.arm.hsm_body(self.arm.subnet_id("hsm", "vnet", "rg-updating")))
        self.assertEqual(reply.status, 200)
        self.assert_failed("hsm-early", "GatewayNotReady", "rg-updating")

    def test_subnet_without_delegation(self):
        self.create_hsm("hsm-nodeleg", subnet="compute")
        self.assert_failed("hsm-nodeleg", "SubnetNotDelegated")

    def test_quota_two_per_stamp_four_per_region(self):
        self.faults(quota_per_stamp=2, quota_per_region=4)
        gw = self.make_network("rg-quota", location="westus", prefix="10.40")
        self.wait_async(gw)
        subnet = self.arm.subnet_id("hsm", "vnet", "rg-quota")
        for name, stamp in (("q1", "stamp1"), ("q2", "stamp1"), ("q3", "stamp1"), ("q4", "stamp2"), ("q5", "stamp2")):
            reply = self.arm.call("PUT", self.arm.hsm(f"hsm-{name}", "rg-quota"), HSM_API,
                                  self.arm.hsm_body(subnet, stamp=stamp, location="westus"))
            self.assertEqual(reply.status, 200, reply.raw)
        states = {n: self.wait_terminal(f"hsm-{n}", "rg-quota") for n in ("q1", "q2", "q3", "q4", "q5")}
        self.assertEqual([states[n]["provisioningState"] for n in ("q1", "q2", "q4")], ["Succeeded"] * 3)
        self.assertIn("QuotaExceeded", states["q3"]["statusMessage"])
        self.assertIn("stamp 'stamp1'", states["q3"]["statusMessage"])
        self.assertIn("QuotaExceeded", states["q5"]["statusMessage"])  # the failed q3 still counts
        self.assertIn("region 'westus'", states["q5"]["statusMessage"])

    def test_capacity(self):
        self.faults(others_per_stamp=12)
        self.create_hsm("hsm-full", stamp="stamp2")
        self.assert_failed("hsm-full", "InsufficientCapacity")

    def test_subscription_not_allowlisted(self):
        self.faults(not_allowlisted=1)
        reply = self.arm.call("PUT", self.arm.hsm("hsm-noallow"), HSM_API, self.arm.hsm_body(self.arm.subnet_id()))
        self.assertEqual((reply.status, reply.error_code()), (409, "SubscriptionNotRegisteredForFeature"))
        self.assertIn("Microsoft.HardwareSecurityModules/AzureDedicatedHSM", reply.json["error"]["message"])

    def test_group_delete_orphans_the_hsm(self):
        self.assertEqual(self.arm.call("PUT", self.arm.rg("rg-orphan"), RES_API, {"location": "eastus"}).status, 201)
        reply = self.arm.call("PUT", self.arm.hsm("hsm-orphan", "rg-orphan"), HSM_API,
                              self.arm.hsm_body(self.arm.subnet_id()))
        self.assertEqual(reply.status, 200)
        self.assertEqual(self.wait_terminal("hsm-orphan", "rg-orphan")["provisioningState"], "Succeeded")
        self.poll_location(self.arm.call("DELETE", self.arm.rg("rg-orphan"), RES_API), 200)
        self.assertEqual(self.arm.call("GET", self.arm.rg("rg-orphan"), RES_API).status, 404)
        listed = self.arm.call("GET", f"/subscriptions/{self.arm.sub}/providers/Microsoft.HardwareSecurityModules/"
                                      "dedicatedHSMs", HSM_API).json["value"]
        self.assertIn("hsm-orphan", [h["name"] for h in listed])
        gone_group = self.arm.call("GET", self.arm.hsm("hsm-orphan", "rg-orphan"), HSM_API)
        self.assertEqual(gone_group.error_code(), "ResourceGroupNotFound")
        derived = self.arm.control("GET", "state")["derived"]
        orphan = [i for i in derived["orphaned_hsms"] if i.endswith("/hsm-orphan")]
        self.assertEqual(len(orphan), 1)
        self.assertIn(orphan[0], derived["billed_hsms"])


def _template(hsm_depends_on_gateway=True):
    hsm_deps = ["[resourceId('Microsoft.Network/virtualNetworkGateways', variables('gwName'))]"] \
        if hsm_depends_on_gateway else ["[resourceId('Microsoft.Network/virtualNetworks', parameters('vnetName'))]"]
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"vnetName": {"type": "string"}, "hsmName": {"type": "string"},
                       "prefix": {"type": "string", "defaultValue": "10.50"},
                       "adminSecret": {"type": "securestring", "defaultValue": "s3cret"}},
        "variables": {"gwName": "[concat(parameters('vnetName'), '-ergw')]",
                      "subnetId": "[resourceId('Microsoft.Network/virtualNetworks/subnets', parameters('vnetName'), 'hsm')]"},
        "resources": [
            {"type": "Microsoft.Network/virtualNetworks", "apiVersion": NET_API, "name": "[parameters('vnetName')]",
             "location": "[resourceGroup().location]",
             "properties": {"addressSpace": {"addressPrefixes": ["[concat(parameters('prefix'), '.0.0/16')]"]},
                            "subnets": [{"name": "hsm", "properties": {
                                "addressPrefix": "[concat(parameters('prefix'), '.1.0/24')]",
                                "delegations": [{"name": "0", "properties": {
                                    "serviceName": "Microsoft.HardwareSecurityModules/dedicatedHSMs"}}]}},
                                        {"name": "GatewaySubnet", "properties": {
                                            "addressPrefix": "[concat(parameters('prefix'), '.255.0/26')]"}}]}},
            {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": NET_API, "name": "gw-pip",
             "location": "[resourceGroup().location]", "sku": {"name": "Standard"},
             "properties": {"publicIPAllocationMethod": "Static"}},
            {"type": "Microsoft.Network/virtualNetworkGateways", "apiVersion": NET_API, "name": "[variables('gwName')]",
             "location": "[resourceGroup().location]",
             "dependsOn": ["[resourceId('Microsoft.Network/virtualNetworks', parameters('vnetName'))]", "gw-pip"],
             "properties": {"gatewayType": "ExpressRoute", "sku": {"name": "Standard", "tier": "Standard"},
                            "ipConfigurations": [{"name": "cfg", "properties": {
                                "subnet": {"id": "[resourceId('Microsoft.Network/virtualNetworks/subnets', "
                                                 "parameters('vnetName'), 'GatewaySubnet')]"},
                                "publicIPAddress": {"id": "[resourceId('Microsoft.Network/publicIPAddresses', 'gw-pip')]"}}}]}},
            {"type": "Microsoft.HardwareSecurityModules/dedicatedHSMs", "apiVersion": HSM_API,
             "name": "[parameters('hsmName')]", "location": "[resourceGroup().location]", "dependsOn": hsm_deps,
             "sku": {"name": A790},
             "properties": {"stampId": "stamp1", "networkProfile": {"subnet": {"id": "[variables('subnetId')]"},
                                                                    "networkInterfaces": [{"privateIpAddress": "[concat(parameters('prefix'), '.1.4')]"}]}}}],
        "outputs": {"hsmId": {"type": "string",
                              "value": "[resourceId('Microsoft.HardwareSecurityModules/dedicatedHSMs', parameters('hsmName'))]"}}}


def _op_time(props):
    stamp = props["timestamp"]  # 2023-03-29T01:16:00.4160000Z
    whole, fraction = stamp[:-1].split(".")
    parsed = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp() + float("0." + fraction)


def _op_seconds(props):
    return float(props["duration"][2:-1])  # PT1.2345678S


class DeploymentTest(EstateCase):
    def deploy(self, rg, name, tmpl, params, prefix):
        self.assertIn(self.arm.call("PUT", self.arm.rg(rg), RES_API, {"location": "eastus"}).status, (200, 201))
        path = f"{self.arm.rg(rg)}/providers/Microsoft.Resources/deployments/{name}"
        params = {k: {"value": v} for k, v in {**params, "prefix": prefix}.items()}
        reply = self.arm.call("PUT", path, RES_API, {"properties": {"mode": "Incremental", "template": tmpl,
                                                                    "parameters": params}})
        return path, reply

    def test_template_with_dependencies_succeeds_in_order(self):
        path, reply = self.deploy("rg-deploy", "hsm-deploy", _template(True), {"vnetName": "dvnet", "hsmName": "hsm-dep"},
                                  "10.50")
        self.assertEqual(reply.status, 201, reply.raw)
        self.assertEqual(reply.json["properties"]["provisioningState"], "Accepted")
        self.assertIn("/operationStatuses/", reply.headers["azure-asyncoperation"])
        self.assertNotIn("value", reply.json["properties"]["parameters"]["adminSecret"])
        self.assertEqual(self.wait_async(reply)["status"], "Succeeded")
        dep = self.arm.call("GET", path, RES_API).json["properties"]
        self.assertTrue(dep["outputs"]["hsmId"]["value"].endswith("/dedicatedHSMs/hsm-dep"))
        ops = self.arm.call("GET", path + "/operations", RES_API).json["value"]
        by_type = {o["properties"]["targetResource"]["resourceType"]: o["properties"] for o in ops}
        self.assertTrue(all(o["properties"]["provisioningState"] == "Succeeded" for o in ops))
        gw_end = _op_time(by_type["Microsoft.Network/virtualNetworkGateways"])
        hsm_op = by_type["Microsoft.HardwareSecurityModules/dedicatedHSMs"]
        hsm_start = _op_time(hsm_op) - _op_seconds(hsm_op)
        self.assertGreaterEqual(hsm_start + 0.001, gw_end)  # started once the gateway was done (same tick)

    def test_race_without_depends_on_fails_the_deployment(self):
        path, reply = self.deploy("rg-race", "hsm-race", _template(False), {"vnetName": "rvnet", "hsmName": "hsm-rdep"},
                                  "10.60")
        self.assertEqual(reply.status, 201, reply.raw)
        status = self.wait_async(reply)
        self.assertEqual(status["status"], "Failed")
        self.assertEqual(status["error"]["code"], "DeploymentFailed")
        self.assertEqual(status["error"]["details"][0]["code"], "ResourceDeploymentFailure")
        ops = self.arm.call("GET", path + "/operations", RES_API).json["value"]
        failed = [o["properties"] for o in ops if o["properties"]["provisioningState"] == "Failed"]
        self.assertEqual(len(failed), 1)
        error = failed[0]["statusMessage"]["error"]
        self.assertEqual(error["code"], "ResourceDeploymentFailure")
        self.assertEqual(error["details"][0]["code"], "GatewayNotReady")

    def test_invalid_templates(self):
        _, missing = self.deploy("rg-bad-tmpl", "d1", _template(True), {"vnetName": "x"}, "10.70")
        self.assertEqual((missing.status, missing.error_code()), (400, "InvalidTemplate"))
        self.assertIn("hsmName", missing.json["error"]["message"])
        tmpl = _template(True)
        tmpl["resources"][1]["dependsOn"] = ["nothing-like-this"]
        _, bad_dep = self.deploy("rg-bad-tmpl", "d2", tmpl, {"vnetName": "x", "hsmName": "hsm-x"}, "10.70")
        self.assertEqual(bad_dep.error_code(), "InvalidTemplate")
        self.assertIn("is not defined in the template", bad_dep.json["error"]["message"])

    def test_cancel(self):
        self.faults(gateway_seconds=30)
        path, reply = self.deploy("rg-cancel", "slow", _template(True), {"vnetName": "cvnet", "hsmName": "hsm-c"},
                                  "10.80")
        self.assertEqual(reply.status, 201)
        self.assertEqual(self.arm.call("POST", path + "/cancel", RES_API).status, 204)
        self.assertEqual(self.arm.call("GET", path, RES_API).json["properties"]["provisioningState"], "Canceled")
        self.assertEqual(self.arm.call("POST", path + "/cancel", RES_API).status, 409)


class RestartTest(unittest.TestCase):
    def test_restart_resumes_state_and_tokens(self):
        estate_dir = tempfile.mkdtemp(prefix="dhsm-estate-restart-")
        try:
            seed = os.path.join(estate_dir, "seed.json")
            with open(seed, "w") as f:
                json.dump({"hsms": [{"name": "seeded1", "ip": "10.2.1.9", "stamp": "stamp1"}]}, f)
            run_estate("start", "--dir", estate_dir, "--seed", seed)
            arm = Arm(estate_dir)
            self.assertEqual(arm.call("GET", arm.hsm("seeded1"), HSM_API).json["properties"]["provisioningState"],
                             "Succeeded")
            run_estate("stop", "--dir", estate_dir)
            run_estate("stop", "--dir", estate_dir)  # idempotent
            self.assertFalse(os.path.exists(os.path.join(estate_dir, "estate.pid")))
            run_estate("start", "--dir", estate_dir)
            again = Arm(estate_dir)
            reply = again.call("GET", again.hsm("seeded1"), HSM_API, token=arm.token)  # old token still valid
            self.assertEqual(reply.status, 200)
            self.assertEqual(reply.json["properties"]["networkProfile"]["networkInterfaces"][0]["privateIpAddress"],
                             "10.2.1.9")
        finally:
            run_estate("stop", "--dir", estate_dir, check=False)
            shutil.rmtree(estate_dir, ignore_errors=True)


def main(module=None):
    """Run MODULE's tests (this one by default; appliance_selftest reuses it)."""
    module = module or sys.modules[__name__]
    started = time.monotonic()
    argv = [a for a in sys.argv[1:] if a != "-v"]
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromNames(argv, module) if argv else loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2 if "-v" in sys.argv else 1).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"({time.monotonic() - started:.1f} s)")
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
