"""DLMS/COSEM client APDUs (IEC 62056-5-3): AARQ/AARE, GET-normal (GET-next in ``dlms_more``).

Logical-name referencing only, no ciphering; authentication "none" or
low-level security (a password sent in the AARQ).  APDUs here are the
bytes *inside* the HDLC information field, after the LLC header.

>>> get_request(3, b"\\x01\\x00\\x01\\x08\\x00\\xff", 2).hex()
'c001c100030100010800ff0200'
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.protocol.dlms_data import decode_length

# xDLMS APDU tags
_AARQ = const(0x60)
_AARE = const(0x61)
_GET_REQUEST = const(0xC0)
_GET_RESPONSE = const(0xC4)
_EXCEPTION_RESPONSE = const(0xD8)
_CONFIRMED_SERVICE_ERROR = const(0x0E)
_INITIATE_RESPONSE = const(0x08)

# What this client uses: GET, block transfer for long data, selective access for profiles;
# public as DEFAULT_CONFORMANCE, DEFAULT_MAX_PDU (``dlms_more``).
_DEFAULT_CONFORMANCE = const(0x001014)  # CONF_GET | CONF_BLOCK_TRANSFER_WITH_GET | CONF_SELECTIVE_ACCESS
_DEFAULT_MAX_PDU = const(1024)  # small enough for the ESP32 heap; blocks carry the rest

_DLMS_OID = const(b"\x60\x85\x74\x05\x08")  # joint-iso-ccitt(2) country(16) country-name(756) identified-organization(5) DLMS-UA(8)


def __getattr__(name):
    # DlmsError (a ValueError: an APDU is malformed or not one this client understands)
    # is made on first use and kept in the module dict: held from import on, the class
    # would cost heap a meter talking to a sane peer never needs.  Raise sites here raise
    # ``err(...)``, which calls ``__getattr__("DlmsError")``; ``dlms.DlmsError`` and
    # ``from ... import`` work as for any class.
    if name == "DlmsError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # The tag, result, diagnostic, Data-Access-Result and GET.response kind numbers under
    # their public names, the defaults, the conformance bits, DIAGNOSTIC_NAMES, DAR_NAMES
    # the selective-access builders and ``get_request_next`` (profiles) are in ``dlms_more``, loaded on first
    # use: a meter reading registers needs none of them on its heap (the numbers here
    # are private consts, which MicroPython compiles away).
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    from firmware.protocol import dlms_more
    if name in dlms_more.PUBLIC[__name__]:
        return getattr(dlms_more, name)
    raise AttributeError(name)


# The error messages, one str (one object on the heap, not one per message), by index;
# 20.. are raised by dlms_client (20-22) and dlms_objects (23-26).
_MESSAGES = const(
    "BER element truncated|"  # 0
    "bad BER length|"  # 1
    "BER element longer than its container|"  # 2
    "not an AARE|"  # 3
    "expected a BER INTEGER|"  # 4
    "user-information is not an OCTET STRING|"  # 5
    "empty user-information|"  # 6
    "user-information is not an InitiateResponse (tag 0x%02x)|"  # 7
    "InitiateResponse malformed|"  # 8
    "AARE without a result|"  # 9
    "server chose short-name referencing; only logical names are supported|"  # 10
    "OBIS code must be 6 bytes|"  # 11
    "exception-response: state error %d, service error %d|"  # 12
    "confirmed-service-error %s|"  # 13
    "not a GET.response|"  # 14
    "GET.response-normal with bad result choice %d|"  # 15
    "GET.response-with-datablock truncated|"  # 16
    "datablock with bad result choice %d|"  # 17
    "datablock raw-data length %d does not match %d bytes|"  # 18
    "GET.response type %d not supported|"  # 19
    "response invoke id %d, expected %d|"  # 20
    "block %d received, expected %d|"  # 21
    "long GET larger than %d bytes|"  # 22
    "scaler_unit must be a structure of two elements: %r|"  # 23
    "scaler_unit elements must be integers: %r|"  # 24
    "%s: meter reports unit %d, expected %r|"  # 25
    "%s: register value %r is not an integer"  # 26
)


def err(i, x):
    """DlmsError with message ``i`` of _MESSAGES, formatted with ``x`` (a value, a tuple or ())."""
    return __getattr__("DlmsError")(_MESSAGES.split("|")[i] % x)


_CONTEXT_LN = const(1)  # application context: logical-name referencing, no ciphering
_MECHANISM_LLS = const(1)  # authentication: low-level security (password)
_ACCEPTED = const(0)  # AARE result


# -- BER (ACSE is BER; xDLMS inside it is A-XDR) --------------------------------------
# The two helpers take names the app interns already (each new name costs the meter).

def _encode(tag: int, value) -> bytes:
    """A BER TLV."""
    n = len(value)
    if n < 0x80:
        head = bytes((tag, n))
    elif n <= 0xFF:
        head = bytes((tag, 0x81, n))
    else:
        head = bytes((tag, 0x82, n >> 8, n & 0xFF))
    return head + bytes(value)


def _field(buf, pos: int, end: int) -> tuple:
    """(tag, value start, value end) of the BER TLV at ``pos``."""
    if pos + 2 > end:
        raise err(0, ())
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        size = n & 0x7F
        if size == 0 or size > 2 or pos + size > end:
            raise err(1, ())
        n = 0
        for b in buf[pos:pos + size]:
            n = (n << 8) | b
        pos += size
    if pos + n > end:
        raise err(2, ())
    return tag, pos, pos + n


# -- AARQ ----------------------------------------------------------------------------

def aarq(password=None, conformance: int = _DEFAULT_CONFORMANCE, max_pdu: int = _DEFAULT_MAX_PDU) -> bytes:
    """AARQ for a logical-name association; ``password`` (bytes) selects low-level security.

    The user-information is an xDLMS InitiateRequest: no dedicated key, response
    allowed (default), no QoS, DLMS version 6.

    >>> aarq(conformance=0x001E1D, max_pdu=0xFFFF).hex()
    '601da109060760857405080101be10040e01000000065f1f0400001e1dffff'
    """
    body = _encode(0xA1, _encode(0x06, _DLMS_OID + bytes((1, _CONTEXT_LN))))
    if password is not None:
        body += b"\x8a\x02\x07\x80"  # sender-acse-requirements: authentication
        body += _encode(0x8B, _DLMS_OID + bytes((2, _MECHANISM_LLS)))
        body += _encode(0xAC, _encode(0x80, password))
    initiate = (b"\x01\x00\x00\x00\x06\x5f\x1f\x04\x00"
                + bytes(((conformance >> 16) & 0xFF, (conformance >> 8) & 0xFF, conformance & 0xFF,
                         (max_pdu >> 8) & 0xFF, max_pdu & 0xFF)))
    body += _encode(0xBE, _encode(0x04, initiate))
    return _encode(_AARQ, body)


# -- AARE ----------------------------------------------------------------------------

class Aare:
    """What the server answered to our AARQ.

    ``accepted`` is True only when result is 0 and an InitiateResponse came
    back (``parse_aare`` sets it: a plain attribute, not a property, costs the
    meter no property object); ``conformance``/``max_pdu`` are the negotiated
    values then.
    ``service_error`` holds the xDLMS ConfirmedServiceError bytes, if any.
    """

    def __init__(self):
        self.result = -1
        self.diagnostic_source = 0
        self.diagnostic = 0
        self.context = 0
        self.conformance = 0
        self.max_pdu = 0
        self.dlms_version = 0
        self.service_error = b""
        self.accepted = False

    def reason(self) -> str:
        """Human text for a rejection."""
        if self.accepted:
            return "accepted"
        text = "rejected (result %d): %s" % (self.result, __getattr__("DIAGNOSTIC_NAMES").get(
            self.diagnostic, "diagnostic %d" % self.diagnostic))
        if self.service_error:
            text += ", xDLMS error %s" % self.service_error.hex()
        return text


def parse_aare(data) -> Aare:
    """Parse an AARE; raises DlmsError if it is not one.

    >>> a = parse_aare(bytes.fromhex("6129a109060760857405080101a203020100a305a103020100"
    ...     "be10040e0800065f1f040000101d03ef0007"))
    >>> a.accepted, hex(a.conformance), a.max_pdu
    (True, '0x101d', 1007)
    """
    tag, start, end = _field(data, 0, len(data))
    if tag != _AARE or end != len(data):
        raise err(3, ())
    out = Aare()
    pos = start
    while pos < end:
        tag, s, e = _field(data, pos, end)
        if tag == 0xA1:
            _, os, oe = _field(data, s, e)
            out.context = data[oe - 1]
        elif tag == 0xA2 or tag == 0xA3:  # result, or result-source-diagnostic
            inner, s, e = _field(data, s, e)
            if tag == 0xA3:  # a choice of the source around the INTEGER
                out.diagnostic_source = inner & 0x0F
                inner, s, e = _field(data, s, e)
            if inner != 0x02 or e - s < 1:
                raise err(4, ())
            value = 0
            for b in data[s:e]:
                value = (value << 8) | b
            if tag == 0xA2:
                out.result = value
            else:
                out.diagnostic = value
        elif tag == 0xBE:
            inner, os, oe = _field(data, s, e)
            if inner != 0x04:
                raise err(5, ())
            # an xDLMS InitiateResponse, or a ConfirmedServiceError
            raw = data[os:oe]
            if not raw:
                raise err(6, ())
            if raw[0] == _CONFIRMED_SERVICE_ERROR:
                out.service_error = bytes(raw)
            elif raw[0] != _INITIATE_RESPONSE:
                raise err(7, raw[0])
            else:
                i = 1
                if i < len(raw) and raw[i]:  # negotiated-quality-of-service present
                    i += 1
                i += 1
                if i + 1 + 3 + 4 + 2 + 2 > len(raw) or bytes(raw[i + 1:i + 5]) != b"\x5f\x1f\x04\x00":
                    raise err(8, ())
                out.dlms_version = raw[i]
                c = raw[i + 5:i + 8]
                out.conformance = (c[0] << 16) | (c[1] << 8) | c[2]
                out.max_pdu = (raw[i + 8] << 8) | raw[i + 9]
        pos = e
    if out.result < 0:
        raise err(9, ())
    if out.result == _ACCEPTED and out.context != _CONTEXT_LN and out.context != 3:
        raise err(10, ())
    out.accepted = out.result == _ACCEPTED and out.max_pdu > 0
    return out


# -- GET -----------------------------------------------------------------------------
# The invoke-id-and-priority byte: bit 7 high priority, bit 6 confirmed service, bits
# 0-3 the invoke id (0xC1 for id 1).

def get_request(class_id: int, obis, attribute: int, invoke_id: int = 1, access=b"") -> bytes:
    """GET.request-normal; ``access`` is an encoded selective-access descriptor or b''."""
    if len(obis) != 6:
        raise err(11, ())
    head = bytes((_GET_REQUEST, 1, 0xC0 | (invoke_id & 0x0F), class_id >> 8, class_id & 0xFF))
    head += bytes(obis) + bytes((attribute,))
    if access:
        return head + b"\x01" + bytes(access)
    return head + b"\x00"


# GET.request-next (``get_request_next``, for long GETs: profiles, not register reads) is in
# ``dlms_more``.


# GET.response kinds; public as RESP_DATA, RESP_ERROR, RESP_BLOCK (``dlms_more``)
_RESP_DATA = const(1)  # complete data (normal, or a block carrying data); value: the data
_RESP_ERROR = const(2)  # value: the Data-Access-Result code
_RESP_BLOCK = const(3)  # one block of raw data (value); see block_number, last_block


def parse_get_response(data) -> tuple:
    """Parse GET.response normal / with-datablock; exception responses raise DlmsError.

    Returns ``(kind, invoke_id, value, block_number, last_block)``: ``kind``
    RESP_DATA/RESP_ERROR/RESP_BLOCK, ``value`` the data bytes or the
    Data-Access-Result code; block number 0 and last True for a normal response.

    >>> parse_get_response(bytes.fromhex("c401c100120100"))
    (1, 1, b'\\x12\\x01\\x00', 0, True)
    """
    n = len(data)
    if n >= 3 and data[0] == _EXCEPTION_RESPONSE:
        raise err(12, (data[1], data[2]))
    if n >= 1 and data[0] == _CONFIRMED_SERVICE_ERROR:
        raise err(13, bytes(data).hex())
    if n < 5 or data[0] != _GET_RESPONSE:
        raise err(14, ())
    kind, invoke_id = data[1], data[2] & 0x0F
    if kind == 1:
        if data[3] == 0:
            return _RESP_DATA, invoke_id, bytes(data[4:]), 0, True
        if data[3] == 1:
            return _RESP_ERROR, invoke_id, data[4], 0, True
        raise err(15, data[3])
    if kind == 2:
        if n < 10:
            raise err(16, ())
        last = data[3] != 0
        block = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        if data[8] == 1:
            return _RESP_ERROR, invoke_id, data[9], block, last
        if data[8] != 0:
            raise err(17, data[8])
        size, pos = decode_length(data, 9)
        if pos + size != n:
            raise err(18, (size, n - pos))
        return _RESP_BLOCK, invoke_id, bytes(data[pos:]), block, last
    raise err(19, kind)
