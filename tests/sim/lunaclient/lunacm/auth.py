"""Partition logins as the client library makes them, with the appliance's failure counting.

SoftHSM holds the partitions and checks the PIN, but counts nothing; the appliance
simulator owns the Partition SO and Crypto Officer thresholds (10 each, policy 15
deciding whether a locked CO can be reset). So every login is checked against SoftHSM
first and then reported to the appliance, whose answer decides: a locked CO is refused
even with the right PIN, the tenth wrong PSO PIN zeroizes the partition.
"""
from appliance import p11
from lunaclient.lunacm.context import LunaCmError

USER_TYPES = {"so": p11.CKU_SO, "co": p11.CKU_USER}


def partition_login(session, slot, role, pin):
    """ROLE ("so" = Partition SO, "co") logs in to SLOT with PIN; LunaCmError with the CKR when refused."""
    if slot.virtual:
        raise LunaCmError("CKR_FUNCTION_NOT_SUPPORTED", "Log in on the members' own slots; the simulator does "
                                                        "not log in through an HA group slot.")
    if slot.appliance is None:
        raise LunaCmError("CKR_DEVICE_ERROR", f"No simulated appliance serves NTLS on port {slot.server.port}.")
    try:
        correct = session.tokens.check_pin(slot.token_serial, USER_TYPES[role], pin)
    except p11.P11Error:
        raise LunaCmError("CKR_TOKEN_NOT_PRESENT")
    answer = session.view.control("POST", f"appliances/{slot.appliance}/partitions/{slot.partition}/login",
                                  {"role": role, "ok": correct})
    if not answer["accepted"]:
        raise LunaCmError(answer["error"])
    return answer


def partition_state(session, slot):
    """The appliance's record of SLOT's partition (lockout, attempts, cloning domain)."""
    state = session.view.control("GET", f"appliances/{slot.appliance}")
    part = state["partitions"].get(slot.partition)
    if part is None:
        raise LunaCmError("CKR_TOKEN_NOT_PRESENT")
    return part
