"""The parts of ``firmware.protocol.modbus`` a meter reading an SDM never uses.

Exception code names (only when a slave answers with an exception), the
function codes and limits under their public names, and the FC 03 / 06 / 16
requests (the meter reads input registers, FC 04).  ``modbus`` hands these out
through its module ``__getattr__`` (``modbus.EXCEPTION_NAMES``, ``from
firmware.protocol.modbus import write_single_register``), so they reach a
meter's heap only when used.

>>> from firmware.protocol.modbus import write_single_register
>>> write_single_register(1, 0x0014, 2).adu.hex()
'010600140002480f'
"""
from firmware.protocol.modbus import Request, _check_u16

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


# what ``modbus.__getattr__`` hands out under ``modbus``'s name
PUBLIC = ("READ_HOLDING_REGISTERS", "READ_INPUT_REGISTERS", "WRITE_SINGLE_REGISTER",
          "WRITE_MULTIPLE_REGISTERS", "MAX_READ_COUNT", "MAX_WRITE_COUNT", "BROADCAST",
          "FAST_BAUD", "DEFAULT_TURNAROUND_MS", "EXCEPTION_NAMES", "read_holding_registers",
          "write_single_register", "write_multiple_registers")
