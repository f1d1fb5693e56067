"""The parts of ``firmware.protocol.modbus``, ``sdm`` and ``crc16`` a meter reading an SDM never uses.

Exception code names (``EXCEPTION_NAMES``, ``exception_name``: only when a
slave answers with an exception), the function codes and limits under their
public names, the FC 03 / 06 / 16 requests (the meter reads input registers,
FC 04), the timing helpers (``Transaction`` does its own arithmetic), the
register types and widths under their public names, the SDM630 map,
``check_map`` (the meter reads a fixed map), ``f32_to_scaled_int`` and
``crc16.append_crc`` / ``crc_ok``.  ``modbus``, ``sdm`` and ``crc16`` hand
these out through their module ``__getattr__`` (``modbus.EXCEPTION_NAMES``,
``from firmware.protocol.modbus import write_single_register``,
``sdm.check_map``), so they reach a meter's heap only when used: names a
module holds are interned when it loads, whether the meter uses them or not.

>>> from firmware.protocol.modbus import write_single_register
>>> write_single_register(1, 0x0014, 2).adu.hex()
'010600140002480f'
"""
from firmware.protocol import modbus, sdm
from firmware.protocol.crc16 import crc16_modbus
from firmware.protocol.modbus import Request, Transaction

READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_REGISTERS = 16

# Modbus Application Protocol V1.1b3, sections 6.3, 6.4 and 6.12
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123
BROADCAST = 0
FAST_BAUD = 19200
DEFAULT_TURNAROUND_MS = 200  # slave processing allowance; not in the standard, tune per meter

# Modbus Application Protocol V1.1b3, section 7 (MODBUS Exception Codes)
EXCEPTION_NAMES = {
    1: "ILLEGAL_FUNCTION",
    2: "ILLEGAL_DATA_ADDRESS",
    3: "ILLEGAL_DATA_VALUE",
    4: "SERVER_DEVICE_FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER_DEVICE_BUSY",
    8: "MEMORY_PARITY_ERROR",
    10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND",
}


def exception_name(code):
    """Name of a Modbus exception code, e.g. 2 -> 'ILLEGAL_DATA_ADDRESS'."""
    return EXCEPTION_NAMES.get(code, "UNKNOWN_EXCEPTION_%d" % code)


def _check_u16(what, value):
    if not isinstance(value, int) or value < 0 or value > 0xFFFF:
        raise modbus.ModbusError("%s must be 0..65535, got %r" % (what, value))


def read_holding_registers(slave, address, count):
    """FC 03 request: ``count`` holding registers from ``address``."""
    return Request(slave, READ_HOLDING_REGISTERS, address, count)


def write_single_register(slave, address, value):
    """FC 06 request: write ``value`` (0..65535) to one holding register."""
    _check_u16("value", value)
    return Request(slave, WRITE_SINGLE_REGISTER, address, 1, [value])


def write_multiple_registers(slave, address, values):
    """FC 16 request: write ``values`` to consecutive holding registers."""
    values = list(values)
    for v in values:
        _check_u16("value", v)
    return Request(slave, WRITE_MULTIPLE_REGISTERS, address, len(values), values)


# ------------------------------------------------------------------ timing
# Modbus over Serial Line V1.02, 2.5.1.1 (see ``modbus``): 11-bit characters
# unless ``bits`` says otherwise; t1.5 and t3.5 fixed above 19200 baud.

def _ceil_div(a, b):
    return (a + b - 1) // b


def frame_time_us(nbytes, baud, bits=11):
    """Microseconds to send ``nbytes`` back to back, rounded up."""
    return _ceil_div(nbytes * bits * 1000000, baud)


def char_time_us(baud, bits=11):
    """Microseconds to send one character, rounded up."""
    return _ceil_div(bits * 1000000, baud)


def inter_frame_gap_us(baud, bits=11):
    """t3.5: the silence that ends a frame and must precede the next request."""
    if baud > FAST_BAUD:
        return 1750
    return _ceil_div(35 * bits * 1000000, 10 * baud)


def inter_char_timeout_us(baud, bits=11):
    """t1.5: a longer gap inside a frame means the frame is broken."""
    if baud > FAST_BAUD:
        return 750
    return _ceil_div(15 * bits * 1000000, 10 * baud)


def response_timeout_ms(request, baud, bits=11, turnaround_ms=DEFAULT_TURNAROUND_MS):
    """Milliseconds from starting to send ``request`` to giving up on its reply.

    Sending the request + t3.5 + the slave's turnaround + receiving the
    longest normal reply, rounded up to whole ms: what a ``Transaction`` waits.
    """
    return Transaction(request, baud, 0, bits, turnaround_ms).timeout_ms


# ------------------------------------------------------------------ sdm
F32 = "f32"
U16 = "u16"
S16 = "s16"
U32 = "u32"
S32 = "s32"
WIDTH = {F32: 2, U16: 1, S16: 1, U32: 2, S32: 2}

# "Each request for data must be restricted to 40 parameters or less" (80
# registers): Eastron SDM630 Modbus protocol manual 1.2; ESPHome's sdm_meter
# reads 80 registers from 0x0000 in one request.  ``sdm_reader`` plans with it.
SDM_MAX_READ_REGISTERS = 80

# Eastron SDM630 Modbus protocol manual (input registers, FC 04), cross-checked
# with merlokk/SmartHome lib/eastron.h and ESPHome's sdm_meter registers.
SDM630 = (
    ("voltage_l1_dv", 0x0000, F32, 1, "dV"),
    ("voltage_l2_dv", 0x0002, F32, 1, "dV"),
    ("voltage_l3_dv", 0x0004, F32, 1, "dV"),
    ("current_l1_ma", 0x0006, F32, 3, "mA"),
    ("current_l2_ma", 0x0008, F32, 3, "mA"),
    ("current_l3_ma", 0x000A, F32, 3, "mA"),
    ("active_power_l1_w", 0x000C, F32, 0, "W"),
    ("active_power_l2_w", 0x000E, F32, 0, "W"),
    ("active_power_l3_w", 0x0010, F32, 0, "W"),
    ("power_factor_l1_milli", 0x001E, F32, 3, "1/1000"),
    ("power_factor_l2_milli", 0x0020, F32, 3, "1/1000"),
    ("power_factor_l3_milli", 0x0022, F32, 3, "1/1000"),
    ("total_power_w", 0x0034, F32, 0, "W"),
    ("total_power_factor_milli", 0x003E, F32, 3, "1/1000"),
    ("frequency_chz", 0x0046, F32, 2, "cHz"),
    ("import_wh", 0x0048, F32, 3, "Wh"),
    ("export_wh", 0x004A, F32, 3, "Wh"),
    ("total_wh", 0x0156, F32, 3, "Wh"),
)


def f32_to_scaled_int(bits, scale):
    """round(float32 with these 32 bits * 10**scale), exact; None for NaN/inf.

    >>> f32_to_scaled_int(0x3FC00000, 0)   # 1.5 rounds half to even
    2
    """
    return sdm.decode_registers((("", 0, F32, scale, ""),), 0, (bits >> 16, bits & 0xFFFF))[""]


def check_map(entries):
    """``sdm.check_map``: raise RegisterMapError unless ``entries`` is a valid map; return it.

    >>> check_map(sdm.SDM120) is sdm.SDM120
    True
    """
    error = sdm.RegisterMapError
    names = set()
    taken = {}  # type: dict[int, str]
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 5:
            raise error("entry must be (name, address, type, scale, unit): %r" % (entry,))
        name, address, kind, scale, unit = entry
        if not isinstance(name, str) or not name:
            raise error("entry name must be a non-empty str: %r" % (entry,))
        if name in names:
            raise error("duplicate name %s" % name)
        names.add(name)
        if kind not in WIDTH:
            raise error("%s: type must be one of f32/u16/s16/u32/s32, got %r" % (name, kind))
        width = WIDTH[kind]
        if not isinstance(address, int) or address < 0 or address + width > 0x10000:
            raise error("%s: address must be 0..%d, got %r" % (name, 0x10000 - width, address))
        if not isinstance(scale, int) or scale < -9 or scale > 9:
            raise error("%s: scale must be an int power of ten -9..9, got %r" % (name, scale))
        if not isinstance(unit, str):
            raise error("%s: unit must be a str" % name)
        for reg in range(address, address + width):
            if reg in taken:
                raise error("%s overlaps %s at register 0x%04x" % (name, taken[reg], reg))
            taken[reg] = name
    return entries


# ------------------------------------------------------------------ crc16

def append_crc(frame):
    """``crc16.append_crc``: ``frame`` + its CRC, low byte first (the order on the wire)."""
    crc = crc16_modbus(frame)
    return bytes(frame) + bytes((crc & 0xFF, crc >> 8))


def crc_ok(frame):
    """``crc16.crc_ok``: True if the last two bytes of ``frame`` are the CRC of the rest."""
    if len(frame) < 3:
        return False
    crc = crc16_modbus(memoryview(frame)[:-2])
    return frame[-2] == (crc & 0xFF) and frame[-1] == (crc >> 8)


# what each module's ``__getattr__`` hands out under its name
PUBLIC = {
    "firmware.protocol.modbus": (
        "READ_HOLDING_REGISTERS", "READ_INPUT_REGISTERS", "WRITE_SINGLE_REGISTER",
        "WRITE_MULTIPLE_REGISTERS", "MAX_READ_COUNT", "MAX_WRITE_COUNT", "BROADCAST",
        "FAST_BAUD", "DEFAULT_TURNAROUND_MS", "EXCEPTION_NAMES", "exception_name",
        "read_holding_registers", "write_single_register", "write_multiple_registers",
        "frame_time_us", "char_time_us", "inter_frame_gap_us", "inter_char_timeout_us",
        "response_timeout_ms"),
    "firmware.protocol.sdm": (
        "F32", "U16", "S16", "U32", "S32", "WIDTH", "SDM_MAX_READ_REGISTERS", "SDM630",
        "f32_to_scaled_int", "check_map"),
    "firmware.protocol.crc16": ("append_crc", "crc_ok"),
}
