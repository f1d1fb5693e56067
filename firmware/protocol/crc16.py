"""CRC-16/MODBUS: reflected poly 0xA001 (0x8005), init 0xFFFF, no final xor.

Sent low byte first.  Bitwise rather than a 256-entry table: a table costs
~1 KB of heap on MicroPython and frames are at most 256 bytes.

>>> crc16_modbus(b"123456789") == 0x4B37
True
"""


def crc16_modbus(data, crc=0xFFFF):
    """CRC of ``data``; pass a previous result as ``crc`` to continue over more bytes."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def append_crc(frame):
    """``frame`` + its CRC, low byte first (the order on the wire)."""
    crc = crc16_modbus(frame)
    return bytes(frame) + bytes((crc & 0xFF, crc >> 8))


def crc_ok(frame):
    """True if the last two bytes of ``frame`` are the CRC of the rest."""
    if len(frame) < 3:
        return False
    crc = crc16_modbus(memoryview(frame)[:-2])
    return frame[-2] == (crc & 0xFF) and frame[-1] == (crc >> 8)
