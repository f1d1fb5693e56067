"""Registers read from outside the pulse input: wrapping hardware counters,
external meters' cumulative energy registers, instantaneous snapshots.

Integers only (Wh, mV, mA, W, thousandths of PF, mHz, UTC seconds); floats
appear only in ``round_half_away`` / ``RegisterSnapshot.from_floats``, the
boundary where a Modbus meter hands us IEEE floats.  Split from
``firmware.core.metering`` so a pulse-only meter does not hold this code in
its heap; ``metering.CounterDelta`` etc. still work.

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


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise metering.MeteringError("%s must be an int >= %d, got %r" % (name, minimum, value))


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
        self.bits = bits
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

    def to_state(self):
        return {"bits": self.bits, "last": self.last}

    @classmethod
    def from_state(cls, data):
        c = cls(data["bits"])
        c.last = data["last"]
        return c


# ---------------------------------------------------------- cumulative registers

REG_OK = const(0)
REG_ROLLOVER = const(1)   # the meter's register wrapped at its modulus: delta counted
REG_DECREASE = const(2)   # reading below the last one and not a rollover: ignored
REG_JUMP = const(3)       # increase above max_step_wh: ignored (protects the balance)
REG_INVALID = const(4)    # negative, not an int, or >= modulus: ignored
REGISTER_STATUS_NAMES = ("OK", "ROLLOVER", "REGISTER_DECREASE", "REGISTER_JUMP", "READING_INVALID")


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

    def to_state(self):
        return {"value": self.value, "last": self.last_reading,
                "modulus": self.modulus, "max_step_wh": self.max_step_wh}

    @classmethod
    def from_state(cls, data):
        r = cls(data["value"], data["modulus"], data["max_step_wh"])
        r.last_reading = data["last"]
        return r


# ------------------------------------------------------------------ snapshots

def round_half_away(x):
    """Round a float to the nearest int, halves away from zero; NaN/inf -> None.

    The one rounding rule for floats entering the meter (Modbus IEEE values).
    It rounds the float it is given: scale first (kWh * 1000), then round.

    >>> round_half_away(2.5), round_half_away(-2.5), round_half_away(2.4999)
    (3, -3, 2)
    """
    if x != x or x - x != 0:  # NaN, or +-inf (inf - inf is NaN)
        return None
    if x >= 0:
        return int(x + 0.5)
    return -int(-x + 0.5)


def _scaled(x, scale):
    if x is None:
        return None
    return round_half_away(x * scale)


class RegisterSnapshot:
    """One instantaneous read of a meter, in integers; None where the source lacks it.

    Produced by the Modbus (SDM120/630) and DLMS readers.

    >>> s = RegisterSnapshot.from_floats(1795737600, volts=230.1, import_kwh=12.3456)
    >>> s.voltage_mv, s.import_wh, s.current_ma
    (230100, 12346, None)
    """

    FIELDS = ("t", "import_wh", "export_wh", "voltage_mv", "current_ma",
              "power_w", "pf_milli", "freq_mhz")

    def __init__(self, t, import_wh=None, export_wh=None, voltage_mv=None, current_ma=None,
                 power_w=None, pf_milli=None, freq_mhz=None):
        _check_int("t", t, 0)
        self.t = t
        self.import_wh = import_wh
        self.export_wh = export_wh
        self.voltage_mv = voltage_mv
        self.current_ma = current_ma
        self.power_w = power_w
        self.pf_milli = pf_milli
        self.freq_mhz = freq_mhz

    @classmethod
    def from_floats(cls, t, volts=None, amps=None, watts=None, pf=None, hz=None,
                    import_kwh=None, export_kwh=None):
        """Build from a Modbus meter's floats (V, A, W, PF, Hz, kWh) with ``round_half_away``.

        Scales: V*1000 -> mV, A*1000 -> mA, W*1 -> W, PF*1000, Hz*1000 -> mHz,
        kWh*1000 -> Wh.  A NaN or infinite value becomes None (missing).
        The ESP32 port multiplies in single precision, the unix port and CPython
        in double, so a product within float32 rounding of a half can differ by
        1 unit between them; an SDM energy float resolves 1 Wh only up to
        2**24 Wh = 16 777 kWh anyway, so use the DLMS/integer register for billing.
        """
        return cls(t, _scaled(import_kwh, 1000), _scaled(export_kwh, 1000),
                   _scaled(volts, 1000), _scaled(amps, 1000), _scaled(watts, 1),
                   _scaled(pf, 1000), _scaled(hz, 1000))

    def to_state(self):
        """Values in FIELDS order (a list, so the encoding is byte-exact on both runtimes)."""
        return [self.t, self.import_wh, self.export_wh, self.voltage_mv, self.current_ma,
                self.power_w, self.pf_milli, self.freq_mhz]

    @classmethod
    def from_state(cls, data):
        return cls(*data)

    def __eq__(self, other):
        return isinstance(other, RegisterSnapshot) and self.to_state() == other.to_state()

    def __repr__(self):
        return "RegisterSnapshot(%r)" % (self.to_state(),)
