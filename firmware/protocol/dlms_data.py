"""A-XDR ``Data`` (DLMS/COSEM, IEC 62056-6-2) decode.

Decoded values are plain Python: null -> None, boolean -> bool, all
integers and enum -> int, octet-string -> bytes, visible/utf8-string -> str,
structure -> tuple, array -> list, date-time (tag 25) -> ``DateTime``.
Floats (tags 23/24) decode for completeness; nothing that counts money or
energy should use them.

What a meter reading registers never uses is in ``dlms_more``, handed out by
this module's ``__getattr__`` on first use: ``decode``, the encoders (for a meter peer and
tests; the client only decodes), ``DateTime`` with ``decode_datetime`` (meters
usually send dates as a 12-byte octet-string) and ``encode_datetime``, and the
tag numbers and ``MAX_DEPTH`` under public names.

>>> decode(bytes.fromhex("020212000f0f00"))
(15, 0)
"""
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# Tags; the ones a peer or test builds data with are public in ``dlms_more``
_NULL = const(0)
_ARRAY = const(1)
_STRUCTURE = const(2)
_BOOLEAN = const(3)
_BIT_STRING = const(4)
_OCTET_STRING = const(9)
_VISIBLE_STRING = const(10)
_UTF8_STRING = const(12)
_DATE_TIME = const(25)
_DATE = const(26)
_TIME = const(27)
_DONT_CARE = const(255)

# struct format (big-endian) of each fixed-size type, two characters per tag (blank if
# not fixed): 5 double-long i, 6 double-long-unsigned I, 13 bcd b, 15 integer b,
# 16 long h, 17 unsigned B, 18 long-unsigned H, 20 long64 q, 21 long64-unsigned Q,
# 22 enum B, 23 float32 f, 24 float64 d.  ``dlms_more.enc_int`` has the same table.
_FIXED = const("          >i>I            >b  >b>h>B>H  >q>Q>B>f>d")

_MAX_DEPTH = const(8)  # nesting limit: keeps recursion bounded on the meter


def __getattr__(name):
    # DlmsDataError (a ValueError: bytes are not valid A-XDR data -- truncated, unknown
    # tag, too deep) is made on first use and kept in the module dict: held from import
    # on, the class would cost heap a meter reading sane data never needs.  Raise sites
    # here raise ``err(...)``, which calls ``__getattr__("DlmsDataError")``.  The rest is in ``dlms_more``.
    if name == "DlmsDataError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    from firmware.protocol import dlms_more
    if name in dlms_more.PUBLIC[__name__]:
        return getattr(dlms_more, name)
    raise AttributeError(name)


# The error messages, one str (one object on the heap, not one per message), by index;
# 12 is raised by ``decode`` (dlms_more) and its inline copy in dlms_client.
_MESSAGES = const(
    "length missing|"  # 0
    "bad length encoding|"  # 1
    "data nested deeper than %d|"  # 2
    "data truncated|"  # 3
    "data truncated in tag %d|"  # 4
    "element count %d larger than the data|"  # 5
    "string truncated|"  # 6
    "bit-string truncated|"  # 7
    "boolean truncated|"  # 8
    "date-time truncated|"  # 9
    "date/time truncated|"  # 10
    "unsupported data tag %d|"  # 11
    "%d bytes after the data"  # 12
)


def err(i, x):
    """DlmsDataError with message ``i`` of _MESSAGES, formatted with ``x`` (a value, or ())."""
    return __getattr__("DlmsDataError")(_MESSAGES.split("|")[i] % x)


# -- length (A-XDR variable-length integer) --------------------------------------

def decode_length(buf, pos: int) -> tuple:
    """(length, next pos): one byte < 0x80, else 0x8N followed by N big-endian bytes."""
    if pos >= len(buf):
        raise err(0, ())
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if n == 0 or n > 4 or pos + 1 + n > len(buf):
        raise err(1, ())
    value = 0
    for b in buf[pos + 1:pos + 1 + n]:
        value = (value << 8) | b
    return value, pos + 1 + n


# -- decode ---------------------------------------------------------------------------

# ``decode`` (one value that fills the buffer) is in ``dlms_more``; the client does the same
# inline with ``decode_at``.


def decode_at(buf, pos: int = 0, depth: int = 0) -> tuple:
    """(value, next pos) of the Data value at ``pos``."""
    if depth > _MAX_DEPTH:
        raise err(2, _MAX_DEPTH)
    if pos >= len(buf):
        raise err(3, ())
    tag = buf[pos]
    pos += 1
    fmt = _FIXED[2 * tag:2 * tag + 2]
    if fmt.strip():  # a fixed-size type
        end = pos + struct.calcsize(fmt)
        if end > len(buf):
            raise err(4, tag)
        return struct.unpack(fmt, bytes(buf[pos:end]))[0], end
    if tag == _STRUCTURE or tag == _ARRAY:
        count, pos = decode_length(buf, pos)
        if count > len(buf) - pos:  # every element takes at least one byte
            raise err(5, count)
        items = []
        for _ in range(count):
            item, pos = decode_at(buf, pos, depth + 1)
            items.append(item)
        return (tuple(items) if tag == _STRUCTURE else items), pos
    if tag == _OCTET_STRING or tag == _VISIBLE_STRING or tag == _UTF8_STRING:
        n, pos = decode_length(buf, pos)
        end = pos + n
        if end > len(buf):
            raise err(6, ())
        raw = bytes(buf[pos:end])
        return (raw if tag == _OCTET_STRING else raw.decode()), end
    if tag == _BIT_STRING:
        nbits, pos = decode_length(buf, pos)
        end = pos + (nbits + 7) // 8
        if end > len(buf):
            raise err(7, ())
        return bytes(buf[pos:end]), end
    if tag == _BOOLEAN:
        if pos >= len(buf):
            raise err(8, ())
        return buf[pos] != 0, pos + 1
    if tag == _NULL or tag == _DONT_CARE:
        return None, pos
    if tag == _DATE_TIME:
        if pos + 12 > len(buf):
            raise err(9, ())
        return __getattr__("decode_datetime")(buf[pos:pos + 12]), pos + 12
    if tag == _DATE or tag == _TIME:
        end = pos + (5 if tag == _DATE else 4)
        if end > len(buf):
            raise err(10, ())
        return bytes(buf[pos:end]), end
    raise err(11, tag)
