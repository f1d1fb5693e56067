"""Validation of configuration data: credit thresholds, tariffs, a meter's commissioning.

Loaded only while something is checked (commissioning, boot, a ``tariff``
downlink) by ``credit.CreditConfig.from_dict``, ``tariff.Tariff.from_dict``
and ``meter.MeterConfig``, which call ``forget()`` when done: on MicroPython
its code and its error messages then leave the heap again (issue 3) instead
of sitting there from import on.  Callers get the same errors and messages
as before (``CreditConfigError``, ``TariffError``, ``MeterConfigError``).

>>> from firmware.core import config_check
>>> try:
...     v = config_check.credit_values({"low_credit_paise": 10000})
... finally:
...     config_check.forget()
>>> v["low_credit_paise"]
10000
"""
import sys

from firmware.core import credit, localtime, tariff

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x


def forget():
    """Drop this module from ``sys.modules`` and its package (MicroPython only), so the
    GC takes it back once the current check returns; the next check imports it again.

    CPython processes (head-end, simulator, tests) share the module freely.
    """
    if sys.implementation.name != "micropython":
        return
    sys.modules.pop(__name__, None)
    parent = sys.modules.get("firmware.core")
    if parent is not None and hasattr(parent, "config_check"):
        delattr(parent, "config_check")


# --- credit ------------------------------------------------------------------
_INT = const(0)
_BOOL = const(1)
_INTS = const(2)
_DATES = const(3)
_PCT = const(100)


def _spec():
    """The credit config's fields in a fixed order (to_dict, error messages), one row
    at a time: ``(field, kind, default, lo, hi)`` (a generator: no table in one piece)."""
    yield "low_credit_paise", _INT, 5000, 0, None
    yield "emergency_enabled", _BOOL, True, None, None
    yield "emergency_credit_paise", _INT, 5000, 0, None
    yield "disconnect_grace_s", _INT, 0, 0, None
    yield "friendly_start_s", _INT, 18 * 3600, 0, localtime.DAY_S - 1
    yield "friendly_end_s", _INT, 8 * 3600, 0, localtime.DAY_S
    yield "friendly_weekdays", _INTS, (localtime.SUNDAY,), 0, 6
    yield "holidays", _DATES, (), None, None
    yield "grace_days", _INT, 0, 0, 3660
    yield "never_disconnect", _BOOL, False, None, None
    yield "utc_offset_s", _INT, localtime.IST_OFFSET_S, -43200, 50400
    yield "debt_recovery_pct", _INT, 25, 0, _PCT
    yield "warn_pct_of_last_topup", _INTS, (30, 10), 1, _PCT
    yield "load_limit_w", _INT, 0, 0, None  # 0 = limiter off
    yield "overload_s", _INT, 60, 0, None
    yield "reconnect_delay_s", _INT, 300, 0, None
    yield "max_trips", _INT, 3, 1, None
    yield "trip_window_s", _INT, 3600, 1, None


def credit_names():
    """The credit config's field names, in order (``CreditConfig.to_dict``)."""
    out = []
    for row in _spec():
        out.append(row[0])
    return out


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


# The checks below are written out in their one caller: every module-level function
# name is interned for good (qstrs are never freed), although this module is not.

def credit_values(d):
    """``d`` validated, missing fields with their defaults: {field: value}; raises
    ``credit.CreditConfigError`` naming the field."""
    if not isinstance(d, dict):
        raise credit.CreditConfigError("credit config: must be a dict, got %r" % (d,))
    names = credit_names()
    for k in d:
        if not isinstance(k, str) or k not in names:
            raise credit.CreditConfigError("%s: unknown field" % (k,))
    v: dict = {}
    for name, kind, default, lo, hi in _spec():
        x = d.get(name, default)
        if kind == _BOOL:
            if not isinstance(x, bool):
                raise credit.CreditConfigError("%s: must be true or false, got %r" % (name, x))
        elif kind == _INT:
            if not _is_int(x):
                raise credit.CreditConfigError("%s: must be an integer, got %r" % (name, x))
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                raise credit.CreditConfigError("%s: %r out of range [%r, %r]" % (name, x, lo, hi))
        else:  # _INTS or _DATES: a list of distinct integers
            if not isinstance(x, (list, tuple)):
                raise credit.CreditConfigError("%s: must be a list of integers, got %r" % (name, x))
            out = []
            for i, n in enumerate(x):
                if not _is_int(n):
                    raise credit.CreditConfigError("%s[%d]: must be an integer, got %r" % (name, i, n))
                if kind == _DATES:  # a real date YYYYMMDD: it survives a trip through day numbers
                    y, md = divmod(n, 10000)
                    m, day = divmod(md, 100)
                    if not (1 <= m <= 12 and 1 <= day <= 31 and localtime.civil_from_days(
                            localtime.days_from_civil(y, m, day)) == (y, m, day)):
                        raise credit.CreditConfigError("%s[%d]: %r is not a date YYYYMMDD"
                                                       % (name, i, n))
                if (lo is not None and n < lo) or (hi is not None and n > hi):
                    raise credit.CreditConfigError("%s[%d]: %r out of range [%r, %r]"
                                                   % (name, i, n, lo, hi))
                if n in out:
                    raise credit.CreditConfigError("%s[%d]: duplicate %r" % (name, i, n))
                out.append(n)
            x = out
        v[name] = x
    return v


# --- tariff ------------------------------------------------------------------
_MAX_DUTY_BP = const(10000)  # 100 %: a larger "duty" is a data-entry error


def _int(d, name, default=None, lo=None, hi=None):
    x = d.get(name, default)
    if not _is_int(x):
        raise tariff.TariffError("%s: must be an integer, got %r" % (name, x))
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise tariff.TariffError("%s: %r out of range [%r, %r]" % (name, x, lo, hi))
    return x


def tariff_fields(d):
    """``d`` validated: the arguments of ``tariff.Tariff(...)`` in order; raises
    ``tariff.TariffError`` naming the field."""
    if not isinstance(d, dict):
        raise tariff.TariffError("tariff: must be a dict")
    for k in d:
        if k not in tariff.FIELDS:
            raise tariff.TariffError("%s: unknown field" % k)
    tid = d.get("id")
    if not isinstance(tid, str) or not tid:
        raise tariff.TariffError("id: must be a non-empty string")
    service = d.get("service")
    if service not in tariff.SERVICES:
        raise tariff.TariffError("service: must be one of %s, got %r" % ("/".join(tariff.SERVICES), service))
    # the fields in the order of Tariff(...): the first bad one is the one reported
    version = _int(d, "version", lo=1)
    activates_at = _int(d, "activates_at", 0, lo=0)
    unit_size = _int(d, "unit_size", lo=1)

    slabs = d.get("slabs")
    if not isinstance(slabs, (list, tuple)) or not slabs:
        raise tariff.TariffError("slabs: must be a non-empty list of [upto, rate]")
    prev = 0
    last = len(slabs) - 1
    slab_rows = []
    for i, s in enumerate(slabs):
        if not isinstance(s, (list, tuple)) or len(s) != 2:
            raise tariff.TariffError("slabs[%d]: must be [upto, rate]" % i)
        upto, rate = s
        if not _is_int(rate) or rate < 0:
            raise tariff.TariffError("slabs[%d]: rate must be an integer >= 0, got %r" % (i, rate))
        if i == last:
            if upto is not None:
                raise tariff.TariffError("slabs[%d]: the last slab must have upto null" % i)
        elif not _is_int(upto) or upto <= prev:
            raise tariff.TariffError("slabs[%d]: upto must be an integer > %d (ascending), got %r"
                                     % (i, prev, upto))
        else:
            prev = upto
        slab_rows.append([upto, rate])

    fixed_paise_per_day = _int(d, "fixed_paise_per_day", 0, lo=0)

    tod = d.get("tod", [])
    if not isinstance(tod, (list, tuple)):
        raise tariff.TariffError("tod: must be a list of [start_s, end_s, pct]")
    tod_rows = []
    pieces = []  # windows cut at midnight into [a, b) pieces, to find overlaps
    for i, w in enumerate(tod):
        if not isinstance(w, (list, tuple)) or len(w) != 3 or not (
                _is_int(w[0]) and _is_int(w[1]) and _is_int(w[2])):
            raise tariff.TariffError("tod[%d]: must be [start_s, end_s, pct] integers" % i)
        start, end, pct = w
        if not (0 <= start < localtime.DAY_S and 0 <= end <= localtime.DAY_S) or start == end:
            raise tariff.TariffError("tod[%d]: need 0 <= start < 86400, 0 <= end <= 86400, start != end" % i)
        if not -100 <= pct <= 100:  # below -100 % a unit would earn money
            raise tariff.TariffError("tod[%d]: pct %d out of range [-100, 100]" % (i, pct))
        if start < end:
            pieces.append((start, end, i))
        else:
            pieces.append((start, localtime.DAY_S, i))
            pieces.append((0, end, i))
        tod_rows.append([start, end, pct])
    pieces.sort()
    for k in range(1, len(pieces)):
        if pieces[k][0] < pieces[k - 1][1]:
            raise tariff.TariffError("tod[%d]: overlaps tod[%d]" % (pieces[k][2], pieces[k - 1][2]))

    return (
        tid, version, activates_at, service, unit_size, slab_rows, fixed_paise_per_day, tod_rows,
        _int(d, "duty_bp", 0, lo=0, hi=_MAX_DUTY_BP),
        _int(d, "utc_offset_s", localtime.IST_OFFSET_S, lo=-43200, hi=50400),
    )


# --- meter -------------------------------------------------------------------
def _need_int(d, name, default, lo, hi):
    from firmware.core import meter
    v = d.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise meter.MeterConfigError("%s: must be an integer in [%d, %d], got %r" % (name, lo, hi, v))
    return v


def meter_config(cfg, d):
    """Validate the commissioning dict ``d`` into the attributes of ``meter.MeterConfig``
    ``cfg``; raises ``meter.MeterConfigError`` naming the field."""
    from firmware.core import auth, meter
    cfg.meter_id = d.get("meter_id")
    if not isinstance(cfg.meter_id, str) or not 1 <= len(cfg.meter_id) <= 32:
        raise meter.MeterConfigError("meter_id: must be a string of 1..32 characters")
    try:
        auth.canonical("check", cfg.meter_id, 1, 0, [])
    except auth.AuthError:
        raise meter.MeterConfigError("meter_id: printable ASCII without '|' only")
    cfg.service = d.get("service", "electricity")
    if cfg.service not in tariff.SERVICES:
        raise meter.MeterConfigError("service: one of %s" % (", ".join(tariff.SERVICES),))
    cfg.pulses_per_unit = _need_int(d, "pulses_per_unit", 3200, 1, 1000000)
    cfg.litres_per_pulses = _need_int(d, "litres_per_pulses", 10, 1, 1000000)
    cfg.interval_s = _need_int(d, "interval_s", 900, 60, 3600)
    if cfg.interval_s not in (900, 1800):
        raise meter.MeterConfigError("interval_s: 900 or 1800 (IS 15959 block load profile)")
    cfg.md_window_s = _need_int(d, "md_window_s", 1800, 60, 3600)
    cfg.md_step_s = _need_int(d, "md_step_s", 300, 60, 3600)
    cfg.utc_offset_s = _need_int(d, "utc_offset_s", localtime.IST_OFFSET_S, -50400, 50400)
    cfg.events_capacity = _need_int(d, "events_capacity", 64, 1, 1024)
    key_hex = d.get("key_hex")
    try:
        cfg.key = bytes.fromhex(key_hex)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise meter.MeterConfigError("key_hex: must be hex digits")
    if len(cfg.key) < 16:
        raise meter.MeterConfigError("key_hex: the downlink key must be at least 16 bytes")
    try:
        cfg.tariff = tariff.Tariff(*tariff_fields(d.get("tariff") or {}))
    except tariff.TariffError as e:
        raise meter.MeterConfigError("%s.%s" % ("tariff", e))
    if cfg.tariff.service != cfg.service:
        raise meter.MeterConfigError("tariff.service: %s tariff on a %s meter" % (cfg.tariff.service, cfg.service))
    try:
        cfg.credit = credit.CreditConfig(credit_values(d.get("credit") or {}))
    except credit.CreditConfigError as e:
        raise meter.MeterConfigError("%s.%s" % ("credit", e))
    # the validated STS block, or None when offline tokens are not configured
    cfg.sts = None
    if d.get("sts") is not None:
        from firmware.sts import meter_tokens  # only meters that take tokens
        cfg.sts = meter_tokens.config(d["sts"])


def example_config():
    """``meter.example_config``: a complete, valid meter configuration (a new dict)."""
    return {
        "meter_id": "UJ-DEMO-0001",
        "service": "electricity",
        "pulses_per_unit": 3200,  # imp/kWh (water/gas: pulses per litres_per_pulses litres)
        "interval_s": 900,
        "key_hex": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "tariff": {"id": "DOM-LT1", "version": 1, "service": "electricity", "unit_size": 1000,
                   "slabs": [[100, 350], [300, 450], [None, 650]], "fixed_paise_per_day": 500,
                   "tod": [[64800, 79200, 20], [32400, 57600, -20]], "duty_bp": 500},
        "credit": {},
    }
