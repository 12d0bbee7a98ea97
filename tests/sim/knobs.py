"""Faults and settings: every switch a test can flip, in one table.

A knob is either a *fault* (reset by `estate fault --clear`) or a *setting*
(timings and similar, kept until changed). Values arrive as strings from the
command line or as JSON from the control endpoint and are parsed here, so the
rest of the simulator only ever sees typed values.

Targeted faults take `N[:MATCH]`. MATCH is a case-insensitive substring of
"METHOD /path?query" of the request (e.g. `dedicatedHSMs`, `PUT /subscriptions`,
`oauth2`). Without MATCH a fault hits ARM requests only, never the token or
managed-identity endpoints, so "throttle=1" means "the next ARM call".
"""


class KnobError(ValueError):
    pass


def _parse_int(text, minimum=0):
    try:
        value = int(str(text).strip())
    except ValueError:
        raise KnobError(f"'{text}' is not an integer")
    if value < minimum:
        raise KnobError(f"{value} is below the minimum {minimum}")
    return value


def _parse_float(text):
    try:
        value = float(str(text).strip())
    except ValueError:
        raise KnobError(f"'{text}' is not a number")
    if value < 0:
        raise KnobError(f"{value} is negative")
    return value


def _parse_bool(text):
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise KnobError(f"'{text}' is not a boolean (use 1 or 0)")


def _parse_targeted(text):
    """'N' or 'N:MATCH' -> {"n": N, "match": MATCH-or-None}."""
    if isinstance(text, dict):
        return {"n": _parse_int(text.get("n", 0)), "match": text.get("match") or None}
    count, _, match = str(text).partition(":")
    return {"n": _parse_int(count), "match": match.strip() or None}


class Knob:
    def __init__(self, name, category, parse, default, help_text):
        self.name, self.category, self.parse = name, category, parse
        self.default, self.help = default, help_text


_OFF = {"n": 0, "match": None}
KNOBS = {k.name: k for k in [
    # transport faults (count-based unless noted)
    Knob("throttle", "fault", _parse_targeted, _OFF,
         "next N matching requests get 429 SubscriptionRequestsThrottled + Retry-After"),
    Knob("fail5xx", "fault", _parse_targeted, _OFF,
         "next N matching requests fail, alternating 500 InternalServerError / 503 ServiceUnavailable"),
    Knob("fail5xx_after", "fault", _parse_targeted, _OFF,
         "next N matching requests are processed, then answered 500 / 503 instead (the request took effect)"),
    Knob("reset", "fault", _parse_targeted, _OFF,
         "next N matching requests are processed, then the connection is reset mid-response"),
    Knob("forbid", "fault", _parse_targeted, _OFF,
         "next N matching requests get 403 AuthorizationFailed"),
    Knob("deny_policy", "fault", _parse_targeted, _OFF,
         "next N matching requests get 403 RequestDisallowedByPolicy (an Azure Policy deny, not a permission)"),
    Knob("delay_ms", "fault", _parse_targeted, _OFF,
         "every matching request is answered N ms late (persistent, not counted)"),
    Knob("expire_tokens", "fault", _parse_bool, False,
         "1 = every bearer token issued so far expires now (one-shot action)"),
    # Dedicated HSM failure modes from the troubleshooting guide
    Knob("gateway_race", "fault", _parse_bool, False,
         "HSM creations see their VNet's ExpressRoute gateway as not Succeeded"),
    Knob("gateway_race_next", "fault", _parse_int, 0,
         "the next N HSM creations hit the gateway race although the gateway reads Succeeded"),
    Knob("field_errors", "fault", _parse_bool, False,
         "failures as the field shows them: generic code (ProvisioningFailed), the cause only in message text"),
    Knob("network_fail", "fault", _parse_targeted, _OFF,
         "next N matching Network PUTs are accepted, then their long-running operation ends Failed"),
    Knob("network_busy", "fault", _parse_targeted, _OFF,
         "next N matching Network PUTs get 409 AnotherOperationInProgress"),
    Knob("subnet_undelegated", "fault", _parse_bool, False,
         "HSM creations see their subnet as missing the dedicatedHSMs delegation"),
    Knob("not_allowlisted", "fault", _parse_bool, False,
         "the subscription is not allowlisted: AzureDedicatedHSM/AllowBaremetalServers not Registered"),
    Knob("quota_per_stamp", "fault", _parse_int, 2, "HSM quota per stamp for the subscription"),
    Knob("quota_per_region", "fault", _parse_int, 4, "HSM quota per region for the subscription"),
    Knob("capacity_per_stamp", "fault", _parse_int, 12, "devices a stamp offers to customers"),
    Knob("others_per_stamp", "fault", _parse_int, 0,
         "devices in every stamp already taken by other customers (capacity pressure)"),
    Knob("managed_identity", "fault", _parse_bool, True,
         "0 = the managed-identity endpoint answers 'Identity not found'"),
    Knob("page_size", "fault", lambda t: _parse_int(t, 1), 100, "items per page of every list (nextLink)"),
    # settings
    Knob("retry_after", "setting", _parse_int, 1,
         "Retry-After seconds on 429/503 and on LROs where ARM sends it"),
    Knob("token_lifetime", "setting", lambda t: _parse_int(t, 1), 3599, "bearer token lifetime, seconds"),
    Knob("hsm_step_seconds", "setting", _parse_float, 0.3,
         "time in each HSM provisioning state (CheckingQuota, Allocating, Connecting, Provisioning)"),
    Knob("gateway_seconds", "setting", _parse_float, 1.0, "time a gateway create/delete stays Updating/Deleting"),
    Knob("network_seconds", "setting", _parse_float, 0.2, "time other network writes stay Updating"),
    Knob("delete_seconds", "setting", _parse_float, 0.5, "time an HSM or resource group delete takes"),
    Knob("reboot_seconds", "setting", _parse_float, 1.0,
         "time a rebooting appliance stays unreachable (with the KB0019789 fix; without it, it hangs)"),
    Knob("new_hsm_zeroized", "setting", _parse_bool, False,
         "whether a freshly provisioned HSM counts as zeroized (deletable)"),
]}

COUNTED = ("reset", "throttle", "forbid", "deny_policy", "fail5xx", "fail5xx_after")


def defaults():
    return {name: _copy(k.default) for name, k in KNOBS.items()}


def _copy(value):
    return dict(value) if isinstance(value, dict) else value


def valid_names():
    return ", ".join(sorted(KNOBS))


def parse_assignments(assignments):
    """{name: raw} -> {name: typed}; raises KnobError naming the bad knob."""
    parsed = {}
    for name, raw in assignments.items():
        knob = KNOBS.get(name)
        if knob is None:
            raise KnobError(f"unknown fault or setting '{name}'; valid names: {valid_names()}")
        try:
            parsed[name] = knob.parse(raw)
        except KnobError as e:
            raise KnobError(f"{name}: {e}")
    return parsed


def cleared(current):
    """Faults back to their defaults, settings kept."""
    fresh = dict(current)
    for name, knob in KNOBS.items():
        if knob.category == "fault":
            fresh[name] = _copy(knob.default)
    return fresh


def rule_matches(rule, service, request_line):
    if rule["match"] is None:
        return service == "arm"
    return rule["match"].lower() in request_line.lower()


def take(world, name, request_line, service="arm"):
    """Consume one count of targeted fault `name` if it matches; True when it did."""
    with world.lock:
        rule = world.knob(name)
        if rule["n"] <= 0 or not rule_matches(rule, service, request_line):
            return False
        world.set_knobs({name: {**rule, "n": rule["n"] - 1}})
        return True


def take_count(world, name):
    """Consume one count of a plain counted knob (an integer); True when it did."""
    with world.lock:
        left = world.knob(name)
        if left <= 0:
            return False
        world.set_knobs({name: left - 1})
        return True


def describe(values):
    """Human/JSON listing: {name: {value, category, help}}."""
    return {name: {"value": values.get(name, k.default), "category": k.category, "help": k.help}
            for name, k in sorted(KNOBS.items())}
