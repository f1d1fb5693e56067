"""COSEM objects an IS 15959 meter exposes, and their values in our integer units.

A Register (class 3) gives ``value`` (attribute 2) and ``scaler_unit``
(attribute 3: structure {integer scaler, enum unit}); the physical value is
value * 10**scaler in that unit.  We convert to fixed integer units, never
through floats: energy Wh, voltage mV, current mA, power W, power factor in
thousandths, frequency mHz.  When the meter's resolution is finer than ours
the result is truncated toward zero (an energy register then never runs
ahead of the meter) -- the one rounding rule here.

>>> to_units(12345, -1, 0)   # 1234.5 Wh -> 1234 Wh
1234
>>> to_units(56, 3, 0)       # 56 kWh -> 56000 Wh
56000
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.protocol.dlms import DlmsError
from firmware.protocol.dlms_data import DateTime, decode_datetime

_CLASS_DATA = const(1)
_CLASS_REGISTER = const(3)
_CLASS_EXTENDED_REGISTER = const(4)
_CLASS_PROFILE_GENERIC = const(7)
_CLASS_CLOCK = const(8)

# Units (Blue Book unit enumeration; same numbers as Gurux's Unit enum)
_UNIT_W = const(27)
_UNIT_VA = const(28)
_UNIT_VAR = const(29)
_UNIT_WH = const(30)
_UNIT_VAH = const(31)
_UNIT_VARH = const(32)
_UNIT_A = const(33)
_UNIT_V = const(35)
_UNIT_HZ = const(44)
_UNIT_COUNT = const(255)  # "no unit"; power factor uses it


def obis(text: str) -> bytes:
    """'1.0.1.8.0.255' -> b'\\x01\\x00\\x01\\x08\\x00\\xff'."""
    parts = text.split(".")
    if len(parts) != 6:
        raise ValueError("OBIS code needs six dot-separated numbers: %r" % text)
    raw = bytes(int(p) for p in parts)
    return raw


def obis_text(raw) -> str:
    return ".".join(str(b) for b in raw)


CLOCK = obis("0.0.1.0.0.255")
ENERGY_IMPORT = obis("1.0.1.8.0.255")
VOLTAGE = obis("1.0.12.7.0.255")
CURRENT = obis("1.0.11.7.0.255")
ACTIVE_POWER = obis("1.0.1.7.0.255")
POWER_FACTOR = obis("1.0.13.7.0.255")
FREQUENCY = obis("1.0.14.7.0.255")
MAX_DEMAND = obis("1.0.1.6.0.255")
BLOCK_LOAD_PROFILE = obis("1.0.99.1.0.255")
BLOCK_LOAD_SCALERS = obis("1.0.94.91.4.255")  # IS 15959 scaler profile of the block load profile
SERIAL_NUMBER = obis("0.0.96.1.0.255")

# name -> (OBIS, accepted units, exponent of our unit relative to the DLMS unit)
QUANTITIES = {
    "energy_import_wh": (ENERGY_IMPORT, (_UNIT_WH,), 0),
    "voltage_mv": (VOLTAGE, (_UNIT_V,), -3),
    "current_ma": (CURRENT, (_UNIT_A,), -3),
    "active_power_w": (ACTIVE_POWER, (_UNIT_W,), 0),
    "power_factor_milli": (POWER_FACTOR, (_UNIT_COUNT, 0), -3),
    "frequency_mhz": (FREQUENCY, (_UNIT_HZ,), -3),
}
QUANTITY_ORDER = ("energy_import_wh", "voltage_mv", "current_ma", "active_power_w",
                  "power_factor_milli", "frequency_mhz")


def to_units(value: int, scaler: int, exponent: int) -> int:
    """value * 10**(scaler - exponent) exactly, truncated toward zero."""
    shift = scaler - exponent
    if shift >= 0:
        return value * 10 ** shift
    div = 10 ** -shift
    q = abs(value) // div
    return q if value >= 0 else -q


def scaler_unit(value) -> tuple:
    """(scaler, unit) from attribute 3's decoded structure {integer, enum}."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise DlmsError("scaler_unit must be a structure of two elements: %r" % (value,))
    scaler, unit = value
    if not isinstance(scaler, int) or not isinstance(unit, int) or not -128 <= scaler <= 127:
        raise DlmsError("scaler_unit elements must be integers: %r" % (value,))
    return scaler, unit


def register_value(value, scaler_unit_value, quantity: str) -> int:
    """A register's attribute 2 + attribute 3 -> integer in our unit for ``quantity``.

    Raises DlmsError when the meter reports another unit (e.g. varh where we
    expect Wh) or a non-integer value.
    """
    _, units, exponent = QUANTITIES[quantity]
    scaler, unit = scaler_unit(scaler_unit_value)
    if unit not in units:
        raise DlmsError("%s: meter reports unit %d, expected %r" % (quantity, unit, units))
    if isinstance(value, bool) or not isinstance(value, int):
        raise DlmsError("%s: register value %r is not an integer" % (quantity, value))
    return to_units(value, scaler, exponent)


def clock_utc(value, default_offset_s: int = 19800) -> int:
    """Clock attribute 2 (octet-string of 12 bytes, or date-time) -> UTC seconds."""
    if isinstance(value, DateTime):
        return value.to_utc(default_offset_s)
    if isinstance(value, (bytes, bytearray)):
        return decode_datetime(value).to_utc(default_offset_s)
    raise DlmsError("clock value is not a date-time: %r" % (value,))


class CaptureObject:
    """One column of a profile: which attribute of which object it captures."""

    def __init__(self, class_id, logical_name, attribute, data_index=0):
        self.class_id = class_id
        self.logical_name = logical_name
        self.attribute = attribute
        self.data_index = data_index

    @property
    def is_clock(self) -> bool:
        return self.class_id == _CLASS_CLOCK and self.attribute == 2

    def __repr__(self):
        return "CaptureObject(%d, %s, %d)" % (self.class_id, obis_text(self.logical_name), self.attribute)


def capture_objects(value) -> list:
    """Profile attribute 3 (array of {long-unsigned, octet-string(6), integer, long-unsigned})."""
    if not isinstance(value, list):
        raise DlmsError("capture_objects must be an array")
    out = []
    for item in value:
        if not isinstance(item, tuple) or len(item) != 4 or not isinstance(item[1], bytes) \
                or len(item[1]) != 6:
            raise DlmsError("capture object malformed: %r" % (item,))
        out.append(CaptureObject(item[0], item[1], item[2], item[3]))
    return out


def profile_rows(buffer, columns, scalers=None, default_offset_s: int = 19800) -> list:
    """Profile attribute 2 (array of structures) -> list of rows (lists).

    Clock columns become UTC seconds.  ``scalers`` is a list per column of
    ``(scaler, exponent)`` or None; numeric columns with an entry are
    converted with :func:`to_units`, others are left as decoded.
    """
    if not isinstance(buffer, list):
        raise DlmsError("profile buffer must be an array")
    rows = []
    for entry in buffer:
        if not isinstance(entry, tuple) or len(entry) != len(columns):
            raise DlmsError("profile entry does not match %d capture objects" % len(columns))
        row = []
        for i, cell in enumerate(entry):
            if columns[i].is_clock and cell is not None:
                row.append(clock_utc(cell, default_offset_s))
            elif scalers and scalers[i] is not None and isinstance(cell, int) \
                    and not isinstance(cell, bool):
                row.append(to_units(cell, scalers[i][0], scalers[i][1]))
            else:
                row.append(cell)
        rows.append(row)
    return rows
