"""Who may call ARM: bearer tokens, the login (AAD) endpoint and managed identity (IMDS).

Tokens are opaque random strings. Only their SHA-256 is kept (in state.json),
with the expiry and the principal, so a restarted estate still accepts them and
nothing on disk can be replayed. Token expiry uses wall-clock time, not the sim
clock: the client's own clock decides when it refreshes, and `advance` must not
silently invalidate its tokens (use the expire_tokens fault for that).
"""
import datetime
import hashlib
import hmac
import secrets
import time
import urllib.parse

import armutil
from httpserver import Response

ARM_AUDIENCES = ("https://management.azure.com", "https://management.core.windows.net")


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


class TokenStore:
    def __init__(self, world):
        self.world = world

    def issue(self, principal):
        token = secrets.token_urlsafe(48)
        lifetime = self.world.knob("token_lifetime")
        expires = time.time() + lifetime
        with self.world.lock:
            self._prune()
            self.world.s["tokens"][_digest(token)] = {"expires": expires, "principal": principal}
            self.world.changed()
        return token, int(expires), lifetime

    def check(self, token):
        """('ok'|'expired'|'invalid', record-or-None)."""
        record = self.world.s["tokens"].get(_digest(token))
        if record is None:
            return "invalid", None
        return ("ok" if time.time() < record["expires"] else "expired"), record

    def expire_all(self):
        past = time.time() - 1
        for record in self.world.s["tokens"].values():
            record["expires"] = min(record["expires"], past)
        self.world.changed()

    def _prune(self):
        horizon = time.time() - 86400
        stale = [k for k, r in self.world.s["tokens"].items() if r["expires"] < horizon]
        for k in stale:
            del self.world.s["tokens"][k]


def is_arm_audience(resource, endpoint):
    wanted = resource.rstrip("/")
    return wanted in ARM_AUDIENCES or wanted == endpoint.rstrip("/")


def service_principal(world):
    p = world.s["principal"]
    return {"oid": p["object_id"], "type": "Application", "name": p["client_id"]}


def _aad_time():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def aad_error(status, error, code, text, authority):
    """The AADSTS error document, with the trace lines AAD appends."""
    trace, correlation, stamp = armutil.new_guid(), armutil.new_guid(), _aad_time()
    body = {"error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: "
                                 f"{correlation} Timestamp: {stamp}",
            "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "correlation_id": correlation, "error_uri": f"{authority}/error?code={code}"}
    return Response.json(status, body, [("Cache-Control", "no-store, no-cache"), ("Pragma", "no-cache")])


class OAuthFaults:
    """Fault bodies for the login endpoint (see faultgate.py)."""

    def __init__(self, authority):
        self.authority = authority

    def throttled(self, req, retry_after):
        resp = aad_error(429, "temporarily_unavailable", 50196,
                         "The server terminated an operation because it encountered a client "
                         "request loop. Please contact your app vendor.", self.authority())
        return resp.add("Retry-After", retry_after)

    def forbidden(self, req):
        return aad_error(401, "unauthorized_client", 7000112, "Application is disabled.", self.authority())

    denied_by_policy = forbidden    # no Azure Policy in front of a login: refused as the fault above

    def server_error(self, req, status, retry_after):
        resp = aad_error(status, "temporarily_unavailable", 90033,
                         "A transient error has occurred. Please try again.", self.authority())
        return resp.add("Retry-After", retry_after)


class LoginApp:
    """POST /{tenant}/oauth2/v2.0/token, client credentials with a secret."""

    def __init__(self, world, tokens, gate, authority, arm_endpoint):
        self.world, self.tokens, self.gate = world, tokens, gate
        self.authority, self.arm_endpoint = authority, arm_endpoint  # callables -> URL

    def handle(self, req):
        verdict = self.gate.admit(req)
        resp = verdict.answer(lambda: self._token(req))
        resp.headers += [("X-Content-Type-Options", "nosniff"), ("x-ms-request-id", armutil.new_guid()),
                         ("x-ms-ests-server", "2.1.18874.3 - EUS ProdSlices")]
        resp.reset_midway = verdict.reset
        return resp

    def _fail(self, status, error, code, text):
        return aad_error(status, error, code, text, self.authority())

    def _token(self, req):
        parts = [p for p in req.path.split("/") if p]
        if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
            return self._fail(404, "invalid_request", 900561,
                              "The endpoint only accepts POST requests to /{tenant}/oauth2/v2.0/token.")
        if req.method != "POST":
            return self._fail(405, "invalid_request", 900561,
                              "The endpoint only accepts POST requests. Received a GET request.")
        form = dict(_parse_form(req.body))
        tenant = self.world.s["tenant"]
        if parts[0].lower() != tenant.lower():
            return self._fail(400, "invalid_request", 90002,
                              f"Tenant '{parts[0]}' not found. Check to make sure you have the correct "
                              "tenant ID and are signing into the correct cloud.")
        for field in ("grant_type", "client_id", "scope"):
            if not form.get(field):
                return self._fail(400, "invalid_request", 900144,
                                  f"The request body must contain the following parameter: '{field}'.")
        return self._client_credentials(form, tenant)

    def _client_credentials(self, form, tenant):
        if form["grant_type"] != "client_credentials":
            return self._fail(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type "
                              f"'{form['grant_type']}'.")
        principal = self.world.s["principal"]
        if form["client_id"] != principal["client_id"]:
            return self._fail(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form['client_id']}' was not found in the "
                              f"directory '{tenant}'. This can happen if the application has not been "
                              "installed by the administrator of the tenant or consented to by any user "
                              "in the tenant. You may have sent your authentication request to the "
                              "wrong tenant.")
        if not form.get("client_secret"):
            return self._fail(401, "invalid_client", 7000218,
                              "The request body must contain the following parameter: "
                              "'client_assertion' or 'client_secret'.")
        if not hmac.compare_digest(_digest(form["client_secret"]), principal["secret_sha256"]):
            return self._fail(401, "invalid_client", 7000215,
                              "Invalid client secret provided. Ensure the secret being sent in the "
                              "request is the client secret value, not the client secret ID, for a "
                              f"secret added to app '{principal['client_id']}'.")
        scope = form["scope"]
        if not scope.endswith("/.default"):
            return self._fail(400, "invalid_scope", 1002012,
                              f"The provided value for scope {scope} is not valid. Client credential "
                              "flows must have a scope value with /.default suffixed to the resource "
                              "identifier (application ID URI).")
        resource = scope[: -len("/.default")]
        if not is_arm_audience(resource, self.arm_endpoint()):
            return self._fail(400, "invalid_resource", 500011,
                              f"The resource principal named {resource} was not found in the tenant "
                              f"named {tenant}.")
        token, _, lifetime = self.tokens.issue(service_principal(self.world))
        return Response.json(200, {"token_type": "Bearer", "expires_in": lifetime,
                                   "ext_expires_in": lifetime, "access_token": token},
                             [("Cache-Control", "no-store, no-cache"), ("Pragma", "no-cache")])


def _parse_form(body):
    return urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


class ImdsFaults:
    def throttled(self, req, retry_after):
        return Response.json(429, {"error": "too_many_requests",
                                   "error_description": "Too many requests"},
                             [("Retry-After", str(retry_after))])

    def forbidden(self, req):
        return Response.json(403, {"error": "forbidden", "error_description": "Access denied"})

    denied_by_policy = forbidden    # no Azure Policy in front of a token endpoint

    def server_error(self, req, status, retry_after):
        return Response.json(status, {"error": "unknown_error",
                                      "error_description": "Internal error, please retry"},
                             [("Retry-After", str(retry_after))])


class ImdsApp:
    """GET /metadata/identity/oauth2/token with `Metadata: true` (plain HTTP, like 169.254.169.254)."""

    def __init__(self, world, tokens, gate, arm_endpoint):
        self.world, self.tokens, self.gate, self.arm_endpoint = world, tokens, gate, arm_endpoint

    def handle(self, req):
        verdict = self.gate.admit(req)
        resp = verdict.answer(lambda: self._token(req))
        resp.server_name = "IMDS/150.870.65.1325"
        resp.reset_midway = verdict.reset
        return resp

    @staticmethod
    def _bad(error, description, status=400):
        return Response.json(status, {"error": error, "error_description": description})

    def _token(self, req):
        if req.path.rstrip("/") != "/metadata/identity/oauth2/token":
            return self._bad("not_found", "The requested path was not found", 404)
        if req.method != "GET":
            return self._bad("invalid_request", "Only GET is supported", 405)
        if (req.header("Metadata") or "").lower() != "true":
            return self._bad("bad_request_102", "Required metadata header not specified")
        if not req.query.get("api-version"):
            return Response.json(400, {"error": "Bad request. api-version was not specified in the "
                                                "request. For more information refer to aka.ms/azureimds"})
        resource = req.query.get("resource")
        if not resource:
            return self._bad("invalid_request", "Required query variable 'resource' is missing")
        if not self.world.knob("managed_identity"):
            return self._bad("invalid_request", "Identity not found")
        if not is_arm_audience(resource, self.arm_endpoint()):
            return self._bad("invalid_resource", f"AADSTS500011: The resource principal named "
                                                 f"{resource} was not found in the tenant.")
        mi = self.world.s["managed_identity"]
        token, expires, lifetime = self.tokens.issue({"oid": mi["object_id"], "type": "ManagedIdentity",
                                                      "name": mi["client_id"]})
        now = int(time.time())
        return Response.json(200, {"access_token": token, "refresh_token": "", "expires_in": str(lifetime),
                                   "expires_on": str(expires), "not_before": str(now),
                                   "resource": resource, "token_type": "Bearer",
                                   "client_id": mi["client_id"]})
