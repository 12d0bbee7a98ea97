"""LunaSH return codes, as `Error:  '<cmd>' failed. (<HEX> : <NAME>)` prints them.

The pairs come from modules/luna/return_codes.tsv, the one table dhsm reads too
(tags there: V seen in transcripts, D Luna SDK header, B built by the BuildRC
rule, K the simulator's own choice). Each row's `key` becomes a constant here:
rc.PIN_INCORRECT == ("A00000", "LUNA_RET_UM_PIN_INCORRECT").
"""
import os

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "modules", "luna",
                     "return_codes.tsv")


def load(path=TABLE):
    """-> {key: (hex, name)}; rows are `hex TAB name TAB tag TAB key`, '#' lines are comments."""
    codes = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            hexcode, name, _tag, key = line.rstrip("\n").split("\t")
            codes[key] = (hexcode, name)
    return codes


globals().update(load())
