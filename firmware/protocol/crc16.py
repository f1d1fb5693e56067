"""CRC-16/MODBUS: reflected poly 0xA001 (0x8005), init 0xFFFF, no final xor.

Sent low byte first.  Bitwise rather than a 256-entry table: a table costs
~1 KB of heap on MicroPython and frames are at most 256 bytes.  The CRC over
a frame followed by its own CRC is 0, which is how ``modbus`` checks a reply.

>>> crc16_modbus(b"123456789") == 0x4B37
True
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_MORE = const("firmware.protocol.modbus_more")  # a string: see ``modbus``


def __getattr__(name):
    # append_crc and crc_ok are in ``modbus_more`` (``modbus`` computes the CRC in
    # place), loaded on first use: ``crc16.append_crc`` and ``from ... import`` work.
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    more = __import__(_MORE, None, None, ["__name__"])  # a fromlist: the module itself
    if name in more.PUBLIC[__name__]:
        return getattr(more, name)
    raise AttributeError(name)


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
