#!/usr/bin/python3
"""Report one partition login made through the client's PKCS#11 library to its appliance.

    report_login.py [--conf CHRYSTOKI_CONF] [--dir ESTATE_DIR] SERIAL so|co ok|fail

The simulated libCryptoki2 (cryptoki/cryptoki.c) checks a C_Login's PIN against SoftHSM, then
runs this with the token serial (the Luna partition serial), the role (CKU_SO: so, CKU_USER:
co) and whether SoftHSM accepted the PIN; never the PIN. It finds the estate as lunacm does
(install.locate): --dir, else the folder above the client/ holding CHRYSTOKI_CONF (the file
the library read; without --conf, $DHSM_ESTATE_DIR and $ChrystokiConfigurationPath). It posts
`POST /_sim/partitions/SERIAL/login {"role", "ok"}` with estate.json's control token (after `GET
/_sim/partitions/SERIAL` for a right PIN, which is answered from that read when it would change
nothing: no failure to forget, no lockout, not zeroized) and prints one JSON line, "rv" first:

    {"rv": 0, "accepted": true, "error": null, "appliance": "hsm1", "partition": "par1", ...}
    {"rv": 160, "accepted": false, "error": "CKR_PIN_INCORRECT", ...}

rv is the CK_RV the login ends with (0: let SoftHSM's result stand; else the appliance's
refusal). Exit 0 when the appliance answered; when the report cannot be made (no estate, the
estate down, a serial no appliance has) exit 1 with rv CKR_DEVICE_ERROR and a message: the
library then fails the login, never lets it pass uncounted. One line goes to DIR/estate.log
(`cryptoki: C_Login co SERIAL fail -> CKR_PIN_INCORRECT`), as lunacm's commands do.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from estate_client import EstateClient, EstateError  # noqa: E402
from lunaclient import toollog  # noqa: E402
from lunaclient.install import NotFound, locate  # noqa: E402
from lunaclient.lunacm.context import CKR  # noqa: E402

CKR_DEVICE_ERROR = "CKR_DEVICE_ERROR"
SERIAL = re.compile(r"^[0-9A-Za-z]{1,16}$")  # a token serial: 16 characters at most


class Unreported(Exception):
    pass


def estate_dir(args):
    if args.dir:
        return os.path.abspath(args.dir)
    # the library names the file it read (and gives --dir when $DHSM_ESTATE_DIR was set as it
    # read it); by hand, the environment as lunacm reads it
    environ = {"ChrystokiConfigurationPath": args.conf} if args.conf else os.environ
    try:
        _, found = locate(environ)
    except NotFound as e:
        raise Unreported(str(e))
    if found is None:
        raise Unreported("the client configuration is not in a simulated estate (set DHSM_ESTATE_DIR)")
    return found


def post(estate, serial, role, ok):
    """The appliance's answer to one login. A right PIN that changes nothing there (no failure to
    forget, no lockout, not zeroized) is answered from a read: the estate's log then shows a write
    only for a login that moved the appliance's counters or met a refusal."""
    if ok:
        now = estate.control("GET", f"partitions/{serial}")
        failures = now["pso_failures"] if role == "so" else now["co_failures"]
        if not now["zeroized"] and not failures and not (role == "co" and now["co_locked"]):
            return {"accepted": True, "error": None, "zeroize": False,
                    **{k: v for k, v in now.items() if k not in ("serial", "pso_failures", "co_failures")}}
    return estate.control("POST", f"partitions/{serial}/login", {"role": role, "ok": ok})


def report(args):
    """-> (estate dir or None, the answer with "rv" first, whether the appliance answered)."""
    where = None
    try:
        if not SERIAL.match(args.serial):
            raise Unreported(f"'{args.serial}' is not a token serial")
        where = estate_dir(args)
        try:
            answer = post(EstateClient(where), args.serial, args.role, args.outcome == "ok")
        except (EstateError, OSError, ValueError) as e:
            raise Unreported(f"the estate in {where} did not take the report: {e}")
    except Unreported as e:
        return where, {"rv": CKR[CKR_DEVICE_ERROR], "accepted": False, "error": CKR_DEVICE_ERROR,
                       "message": str(e)}, False
    error = None if answer.get("accepted") else answer.get("error") or CKR_DEVICE_ERROR
    return where, {"rv": CKR.get(error, CKR[CKR_DEVICE_ERROR]) if error else 0, **answer, "error": error}, True


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", help="the Chrystoki.conf the library read")
    parser.add_argument("--dir", help="the estate directory")
    parser.add_argument("serial")
    parser.add_argument("role", choices=("so", "co"))
    parser.add_argument("outcome", choices=("ok", "fail"))
    args = parser.parse_args(argv)
    where, answer, reported = report(args)
    print(json.dumps(answer), flush=True)
    if where and os.path.isdir(where):
        try:
            toollog.record(where, "cryptoki", f"C_Login {args.role} {args.serial} {args.outcome}",
                           answer["error"] or ("accepted" if reported else CKR_DEVICE_ERROR))
        except OSError:
            pass
    return 0 if reported else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
