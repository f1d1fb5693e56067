"""Tariff engine: telescopic monthly slabs, time-of-day, fixed charge, duty.

ROUNDING (the one rule, implemented by ``ExactCharge`` only)
-----------------------------------------------------------
Every charge is an exact rational number of paise::

    energy: qty * rate * (100 + tod_pct) * (10000 + duty_bp) / (unit_size * 100 * 10000)
    fixed:  fixed_paise_per_day          * (10000 + duty_bp) / 10000

Both are written over the one denominator ``unit_size * 1_000_000`` (a
tariff switch may not change ``unit_size``, so it never changes).  The
biller keeps ``exact_total = debited + carry / den`` with
``0 <= carry < den`` and on every call debits
``floor(exact_total) - debited``.  So at every moment the sum of all debits
is ``floor(sum of exact charges)``: under by less than one paisa, never
over, no drift over years, and duty is applied to the exact amount (no
rounding between rate, ToD and duty).

Slabs are ``[upto, rate]`` with ``upto`` the *cumulative* upper bound in
billing units (kWh, kL, SCM), the last ``None``.  Each smallest unit (Wh,
litre) is priced by the slab its month-to-date position falls in.

>>> t = Tariff.from_dict({"id": "DOM", "version": 1, "service": "electricity",
...     "unit_size": 1000, "slabs": [[100, 350], [300, 450], [None, 650]]})
>>> Biller(t).charge_usage(1767225600, 250000)   # 100*350 + 150*450
102500
"""
from firmware.core import localtime

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]  # looser signature than the stub
        return x

_PCT_DEN = const(100)
_BP_DEN = const(10000)
_NO_MONTH = const(-1)
_NO_DAY = const(-1)


# Error texts, one string split by ``_error`` when a raise needs one: a literal of its
# own per raise would be one more str object (~32 B) in every meter's heap.
_ERRORS = const("charge: negative amount %d\n"
                "service: %s cannot replace %s\n"
                "unit_size: %d cannot replace %d\n"
                "qty: must be an integer >= 0, got %r\n"
                "service/unit_size: passive must match the active tariff\n"
                "version: %d must be > active version %d")


def _error(i, args=()):
    """TariffError with text ``i`` of ``_ERRORS`` formatted with the tuple ``args``."""
    return __getattr__("TariffError")(_ERRORS.split("\n")[i] % args)


def __getattr__(name):
    # TariffError (a ValueError): Bad tariff data or an illegal schedule change; the
    # message names the field.  Made on first use and kept in the module dict (a class
    # held from import on costs ~200 bytes of heap that a meter fed sane inputs never
    # needs, issue 3); raise sites here go through ``_error``, while
    # ``tariff.TariffError`` and ``from firmware.core.tariff import TariffError`` work as
    # for any class.
    if name == "TariffError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # SERVICES and FIELDS (tuples of names, for ``config_check``) are made when asked
    # for: held from import on, they would sit in every meter's heap for nothing.
    if name == "SERVICES":
        return ("electricity", "water", "gas")
    if name == "FIELDS":
        return ("id", "version", "activates_at", "service", "unit_size", "slabs",
                "fixed_paise_per_day", "tod", "duty_bp", "utc_offset_s")
    raise AttributeError(name)


# The checks live in ``config_check`` (loaded while a tariff is checked, then
# forgotten on MicroPython: they need not sit in the heap).


def _copy_rows(rows):
    out = []
    for row in rows:
        out.append(list(row))
    return out


class Tariff:
    """Validated, immutable-by-convention tariff data.

    >>> Tariff.from_dict({"id": "W", "version": 1, "service": "water",
    ...     "unit_size": 1000, "slabs": [[None, 700]]}).service
    'water'
    """

    def __init__(self, id, version, activates_at, service, unit_size, slabs,
                 fixed_paise_per_day, tod, duty_bp, utc_offset_s):
        self.id = id
        self.version = version
        self.activates_at = activates_at
        self.service = service
        self.unit_size = unit_size
        self.slabs = slabs
        self.fixed_paise_per_day = fixed_paise_per_day
        self.tod = tod
        self.duty_bp = duty_bp
        self.utc_offset_s = utc_offset_s

    @classmethod
    def from_dict(cls, d):
        """Validate ``d``; raise TariffError naming the field."""
        from firmware.core import config_check
        try:
            return cls(*config_check.tariff_fields(d))
        finally:
            config_check.forget()

    def to_dict(self):
        return {
            "id": self.id, "version": self.version, "activates_at": self.activates_at,
            "service": self.service, "unit_size": self.unit_size,
            "slabs": _copy_rows(self.slabs),
            "fixed_paise_per_day": self.fixed_paise_per_day,
            "tod": _copy_rows(self.tod), "duty_bp": self.duty_bp,
            "utc_offset_s": self.utc_offset_s,
        }

    def state_members(self):
        """``to_dict`` as ``(name, value)`` pairs, one at a time, the lists not copied:
        for the journal, which writes them as a nested object without the dict."""
        yield "id", self.id
        yield "version", self.version
        yield "activates_at", self.activates_at
        yield "service", self.service
        yield "unit_size", self.unit_size
        yield "slabs", self.slabs
        yield "fixed_paise_per_day", self.fixed_paise_per_day
        yield "tod", self.tod
        yield "duty_bp", self.duty_bp
        yield "utc_offset_s", self.utc_offset_s

    def tod_pct(self, t):
        """Signed ToD percent for UTC second ``t`` (0 outside every window)."""
        sod = localtime.second_of_day(t, self.utc_offset_s)
        for start, end, pct in self.tod:
            if localtime.in_daily_window(sod, start, end):
                return pct
        return 0


class ExactCharge:
    """The rounding rule: exact total kept as debited + carry/den, debit the floor.

    >>> acc = ExactCharge(100)
    >>> [acc.add(105) for _ in range(20)][-1], acc.debited   # 20 x 1.05 paise
    (2, 21)
    """

    def __init__(self, den, carry=0, debited=0):
        self.den = den
        self.carry = carry  # 0 <= carry < den: the not-yet-debited fraction
        self.debited = debited  # paise debited so far (audit total)

    def add(self, numerator):
        """Add numerator/den exact paise; return floor(exact total) - debited so far."""
        if numerator < 0:
            raise _error(0, (numerator,))  # "charge: negative amount %d"
        n = self.carry + numerator
        paise = n // self.den
        self.carry = n - paise * self.den
        self.debited += paise
        return paise


class Biller:
    """Turns metered quantity and days into paise under one tariff.

    >>> b = Biller(Tariff.from_dict({"id": "G", "version": 1, "service": "gas",
    ...     "unit_size": 1000, "slabs": [[None, 5000]]}))
    >>> b.charge_usage(1767225600, 1234)     # 1.234 SCM * 5000 paise
    6170
    """

    def __init__(self, tariff):
        self.tariff = tariff
        # the one denominator every exact charge of this tariff is written over
        self.acc = ExactCharge(tariff.unit_size * _PCT_DEN * _BP_DEN)
        self.month = _NO_MONTH  # localtime.month_index of the last charge_usage
        self.mtd_qty = 0
        self.fixed_day = _NO_DAY  # local day number of the last fixed charge

    def use_tariff(self, tariff):
        """Switch tariff keeping month-to-date quantity and the rounding carry."""
        if tariff.service != self.tariff.service:
            # "service: %s cannot replace %s"
            raise _error(1, (tariff.service, self.tariff.service))
        if tariff.unit_size != self.tariff.unit_size:
            # the carry is over unit_size * 10**6; keeping it exact needs the same denominator
            # "unit_size: %d cannot replace %d"
            raise _error(2, (tariff.unit_size, self.tariff.unit_size))
        self.tariff = tariff

    def charge_usage(self, t, qty):
        """Paise to debit for ``qty`` smallest units used in the interval starting at UTC ``t``."""
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 0:  # no helper: one use
            raise _error(3, (qty,))  # "qty: must be an integer >= 0, got %r"
        tf = self.tariff
        month = localtime.month_index(t, tf.utc_offset_s)
        if month != self.month:
            self.month = month
            self.mtd_qty = 0
        # the slabs' sum of qty_in_slab * rate for positions [mtd, mtd + qty): O(slabs), no
        # per-unit loop (inline, not a Tariff method: one function object fewer)
        mtd = self.mtd_qty
        base = 0
        lo = 0
        end = mtd + qty
        for upto, rate in tf.slabs:
            # the slab's bound in smallest units (Wh, litres); None = unbounded
            hi = None if upto is None else upto * tf.unit_size
            a = mtd if mtd > lo else lo
            b = end if hi is None or end < hi else hi
            if b > a:
                base += (b - a) * rate
            if hi is None or end <= hi:
                break
            lo = hi
        self.mtd_qty = end
        return self.acc.add(base * (_PCT_DEN + tf.tod_pct(t)) * (_BP_DEN + tf.duty_bp))

    def charge_day(self, t):
        """Paise of fixed charge (with duty) for the local day containing UTC ``t``.

        Only a day later than the last charged one is charged: the shell may
        call again after a reboot or journal replay, or the clock may be set
        back, and a day must never be billed twice.
        """
        tf = self.tariff
        day = localtime.local_day(t, tf.utc_offset_s)
        if day <= self.fixed_day:
            return 0
        self.fixed_day = day
        return self.acc.add(tf.fixed_paise_per_day * (_BP_DEN + tf.duty_bp) * tf.unit_size * _PCT_DEN)

    def month_to_date_qty(self, t=None):
        """Quantity used this local month; 0 if ``t`` falls in a month not yet charged."""
        if t is not None and localtime.month_index(t, self.tariff.utc_offset_s) != self.month:
            return 0
        return self.mtd_qty

    def to_state(self):
        return {"tariff": self.tariff.to_dict(), "month": self.month, "mtd": self.mtd_qty,
                "day": self.fixed_day, "carry": self.acc.carry, "debited": self.acc.debited}

    def state_members(self):
        """``to_state`` as ``(name, value)`` pairs, the tariff a generator of its own
        (``Journal.commit_members`` writes it as a nested object, member by member)."""
        yield "tariff", self.tariff.state_members()
        yield "month", self.month
        yield "mtd", self.mtd_qty
        yield "day", self.fixed_day
        yield "carry", self.acc.carry
        yield "debited", self.acc.debited

    @classmethod
    def from_state(cls, data):
        b = cls(Tariff.from_dict(data["tariff"]))
        b.month = data["month"]
        b.mtd_qty = data["mtd"]
        b.fixed_day = data["day"]
        b.acc = ExactCharge(b.acc.den, data["carry"], data["debited"])
        return b


class TariffSchedule:
    """Active tariff plus an optional passive one that takes over at ``activates_at``.

    Like the DLMS activity calendar's passive season.  The caller switches
    the biller when ``apply_due`` says so::

        if sched.apply_due(now):
            biller.use_tariff(sched.active)
    """

    def __init__(self, active, passive=None):
        self.active = active
        self.passive = None
        if passive is not None:
            self.set_passive(passive)

    @property
    def version(self):
        """Version of the tariff in force."""
        return self.active.version

    def set_passive(self, tariff):
        """Stage ``tariff``; its version must be above the active one's."""
        if tariff.version <= self.active.version:
            # "version: %d must be > active version %d"
            raise _error(5, (tariff.version, self.active.version))
        if tariff.service != self.active.service or tariff.unit_size != self.active.unit_size:
            raise _error(4)  # "service/unit_size: passive must match the active tariff"
        self.passive = tariff

    def apply_due(self, now):
        """Make the passive tariff active when ``now >= activates_at``; True if switched."""
        p = self.passive
        if p is None or now < p.activates_at:
            return False
        self.active = p
        self.passive = None
        return True

    def to_state(self):
        return {"active": self.active.to_dict(),
                "passive": None if self.passive is None else self.passive.to_dict()}

    def state_members(self):
        """``to_state`` as ``(name, value)`` pairs, each tariff a generator of its members."""
        yield "active", self.active.state_members()
        yield "passive", None if self.passive is None else self.passive.state_members()

    @classmethod
    def from_state(cls, data):
        p = data["passive"]
        return cls(Tariff.from_dict(data["active"]), None if p is None else Tariff.from_dict(p))
