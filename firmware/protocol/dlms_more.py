"""The parts of the DLMS stack (``hdlc``, ``dlms_data``, ``dlms``, ``dlms_objects``,
``dlms_client``) a meter reading registers never uses.

Each of those modules hands these out through its module ``__getattr__``
(``dlms.DAR_NAMES``, ``from firmware.protocol.hdlc import LinkParams``,
``dlms_data.enc_int``), so they reach a meter's heap only when used; the
tuples at the end say which module hands out which names.  In here:

- ``hdlc``: the frame, error and state numbers under public names,
  ``ERROR_NAMES``, ``LinkParams`` with ``encode_params``/``decode_params``
  (a meter proposes the default parameters), the address builders and
  ``decode_address``, the control byte builders and ``frame_kind``;
- ``dlms_data``: the tag numbers under public names, ``DateTime`` with its
  12-byte codec, and the encoders (a meter peer and tests build data; the
  client only decodes);
- ``dlms``: APDU tags, association results and diagnostics, Data-Access-Result
  codes and GET.response kinds under public names (``dlms`` uses them as private
  consts), the default conformance and PDU size, the conformance bits, the code -> text tables (rejections, errors: messages
  only) and the selective-access builders for profile reads;
- ``dlms_objects``: the named OBIS codes, the register table as a dict
  (``QUANTITIES``), the clock and the load profile;
- ``dlms_client``: the session states and events under public names.

>>> from firmware.protocol.dlms import CONF_GET, DEFAULT_CONFORMANCE
>>> bool(DEFAULT_CONFORMANCE & CONF_GET)
True
"""
import struct

from firmware.core.localtime import days_from_civil
from firmware.protocol import dlms, dlms_data, hdlc
from firmware.protocol.dlms_objects import register

# -- hdlc ----------------------------------------------------------------------------

# Control field values with the poll/final bit set (DLMS always sets it).
SNRM = 0x93
UA = 0x73
DISC = 0x53
DM = 0x1F
FRMR = 0x97
UI = 0x13

LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"

# Reason codes for frames the parser drops (``FrameParser.error``).
ERR_LENGTH = 2
ERR_HCS = 4
ERR_FCS = 5
ERR_FLAG = 6
ERROR_NAMES = {
    1: "format field is not type 3",
    ERR_LENGTH: "length too small for the header",
    3: "address is not 1, 2 or 4 bytes",
    ERR_HCS: "header check sequence mismatch",
    ERR_FCS: "frame check sequence mismatch",
    ERR_FLAG: "no closing flag where the length says",
}

# Link states (``HdlcLink.state``; DISCONNECTED is 0)
CONNECTING = 1
CONNECTED = 2


class LinkParams:
    """HDLC parameters as the sender of a SNRM or UA states them (its own tx/rx view).

    The defaults are IEC 62056-46's for a parameter absent from SNRM/UA.
    """

    def __init__(self, max_info_tx=128, max_info_rx=128, window_tx=1, window_rx=1):
        self.max_info_tx = max_info_tx
        self.max_info_rx = max_info_rx
        self.window_tx = window_tx
        self.window_rx = window_rx

    def __eq__(self, other):
        return (self.max_info_tx, self.max_info_rx, self.window_tx, self.window_rx) == (
            other.max_info_tx, other.max_info_rx, other.window_tx, other.window_rx)

    def __repr__(self):
        return "LinkParams(tx=%d rx=%d wtx=%d wrx=%d)" % (
            self.max_info_tx, self.max_info_rx, self.window_tx, self.window_rx)


def _uint_bytes(value, size):
    return bytes((value >> (8 * (size - 1 - i))) & 0xFF for i in range(size))


def encode_params(params: LinkParams) -> bytes:
    """Information field of a SNRM/UA; only parameters that differ from the defaults.

    All defaults -> b'' (the SNRM then carries no information field at all).
    Lengths are 1 or 2 bytes, windows 4 bytes, as in Gurux and the DLMS UA examples.
    """
    body = bytearray()
    for pid, value, default, size in (
            (5, params.max_info_tx, 128, 0),
            (6, params.max_info_rx, 128, 0),
            (7, params.window_tx, 1, 4),
            (8, params.window_rx, 1, 4)):
        if value == default:
            continue
        n = size or (1 if value <= 0xFF else 2)
        body += bytes((pid, n)) + _uint_bytes(value, n)
    if not body:
        return b""
    return bytes((0x81, 0x80, len(body))) + body


def decode_params(info) -> LinkParams:
    """Parameters from a SNRM/UA information field; absent ones take the defaults.

    The parsing is ``hdlc``'s own (a meter checks the UA the same way).

    Raises HdlcError for a wrong format/group identifier or a truncated group.
    """
    return LinkParams(*hdlc._parse(info))


def client_address(client_sap: int) -> bytes:
    """One-byte client address: SAP 16 (public client 16) -> b'\\x21'.

    ``HdlcLink`` builds the addresses (and raises HdlcError for a bad one).
    """
    return hdlc.HdlcLink(client_sap).client


def server_address(server_logical: int, server_physical=None, server_address_size: int = 0) -> bytes:
    """Server address in the 1-, 2- or 4-byte form (size 0 picks the shortest).

    >>> server_address(1, 17)
    b'\\x02#'
    >>> server_address(1, 17, 4)
    b'\\x00\\x02\\x00#'
    """
    return hdlc.HdlcLink(16, server_logical, server_physical, server_address_size).server


def i_control(ns: int, nr: int) -> int:
    """Control byte of an I-frame: RRR P SSS 0 (poll/final set)."""
    return ((nr & 7) << 5) | 0x10 | ((ns & 7) << 1)


def rr_control(nr: int) -> int:
    """Control byte of a Receive Ready: RRR P 0001."""
    return ((nr & 7) << 5) | 0x10 | 0x01


def frame_kind(control: int) -> str:
    """'I', 'RR', 'RNR', 'SNRM', 'UA', 'DISC', 'DM', 'FRMR', 'UI' or '?' (``Frame.kind``)."""
    return hdlc.Frame(b"", b"", control, b"", False).kind


def decode_address(raw) -> tuple:
    """(upper, lower) of a raw address; lower is None for the one-byte form.

    >>> decode_address(b"\\x00\\x02\\x00\\x23")
    (1, 17)
    """
    n = len(raw)
    if n == 1:
        return raw[0] >> 1, None
    if n == 2:
        return raw[0] >> 1, raw[1] >> 1
    if n == 4:
        return ((raw[0] >> 1) << 7) | (raw[1] >> 1), ((raw[2] >> 1) << 7) | (raw[3] >> 1)
    raise hdlc.HdlcError("address must be 1, 2 or 4 bytes")


# -- dlms_data -------------------------------------------------------------------------

NULL = 0
ARRAY = 1
STRUCTURE = 2
BOOLEAN = 3
DOUBLE_LONG_UNSIGNED = 6
OCTET_STRING = 9
VISIBLE_STRING = 10
INTEGER = 15
LONG = 16
LONG_UNSIGNED = 18
LONG64 = 20
ENUM = 22
FLOAT32 = 23
TIME = 27
MAX_DEPTH = 8  # nesting limit: keeps recursion bounded on the meter


def decode(buf, pos: int = 0, depth: int = 0) -> object:
    """Decode exactly one Data value that fills ``buf`` from ``pos``; extra bytes are an error
    (``dlms_data``)."""
    value, end = dlms_data.decode_at(buf, pos, depth)
    if end != len(buf):
        raise dlms_data.err(12, len(buf) - end)  # a DlmsDataError
    return value


def encode_length(n: int) -> bytes:
    """A-XDR length: 0x7F -> 7f, 0x80 -> 81 80, 0x100 -> 82 01 00."""
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return bytes((0x82, n >> 8, n & 0xFF))
    return bytes((0x84, n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF))


_DEVIATION_UNSPECIFIED = -32768  # 0x8000


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
                raise dlms_data.DlmsDataError("date-time has unspecified fields: %r" % (self.fields(),))
        if not (1 <= self.month <= 12 and 1 <= self.day <= 31 and self.hour < 24
                and self.minute < 60 and self.second < 60):
            raise dlms_data.DlmsDataError("date-time out of range: %r" % (self.fields(),))
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
        raise dlms_data.DlmsDataError("date-time must be 12 bytes, got %d" % len(raw))
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


def enc_null() -> bytes:
    return b"\x00"


def enc_bool(v) -> bytes:
    return bytes((BOOLEAN, 1 if v else 0))


def enc_int(tag: int, v: int) -> bytes:
    """Fixed-size integer/enum of the given tag, e.g. enc_int(LONG_UNSIGNED, 230)."""
    fmt = "          >i>I            >b  >b>h>B>H  >q>Q>B>f>d"[2 * tag:2 * tag + 2]  # dlms_data's
    if not fmt.strip() or fmt in (">f", ">d"):
        raise dlms_data.DlmsDataError("tag %d is not an integer type" % tag)
    return bytes((tag,)) + struct.pack(fmt, v)


def enc_octets(raw) -> bytes:
    return bytes((OCTET_STRING,)) + encode_length(len(raw)) + bytes(raw)


def enc_visible(text: str) -> bytes:
    raw = text.encode()
    return bytes((VISIBLE_STRING,)) + encode_length(len(raw)) + raw


def enc_structure(items) -> bytes:
    """Structure of already-encoded elements."""
    return bytes((STRUCTURE,)) + encode_length(len(items)) + b"".join(items)


def enc_array(items) -> bytes:
    """Array of already-encoded elements."""
    return bytes((ARRAY,)) + encode_length(len(items)) + b"".join(items)


def enc_datetime_octets(dt: DateTime) -> bytes:
    """Date-time the way meters send it: octet-string of 12 bytes."""
    return enc_octets(encode_datetime(dt))


# -- dlms --------------------------------------------------------------------------------

AARQ = 0x60
AARE = 0x61
RLRQ = 0x62
GET_REQUEST = 0xC0
GET_RESPONSE = 0xC4
EXCEPTION_RESPONSE = 0xD8
CONFIRMED_SERVICE_ERROR = 0x0E
INITIATE_REQUEST = 0x01
INITIATE_RESPONSE = 0x08
CONTEXT_LN = 1
CONTEXT_SN = 2
MECHANISM_NONE = 0
MECHANISM_LLS = 1
ACCEPTED = 0
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
DIAG_SOURCE_USER = 1
DIAG_SOURCE_PROVIDER = 2
DIAG_NULL = 0
DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
DIAG_AUTHENTICATION_FAILURE = 13
DIAG_AUTHENTICATION_REQUIRED = 14
DAR_SUCCESS = 0
DAR_HARDWARE_FAULT = 1
DAR_TEMPORARY_FAILURE = 2
DAR_READ_WRITE_DENIED = 3
DAR_OBJECT_UNDEFINED = 4
DAR_OBJECT_CLASS_INCONSISTENT = 9
DAR_OBJECT_UNAVAILABLE = 11
DAR_TYPE_UNMATCHED = 12
DAR_SCOPE_OF_ACCESS_VIOLATED = 13
DAR_DATA_BLOCK_UNAVAILABLE = 14
DAR_LONG_GET_ABORTED = 15
DAR_NO_LONG_GET_IN_PROGRESS = 16
DAR_DATA_BLOCK_NUMBER_INVALID = 19
DAR_OTHER_REASON = 250

# Conformance block bits (Blue Book numbering: bit 0 is the MSB of 24 bits).
def _bit(n):
    return 1 << (23 - n)


CONF_GENERAL_PROTECTION = _bit(1)
CONF_GENERAL_BLOCK_TRANSFER = _bit(2)
CONF_ATTRIBUTE0_WITH_SET = _bit(8)
CONF_PRIORITY_MANAGEMENT = _bit(9)
CONF_ATTRIBUTE0_WITH_GET = _bit(10)
CONF_BLOCK_TRANSFER_WITH_GET = _bit(11)
CONF_BLOCK_TRANSFER_WITH_SET = _bit(12)
CONF_BLOCK_TRANSFER_WITH_ACTION = _bit(13)
CONF_MULTIPLE_REFERENCES = _bit(14)
CONF_DATA_NOTIFICATION = _bit(16)
CONF_ACCESS = _bit(17)
CONF_GET = _bit(19)
CONF_SET = _bit(20)
CONF_SELECTIVE_ACCESS = _bit(21)
CONF_EVENT_NOTIFICATION = _bit(22)
CONF_ACTION = _bit(23)
DEFAULT_CONFORMANCE = CONF_GET | CONF_BLOCK_TRANSFER_WITH_GET | CONF_SELECTIVE_ACCESS  # 0x001014
DEFAULT_MAX_PDU = 1024  # small enough for the ESP32 heap; blocks carry the rest
# GET.response kinds (``dlms.parse_get_response``)
RESP_DATA = 1  # complete data (normal, or a block carrying data); value: the data
RESP_ERROR = 2  # value: the Data-Access-Result code
RESP_BLOCK = 3  # one block of raw data (value); see block_number, last_block

DIAGNOSTIC_NAMES = {
    DIAG_NULL: "null",
    DIAG_NO_REASON: "no reason given",
    DIAG_CONTEXT_NOT_SUPPORTED: "application context name not supported",
    DIAG_MECHANISM_NOT_RECOGNISED: "authentication mechanism name not recognised",
    DIAG_MECHANISM_REQUIRED: "authentication mechanism name required",
    DIAG_AUTHENTICATION_FAILURE: "authentication failure (wrong password)",
    DIAG_AUTHENTICATION_REQUIRED: "authentication required",
}

DAR_NAMES = {
    DAR_SUCCESS: "success", DAR_HARDWARE_FAULT: "hardware fault",
    DAR_TEMPORARY_FAILURE: "temporary failure", DAR_READ_WRITE_DENIED: "read-write denied",
    DAR_OBJECT_UNDEFINED: "object undefined",
    DAR_OBJECT_CLASS_INCONSISTENT: "object class inconsistent",
    DAR_OBJECT_UNAVAILABLE: "object unavailable", DAR_TYPE_UNMATCHED: "type unmatched",
    DAR_SCOPE_OF_ACCESS_VIOLATED: "scope of access violated",
    DAR_DATA_BLOCK_UNAVAILABLE: "data block unavailable",
    DAR_LONG_GET_ABORTED: "long get aborted",
    DAR_NO_LONG_GET_IN_PROGRESS: "no long get in progress",
    DAR_DATA_BLOCK_NUMBER_INVALID: "data block number invalid",
    DAR_OTHER_REASON: "other reason",
}


def get_request_next(last: int, invoke_id: int = 1) -> bytes:
    """GET.request-next: ask for the block after block number ``last`` (``dlms``)."""
    return bytes((GET_REQUEST, 2, 0xC0 | (invoke_id & 0x0F),
                  (last >> 24) & 0xFF, (last >> 16) & 0xFF, (last >> 8) & 0xFF, last & 0xFF))


def to_units(value: int, scaler: int, exp: int) -> int:
    """value * 10**(scaler - exp) exactly, truncated toward zero; ``exp`` is the exponent
    of our unit relative to the DLMS unit (``dlms_objects.register``; ``register_value``
    does the same inline).

    >>> to_units(12345, -1, 0)   # 1234.5 Wh -> 1234 Wh
    1234
    >>> to_units(56, 3, 0)       # 56 kWh -> 56000 Wh
    56000
    """
    shift = scaler - exp
    if shift >= 0:
        return value * 10 ** shift
    q = abs(value) // 10 ** -shift
    return q if value >= 0 else -q


def entry_access(from_entry: int, to_entry: int = 0, from_column: int = 1, to_column: int = 0) -> bytes:
    """Selective access by entry (selector 2) for a profile buffer; 0 means 'to the last'."""
    return (b"\x02\x02\x04"
            + b"\x06" + from_entry.to_bytes(4, "big") + b"\x06" + to_entry.to_bytes(4, "big")
            + b"\x12" + from_column.to_bytes(2, "big") + b"\x12" + to_column.to_bytes(2, "big"))


CLOCK_OBIS = b"\x00\x00\x01\x00\x00\xff"


def range_access(from_dt: DateTime, to_dt: DateTime) -> bytes:
    """Selective access by range (selector 1) on the clock column, all columns selected."""
    restricting = (b"\x02\x04\x12\x00\x08\x09\x06" + CLOCK_OBIS + b"\x0f\x02\x12\x00\x00")
    return (b"\x01\x02\x04" + restricting
            + b"\x09\x0c" + encode_datetime(from_dt) + b"\x09\x0c" + encode_datetime(to_dt)
            + b"\x01\x00")


# -- dlms_objects ------------------------------------------------------------------------

_CLASS_CLOCK = 8


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
# the quantities ``dlms_objects.register_value`` converts, in the order of its table
QUANTITY_ORDER = ("energy_import_wh", "voltage_mv", "current_ma", "active_power_w",
                  "power_factor_milli", "frequency_mhz")
# name -> (OBIS, accepted units, exponent of our unit relative to the DLMS unit)
QUANTITIES = {name: register(name) for name in QUANTITY_ORDER}


def clock_utc(value, default_offset_s: int = 19800) -> int:
    """Clock attribute 2 (octet-string of 12 bytes, or date-time) -> UTC seconds."""
    if isinstance(value, DateTime):
        return value.to_utc(default_offset_s)
    if isinstance(value, (bytes, bytearray)):
        return decode_datetime(value).to_utc(default_offset_s)
    raise dlms.DlmsError("clock value is not a date-time: %r" % (value,))


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
        raise dlms.DlmsError("capture_objects must be an array")
    out = []
    for item in value:
        if not isinstance(item, tuple) or len(item) != 4 or not isinstance(item[1], bytes) \
                or len(item[1]) != 6:
            raise dlms.DlmsError("capture object malformed: %r" % (item,))
        out.append(CaptureObject(item[0], item[1], item[2], item[3]))
    return out


def profile_rows(buffer, columns, scalers=None, default_offset_s: int = 19800) -> list:
    """Profile attribute 2 (array of structures) -> list of rows (lists).

    Clock columns become UTC seconds.  ``scalers`` is a list per column of
    ``(scaler, exponent)`` or None; numeric columns with an entry are
    converted with :func:`to_units`, others are left as decoded.
    """
    if not isinstance(buffer, list):
        raise dlms.DlmsError("profile buffer must be an array")
    rows = []
    for entry in buffer:
        if not isinstance(entry, tuple) or len(entry) != len(columns):
            raise dlms.DlmsError("profile entry does not match %d capture objects" % len(columns))
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


# -- dlms_client ---------------------------------------------------------------------------

IDLE = 0
LINKING = 1  # SNRM sent
LINKED = 2  # UA received, no association
ASSOCIATING = 3  # AARQ sent
READY = 4  # associated, nothing outstanding
READING = 5  # GET outstanding (possibly mid block transfer)
CLOSING = 6  # DISC sent
CLOSED = 7
STATE_NAMES = ("IDLE", "LINKING", "LINKED", "ASSOCIATING", "READY", "READING", "CLOSING", "CLOSED")
# events (kind, value) of ``DlmsClient.feed``
EV_LINKED = 1  # value: None
EV_ASSOCIATED = 2  # value: dlms.Aare
EV_REJECTED = 3  # value: dlms.Aare (see .reason())
EV_DATA = 4  # value: decoded A-XDR data
EV_ACCESS_ERROR = 5  # value: Data-Access-Result code (DAR_NAMES)
EV_CLOSED = 6  # value: None


# -- what each module's ``__getattr__`` hands out under its name --------------------------

_HDLC = ("SNRM", "UA", "DISC", "DM", "FRMR", "UI", "LLC_REQUEST", "LLC_RESPONSE", "ERR_LENGTH",
         "ERR_HCS", "ERR_FCS", "ERR_FLAG", "ERROR_NAMES", "CONNECTING", "CONNECTED", "LinkParams",
         "encode_params", "decode_params", "decode_address", "client_address", "server_address",
         "i_control", "rr_control", "frame_kind")
_DATA = ("NULL", "DOUBLE_LONG_UNSIGNED", "INTEGER", "LONG", "LONG_UNSIGNED", "LONG64", "ENUM",
         "FLOAT32", "TIME", "MAX_DEPTH", "decode", "encode_length", "DateTime", "decode_datetime",
         "encode_datetime", "enc_null", "enc_bool", "enc_int", "enc_octets", "enc_visible",
         "enc_structure", "enc_array", "enc_datetime_octets")
_DLMS = (
    "AARQ", "AARE", "RLRQ", "GET_REQUEST", "GET_RESPONSE", "EXCEPTION_RESPONSE",
    "CONFIRMED_SERVICE_ERROR", "INITIATE_REQUEST", "INITIATE_RESPONSE", "CONTEXT_LN",
    "CONTEXT_SN", "MECHANISM_NONE", "MECHANISM_LLS", "ACCEPTED", "REJECTED_PERMANENT",
    "REJECTED_TRANSIENT", "DIAG_SOURCE_USER", "DIAG_SOURCE_PROVIDER", "DIAG_NULL",
    "DIAG_NO_REASON", "DIAG_CONTEXT_NOT_SUPPORTED", "DIAG_MECHANISM_NOT_RECOGNISED",
    "DIAG_MECHANISM_REQUIRED", "DIAG_AUTHENTICATION_FAILURE", "DIAG_AUTHENTICATION_REQUIRED",
    "DAR_SUCCESS", "DAR_HARDWARE_FAULT", "DAR_TEMPORARY_FAILURE", "DAR_READ_WRITE_DENIED",
    "DAR_OBJECT_UNDEFINED", "DAR_OBJECT_CLASS_INCONSISTENT", "DAR_OBJECT_UNAVAILABLE",
    "DAR_TYPE_UNMATCHED", "DAR_SCOPE_OF_ACCESS_VIOLATED", "DAR_DATA_BLOCK_UNAVAILABLE",
    "DAR_LONG_GET_ABORTED", "DAR_NO_LONG_GET_IN_PROGRESS", "DAR_DATA_BLOCK_NUMBER_INVALID",
    "DAR_OTHER_REASON", "CONF_GENERAL_PROTECTION", "CONF_GENERAL_BLOCK_TRANSFER",
    "CONF_ATTRIBUTE0_WITH_SET", "CONF_PRIORITY_MANAGEMENT", "CONF_ATTRIBUTE0_WITH_GET",
    "CONF_BLOCK_TRANSFER_WITH_GET", "CONF_BLOCK_TRANSFER_WITH_SET",
    "CONF_BLOCK_TRANSFER_WITH_ACTION", "CONF_MULTIPLE_REFERENCES", "CONF_DATA_NOTIFICATION",
    "CONF_ACCESS", "CONF_GET", "CONF_SET", "CONF_SELECTIVE_ACCESS", "CONF_EVENT_NOTIFICATION",
    "CONF_ACTION", "DIAGNOSTIC_NAMES", "DAR_NAMES", "entry_access", "CLOCK_OBIS",
    "range_access", "get_request_next", "DEFAULT_CONFORMANCE", "DEFAULT_MAX_PDU", "RESP_DATA", "RESP_ERROR",
    "RESP_BLOCK",
)
_OBJECTS = ("obis", "obis_text", "CLOCK", "ENERGY_IMPORT", "VOLTAGE", "CURRENT", "ACTIVE_POWER",
            "POWER_FACTOR", "FREQUENCY", "MAX_DEMAND", "BLOCK_LOAD_PROFILE", "BLOCK_LOAD_SCALERS",
            "SERIAL_NUMBER", "QUANTITY_ORDER", "QUANTITIES", "clock_utc", "CaptureObject",
            "capture_objects", "profile_rows", "to_units")
_CLIENT = ("IDLE", "LINKING", "LINKED", "ASSOCIATING", "READY", "READING", "CLOSING", "CLOSED",
           "STATE_NAMES", "EV_LINKED", "EV_ASSOCIATED", "EV_REJECTED", "EV_DATA", "EV_ACCESS_ERROR",
           "EV_CLOSED")
PUBLIC = {"firmware.protocol.hdlc": _HDLC, "firmware.protocol.dlms_data": _DATA,
          "firmware.protocol.dlms": _DLMS, "firmware.protocol.dlms_objects": _OBJECTS,
          "firmware.protocol.dlms_client": _CLIENT}
