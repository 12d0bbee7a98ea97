"""Failed-login thresholds, exactly as the troubleshooting guide's table has them.

| role          | tries | consequence                                               |
| HSM SO        | 3     | HSM zeroized (the caller deletes partitions and tokens)    |
| Partition SO  | 10    | that partition zeroized                                    |
| Auditor       | 10    | locked 10 minutes (sim clock), then unlocked automatically |
| Crypto Officer| 10    | locked; permanently when HSM policy 15 is 0 (the default)  |
A success resets the counter; only wrong credentials count. Functions here only
change the state dict and say what happened; the device performs side effects.
"""
from appliance import model, policies, rc

SO_THRESHOLD = 3
PSO_THRESHOLD = 10
AUDIT_THRESHOLD = 10
CO_THRESHOLD = 10
AUDIT_LOCK_SECONDS = 600


class Outcome:
    def __init__(self, ok, code=None, zeroize=False):
        self.ok, self.code, self.zeroize = ok, code, zeroize


def so_attempts_left(hsm):
    return max(SO_THRESHOLD - hsm["so_failures"], 0)


def _count(record, field, threshold, succeeded):
    """One login attempt: a success resets the counter; True when this failure reaches THRESHOLD."""
    if succeeded:
        record[field] = 0
        return False
    record[field] += 1
    return record[field] >= threshold


def so_login(hsm, password):
    if not hsm["initialized"]:
        return Outcome(False, rc.SO_LOGIN_THRESHOLD)  # a zeroized HSM refuses every SO login
    ok = model.check_secret(hsm["so"], password)
    if _count(hsm, "so_failures", SO_THRESHOLD, ok):
        return Outcome(False, rc.SO_LOGIN_THRESHOLD, zeroize=True)
    return Outcome(True) if ok else Outcome(False, rc.PIN_INCORRECT)


def audit_unlock_if_due(audit, now):
    if audit["locked_until"] is not None and now >= audit["locked_until"]:
        audit["locked_until"], audit["failures"] = None, 0


def audit_login(audit, password, now):
    audit_unlock_if_due(audit, now)
    if not audit["initialized"]:
        return Outcome(False, rc.USER_NOT_INITIALIZED)
    if audit["locked_until"] is not None:
        return Outcome(False, rc.AUDIT_LOGIN_THRESHOLD)
    ok = model.check_secret(audit["secret"], password)
    if _count(audit, "failures", AUDIT_THRESHOLD, ok):
        audit["locked_until"] = now + AUDIT_LOCK_SECONDS
        return Outcome(False, rc.AUDIT_LOGIN_THRESHOLD)
    return Outcome(True) if ok else Outcome(False, rc.PIN_INCORRECT)


# partition roles (driven by the client side: LunaCM / PKCS#11 stand-ins) -------------
CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_TOKEN_NOT_PRESENT = "CKR_PIN_INCORRECT", "CKR_PIN_LOCKED", \
    "CKR_TOKEN_NOT_PRESENT"


def role_status(part):
    return {"so_attempts_left": max(PSO_THRESHOLD - part["pso_failures"], 0),
            "co_attempts_left": max(CO_THRESHOLD - part["co_failures"], 0),
            "co_locked": part["co_locked"], "co_permanent": part["co_permanent"], "zeroized": part["zeroized"]}


def partition_login(part, role, succeeded, hsm):
    """Record one PO/CO login attempt whose credential the client already checked.
    Returns {accepted, error (CKR name or None), zeroize (bool), **role_status}."""
    if part["zeroized"] or not model.partition_initialized(part):
        return _answer(part, False, CKR_TOKEN_NOT_PRESENT)  # no token: nothing to log in to
    if role == "so":
        reached = _count(part, "pso_failures", PSO_THRESHOLD, succeeded)
        part["zeroized"] = reached
        return _answer(part, succeeded, None if succeeded else CKR_PIN_INCORRECT, zeroize=reached)
    if part["co_locked"]:
        return _answer(part, False, CKR_PIN_LOCKED)  # even the right PIN is refused
    if _count(part, "co_failures", CO_THRESHOLD, succeeded):
        part["co_locked"] = True
        part["co_permanent"] = not policies.value(hsm, policies.SO_RESET_PIN)
    return _answer(part, succeeded, None if succeeded else CKR_PIN_LOCKED if part["co_locked"] else CKR_PIN_INCORRECT)


def reset_co(part, hsm):
    """`role resetpw -name co` by the Partition SO: only with policy 15 on, never after a permanent lockout."""
    if not policies.value(hsm, policies.SO_RESET_PIN):
        return "HSM policy 15 (Enable SO reset of partition PIN) is off"
    if part["co_permanent"]:
        return "the Crypto Officer is locked out permanently; re-initialize the partition"
    part["co_locked"], part["co_failures"] = False, 0
    return None


def _answer(part, accepted, error, zeroize=False):
    return {"accepted": accepted, "error": error, "zeroize": zeroize, **role_status(part)}
