"""A-XDR ``Data`` (DLMS/COSEM, IEC 62056-6-2) decode, and encoders for a test peer.

Decoded values are plain Python: null -> None, boolean -> bool, all
integers and enum -> int, octet-string -> bytes, visible/utf8-string -> str,
structure -> tuple, array -> list, date-time (tag 25) -> :class:`DateTime`.
Meters usually send dates as a 12-byte octet-string: :func:`decode_datetime`
turns those into a :class:`DateTime` too.  Floats (tags 23/24) decode for
completeness; nothing that counts money or energy should use them.

>>> decode(bytes.fromhex("020212000f0f00"))
(15, 0)
"""
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.core.localtime import days_from_civil

NULL = const(0)
_ARRAY = const(1)
_STRUCTURE = const(2)
_BOOLEAN = const(3)
_BIT_STRING = const(4)
_DOUBLE_LONG = const(5)
DOUBLE_LONG_UNSIGNED = const(6)
_OCTET_STRING = const(9)
_VISIBLE_STRING = const(10)
_UTF8_STRING = const(12)
_BCD = const(13)
INTEGER = const(15)
LONG = const(16)
_UNSIGNED = const(17)
LONG_UNSIGNED = const(18)
_COMPACT_ARRAY = const(19)
LONG64 = const(20)
_LONG64_UNSIGNED = const(21)
ENUM = const(22)
FLOAT32 = const(23)
_FLOAT64 = const(24)
_DATE_TIME = const(25)
_DATE = const(26)
TIME = const(27)
_DONT_CARE = const(255)

# fixed-size types: tag -> struct format
_FIXED = {
    _DOUBLE_LONG: ">i", DOUBLE_LONG_UNSIGNED: ">I", _BCD: ">b", INTEGER: ">b",
    LONG: ">h", _UNSIGNED: ">B", LONG_UNSIGNED: ">H", LONG64: ">q",
    _LONG64_UNSIGNED: ">Q", ENUM: ">B", FLOAT32: ">f", _FLOAT64: ">d",
}
_SIZE = {">b": 1, ">B": 1, ">h": 2, ">H": 2, ">i": 4, ">I": 4, ">q": 8, ">Q": 8,
         ">f": 4, ">d": 8}

MAX_DEPTH = const(8)  # nesting limit: keeps recursion bounded on the meter


class DlmsDataError(ValueError):
    """Bytes are not valid A-XDR data (truncated, unknown tag, too deep)."""


# -- length (A-XDR variable-length integer) --------------------------------------

def decode_length(buf, pos: int) -> tuple:
    """(length, next pos): one byte < 0x80, else 0x8N followed by N big-endian bytes."""
    if pos >= len(buf):
        raise DlmsDataError("length missing")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if n == 0 or n > 4 or pos + 1 + n > len(buf):
        raise DlmsDataError("bad length encoding")
    value = 0
    for b in buf[pos + 1:pos + 1 + n]:
        value = (value << 8) | b
    return value, pos + 1 + n


def encode_length(n: int) -> bytes:
    """A-XDR length: 0x7F -> 7f, 0x80 -> 81 80, 0x100 -> 82 01 00."""
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return bytes((0x82, n >> 8, n & 0xFF))
    return bytes((0x84, n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF))


# -- date-time ----------------------------------------------------------------------

_DEVIATION_UNSPECIFIED = const(-32768)  # 0x8000


class DateTime:
    """COSEM date-time fields; 0xFF (0xFFFF for year) means not specified -> None.

    ``deviation`` is minutes from local time to UTC (Blue Book 4.1.6.1), so
    UTC = local + deviation; India (UTC+05:30) sends -330.

    >>> decode_datetime(bytes.fromhex("07ea0b1b050c1e00fffeb600")).to_utc()  # 12:30 IST
    1795762800
    """

    def __init__(self, year, month, day, weekday=None, hour=0, minute=0, second=0,
                 hundredths=None, deviation=None, status=None):
        self.year = year
        self.month = month
        self.day = day
        self.weekday = weekday
        self.hour = hour
        self.minute = minute
        self.second = second
        self.hundredths = hundredths
        self.deviation = deviation
        self.status = status

    def fields(self) -> tuple:
        return (self.year, self.month, self.day, self.weekday, self.hour, self.minute,
                self.second, self.hundredths, self.deviation, self.status)

    def __eq__(self, other):
        return isinstance(other, DateTime) and self.fields() == other.fields()

    def __repr__(self):
        return "DateTime%r" % (self.fields(),)

    def to_utc(self, default_offset_s: int = 19800) -> int:
        """UTC seconds; uses ``default_offset_s`` (local - UTC) when deviation is unspecified.

        Raises DlmsDataError when year/month/day/hour/minute/second is not
        specified (a wildcard date, not a point in time).
        """
        for v in (self.year, self.month, self.day, self.hour, self.minute, self.second):
            if v is None:
                raise DlmsDataError("date-time has unspecified fields: %r" % (self.fields(),))
        if not (1 <= self.month <= 12 and 1 <= self.day <= 31 and self.hour < 24
                and self.minute < 60 and self.second < 60):
            raise DlmsDataError("date-time out of range: %r" % (self.fields(),))
        local = (days_from_civil(self.year, self.month, self.day) * 86400
                 + self.hour * 3600 + self.minute * 60 + self.second)
        if self.deviation is None:
            return local - default_offset_s
        return local + self.deviation * 60


def _opt(v, unspecified=0xFF):
    return None if v == unspecified else v


def decode_datetime(raw) -> DateTime:
    """12-byte COSEM date-time -> :class:`DateTime` (month/day 0xFD/0xFE kept as is)."""
    if len(raw) != 12:
        raise DlmsDataError("date-time must be 12 bytes, got %d" % len(raw))
    year = (raw[0] << 8) | raw[1]
    dev = struct.unpack(">h", bytes(raw[9:11]))[0]
    return DateTime(_opt(year, 0xFFFF), _opt(raw[2]), _opt(raw[3]), _opt(raw[4]),
                    _opt(raw[5]), _opt(raw[6]), _opt(raw[7]), _opt(raw[8]),
                    None if dev == _DEVIATION_UNSPECIFIED else dev, _opt(raw[11]))


def encode_datetime(dt: DateTime) -> bytes:
    """12 bytes; None fields become 0xFF / 0xFFFF / 0x8000."""
    def b(v):
        return 0xFF if v is None else v
    year = 0xFFFF if dt.year is None else dt.year
    dev = _DEVIATION_UNSPECIFIED if dt.deviation is None else dt.deviation
    return (bytes((year >> 8, year & 0xFF, b(dt.month), b(dt.day), b(dt.weekday),
                   b(dt.hour), b(dt.minute), b(dt.second), b(dt.hundredths)))
            + struct.pack(">h", dev) + bytes((b(dt.status),)))


# -- decode ---------------------------------------------------------------------------

def decode(buf, pos: int = 0, depth: int = 0) -> object:
    """Decode exactly one Data value that fills ``buf`` from ``pos``; extra bytes are an error."""
    value, end = decode_at(buf, pos, depth)
    if end != len(buf):
        raise DlmsDataError("%d bytes after the data" % (len(buf) - end))
    return value


def decode_at(buf, pos: int = 0, depth: int = 0) -> tuple:
    """(value, next pos) of the Data value at ``pos``."""
    if depth > MAX_DEPTH:
        raise DlmsDataError("data nested deeper than %d" % MAX_DEPTH)
    if pos >= len(buf):
        raise DlmsDataError("data truncated")
    tag = buf[pos]
    pos += 1
    fmt = _FIXED.get(tag)
    if fmt is not None:
        end = pos + _SIZE[fmt]
        if end > len(buf):
            raise DlmsDataError("data truncated in tag %d" % tag)
        return struct.unpack(fmt, bytes(buf[pos:end]))[0], end
    if tag == _STRUCTURE or tag == _ARRAY:
        count, pos = decode_length(buf, pos)
        if count > len(buf) - pos:  # every element takes at least one byte
            raise DlmsDataError("element count %d larger than the data" % count)
        items = []
        for _ in range(count):
            item, pos = decode_at(buf, pos, depth + 1)
            items.append(item)
        return (tuple(items) if tag == _STRUCTURE else items), pos
    if tag in (_OCTET_STRING, _VISIBLE_STRING, _UTF8_STRING):
        n, pos = decode_length(buf, pos)
        end = pos + n
        if end > len(buf):
            raise DlmsDataError("string truncated")
        raw = bytes(buf[pos:end])
        return (raw if tag == _OCTET_STRING else raw.decode()), end
    if tag == _BIT_STRING:
        nbits, pos = decode_length(buf, pos)
        end = pos + (nbits + 7) // 8
        if end > len(buf):
            raise DlmsDataError("bit-string truncated")
        return bytes(buf[pos:end]), end
    if tag == _BOOLEAN:
        if pos >= len(buf):
            raise DlmsDataError("boolean truncated")
        return buf[pos] != 0, pos + 1
    if tag == NULL or tag == _DONT_CARE:
        return None, pos
    if tag == _DATE_TIME:
        if pos + 12 > len(buf):
            raise DlmsDataError("date-time truncated")
        return decode_datetime(buf[pos:pos + 12]), pos + 12
    if tag == _DATE or tag == TIME:
        end = pos + (5 if tag == _DATE else 4)
        if end > len(buf):
            raise DlmsDataError("date/time truncated")
        return bytes(buf[pos:end]), end
    raise DlmsDataError("unsupported data tag %d" % tag)


# -- encode (a meter peer needs these; the client only decodes) ---------------------------

def enc_null() -> bytes:
    return b"\x00"


def enc_bool(v) -> bytes:
    return bytes((_BOOLEAN, 1 if v else 0))


def enc_int(tag: int, v: int) -> bytes:
    """Fixed-size integer/enum of the given tag, e.g. enc_int(LONG_UNSIGNED, 230)."""
    fmt = _FIXED.get(tag)
    if fmt is None or fmt in (">f", ">d"):
        raise DlmsDataError("tag %d is not an integer type" % tag)
    return bytes((tag,)) + struct.pack(fmt, v)


def enc_octets(raw) -> bytes:
    return bytes((_OCTET_STRING,)) + encode_length(len(raw)) + bytes(raw)


def enc_visible(text: str) -> bytes:
    raw = text.encode()
    return bytes((_VISIBLE_STRING,)) + encode_length(len(raw)) + raw


def enc_structure(items) -> bytes:
    """Structure of already-encoded elements."""
    return bytes((_STRUCTURE,)) + encode_length(len(items)) + b"".join(items)


def enc_array(items) -> bytes:
    """Array of already-encoded elements."""
    return bytes((_ARRAY,)) + encode_length(len(items)) + b"".join(items)


def enc_datetime_octets(dt: DateTime) -> bytes:
    """Date-time the way meters send it: octet-string of 12 bytes."""
    return enc_octets(encode_datetime(dt))
