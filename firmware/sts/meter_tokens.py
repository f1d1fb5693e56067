"""The meter's side of STS tokens: its ``sts`` config block and applying a token.

Loaded only by meters configured for offline tokens (``firmware.core.meter``
imports it on demand): the code and its names would otherwise sit in every
meter's heap.  ``Meter.apply_sts_token(digits, now)`` calls ``apply``.
"""
from firmware.core import events
from firmware.core.config_check import _need_int
from firmware.core.meter import MeterConfigError, sts_credit_paise
from firmware.sts import acceptor, tid


def config(d):
    """The meter config's ``sts`` block, validated (``MeterConfigError`` names the field).

    {"key_hex": 16 hex digits (decoder key), "krn": 1, "key_type": 2, "ken": 255,
     "ti": 1, "tables": "production"|"sample",
     "paise_per_unit": price of one kWh (water: kL, gas: SCM) used to turn a
                       token's energy into money credit; the vending side uses the same price,
     "base_year": 1993|2014 (default 2014: the 1993 base rolled over on 2024-11-24),
     "tid_tolerance_min": how far past the meter's clock a TID may be (default 7 days)}
    """
    if not isinstance(d, dict):
        raise MeterConfigError("sts: must be a mapping")
    key = d.get("key_hex")
    if not isinstance(key, str) or len(key) != 16:
        raise MeterConfigError("sts.key_hex: the decoder key is 16 hex digits")
    try:
        key_int = int(key, 16)
    except ValueError:
        raise MeterConfigError("sts.key_hex: must be hex digits")
    out = {"key": key_int,
           "krn": _need_int(d, "krn", 1, 0, 15),
           "key_type": _need_int(d, "key_type", 2, 0, 3),
           "ken": _need_int(d, "ken", 255, 0, 255),
           "ti": _need_int(d, "ti", 1, 0, 99),
           "paise_per_unit": _need_int(d, "paise_per_unit", 0, 1, 10 ** 7)}
    tables = d.get("tables", "production")
    if tables not in ("production", "sample"):
        raise MeterConfigError("sts.tables: production or sample")
    out["tables"] = tables
    base_year = d.get("base_year", 2014)
    if base_year not in tid.BASES or isinstance(base_year, bool):
        raise MeterConfigError("sts.base_year: 1993 or 2014")
    out["base_utc"] = tid.BASES[base_year]
    out["tid_tolerance_min"] = _need_int(d, "tid_tolerance_min", 7 * 1440, 0, 366 * 1440)
    return out


def make_acceptor(block, state=None):
    """The meter's token acceptor: new from its validated ``sts`` config ``block``, or
    restored from its journaled ``state`` (``Acceptor.to_state``)."""
    if state is not None:
        return acceptor.Acceptor.from_state(state)
    new = acceptor.Acceptor(block["key"], block["krn"], block["key_type"], block["ken"],
                                block["ti"])
    if block["tables"] == "sample":
        new = acceptor.Acceptor.from_state(dict(new.to_state(), tables="sample"))
    return new


def apply(m, digits, now):
    """``Meter.apply_sts_token``: accept ``digits`` on meter ``m`` exactly once;
    returns ``(reason, detail)`` (see there)."""
    if m.tokens is None:
        return acceptor.UNSUPPORTED, "STS tokens are not configured on this meter"
    st = m.config.sts
    # FUTURE guard: a mistyped token that passes the CRC carries a random TID,
    # usually later than any token vended by now (firmware/sts/tid.py)
    limit = tid.max_tid(now, st["base_utc"], 0, st["tid_tolerance_min"])
    result = m.tokens.accept(digits, max_tid=limit)
    if result.ok and result.unit in ("Wh", "L"):
        paise = sts_credit_paise(result.quantity, m.config.sts["paise_per_unit"])
        if result.kind != m.config.service or paise <= 0:
            # a water token on an electricity meter would credit at the wrong price
            result = acceptor.Result(acceptor.UNSUPPORTED, result.token, result.kind)
        else:
            m.account.topup(paise, now)
            m.tokens.commit(result)
            m._after_credit_change(now, commit=False)
            m._commit(now)
            return acceptor.ACCEPTED, "%s token: %d %s = %d paise" % (
                result.kind, result.quantity, result.unit, paise)
    elif result.ok and result.kind.startswith("key_change"):
        m.tokens.commit(result)
        m._commit(now)
        return acceptor.ACCEPTED, result.kind
    elif result.ok:
        result = acceptor.Result(acceptor.UNSUPPORTED, result.token, result.kind)
    m.log.append(now, events.TOPUP_REJECTED, 100 + result.reason)
    return result.reason, acceptor.REASON_NAMES[result.reason]
