"""Metering: pulses -> integer energy, profiles, demand, billing snapshots.

Units (integers only): energy Wh (water and gas: litres), voltage mV, current mA,
power W, time UTC seconds.  Register reads of counters and external meters
(``CounterDelta``, ``CumulativeRegister``) are in ``firmware.core.registers``,
still importable from here.

Boundary rule used throughout: a reading taken at time t ends the period
(t_prev, t].  A reading exactly on a boundary (interval start, slot start, local
midnight) therefore closes the old period; any later reading starts the new one.

>>> reg = PulseRegister.electricity(3200)   # 3200 imp/kWh
>>> reg.add(16)                             # 16 * 1000 / 3200 = 5 Wh
5
"""
from firmware.core import localtime

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _error(0, (name, minimum, value))  # "%s must be an int >= %d, got %r"


# Error texts, one string split by ``_error`` when a raise needs one: a literal of its
# own per raise would be one more str object (~32 B) in every meter's heap.
_ERRORS = const("%s must be an int >= %d, got %r\n"
                "sample time went back: %d < %d\n"
                "cumulative went back: %d < %d\n"
                "window_s %d is not a multiple of step_s %d\n"
                "demand time went back\n"
                "demand ring has %d slots, want %d\n"
                "billing time went back: %d < %d")


def _error(i, args=()):
    """MeteringError with text ``i`` of ``_ERRORS`` formatted with the tuple ``args``."""
    return __getattr__("MeteringError")(_ERRORS.split("\n")[i] % args)


def __getattr__(name):
    # MeteringError (a ValueError): A caller fed metering something impossible (negative
    # pulses, time going back).  Made on first use and kept in the module dict (a class
    # held from import on costs ~200 bytes of heap that a meter fed sane inputs never
    # needs, issue 3); raise sites here go through ``_error``, while
    # ``metering.MeteringError`` and ``from firmware.core.metering import MeteringError``
    # work as for any class.
    if name == "MeteringError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # Readings of counters and meters outside the pulse input (CounterDelta,
    # CumulativeRegister, REG_*) live in ``firmware.core.registers``, loaded on
    # first use: a pulse-only meter never holds them in its heap.  They stay
    # importable from here.  (No list of their names here: every name in a module
    # is interned in RAM when it loads.)
    if name == "PROFILE_FLAG_NAMES":  # not held in the heap from import on
        return tuple(zip((PROFILE_POWER_OFF, PROFILE_AFTER_GAP), "POWER_OFF AFTER_GAP".split()))
    from firmware.core import registers
    if name.startswith("_") or not hasattr(registers, name):
        raise AttributeError(name)
    return getattr(registers, name)


# --------------------------------------------------------------------- pulses

class PulseRegister:
    """Pulse count -> whole units with an exact rational constant (no drift).

    ``units_num / units_den`` units per pulse; the fraction is reduced and the
    remainder kept, so ``total_units == total_pulses * num // den`` always.
    Water and gas count litres: 1 imp / 10 L is ``PulseRegister(10, 1)``, 1 imp
    / 0.01 m3 the same, two pulses a litre ``PulseRegister(1, 2)``.

    >>> r = PulseRegister.electricity(3200)  # 1000/3200 = 5/16 Wh per pulse
    >>> r.add(1), r.add(15), r.total_units
    (0, 5, 5)
    """

    def __init__(self, units_num, units_den, total_pulses=0):
        _check_int("units_num", units_num, 1)
        _check_int("units_den", units_den, 1)
        _check_int("total_pulses", total_pulses, 0)
        g, b = units_num, units_den  # their greatest common divisor (Euclid)
        while b:
            g, b = b, g % b
        self.num = units_num // g
        self.den = units_den // g
        self.total_pulses = total_pulses
        # invariant: total_pulses * num == total_units * den + _rem, 0 <= _rem < den
        self.total_units, self._rem = divmod(total_pulses * self.num, self.den)

    @classmethod
    def electricity(cls, imp_per_kwh, total_pulses=0):
        """Wh register for a meter LED/S0 output of ``imp_per_kwh`` (1000 Wh per imp_per_kwh pulses)."""
        return cls(1000, imp_per_kwh, total_pulses)

    def add(self, pulses):
        """Count ``pulses`` (>= 0); return the whole units this added."""
        _check_int("pulses", pulses, 0)
        self.total_pulses += pulses
        units, self._rem = divmod(self._rem + pulses * self.num, self.den)
        self.total_units += units
        return units

    def to_state(self):
        return {"num": self.num, "den": self.den, "pulses": self.total_pulses}

    @classmethod
    def from_state(cls, data):
        return cls(data["num"], data["den"], data["pulses"])


# ------------------------------------------------------------- load profile

PROFILE_POWER_OFF = const(1)  # no samples: this record covers a gap, energy 0
PROFILE_AFTER_GAP = const(2)  # energy includes what accrued across the preceding gap
# PROFILE_FLAG_NAMES ((flag, name) pairs, for logs) is made when asked for (__getattr__)

_NO_RECORDS = const(())  # shared empty result: add_sample allocates nothing when no interval closes


class IntervalProfile:
    """Block load profile: energy and average V/I per aligned interval (IS 15959).

    Intervals are ``[k*interval_s, (k+1)*interval_s)`` in UTC; 900 and 1800 divide
    IST's 19800 s offset, so they are aligned in local time too.

    Energy of an interval = cumulative at its end - cumulative at its start,
    where the end reading is the one exactly on the closing boundary if there is
    one, else the last sample inside the interval (the energy between that and
    the next sample is booked to the next interval).  The boundary sample itself
    (its voltage/current, its count) belongs to the new interval.  So the
    energies of consecutive records always sum to last - first cumulative.

    Gap (power off): when a sample skips whole intervals, ``add_sample`` returns
    the interval with data, then ONE record covering every skipped interval
    (start of the first skipped one, interval_s = n * interval_s, energy 0,
    sample_count 0, flags POWER_OFF), so the head-end sees no hole and a year
    off costs one record, not 35 040.  Energy accrued across the gap goes to the
    new interval, flagged AFTER_GAP.

    Records: ``(start_t, interval_s, energy_wh, avg_voltage_mv, avg_current_ma,
    sample_count, flags)``.  An interval closes only when a later sample arrives.

    >>> p = IntervalProfile(900)
    >>> p.add_sample(0, 100), p.add_sample(900, 130)
    ((), [(0, 900, 30, None, None, 1, 0)])
    """

    def __init__(self, interval_s=1800):
        _check_int("interval_s", interval_s, 1)
        self.interval_s = interval_s
        self.start_t = None   # start of the open interval, None before the first sample
        self.base_wh = 0      # cumulative at the open interval's start
        self.last_t = 0
        self.last_wh = 0
        self.count = 0
        self.sum_mv = 0
        self.n_mv = 0
        self.sum_ma = 0
        self.n_ma = 0
        self.flags = 0

    def _open(self, start_t, base_wh, flags):
        self.start_t = start_t
        self.base_wh = base_wh
        self.count = 0
        self.sum_mv = self.n_mv = self.sum_ma = self.n_ma = 0
        self.flags = flags

    def _record(self, end_wh):
        # averages to the nearest integer, halves up (voltages and currents are
        # non-negative); written out, not a helper function: each module-level
        # function costs ~100 bytes of heap on the meter (issue 3)
        n_mv = self.n_mv
        n_ma = self.n_ma
        return (self.start_t, self.interval_s, end_wh - self.base_wh,
                (2 * self.sum_mv + n_mv) // (2 * n_mv) if n_mv else None,
                (2 * self.sum_ma + n_ma) // (2 * n_ma) if n_ma else None,
                self.count, self.flags)

    def booking_start(self, t):
        """Start of the interval that a sample at ``t`` will book the energy since the
        previous sample to (the rules above); the tariff charges that energy at this
        interval's time-of-day so meter and head-end agree to the paisa."""
        step = self.interval_s
        start = t - t % step
        if self.start_t is not None and t == start and start == self.start_t + step:
            return self.start_t  # exactly on the boundary: the old interval's end reading
        return start

    def add_sample(self, t, cumulative_wh, voltage_mv=None, current_ma=None):
        """Feed one sample; return the records of intervals it closed (often ``_NO_RECORDS``)."""
        if self.start_t is not None and t < self.last_t:
            raise _error(1, (t, self.last_t))  # "sample time went back: %d < %d"
        if self.start_t is not None and cumulative_wh < self.last_wh:
            raise _error(2, (cumulative_wh, self.last_wh))  # "cumulative went back: %d < %d"
        step = self.interval_s
        start = t - t % step
        out = _NO_RECORDS  # type: tuple | list
        if self.start_t is None:
            self._open(start, cumulative_wh, 0)
        elif start != self.start_t:
            next_start = self.start_t + step
            if start == next_start:
                # a reading exactly on the boundary is the old interval's end reading
                end_wh = cumulative_wh if t == start else self.last_wh
                out = [self._record(end_wh)]
                self._open(start, end_wh, 0)
            else:
                out = [self._record(self.last_wh),
                       (next_start, start - next_start, 0, None, None, 0, PROFILE_POWER_OFF)]
                self._open(start, self.last_wh, PROFILE_AFTER_GAP)
        self.count += 1
        if voltage_mv is not None:
            self.sum_mv += voltage_mv
            self.n_mv += 1
        if current_ma is not None:
            self.sum_ma += current_ma
            self.n_ma += 1
        self.last_t = t
        self.last_wh = cumulative_wh
        return out

    def to_state(self):
        return {"interval_s": self.interval_s, "start_t": self.start_t, "base_wh": self.base_wh,
                "last_t": self.last_t, "last_wh": self.last_wh, "count": self.count,
                "sum_mv": self.sum_mv, "n_mv": self.n_mv, "sum_ma": self.sum_ma,
                "n_ma": self.n_ma, "flags": self.flags}

    @classmethod
    def from_state(cls, data):
        p = cls(data["interval_s"])
        for key in p.to_state():  # its keys are the attribute names
            setattr(p, key, data[key])
        return p


# ------------------------------------------------------------ maximum demand

class MaxDemand:
    """Sliding-window maximum demand ("rolling block": window of step-sized slots).

    ``add(t, energy_wh)`` books energy that ended at t into the slot holding
    second t-1 (so energy reported exactly at a slot boundary closes the old
    slot).  Each time a slot closes, demand over the last full window is
    ``window_energy_wh * 3600 // window_s``; the highest is kept in ``max_w``
    with ``max_t`` = the end of that window (as meters do at the end of each
    sub-interval).  A slot closes when later energy arrives or on ``advance(t)``.
    ``reset()`` (monthly billing) clears the maximum, not the window.

    >>> md = MaxDemand(1800, 300)
    >>> md.add(300, 500); md.advance(1800); md.max_w   # 500 Wh * 3600 // 1800
    1000
    """

    def __init__(self, window_s=1800, step_s=300):
        _check_int("step_s", step_s, 1)
        _check_int("window_s", window_s, step_s)
        if window_s % step_s:
            raise _error(3, (window_s, step_s))  # "window_s %d is not a multiple of step_s %d"
        self.window_s = window_s
        self.step_s = step_s
        self.ring = [0] * (window_s // step_s)  # preallocated; updated in place
        self.slot = None     # absolute index (t // step_s) of the open slot
        self.window_wh = 0   # sum of ring
        self.max_w = 0
        self.max_t = None

    def advance(self, t):
        """Close every slot that ended at or before t (t - 1 lies in a later slot)."""
        self._move_to((t - 1) // self.step_s)

    def _move_to(self, slot):
        cur = self.slot
        if cur is None:
            self.slot = slot
            return
        if slot < cur:
            raise _error(4)  # "demand time went back"
        if slot == cur:
            return
        ring = self.ring
        n = len(ring)
        demand = self.window_wh * 3600 // self.window_s
        if demand > self.max_w:
            self.max_w = demand
            self.max_t = (cur + 1) * self.step_s
        # later closed slots (empty, after a gap) can only lower the window sum
        steps = slot - cur
        if steps >= n:
            for i in range(n):
                ring[i] = 0
            self.window_wh = 0
        else:
            s = cur + 1
            while s <= slot:  # a while loop: no range object on the hot path
                i = s % n
                self.window_wh -= ring[i]
                ring[i] = 0
                s += 1
        self.slot = slot

    def add(self, t, energy_wh):
        """Book ``energy_wh`` (>= 0) that was consumed up to time t."""
        _check_int("energy_wh", energy_wh, 0)
        slot = (t - 1) // self.step_s
        if self.slot is not None and slot == self.slot - 1 and t == self.slot * self.step_s:
            # the slot ending at t was already closed by advance(t + 1): energy
            # reported at that same instant counts in the slot that is open now
            slot = self.slot
        self._move_to(slot)
        self.ring[slot % len(self.ring)] += energy_wh
        self.window_wh += energy_wh

    def demand_w(self):
        """Demand over the window ending now (the open slot counts as far as it has got)."""
        return self.window_wh * 3600 // self.window_s

    def reset(self):
        self.max_w = 0
        self.max_t = None

    def to_state(self):
        return {"window_s": self.window_s, "step_s": self.step_s, "slot": self.slot,
                "ring": list(self.ring), "max_w": self.max_w, "max_t": self.max_t}

    @classmethod
    def from_state(cls, data):
        md = cls(data["window_s"], data["step_s"])
        if len(data["ring"]) != len(md.ring):
            # "demand ring has %d slots, want %d"
            raise _error(5, (len(data["ring"]), len(md.ring)))
        md.ring = list(data["ring"])
        md.window_wh = sum(md.ring)
        md.slot = data["slot"]
        md.max_w = data["max_w"]
        md.max_t = data["max_t"]
        return md


# ------------------------------------------------------------ billing snapshots

SNAP_DAILY = const(1)
SNAP_MONTHLY = const(2)
SNAP_STALE = const(1)       # flag: values come from a reading older than _STALE_S before the boundary
_STALE_S = const(3600)
_MAX_DAILY_BACKFILL = const(31)   # at most this many daily records per observe (newest kept)
_MAX_MONTHLY_BACKFILL = const(12)


class BillingSnapshots:
    """Daily and monthly billing snapshots at local midnights.

    ``observe(t, cumulative_wh, balance_paise, md_w)`` returns snapshot records
    for every local midnight in (previous observe, t]:
    ``(kind, key, t_utc, cumulative_wh, balance_paise, md_w, flags)`` (md_w None on
    daily records) where kind
    is SNAP_DAILY (key = YYYYMMDD of the day that *ended*) or SNAP_MONTHLY (key =
    localtime month index of the month that ended; the caller then resets
    MaxDemand), t_utc is the midnight.  The values are the readings of the
    observe exactly at the midnight if there is one, else of the previous
    observe (the last known values before it); SNAP_STALE marks values older
    than _STALE_S.  On a midnight that is also a month start, the daily record
    comes first.

    Powered off for several days: one daily record per missed midnight (all
    with the last values before the outage, flagged STALE), so daily series
    have no holes; at most _MAX_DAILY_BACKFILL (newest kept).  Each missed month
    gets a monthly record; only the first carries md_w (later ones 0: the MD
    was reset and nothing was measured).  The first observe only sets the baseline.

    >>> b = BillingSnapshots(localtime.IST_OFFSET_S)
    >>> b.observe(1795804140, 500, 1000, 0)   # 2026-11-27 23:59 IST
    []
    >>> b.observe(1795804200, 510, 990, 0)    # 2026-11-28 00:00 IST
    [(1, 20261127, 1795804200, 510, 990, None, 0)]
    """

    def __init__(self, utc_offset_s=localtime.IST_OFFSET_S):
        self.offset_s = utc_offset_s
        self.last_t = None
        self.wh = 0
        self.paise = 0
        self.md_w = 0

    def observe(self, t, cumulative_wh, balance_paise, md_w):
        out = []  # type: list
        last_t = self.last_t
        if last_t is not None and t < last_t:
            raise _error(6, (t, last_t))  # "billing time went back: %d < %d"
        off = self.offset_s
        first_day = localtime.local_day(t if last_t is None else last_t, off) + 1
        last_day = localtime.local_day(t, off)
        if last_day >= first_day:  # local midnights passed since the last observe
            kept_from = max(first_day, last_day - _MAX_DAILY_BACKFILL + 1)
            first_month = localtime.month_index(last_t, off) + 1
            last_month = localtime.month_index(t, off)
            md = md_w
            # month starts inside the dropped part of a long outage come first
            for m in range(max(first_month, last_month - _MAX_MONTHLY_BACKFILL + 1), last_month + 1):
                start = localtime.month_start_utc(m, off)
                if localtime.local_day(start, off) >= kept_from:
                    break
                out.append(self._record(SNAP_MONTHLY, m - 1, start, t, cumulative_wh, balance_paise, md))
                md = self.md_w = 0  # later missed months measured nothing (self.md_w is set below)
            for day in range(kept_from, last_day + 1):
                midnight = localtime.local_midnight_utc(day, off)
                y, mo, d = localtime.civil_from_days(day - 1)  # the day that ended
                out.append(self._record(SNAP_DAILY, y * 10000 + mo * 100 + d, midnight, t,
                                        cumulative_wh, balance_paise, None))
                if localtime.civil_from_days(day)[2] == 1:
                    out.append(self._record(SNAP_MONTHLY, y * 12 + mo - 1, midnight, t,
                                            cumulative_wh, balance_paise, md))
                    md = self.md_w = 0
        self.last_t = t
        self.wh = cumulative_wh
        self.paise = balance_paise
        self.md_w = md_w
        return out

    def _record(self, kind, key, midnight, t, wh, paise, md_w):
        if t == midnight:  # this observe is exactly at the boundary: its values are the end values
            flags = 0
        else:
            wh, paise = self.wh, self.paise
            if md_w is not None:  # None: a daily record
                md_w = self.md_w
            flags = SNAP_STALE if midnight - self.last_t > _STALE_S else 0
        return (kind, key, midnight, wh, paise, md_w, flags)

    def to_state(self):
        return {"offset_s": self.offset_s, "last_t": self.last_t, "wh": self.wh,
                "paise": self.paise, "md_w": self.md_w}

    @classmethod
    def from_state(cls, data):
        b = cls(data["offset_s"])
        b.last_t = data["last_t"]
        b.wh = data["wh"]
        b.paise = data["paise"]
        b.md_w = data["md_w"]
        return b
