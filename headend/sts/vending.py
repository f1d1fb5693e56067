"""Vending: token identifiers from the clock and 20-digit tokens from fields.

The token identifier (TID) is the number of minutes since the key's base
date, in 24 bits.  With the original 1993-01-01 base it ran out on
2024-11-24 20:16 UTC (2^24 minutes later); keys issued for the 2014-01-01
base last until 2045-11-25.  Moving a meter between base dates takes a key
change with the rollover (RO) bit set, which also clears its TID memory.
The base date is taken in UTC unless ``offset_s`` says the utility counts in
local time (e.g. IST = 19800).

>>> tid_from_utc(BASE_1993_UTC + 90)
1
>>> vend_credit(0x0ABC12DEF3456789, "electricity", 256, BASE_1993_UTC + 1698595 * 60, rnd=11)
'29054347139309851356'
"""
import secrets

from firmware.sts import codec
from firmware.sts.codec import PRODUCTION

# the TID rule is shared with the meter's FUTURE guard (firmware/sts/tid.py)
from firmware.sts.tid import (BASE_1993_UTC, BASE_2014_UTC, TID_SPAN_MIN,  # noqa: F401
                              TidRangeError, rollover_utc, tid_from_utc, utc_from_tid)

SUBCLASS_OF_KIND = {"electricity": codec.ELECTRICITY, "water": codec.WATER, "gas": codec.GAS}


def vend(key, cls, subclass, tid, value, rnd=None, tables=PRODUCTION):
    """20 digits for a class 0 or 2 token whose data is rnd | TID | value.

    For class 0 ``value`` is the amount in tenths of the unit (rounded up to
    the amount field); for class 2 it is the raw 16-bit field (watts for a
    power limit, register for clear credit, 0 for clear tamper).
    """
    if rnd is None:
        rnd = secrets.randbelow(16)
    if cls == codec.CLASS_CREDIT:
        return codec.encode_credit(subclass, rnd, tid, value, key, tables)
    if cls == codec.CLASS_MANAGEMENT:
        return codec.encode_management(subclass, rnd, tid, value, key, tables)
    raise ValueError("vend makes class 0 (credit) and class 2 (management) tokens")


def vend_credit(key, kind, tenths, issued_utc, base_utc=BASE_1993_UTC, rnd=None,
                offset_s=0, tables=PRODUCTION):
    """Credit token for ``tenths`` of a kWh (electricity) or m3 (water, gas)."""
    if kind not in SUBCLASS_OF_KIND:
        raise ValueError("kind must be one of %s" % ", ".join(sorted(SUBCLASS_OF_KIND)))
    return vend(key, codec.CLASS_CREDIT, SUBCLASS_OF_KIND[kind],
                tid_from_utc(issued_utc, base_utc, offset_s), tenths, rnd, tables)
