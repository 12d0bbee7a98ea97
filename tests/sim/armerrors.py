"""ARM error bodies, in the three dialects a client meets.

- "frontdoor": errors ARM itself produces (auth, api-version, throttling, missing
  groups): {"error":{"code","message"}}.
- "rp": Microsoft.Network / Microsoft.Resources: {"error":{"code","message",
  "target"?, "details":[...]}}.
- "hsm": the Dedicated HSM RP (DedicatedHsmError): {"error":{"code","message",
  "innererror"?}} - `innererror`, never `details`.
"""
from httpserver import Response

NOT_FOUND_FIX = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"


class ArmError(Exception):
    def __init__(self, status, code, message, style="frontdoor", target=None, details=None,
                 inner=None, headers=None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.style = status, code, message, style
        self.target, self.details, self.inner = target, details, inner
        self.headers = headers or []

    def body(self):
        err = {"code": self.code, "message": self.message}
        if self.style == "rp":
            if self.target:
                err["target"] = self.target
            err["details"] = self.details or []
        elif self.style == "hsm" and self.inner:
            err["innererror"] = self.inner
        return {"error": err}

    def response(self):
        return Response.json(self.status, self.body(), self.headers)


def hsm_error(status, code, message, inner_code=None, inner_message=None):
    inner = {"code": inner_code, "message": inner_message or message} if inner_code else None
    return ArmError(status, code, message, style="hsm", inner=inner)


def rp_error(status, code, message, target=None, details=None):
    return ArmError(status, code, message, style="rp", target=target, details=details)


def resource_not_found(rtype, names, rg, style="frontdoor"):
    qualified = rtype + "/" + "/".join(names)
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{qualified}' under resource group '{rg}' was not found. {NOT_FOUND_FIX}",
                    style=style)


def group_not_found(rg):
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")


def subscription_not_found(sub):
    return ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")


def invalid_content(parse_error):
    return ArmError(400, "InvalidRequestContent",
                    "The request content was invalid and could not be deserialized: "
                    f"'{parse_error}'.")


class FrontDoorFaults:
    """Error bodies the fault gate uses on ARM (see faultgate.py)."""

    def __init__(self, diagnostics):
        self.diagnostics = diagnostics  # fn(req) -> dict of ids for the 500 message

    def throttled(self, req, retry_after):
        kind = "read" if req.method in ("GET", "HEAD") else "write"
        d = self.diagnostics(req)
        err = ArmError(429, "SubscriptionRequestsThrottled",
                       f"Number of '{kind}' requests for subscription '{d['subscription']}' actor "
                       f"'{d['actor']}' exceeded. Please try again after '{retry_after}' seconds after "
                       "additional tokens are available. Refer to https://aka.ms/arm-throttling",
                       headers=[("Retry-After", str(retry_after))])
        return err.response()

    def forbidden(self, req):
        d = self.diagnostics(req)
        return ArmError(403, "AuthorizationFailed",
                        f"The client '{d['actor']}' with object id '{d['actor']}' does not have "
                        f"authorization to perform action '{d['action']}' over scope '{d['scope']}' "
                        "or the scope is invalid. If access was recently granted, please refresh "
                        "your credentials.").response()

    def denied_by_policy(self, req):
        """A 403 that is no missing permission: an Azure Policy assignment denies the
        request (the shape ARM documents for RequestDisallowedByPolicy)."""
        d = self.diagnostics(req)
        name = req.path.rstrip("/").rsplit("/", 1)[-1]
        assignment = f"/subscriptions/{d['subscription']}/providers/Microsoft.Authorization/policyAssignments/deny-sim"
        return ArmError(403, "RequestDisallowedByPolicy",
                        f"Resource '{name}' was disallowed by policy. Policy identifiers: "
                        f"'[{{\"policyAssignment\":{{\"name\":\"deny-sim\",\"id\":\"{assignment}\"}}}}]'.").response()

    def server_error(self, req, status, retry_after):
        d = self.diagnostics(req)
        if status == 503:
            return ArmError(503, "ServiceUnavailable",
                            "The server (leader) is currently unable to handle the request due to a "
                            "temporary overloading or maintenance. Please try again later.",
                            headers=[("Retry-After", str(retry_after))]).response()
        return ArmError(500, "InternalServerError",
                        "Encountered internal server error. Diagnostic information: timestamp "
                        f"'{d['timestamp']}', subscription id '{d['subscription']}', tracking id "
                        f"'{d['request_id']}', request correlation id '{d['correlation_id']}'.").response()
