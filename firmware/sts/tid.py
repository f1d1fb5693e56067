"""STS token identifiers (TID) from the clock: one rule for the vending side and the meter.

The TID is the number of minutes since the key's base date, in 24 bits.
With the original 1993-01-01 base it ran out on 2024-11-24 20:16 UTC (2^24
minutes later); keys issued for the 2014-01-01 base last until 2045-11-25.
Moving a meter between base dates takes a key change with the rollover (RO)
bit set, which also clears its TID memory.  The base date is taken in UTC
unless ``offset_s`` says the utility counts in local time (IST = 19800).

The meter uses ``max_tid`` as a plausibility guard beyond the standard: a
token cannot have been vended later than the meter's own clock plus a
tolerance, so a mistyped token that happens to pass the CRC-16 (about 1 in
65536 of them) with a random TID far in the future is refused as FUTURE.

>>> tid_from_utc(BASE_1993_UTC + 90)
1
>>> max_tid(BASE_2014_UTC + 3600, BASE_2014_UTC, 0, 10)
70
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

BASE_1993_UTC = const(725846400)   # 1993-01-01 00:00:00 UTC (date -u -d 1993-01-01 +%s)
BASE_2014_UTC = const(1388534400)  # 2014-01-01 00:00:00 UTC (date -u -d 2014-01-01 +%s)
TID_SPAN_MIN = const(16777216)     # 2^24 minutes
BASES = {1993: BASE_1993_UTC, 2014: BASE_2014_UTC}


class TidRangeError(ValueError):
    """The issue time is before the base date or past its 24-bit rollover."""


def rollover_utc(base_utc):
    """First second at which a base date's TIDs no longer fit in 24 bits."""
    return base_utc + TID_SPAN_MIN * 60


def tid_from_utc(t_utc, base_utc=BASE_1993_UTC, offset_s=0):
    """TID for an issue time (UTC seconds); raises TidRangeError past rollover."""
    minutes = (t_utc + offset_s - base_utc) // 60
    if not 0 <= minutes < TID_SPAN_MIN:
        raise TidRangeError(
            "issue time is outside the 24-bit TID range of this base date "
            "(rolls over at %d UTC); use the 2014 base date and a key change with RO=1"
            % rollover_utc(base_utc - offset_s))
    return minutes


def utc_from_tid(tid, base_utc=BASE_1993_UTC, offset_s=0):
    """Start of the minute a TID names, in UTC seconds."""
    return base_utc - offset_s + tid * 60


def max_tid(now, base_utc, offset_s, tolerance_min):
    """The latest TID a token may carry on a meter whose clock reads ``now``.

    None (no guard) when the clock is before the base date: an unset RTC
    must not lock the consumer out of offline top-up.  Past the base date's
    rollover every TID fits, so the guard is the whole 24-bit range.
    """
    minutes = (now + offset_s - base_utc) // 60
    if minutes < 0:
        return None
    return min(minutes + tolerance_min, TID_SPAN_MIN - 1)
