"""DLMS/COSEM client APDUs (IEC 62056-5-3): AARQ/AARE, GET-normal, GET-next.

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

# What this client uses: GET, block transfer for long data, selective access for profiles.
DEFAULT_CONFORMANCE = const(0x001014)  # CONF_GET | CONF_BLOCK_TRANSFER_WITH_GET | CONF_SELECTIVE_ACCESS
DEFAULT_MAX_PDU = const(1024)  # small enough for the ESP32 heap; blocks carry the rest

_DLMS_OID = b"\x60\x85\x74\x05\x08"  # joint-iso-ccitt(2) country(16) country-name(756) identified-organization(5) DLMS-UA(8)


def __getattr__(name):
    # The tag, result, diagnostic and Data-Access-Result numbers under their public
    # names, the conformance bits, DIAGNOSTIC_NAMES, DAR_NAMES and the selective-access
    # builders (profiles) are in ``dlms_more``, loaded on first use: a meter reading
    # registers needs none of them on its heap (the numbers here are private consts,
    # which MicroPython compiles away).
    more = _more()
    if name in more.PUBLIC:
        return getattr(more, name)
    raise AttributeError(name)


def _more():
    from firmware.protocol import dlms_more
    return dlms_more


_CONTEXT_LN = const(1)  # application context: logical-name referencing, no ciphering
_MECHANISM_LLS = const(1)  # authentication: low-level security (password)
_ACCEPTED = const(0)  # AARE result


class DlmsError(ValueError):
    """An APDU is malformed or not one this client understands."""


# -- BER helpers (ACSE is BER; xDLMS inside it is A-XDR) -----------------------------

def ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    return bytes((0x82, n >> 8, n & 0xFF))


def _tlv(tag: int, value) -> bytes:
    return bytes((tag,)) + ber_length(len(value)) + bytes(value)


def _read_tlv(buf, pos: int, end: int) -> tuple:
    """(tag, value start, value end) of the BER TLV at ``pos``."""
    if pos + 2 > end:
        raise DlmsError("BER element truncated")
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        size = n & 0x7F
        if size == 0 or size > 2 or pos + size > end:
            raise DlmsError("bad BER length")
        n = 0
        for b in buf[pos:pos + size]:
            n = (n << 8) | b
        pos += size
    if pos + n > end:
        raise DlmsError("BER element longer than its container")
    return tag, pos, pos + n


# -- AARQ ----------------------------------------------------------------------------

def initiate_request(conformance: int = DEFAULT_CONFORMANCE, max_pdu: int = DEFAULT_MAX_PDU) -> bytes:
    """xDLMS InitiateRequest: no dedicated key, response allowed (default), no QoS, DLMS 6."""
    return (b"\x01\x00\x00\x00\x06\x5f\x1f\x04\x00"
            + bytes(((conformance >> 16) & 0xFF, (conformance >> 8) & 0xFF, conformance & 0xFF,
                     (max_pdu >> 8) & 0xFF, max_pdu & 0xFF)))


def aarq(password=None, conformance: int = DEFAULT_CONFORMANCE, max_pdu: int = DEFAULT_MAX_PDU) -> bytes:
    """AARQ for a logical-name association; ``password`` (bytes) selects low-level security.

    >>> aarq(conformance=0x001E1D, max_pdu=0xFFFF).hex()
    '601da109060760857405080101be10040e01000000065f1f0400001e1dffff'
    """
    body = _tlv(0xA1, _tlv(0x06, _DLMS_OID + bytes((1, _CONTEXT_LN))))
    if password is not None:
        body += b"\x8a\x02\x07\x80"  # sender-acse-requirements: authentication
        body += _tlv(0x8B, _DLMS_OID + bytes((2, _MECHANISM_LLS)))
        body += _tlv(0xAC, _tlv(0x80, password))
    body += _tlv(0xBE, _tlv(0x04, initiate_request(conformance, max_pdu)))
    return _tlv(_AARQ, body)


# -- AARE ----------------------------------------------------------------------------

class Aare:
    """What the server answered to our AARQ.

    ``accepted`` is True only when result is 0 and an InitiateResponse came
    back; ``conformance``/``max_pdu`` are the negotiated values then.
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

    @property
    def accepted(self) -> bool:
        return self.result == _ACCEPTED and self.max_pdu > 0

    def reason(self) -> str:
        """Human text for a rejection."""
        if self.accepted:
            return "accepted"
        text = "rejected (result %d): %s" % (
            self.result, _more().DIAGNOSTIC_NAMES.get(self.diagnostic, "diagnostic %d" % self.diagnostic))
        if self.service_error:
            text += ", xDLMS error %s" % self.service_error.hex()
        return text


def _ber_int(buf, start, end) -> int:
    tag, s, e = _read_tlv(buf, start, end)
    if tag != 0x02 or e - s < 1:
        raise DlmsError("expected a BER INTEGER")
    value = 0
    for b in buf[s:e]:
        value = (value << 8) | b
    return value


def parse_initiate_response(raw, out: Aare):
    """Fill ``out`` from an xDLMS InitiateResponse (or ConfirmedServiceError)."""
    if not raw:
        raise DlmsError("empty user-information")
    if raw[0] == _CONFIRMED_SERVICE_ERROR:
        out.service_error = bytes(raw)
        return
    if raw[0] != _INITIATE_RESPONSE:
        raise DlmsError("user-information is not an InitiateResponse (tag 0x%02x)" % raw[0])
    i = 1
    if i < len(raw) and raw[i]:  # negotiated-quality-of-service present
        i += 1
    i += 1
    if i + 1 + 3 + 4 + 2 + 2 > len(raw) or bytes(raw[i + 1:i + 5]) != b"\x5f\x1f\x04\x00":
        raise DlmsError("InitiateResponse malformed")
    out.dlms_version = raw[i]
    c = raw[i + 5:i + 8]
    out.conformance = (c[0] << 16) | (c[1] << 8) | c[2]
    out.max_pdu = (raw[i + 8] << 8) | raw[i + 9]


def parse_aare(apdu) -> Aare:
    """Parse an AARE; raises DlmsError if it is not one.

    >>> a = parse_aare(bytes.fromhex("6129a109060760857405080101a203020100a305a103020100"
    ...     "be10040e0800065f1f040000101d03ef0007"))
    >>> a.accepted, hex(a.conformance), a.max_pdu
    (True, '0x101d', 1007)
    """
    tag, start, end = _read_tlv(apdu, 0, len(apdu))
    if tag != _AARE or end != len(apdu):
        raise DlmsError("not an AARE")
    out = Aare()
    pos = start
    while pos < end:
        tag, s, e = _read_tlv(apdu, pos, end)
        if tag == 0xA1:
            _, os, oe = _read_tlv(apdu, s, e)
            out.context = apdu[oe - 1]
        elif tag == 0xA2:
            out.result = _ber_int(apdu, s, e)
        elif tag == 0xA3:
            choice, cs, ce = _read_tlv(apdu, s, e)
            out.diagnostic_source = choice & 0x0F
            out.diagnostic = _ber_int(apdu, cs, ce)
        elif tag == 0xBE:
            inner, os, oe = _read_tlv(apdu, s, e)
            if inner != 0x04:
                raise DlmsError("user-information is not an OCTET STRING")
            parse_initiate_response(apdu[os:oe], out)
        pos = e
    if out.result < 0:
        raise DlmsError("AARE without a result")
    if out.result == _ACCEPTED and out.context not in (_CONTEXT_LN, 3):
        raise DlmsError("server chose short-name referencing; only logical names are supported")
    return out


# -- GET -----------------------------------------------------------------------------

def invoke_id_and_priority(invoke_id: int, high_priority: bool = True) -> int:
    """Bits 0-3 invoke id, bit 6 confirmed service, bit 7 high priority (0xC1 for id 1)."""
    return (0x80 if high_priority else 0) | 0x40 | (invoke_id & 0x0F)


def get_request(class_id: int, obis, attribute: int, invoke_id: int = 1, access=b"") -> bytes:
    """GET.request-normal; ``access`` is an encoded selective-access descriptor or b''."""
    if len(obis) != 6:
        raise DlmsError("OBIS code must be 6 bytes")
    head = bytes((_GET_REQUEST, 1, invoke_id_and_priority(invoke_id), class_id >> 8, class_id & 0xFF))
    head += bytes(obis) + bytes((attribute,))
    if access:
        return head + b"\x01" + bytes(access)
    return head + b"\x00"


def get_request_next(block_number: int, invoke_id: int = 1) -> bytes:
    """GET.request-next: ask for the block after ``block_number``."""
    return bytes((_GET_REQUEST, 2, invoke_id_and_priority(invoke_id),
                  (block_number >> 24) & 0xFF, (block_number >> 16) & 0xFF,
                  (block_number >> 8) & 0xFF, block_number & 0xFF))


# GET.response kinds
RESP_DATA = const(1)  # complete data (normal, or a block carrying data)
RESP_ERROR = const(2)  # Data-Access-Result in ``error``
RESP_BLOCK = const(3)  # one block of raw data; ``last_block``, ``block_number``


class GetResponse:
    """A parsed GET.response: ``kind`` RESP_DATA/RESP_ERROR/RESP_BLOCK."""

    def __init__(self, kind, invoke_id, data=b"", error=0, block_number=0, last_block=True):
        self.kind = kind
        self.invoke_id = invoke_id
        self.data = data
        self.error = error
        self.block_number = block_number
        self.last_block = last_block

    def __repr__(self):
        return "GetResponse(kind=%d id=%d block=%d last=%s err=%d %d bytes)" % (
            self.kind, self.invoke_id, self.block_number, self.last_block, self.error,
            len(self.data))


def parse_get_response(apdu) -> GetResponse:
    """Parse GET.response normal / with-datablock; exception responses raise DlmsError.

    >>> r = parse_get_response(bytes.fromhex("c401c100120100"))
    >>> r.kind == RESP_DATA, r.data.hex()
    (True, '120100')
    """
    n = len(apdu)
    if n >= 3 and apdu[0] == _EXCEPTION_RESPONSE:
        raise DlmsError("exception-response: state error %d, service error %d" % (apdu[1], apdu[2]))
    if n >= 1 and apdu[0] == _CONFIRMED_SERVICE_ERROR:
        raise DlmsError("confirmed-service-error %s" % bytes(apdu).hex())
    if n < 5 or apdu[0] != _GET_RESPONSE:
        raise DlmsError("not a GET.response")
    kind, invoke_id = apdu[1], apdu[2] & 0x0F
    if kind == 1:
        if apdu[3] == 0:
            return GetResponse(RESP_DATA, invoke_id, bytes(apdu[4:]))
        if apdu[3] == 1:
            return GetResponse(RESP_ERROR, invoke_id, error=apdu[4])
        raise DlmsError("GET.response-normal with bad result choice %d" % apdu[3])
    if kind == 2:
        if n < 10:
            raise DlmsError("GET.response-with-datablock truncated")
        last = apdu[3] != 0
        block = (apdu[4] << 24) | (apdu[5] << 16) | (apdu[6] << 8) | apdu[7]
        if apdu[8] == 1:
            return GetResponse(RESP_ERROR, invoke_id, error=apdu[9], block_number=block, last_block=last)
        if apdu[8] != 0:
            raise DlmsError("datablock with bad result choice %d" % apdu[8])
        size, pos = decode_length(apdu, 9)
        if pos + size != n:
            raise DlmsError("datablock raw-data length %d does not match %d bytes" % (size, n - pos))
        return GetResponse(RESP_BLOCK, invoke_id, bytes(apdu[pos:]), block_number=block, last_block=last)
    raise DlmsError("GET.response type %d not supported" % kind)


class BlockAssembler:
    """Joins GET.response-with-datablock blocks; checks numbering and a size cap.

    >>> b = BlockAssembler()
    >>> b.add(GetResponse(RESP_BLOCK, 1, b"\\x01\\x02", block_number=1, last_block=False))
    False
    """

    def __init__(self, max_bytes: int = 16384):
        self.max_bytes = max_bytes
        self.expected = 1
        self.data = bytearray()

    def add(self, resp: GetResponse) -> bool:
        """Append one block; True when it was the last one."""
        if resp.block_number != self.expected:
            raise DlmsError("block %d received, expected %d" % (resp.block_number, self.expected))
        if len(self.data) + len(resp.data) > self.max_bytes:
            raise DlmsError("long GET larger than %d bytes" % self.max_bytes)
        self.data += resp.data
        self.expected += 1
        return resp.last_block
