"""The simulated Azure Resource Manager: request pipeline shared by every provider.

Order of checks, as ARM does it: transport faults -> bearer token ->
api-version -> route -> subscription -> resource group -> provider handler.
Providers (resources.py, network.py, hsm.py, deployments.py) only register
routes; they receive a Ctx and return a Response or raise ArmError.
"""
import datetime
import json
import re
import threading
import time
import urllib.parse

import armutil
from armerrors import ArmError, FrontDoorFaults, invalid_content, subscription_not_found, group_not_found
from httpserver import Response

DATE_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-(preview|beta|alpha|privatepreview))?$")
KNOWN_NAMESPACES = ("microsoft.network", "microsoft.hardwaresecuritymodules", "microsoft.resources",
                    "microsoft.features")
# Default ARM limits per hour for one principal and subscription.
RATE_LIMITS = {"reads": 12000, "writes": 1200, "deletes": 15000}


class ApiFamily:
    """The api-versions one resource provider accepts, and how it says no."""

    def __init__(self, namespace, versions, server=None, extra_headers=(), provider_style=True):
        self.namespace, self.versions, self.server = namespace, versions, server
        self.extra_headers, self.provider_style = list(extra_headers), provider_style

    def check(self, version, type_label, location):
        supported = ", ".join(self.versions)
        if version is None or version == "":
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        if version in self.versions:
            return version
        if not DATE_VERSION.match(version) or not self.provider_style:
            raise ArmError(400, "InvalidApiVersionParameter",
                           f"The api-version '{version}' is invalid. The supported versions are "
                           f"'{','.join(reversed(self.versions))}'. The supported locations are ''.")
        raise ArmError(400, "NoRegisteredProviderFound",
                       f"No registered resource provider found for location '{location}' and API version "
                       f"'{version}' for type '{type_label}'. The supported api-versions are "
                       f"'{supported}'. The supported locations are '{', '.join(LOCATIONS)}'.")


LOCATIONS = ("eastus", "eastus2", "westus", "westus2", "southcentralus", "northeurope", "westeurope",
             "uksouth", "ukwest", "canadacentral", "canadaeast", "japaneast", "japanwest",
             "australiaeast", "australiasoutheast", "southeastasia", "centralindia", "southindia")

RESOURCES = ApiFamily("Microsoft.Resources", ["2019-05-01", "2019-10-01", "2020-06-01", "2020-10-01",
                                              "2021-01-01", "2021-04-01", "2022-09-01", "2023-07-01",
                                              "2024-03-01", "2024-07-01", "2024-11-01"],
                      provider_style=False)
SUBSCRIPTIONS = ApiFamily("Microsoft.Resources", ["2016-06-01", "2019-11-01", "2020-01-01", "2021-01-01",
                                                  "2022-12-01"], provider_style=False)
FEATURES = ApiFamily("Microsoft.Features", ["2015-12-01", "2021-07-01"])
NETWORK = ApiFamily("Microsoft.Network",
                    ["2020-05-01", "2020-11-01", "2021-02-01", "2021-05-01", "2021-08-01", "2022-01-01",
                     "2022-05-01", "2022-07-01", "2022-09-01", "2022-11-01", "2023-02-01", "2023-04-01",
                     "2023-05-01", "2023-06-01", "2023-09-01", "2023-11-01", "2024-01-01", "2024-03-01",
                     "2024-05-01"],
                    server="Microsoft-HTTPAPI/2.0", extra_headers=[("x-ms-arm-service-request-id", None)])
HSM = ApiFamily("Microsoft.HardwareSecurityModules", ["2018-10-31-preview", "2021-11-30", "2024-06-30-preview"],
                server="Microsoft-IIS/10.0", extra_headers=[("x-ms-keyvault-service-version", "1.5.1105.0")])


class Route:
    def __init__(self, pattern, family, type_label, handlers, needs_group=True):
        self.pattern, self.family, self.type_label = pattern, family, type_label
        self.handlers, self.needs_group = handlers, needs_group
        regex = ""
        for seg in pattern.strip("/").split("/"):
            if seg.startswith("{"):
                regex += f"/(?P<{seg[1:-1]}>[^/]+)"
            else:
                regex += "/" + re.escape(seg)
        self.regex = re.compile(f"^{regex}/?$", re.IGNORECASE)


class Ctx:
    """What a provider handler gets: the request, the world and helpers."""

    def __init__(self, app, req, route, api_version, principal):
        self.app, self.req, self.route = app, req, route
        self.world, self.api_version, self.principal = app.world, api_version, principal

    @property
    def base(self):
        return "https://" + (self.req.header("Host") or f"127.0.0.1:{self.app.port}")

    def url(self, path, **query):
        query = {"api-version": self.api_version, **query}
        return self.base + urllib.parse.quote(path) + "?" + urllib.parse.urlencode(query)

    def body(self, required=True):
        try:
            doc = self.req.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid_content(_json_error_text(self.req.body, e))
        if doc is None and required:
            raise invalid_content("Request body is empty.")
        if doc is not None and not isinstance(doc, dict):
            raise invalid_content("Unexpected token when deserializing object: the body must be a JSON object. "
                                  "Path '', line 1, position 1.")
        return doc or {}

    def page(self, items):
        """{"value": [...], "nextLink"?}: nextLink only when more remain, as ARM does."""
        size = self.world.knob("page_size")
        top = self.req.query.get("$top")
        if top and top.isdigit() and int(top) > 0:
            size = min(size, int(top))
        offset = _skip_offset(self.req.query.get("$skiptoken"))
        doc = {"value": items[offset: offset + size]}
        if offset + size < len(items):
            query = {"$skiptoken": armutil.b64_token({"offset": offset + size})}
            if top:
                query["$top"] = top
            doc["nextLink"] = self.url(self.req.path, **query)
        return Response.json(200, doc)


def _skip_offset(token):
    text = armutil.b64_decode(token) if token else None
    try:
        return max(int(json.loads(text)["offset"]), 0) if text else 0
    except (ValueError, KeyError, TypeError):
        return 0


def _json_error_text(body, err):
    """Newtonsoft-style wording, which is what ARM clients see."""
    pos = getattr(err, "pos", 0) or 0
    text = body.decode("utf-8", "replace")
    char = text[pos] if pos < len(text) else ""
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"Unexpected character encountered while parsing value: {char}. Path '', line {line}, position {column}."


class RateCounter:
    """x-ms-ratelimit-remaining-subscription-*: counts down per hour, never enforced."""

    def __init__(self):
        self._lock = threading.Lock()
        self._window, self._used = None, {}

    def remaining(self, sub, kind):
        hour = int(time.time() // 3600)
        with self._lock:
            if hour != self._window:
                self._window, self._used = hour, {}
            used = self._used.get((sub, kind), 0) + 1
            self._used[(sub, kind)] = used
        return max(RATE_LIMITS[kind] - used, 0)


class ArmApp:
    def __init__(self, world, tokens, gate_factory, control, authority):
        self.world, self.tokens, self.control, self.authority = world, tokens, control, authority
        self.gate = gate_factory(FrontDoorFaults(self._diagnostics))
        self.routes = []
        self.rates = RateCounter()
        self.port = None

    def route(self, pattern, family, type_label, needs_group=True, **handlers):
        self.routes.append(Route(pattern, family, type_label, handlers, needs_group))

    # pipeline --------------------------------------------------------------
    def handle(self, req):
        if req.is_control:
            return self.control.handle(req)
        verdict = self.gate.admit(req)
        correlation = req.header("x-ms-correlation-request-id") or armutil.new_guid()
        family = None

        def serve():
            nonlocal family
            try:
                served, family = self._serve(req)
            except ArmError as e:
                served = e.response()
            return served
        resp = verdict.answer(serve)
        self._standard_headers(req, resp, family, correlation)
        resp.reset_midway = verdict.reset
        return resp

    def _serve(self, req):
        principal = self._authenticate(req)
        route, params = self._match(req)
        family = route.family
        version = family.check(req.query.get("api-version"), route.type_label, self.world.s["location"])
        handler = route.handlers.get(req.method)
        if handler is None:
            raise ArmError(405, "HttpMethodNotAllowed",
                           f"The requested resource does not support http method '{req.method}'.")
        ctx = Ctx(self, req, route, version, principal)
        with self.world.lock:
            self.world.tick()
            try:
                self._check_scope(req, route, params)
                return handler(ctx, **params), family
            finally:
                self.world.save_if_dirty()

    def _authenticate(self, req):
        auth = req.header("Authorization")
        if not auth:
            raise self._unauthorized("AuthenticationFailed",
                                     "Authentication failed. The 'Authorization' header is missing.",
                                     "The authentication failed because of missing 'Authorization' header.")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._unauthorized("AuthenticationFailed",
                                     "Authentication failed. The 'Authorization' header is provided in an "
                                     "invalid format.", "The access token is invalid.")
        with self.world.lock:
            status, record = self.tokens.check(token.strip())
        if status == "invalid":
            raise self._unauthorized("InvalidAuthenticationToken", "The access token is invalid.",
                                     "The access token is invalid.")
        if status == "expired":
            raise self._unauthorized("ExpiredAuthenticationToken",
                                     f"The access token expiry UTC time '{armutil.dotnet_utc(record['expires'])}' "
                                     f"is earlier than current UTC time '{armutil.dotnet_utc(time.time())}'.",
                                     "The access token has expired.")
        return record["principal"]

    def _unauthorized(self, code, message, description):
        challenge = (f'Bearer authorization_uri="{self.authority()}/{self.world.s["tenant"]}", '
                     f'error="invalid_token", error_description="{description}"')
        return ArmError(401, code, message, headers=[("WWW-Authenticate", challenge)])

    def _match(self, req):
        for route in self.routes:
            m = route.regex.match(req.path)
            if m:
                return route, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        raise self._no_route(req)

    def _no_route(self, req):
        m = re.search(r"/providers/([^/]+)/([^/]+)", req.path, re.IGNORECASE)
        if m and m.group(1).lower() not in KNOWN_NAMESPACES:
            return ArmError(400, "InvalidResourceNamespace", f"The resource namespace '{m.group(1)}' is invalid.")
        if m:
            return ArmError(404, "InvalidResourceType",
                            f"The resource type '{m.group(2)}' could not be found in the namespace "
                            f"'{m.group(1)}' for api version '{req.query.get('api-version', '')}'.")
        return ArmError(404, "NotFound", f"The requested URI '{req.path}' does not represent any resource.")

    def _check_scope(self, req, route, params):
        sub = params.get("sub")
        if sub is not None:
            if not armutil.GUID_RE.match(sub):
                raise ArmError(400, "InvalidSubscriptionId",
                               f"The provided subscription identifier '{sub}' is malformed or invalid.")
            if sub.lower() not in self.world.s["subscriptions"]:
                raise subscription_not_found(sub)
        if "rg" in params and route.needs_group:
            grp = self.world.group(sub, params["rg"])
            if grp is None:
                raise group_not_found(params["rg"])
            if grp["state"] == "Deleting" and req.method in ("PUT", "PATCH", "POST"):
                raise ArmError(409, "ResourceGroupBeingDeleted",
                               f"The resource group '{grp['name']}' is in deprovisioning state and cannot "
                               "perform this operation.")

    # headers ---------------------------------------------------------------
    def _standard_headers(self, req, resp, family, correlation):
        request_id = armutil.new_guid()
        kind = {"GET": "reads", "HEAD": "reads", "DELETE": "deletes"}.get(req.method, "writes")
        sub = _subscription_in(req.path) or "none"
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        resp.headers += [("Cache-Control", "no-cache"), ("Pragma", "no-cache"), ("Expires", "-1"),
                         (f"x-ms-ratelimit-remaining-subscription-{kind}",
                          "0" if resp.status == 429 else str(self.rates.remaining(sub, kind))),
                         ("x-ms-request-id", request_id), ("x-ms-correlation-request-id", correlation),
                         ("x-ms-routing-request-id", f"EASTUS:{stamp}:{request_id}"),
                         ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
                         ("X-Content-Type-Options", "nosniff")]
        if family is not None:
            resp.server_name = family.server
            resp.headers += [(k, v or request_id) for k, v in family.extra_headers]

    def _diagnostics(self, req):
        action = {"GET": "read", "HEAD": "read", "DELETE": "delete"}.get(req.method, "write")
        return {"subscription": _subscription_in(req.path) or "", "actor": self.world.s["principal"]["object_id"],
                "scope": req.path, "action": f"{_resource_type_in(req.path)}/{action}",
                "timestamp": armutil.iso(time.time()), "request_id": armutil.new_guid(),
                "correlation_id": req.header("x-ms-correlation-request-id") or armutil.new_guid()}


def _subscription_in(path):
    m = re.match(r"^/subscriptions/([^/]+)", path, re.IGNORECASE)
    return m.group(1) if m else None


def _resource_type_in(path):
    m = re.search(r"/providers/([^/]+)/([^/]+)", path, re.IGNORECASE)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return "Microsoft.Resources/subscriptions/resourceGroups"
