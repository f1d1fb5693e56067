"""COSEM registers an IS 15959 meter exposes, and their values in our integer units.

A Register (class 3) gives ``value`` (attribute 2) and ``scaler_unit``
(attribute 3: structure {integer scaler, enum unit}); the physical value is
value * 10**scaler in that unit.  We convert to fixed integer units, never
through floats: energy Wh, voltage mV, current mA, power W, power factor in
thousandths, frequency mHz.  When the meter's resolution is finer than ours
the result is truncated toward zero (an energy register then never runs
ahead of the meter) -- the one rounding rule here.

The named OBIS codes (``ENERGY_IMPORT``, ``CLOCK``, ``BLOCK_LOAD_PROFILE``, ...),
``obis``/``obis_text``, the register table as a dict (``QUANTITIES``), ``to_units``, the
clock and the load profile (``clock_utc``, ``capture_objects``,
``profile_rows``) are in ``dlms_more``, handed out by this module's
``__getattr__`` on first use: a meter reading registers never needs them.

>>> register_value(12345, (-1, 30), "energy_import_wh")   # 1234.5 Wh -> 1234 Wh
1234
>>> register_value(56, (3, 30), "energy_import_wh")       # 56 kWh -> 56000 Wh
56000
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.protocol import dlms

def __getattr__(name):
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    from firmware.protocol import dlms_more
    if name in dlms_more.PUBLIC[__name__]:
        return getattr(dlms_more, name)
    raise AttributeError(name)


# The registers we read, one row of 9 bytes each, in the order of _NAMES: OBIS code;
# the DLMS unit we accept, and a second one (the same byte again when there is none);
# the exponent of our unit relative to the DLMS unit (a signed byte).  Units are the
# Blue Book unit enumeration (same numbers as Gurux's Unit enum): W 27, Wh 30, A 33,
# V 35, Hz 44, 255 "count" (no unit: power factor; some meters send 0).  Bytes stay in
# flash with the bytecode: a dict of tuples cost ~1 KB of heap (``QUANTITIES`` in
# ``dlms_more`` is that dict, for tests and tools).
# (one str, split per call: a tuple constant would be built on the heap at import)
_NAMES = const("energy_import_wh voltage_mv current_ma active_power_w power_factor_milli frequency_mhz")
_REGISTERS = const(
    #  OBIS code                       units      exponent
    b"\x01\x00\x01\x08\x00\xff" b"\x1e\x1e" b"\x00"  # 1.0.1.8.0.255   Wh        0
    b"\x01\x00\x0c\x07\x00\xff" b"\x23\x23" b"\xfd"  # 1.0.12.7.0.255  V        -3
    b"\x01\x00\x0b\x07\x00\xff" b"\x21\x21" b"\xfd"  # 1.0.11.7.0.255  A        -3
    b"\x01\x00\x01\x07\x00\xff" b"\x1b\x1b" b"\x00"  # 1.0.1.7.0.255   W         0
    b"\x01\x00\x0d\x07\x00\xff" b"\xff\x00" b"\xfd"  # 1.0.13.7.0.255  count, 0 -3
    b"\x01\x00\x0e\x07\x00\xff" b"\x2c\x2c" b"\xfd"  # 1.0.14.7.0.255  Hz       -3
)


def register(quantity: str) -> tuple:
    """(OBIS code, accepted units, exponent of our unit relative to the DLMS unit) of the
    register we read for ``quantity``; KeyError for a quantity we do not read.

    >>> register("voltage_mv")
    (b'\\x01\\x00\\x0c\\x07\\x00\\xff', (35,), -3)
    """
    names = _NAMES.split()
    for i in range(len(names)):
        if names[i] == quantity:
            row = _REGISTERS[9 * i:9 * i + 9]
            units = (row[6],) if row[6] == row[7] else (row[6], row[7])
            return row[:6], units, row[8] - 256 if row[8] > 127 else row[8]
    raise KeyError(quantity)


def register_value(value, scaler_unit, quantity: str) -> int:
    """A register's attribute 2 + attribute 3 -> integer in our unit for ``quantity``.

    ``scaler_unit`` is attribute 3 decoded: the structure {integer, enum}.
    Raises DlmsError when the meter reports another unit (e.g. varh where we
    expect Wh) or a non-integer value.
    """
    _, units, exponent = register(quantity)
    if not isinstance(scaler_unit, tuple) or len(scaler_unit) != 2:
        raise dlms.err(23, (scaler_unit,))  # a DlmsError; messages in dlms
    scaler, unit = scaler_unit
    if not isinstance(scaler, int) or not isinstance(unit, int) or not -128 <= scaler <= 127:
        raise dlms.err(24, (scaler_unit,))
    if unit not in units:
        raise dlms.err(25, (quantity, unit, units))
    if isinstance(value, bool) or not isinstance(value, int):
        raise dlms.err(26, (quantity, value))
    shift = scaler - exponent  # value * 10**shift exactly, truncated toward zero
    if shift >= 0:
        return value * 10 ** shift
    q = abs(value) // 10 ** -shift
    return q if value >= 0 else -q
