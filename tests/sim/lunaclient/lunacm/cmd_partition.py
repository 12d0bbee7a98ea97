"""LunaCM `partition init` on a partition slot (the current one, or -slot N).

On Luna 7.2 the appliance's `partition create` leaves the partition for its Partition SO,
who initialises it from the client (luna.md section 3; luna-field.md 3.4 and 7.1):

    lunacm:>partition init -label KeylessSSL -domain cloudflare
      Enter password for Partition SO: ********
      Re-enter password for Partition SO: ********
      You are about to initialize the partition.
      All contents of the partition will be destroyed.
      Are you sure you wish to continue?
      Type 'proceed' to continue, or 'quit' to quit now ->proceed
    Command Result : No Error

The words are the published ones.  Without -domain the cloning domain is asked twice
(`Enter the domain name:` / `Re-enter the domain name:`: our words, not published);
-password skips the password prompts.  The partition gets a new empty token, the new PSO
password and the cloning domain; its Crypto Officer is left uninitialised (`role init -name
co` as the PSO, or C_InitPIN over PKCS#11).  A partition LunaSH's 7.x `partition create` made is
uninitialised (no token: `Label ->` empty) and gets its first token here; on an initialised one
`partition init` re-initialises it (contents destroyed).
"""
from appliance.cli import Command, Opt
from estate_client import EstateError
from lunaclient.lunacm.context import LunaCmError


def init(ctx):
    slot = ctx.slot()
    password = ctx.opt("password") or ctx.twice("Enter password for Partition SO: ",
                                                "Re-enter password for Partition SO: ")
    if ctx.opt("domain"):
        domain = ctx.opt("domain")
    else:
        ctx.out("")
        domain = ctx.twice("Enter the domain name: ", "Re-enter the domain name: ")
    ctx.out("", "You are about to initialize the partition.", "All contents of the partition will be destroyed.", "",
            "Are you sure you wish to continue?", "")
    if ctx.ask("Type 'proceed' to continue, or 'quit' to quit now ->").lower() != "proceed":
        raise LunaCmError("CKR_CANCEL", "Command cancelled.")
    try:
        answer = ctx.session.view.control("POST", f"appliances/{slot.appliance}/partitions/{slot.partition}/init",
                                          {"label": ctx.opt("label"), "domain": domain, "so_pin": password,
                                           "co": False})
    except EstateError as e:
        raise LunaCmError("CKR_DEVICE_ERROR", str(e))
    ctx.session.logins.pop(slot.id, None)
    slot.label, slot.token_serial = ctx.opt("label"), answer["token_serial"]  # this session's view follows


COMMANDS = [
    Command("partition init", init, [Opt("label", "l", required=True), Opt("domain", "d"), Opt("password", "p"),
                                     Opt("slot", "s")]),
]
