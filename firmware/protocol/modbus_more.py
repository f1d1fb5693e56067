"""The parts of ``firmware.protocol.modbus`` and ``sdm`` a meter reading an SDM never uses.

Exception code names (``EXCEPTION_NAMES``, ``exception_name``: only when a
slave answers with an exception), the function codes and limits under their
public names, the FC 03 / 06 / 16 requests (the meter reads input registers,
FC 04), the character-time helpers, and ``sdm.check_map`` (the meter reads a
fixed map).  ``modbus`` and ``sdm`` hand these out through their module
``__getattr__`` (``modbus.EXCEPTION_NAMES``, ``from firmware.protocol.modbus
import write_single_register``, ``sdm.check_map``), so they reach a meter's
heap only when used.

>>> from firmware.protocol.modbus import write_single_register
>>> write_single_register(1, 0x0014, 2).adu.hex()
'010600140002480f'
"""
from firmware.protocol import sdm
from firmware.protocol.modbus import Request, _ceil_div, _check_u16

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


def char_time_us(baud, bits=11):
    """Microseconds to send one character, rounded up."""
    return _ceil_div(bits * 1000000, baud)


def inter_char_timeout_us(baud, bits=11):
    """t1.5: a longer gap inside a frame means the frame is broken."""
    if baud > FAST_BAUD:
        return 750
    return _ceil_div(15 * bits * 1000000, 10 * baud)


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
        if kind not in sdm.WIDTH:
            raise error("%s: type must be one of f32/u16/s16/u32/s32, got %r" % (name, kind))
        width = sdm.WIDTH[kind]
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


# what ``modbus.__getattr__`` hands out under ``modbus``'s name
PUBLIC = ("READ_HOLDING_REGISTERS", "READ_INPUT_REGISTERS", "WRITE_SINGLE_REGISTER",
          "WRITE_MULTIPLE_REGISTERS", "MAX_READ_COUNT", "MAX_WRITE_COUNT", "BROADCAST",
          "FAST_BAUD", "DEFAULT_TURNAROUND_MS", "EXCEPTION_NAMES", "exception_name",
          "read_holding_registers", "write_single_register", "write_multiple_registers",
          "char_time_us", "inter_char_timeout_us")
