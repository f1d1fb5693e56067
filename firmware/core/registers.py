"""Registers read from outside the pulse input: wrapping hardware counters and
external meters' cumulative energy registers.

Integers only (Wh, UTC seconds).  Split from ``firmware.core.metering`` so a
pulse-only meter does not hold this code in its heap; ``metering.CounterDelta``
etc. still work.  Neither is saved in the journal: after a restart the first
reading is the baseline again (``firmware.app.main.RegisterFeed``, the pulse
counter at start-up).

>>> c = CounterDelta(16)
>>> c.update(65535), c.update(3)
(0, 4)
"""
from firmware.core import metering

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

# metering's check (its message, its MeteringError): one function object, not two
_check_int = metering._check_int


class CounterDelta:
    """Pulses since the last read of a wrapping hardware counter (ESP32 PCNT: 16 bit).

    Assumption: the counter is read often enough that fewer than 2**bits
    pulses arrive between reads (at 3200 imp/kWh and 100 kW that is 450 imp/s,
    so a 16-bit counter must be read at least every ~145 s).  A signed reading
    (PCNT counts -32768..32767) is taken modulo 2**bits as well.

    >>> c = CounterDelta(16)
    >>> c.update(65535), c.update(3)
    (0, 4)
    """

    def __init__(self, bits=16):
        _check_int("bits", bits, 1)
        self._mask = (1 << bits) - 1
        self.last = None  # raw reading masked to bits; None before the first read

    def update(self, raw):
        """Return pulses since the previous reading (0 on the first reading)."""
        if not isinstance(raw, int):
            raise metering.MeteringError("counter reading must be an int, got %r" % (raw,))
        raw &= self._mask
        last = self.last
        self.last = raw
        if last is None:
            return 0
        return (raw - last) & self._mask


# ---------------------------------------------------------- cumulative registers

REG_OK = const(0)
REG_ROLLOVER = const(1)   # the meter's register wrapped at its modulus: delta counted
REG_DECREASE = const(2)   # reading below the last one and not a rollover: ignored
REG_JUMP = const(3)       # increase above max_step_wh: ignored (protects the balance)
REG_INVALID = const(4)    # negative, not an int, or >= modulus: ignored


def __getattr__(name):
    # REGISTER_STATUS_NAMES (index = REG_* code, for logs) is made when asked for: a
    # tuple held from import on would sit in every meter's heap for nothing.
    if name == "REGISTER_STATUS_NAMES":
        return tuple("OK ROLLOVER REGISTER_DECREASE REGISTER_JUMP READING_INVALID".split())
    raise AttributeError(name)


class CumulativeRegister:
    """Monotonic cumulative register fed by an external meter's reading (import Wh).

    ``value`` never decreases.  ``update(reading)`` returns the delta counted
    (>= 0) and sets ``status`` to one of the REG_* codes.  Rules:

    * reading >= last reading: delta = reading - last.  If ``max_step_wh`` is set
      and the delta exceeds it, it is REG_JUMP and nothing is counted.
    * reading < last reading, with a ``modulus`` (e.g. 10**9 Wh): it is a rollover
      when the wrapped delta ``reading + modulus - last`` is at most the rollover
      window (``max_step_wh`` if set, else modulus // 100).  Otherwise, or
      without a modulus, it is REG_DECREASE.
    * On REG_DECREASE / REG_JUMP / REG_INVALID the register keeps its value *and*
      its last reading, so a one-read glitch costs nothing.  A real meter swap
      or reset needs an explicit ``rebase(reading)``.

    ``value`` is the unwrapped total: after a rollover it keeps growing past
    the modulus.  A register built with ``value`` expects its first reading to
    be ``value % modulus`` (commission it with the meter's current reading).

    >>> r = CumulativeRegister(1000)
    >>> r.update(1250), r.update(900), r.status == REG_DECREASE, r.value
    (250, 0, True, 1250)
    """

    def __init__(self, value=0, modulus=0, max_step_wh=0):
        _check_int("value", value, 0)
        _check_int("modulus", modulus, 0)
        _check_int("max_step_wh", max_step_wh, 0)
        self.value = value
        self.modulus = modulus
        self.max_step_wh = max_step_wh
        self.last_reading = value % modulus if modulus else value
        self.status = REG_OK

    def update(self, reading):
        """Feed one meter reading; return the delta added to ``value`` (>= 0)."""
        m = self.modulus
        if (not isinstance(reading, int) or isinstance(reading, bool) or reading < 0
                or (m and reading >= m)):
            self.status = REG_INVALID
            return 0
        last = self.last_reading
        if reading >= last:
            delta = reading - last
            if self.max_step_wh and delta > self.max_step_wh:
                self.status = REG_JUMP
                return 0
            self.status = REG_OK
        else:
            delta = reading + m - last
            if not m or delta > (self.max_step_wh or m // 100):
                self.status = REG_DECREASE
                return 0
            self.status = REG_ROLLOVER
        self.last_reading = reading
        self.value += delta
        return delta

    def rebase(self, reading):
        """Accept ``reading`` as the new baseline without counting anything (meter swap)."""
        _check_int("reading", reading, 0)
        self.last_reading = reading
        self.status = REG_OK
