"""Transport faults applied in front of every simulated HTTP service.

`FaultGate.admit(req)` runs before the service's own logic. It sleeps for
`delay_ms`, then consumes at most one counted fault matching the request (the
rule format is in knobs.py). The error bodies come from the service (ARM and
the login endpoint speak different error dialects), through `errors`, an object
with throttled(req, retry_after), server_error(req, status, retry_after),
forbidden(req) and denied_by_policy(req) methods returning a Response.
"""
import itertools
import time

import knobs


class Verdict:
    """response: the fault's answer instead of the service (not processed);
    instead: the fault's answer after the service processed the request."""

    def __init__(self, response=None, reset=False, instead=None):
        self.response, self.reset, self.instead = response, reset, instead

    def answer(self, serve):
        """The response to send: serve() runs unless the fault answers first."""
        if self.response is not None:
            return self.response
        served = serve()
        return served if self.instead is None else self.instead


class FaultGate:
    def __init__(self, world, service, errors):
        self.world, self.service, self.errors = world, service, errors
        # each 5xx fault alternates on its own: one does not shift the other's sequence
        self._five_hundreds = {"fail5xx": itertools.count(), "fail5xx_after": itertools.count()}

    def _delay(self, req):
        with self.world.lock:
            rule = self.world.knob("delay_ms")
            wait = rule["n"] / 1000 if knobs.rule_matches(rule, self.service, req.line) else 0
        if wait:
            time.sleep(wait)  # outside the lock: a slow response must not stall the others

    def _consume(self, req):
        for name in knobs.COUNTED:
            if knobs.take(self.world, name, req.line, self.service):
                return name
        return None

    def admit(self, req):
        if req.is_control:
            return Verdict()
        self._delay(req)
        fault = self._consume(req)
        retry_after = self.world.knob("retry_after")
        if fault == "reset":
            return Verdict(reset=True)
        if fault == "throttle":
            return Verdict(self.errors.throttled(req, retry_after))
        if fault == "forbid":
            return Verdict(self.errors.forbidden(req))
        if fault == "deny_policy":
            return Verdict(self.errors.denied_by_policy(req))
        if fault in ("fail5xx", "fail5xx_after"):
            status = 500 if next(self._five_hundreds[fault]) % 2 == 0 else 503
            error = self.errors.server_error(req, status, retry_after)
            return Verdict(instead=error) if fault == "fail5xx_after" else Verdict(error)
        return Verdict()
