"""HDLC frame format type 3 as DLMS/COSEM uses it (IEC 62056-46), sans-IO.

A frame on the wire::

    7E | A0 LL (type 3, segmentation bit, 11-bit length) | dest | src | control
       | HCS (only when an information field follows) | information | FCS | 7E

Addresses end at the first byte whose low bit is 1: the client is one byte
(SAP 16 -> 0x21), the server one, two or four (logical 1 + physical 17 ->
``02 23``, or ``00 02 00 23`` in the four-byte form).  HCS and FCS are
CRC-16/X.25, sent low byte first.  The length counts everything between the
flags.

This module is the link layer only: it builds frames, finds them in a byte
stream (:class:`FrameParser`) and tracks the sequence numbers and segment
reassembly of one client connection (:class:`HdlcLink`).  Timeouts and
retries belong to the caller.

>>> encode_frame(server_address(1), client_address(16), SNRM).hex()
'7ea0070321930f017e'
"""
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_FLAG = const(0x7E)

# Control field values with the poll/final bit set (DLMS always sets it).
SNRM = const(0x93)
UA = const(0x73)
DISC = const(0x53)
DM = const(0x1F)
FRMR = const(0x97)
UI = const(0x13)
_PF = const(0x10)

LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"

# Defaults of IEC 62056-46 when a parameter is absent from SNRM/UA.
_DEFAULT_MAX_INFO = const(128)
_DEFAULT_WINDOW = const(1)

_MAX_FRAME_LENGTH = const(2047)  # 11-bit length field

# Reason codes for frames the parser drops.
_ERR_FORMAT = const(1)
ERR_LENGTH = const(2)
_ERR_ADDRESS = const(3)
ERR_HCS = const(4)
ERR_FCS = const(5)
ERR_FLAG = const(6)
ERROR_NAMES = {
    _ERR_FORMAT: "format field is not type 3",
    ERR_LENGTH: "length too small for the header",
    _ERR_ADDRESS: "address is not 1, 2 or 4 bytes",
    ERR_HCS: "header check sequence mismatch",
    ERR_FCS: "frame check sequence mismatch",
    ERR_FLAG: "no closing flag where the length says",
}


class HdlcError(ValueError):
    """A frame cannot be built or a peer broke the link protocol."""


def _crc_table():
    table = array("H", bytes(512))
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table[i] = crc
    return table


_TABLE = _crc_table()


def crc16_x25(data) -> int:
    """CRC-16/X.25 (reflected poly 0x1021, init and xorout 0xFFFF) of ``data``.

    >>> hex(crc16_x25(b"123456789"))
    '0x906e'
    """
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def _crc_bytes(data) -> bytes:
    crc = crc16_x25(data)
    return bytes((crc & 0xFF, crc >> 8))


# -- addresses -----------------------------------------------------------------

def client_address(sap: int) -> bytes:
    """One-byte client address: SAP 16 (public client 16) -> b'\\x21'."""
    if not 0 <= sap <= 0x7F:
        raise HdlcError("client SAP must be 0..127")
    return bytes(((sap << 1) | 1,))


def server_address(logical: int, physical=None, size: int = 0) -> bytes:
    """Server address in the 1-, 2- or 4-byte form (``size`` 0 picks the shortest).

    >>> server_address(1, 17)
    b'\\x02#'
    >>> server_address(1, 17, 4)
    b'\\x00\\x02\\x00#'
    """
    if physical is None:
        if size not in (0, 1) or not 0 <= logical <= 0x7F:
            raise HdlcError("one-byte server address holds a logical address 0..127")
        return bytes(((logical << 1) | 1,))
    if not size:
        size = 2 if logical <= 0x7F and physical <= 0x7F else 4
    if size == 2:
        if not (0 <= logical <= 0x7F and 0 <= physical <= 0x7F):
            raise HdlcError("two-byte server address holds 0..127 each")
        return bytes((logical << 1, (physical << 1) | 1))
    if size == 4:
        if not (0 <= logical <= 0x3FFF and 0 <= physical <= 0x3FFF):
            raise HdlcError("four-byte server address holds 0..16383 each")
        return bytes(((logical >> 7) << 1, (logical & 0x7F) << 1,
                      (physical >> 7) << 1, ((physical & 0x7F) << 1) | 1))
    raise HdlcError("server address size must be 1, 2 or 4")


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
    raise HdlcError("address must be 1, 2 or 4 bytes")


# -- control field -------------------------------------------------------------

def i_control(ns: int, nr: int) -> int:
    """Control byte of an I-frame: RRR P SSS 0 (poll/final set)."""
    return ((nr & 7) << 5) | _PF | ((ns & 7) << 1)


def rr_control(nr: int) -> int:
    """Control byte of a Receive Ready: RRR P 0001."""
    return ((nr & 7) << 5) | _PF | 0x01


def frame_kind(control: int) -> str:
    """'I', 'RR', 'RNR', 'SNRM', 'UA', 'DISC', 'DM', 'FRMR', 'UI' or '?'."""
    if not control & 1:
        return "I"
    if control & 3 == 1:
        return ("RR", "RNR", "?", "?")[(control >> 2) & 3]
    return _U_KINDS.get(control & ~_PF & 0xFF, "?")


_U_KINDS = {SNRM & ~_PF: "SNRM", UA & ~_PF: "UA", DISC & ~_PF: "DISC", DM & ~_PF: "DM",
            FRMR & ~_PF: "FRMR", UI & ~_PF: "UI"}


# -- frames --------------------------------------------------------------------

def encode_frame(dest, src, control: int, info=b"", segmented: bool = False) -> bytes:
    """One flagged frame; HCS is included only when ``info`` is not empty.

    >>> encode_frame(b"\\x03", b"\\x21", DISC).hex()
    '7ea00703215303c77e'
    """
    length = 2 + len(dest) + len(src) + 1 + 2
    if info:
        length += 2 + len(info)
    if length > _MAX_FRAME_LENGTH:
        raise HdlcError("frame longer than 2047 bytes: split the information field")
    header = bytearray((0xA0 | (0x08 if segmented else 0) | (length >> 8), length & 0xFF))
    header += dest
    header += src
    header.append(control)
    body = header
    if info:
        body = header + _crc_bytes(header) + info
    return bytes((_FLAG,)) + body + _crc_bytes(body) + bytes((_FLAG,))


class Frame:
    """A received, checked frame: raw addresses, control byte, info, segmentation bit."""

    def __init__(self, dest, src, control, info, segmented):
        self.dest = dest
        self.src = src
        self.control = control
        self.info = info
        self.segmented = segmented

    @property
    def kind(self) -> str:
        return frame_kind(self.control)

    @property
    def ns(self) -> int:
        return (self.control >> 1) & 7

    @property
    def nr(self) -> int:
        return (self.control >> 5) & 7

    def __repr__(self):
        return "Frame(%s dest=%s src=%s control=0x%02x seg=%d info=%d bytes)" % (
            self.kind, self.dest.hex(), self.src.hex(), self.control,
            self.segmented, len(self.info))


def _address_end(buf, start, end):
    """Index just past the address that begins at ``start``, or -1 if malformed."""
    i = start
    while i < end and i - start < 4:
        if buf[i] & 1:
            n = i - start + 1
            return i + 1 if n != 3 else -1
        i += 1
    return -1


class FrameParser:
    """Finds checked frames in bytes that arrive in any chunks.

    Bytes before a flag are skipped; a frame with a bad format, length,
    address, HCS, FCS or closing flag is dropped (counted in ``dropped``,
    reason in ``last_error``) and the search goes on from the next byte, so
    one corrupt frame never hides the next good one.  A corrupt length is
    caught by the HCS (which covers it) or, for frames without information,
    by the FCS/closing flag.  A frame cut short on the wire waits for more
    bytes; the next frame's bytes then fail its FCS and the parser resyncs,
    or the caller's receive timeout calls :meth:`reset`.

    >>> p = FrameParser()
    >>> [f.kind for f in p.feed(bytes.fromhex("7ea0070321930f017e"))]
    ['SNRM']
    """

    def __init__(self, max_frame: int = _MAX_FRAME_LENGTH + 2):
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame
        self.dropped = 0
        self.skipped = 0  # garbage bytes outside frames
        self.last_error = 0

    def reset(self):
        """Forget buffered bytes (after a receive timeout)."""
        self._buf = bytearray()
        self._pos = 0

    def _drop(self, reason):
        self.dropped += 1
        self.last_error = reason
        self._pos += 1  # resync from the byte after this flag

    def feed(self, data) -> list:
        """Add received bytes; return the complete, valid frames found (oldest first)."""
        self._buf += data
        frames = []
        buf = self._buf
        while True:
            start = buf.find(b"\x7e", self._pos)
            if start < 0:
                self.skipped += len(buf) - self._pos
                self._pos = len(buf)
                break
            self.skipped += start - self._pos
            self._pos = start
            avail = len(buf) - start
            if avail < 3:
                break
            fmt = buf[start + 1]
            if fmt == _FLAG:  # closing flag of the previous frame, or idle flags
                self._pos += 1
                continue
            if fmt & 0xF0 != 0xA0:
                self._drop(_ERR_FORMAT)
                continue
            length = ((fmt & 0x07) << 8) | buf[start + 2]
            if length < 7 or length + 2 > self.max_frame:
                self._drop(ERR_LENGTH)
                continue
            end = start + 1 + length  # index of the closing flag
            lim = min(end, len(buf))
            dest_end = _address_end(buf, start + 3, lim)
            if dest_end < 0:
                if lim < end and lim - start - 3 < 4:
                    break  # address not complete yet
                self._drop(_ERR_ADDRESS)
                continue
            src_end = _address_end(buf, dest_end, lim)
            if src_end < 0:
                if lim < end and lim - dest_end < 4:
                    break
                self._drop(_ERR_ADDRESS)
                continue
            header_end = src_end + 1  # past the control byte
            no_info_end = header_end + 2  # FCS would end here without information
            if end != no_info_end and end < no_info_end + 2:
                self._drop(ERR_LENGTH)
                continue
            has_info = end > no_info_end
            if has_info and len(buf) >= header_end + 2:
                hcs = crc16_x25(memoryview(buf)[start + 1:header_end])
                if buf[header_end] != hcs & 0xFF or buf[header_end + 1] != hcs >> 8:
                    self._drop(ERR_HCS)
                    continue
            if len(buf) <= end:
                break  # wait for the rest
            if buf[end] != _FLAG:
                self._drop(ERR_FLAG)
                continue
            fcs = crc16_x25(memoryview(buf)[start + 1:end - 2])
            if buf[end - 2] != fcs & 0xFF or buf[end - 1] != fcs >> 8:
                self._drop(ERR_FCS)
                continue
            info = bytes(buf[header_end + 2:end - 2]) if has_info else b""
            frames.append(Frame(bytes(buf[start + 3:dest_end]), bytes(buf[dest_end:src_end]),
                                buf[src_end], info, bool(fmt & 0x08)))
            self._pos = end  # the closing flag may open the next frame
        if self._pos > 256 or self._pos == len(buf):
            self._buf = buf[self._pos:]
            self._pos = 0
        return frames


# -- SNRM / UA parameter negotiation -----------------------------------------------

class LinkParams:
    """HDLC parameters as the sender of a SNRM or UA states them (its own tx/rx view)."""

    def __init__(self, max_info_tx=_DEFAULT_MAX_INFO, max_info_rx=_DEFAULT_MAX_INFO,
                 window_tx=_DEFAULT_WINDOW, window_rx=_DEFAULT_WINDOW):
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
            (5, params.max_info_tx, _DEFAULT_MAX_INFO, 0),
            (6, params.max_info_rx, _DEFAULT_MAX_INFO, 0),
            (7, params.window_tx, _DEFAULT_WINDOW, 4),
            (8, params.window_rx, _DEFAULT_WINDOW, 4)):
        if value == default:
            continue
        n = size or (1 if value <= 0xFF else 2)
        body += bytes((pid, n)) + _uint_bytes(value, n)
    if not body:
        return b""
    return bytes((0x81, 0x80, len(body))) + body


def decode_params(info) -> LinkParams:
    """Parameters from a SNRM/UA information field; absent ones take the defaults.

    Raises HdlcError for a wrong format/group identifier or a truncated group.
    """
    params = LinkParams()
    if not info:
        return params
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80:
        raise HdlcError("HDLC parameters must start with 81 80")
    end = 3 + info[2]
    if end > len(info):
        raise HdlcError("HDLC parameter group is truncated")
    i = 3
    while i + 2 <= end:
        pid, n = info[i], info[i + 1]
        if i + 2 + n > end:
            raise HdlcError("HDLC parameter %d is truncated" % pid)
        value = 0
        for b in info[i + 2:i + 2 + n]:
            value = (value << 8) | b
        if pid == 5:
            params.max_info_tx = value
        elif pid == 6:
            params.max_info_rx = value
        elif pid == 7:
            params.window_tx = value
        elif pid == 8:
            params.window_rx = value
        i += 2 + n
    return params


# -- one client connection -----------------------------------------------------------

# Link states
DISCONNECTED = const(0)
CONNECTING = const(1)
CONNECTED = const(2)
_DISCONNECTING = const(3)


class HdlcLink:
    """Client side of one HDLC connection: addresses, N(S)/N(R), segments.

    Sans-IO: methods return the frame bytes to send; :meth:`receive` takes a
    parsed :class:`Frame` addressed to us and returns ``(reply, apdu)``:
    ``reply`` bytes to send now (an RR asking for the next segment, or b''),
    ``apdu`` the reassembled information without the LLC header once the
    last segment is in (else None).

    >>> link = HdlcLink(16, 1, 17)
    >>> link.snrm().hex()
    '7ea00802232193bd647e'
    """

    def __init__(self, client_sap=16, server_logical=1, server_physical=None,
                 server_address_size=0, params=None):
        self.client = client_address(client_sap)
        self.server = server_address(server_logical, server_physical, server_address_size)
        self.proposed = params or LinkParams()
        self.state = DISCONNECTED
        self.vs = 0  # next N(S) we send
        self.vr = 0  # next N(S) we expect
        self.max_info_tx = _DEFAULT_MAX_INFO
        self.max_info_rx = _DEFAULT_MAX_INFO
        self._segments = bytearray()

    def _frame(self, control, info=b"", segmented=False):
        return encode_frame(self.server, self.client, control, info, segmented)

    def snrm(self) -> bytes:
        """SNRM with our proposed parameters (none when they are all default)."""
        self.state = CONNECTING
        return self._frame(SNRM, encode_params(self.proposed))

    def disc(self) -> bytes:
        self.state = _DISCONNECTING
        return self._frame(DISC)

    def send(self, apdu) -> bytes:
        """I-frame carrying LLC request header + ``apdu``.

        Sending segmented requests is not supported: APDUs a client sends
        (AARQ, GET) fit easily in the negotiated information field.
        """
        if self.state != CONNECTED:
            raise HdlcError("link is not connected")
        info = LLC_REQUEST + apdu
        if len(info) > self.max_info_tx:
            raise HdlcError("APDU of %d bytes exceeds max info field %d" % (len(info), self.max_info_tx))
        frame = self._frame(i_control(self.vs, self.vr), info)
        self.vs = (self.vs + 1) & 7
        return frame

    def is_for_us(self, frame: Frame) -> bool:
        return frame.dest == self.client and frame.src == self.server

    def receive(self, frame: Frame) -> tuple:
        """Handle one frame from the server; see the class docstring for the result."""
        if not self.is_for_us(frame):
            return b"", None
        kind = frame.kind
        if kind == "UA":
            if self.state == CONNECTING:
                got = decode_params(frame.info)
                # the server's transmit limit is our receive limit and vice versa
                self.max_info_tx = min(self.proposed.max_info_tx, got.max_info_rx)
                self.max_info_rx = min(self.proposed.max_info_rx, got.max_info_tx)
                self.vs = self.vr = 0
                self._segments = bytearray()
                self.state = CONNECTED
            elif self.state == _DISCONNECTING:
                self.state = DISCONNECTED
            return b"", None
        if kind == "DM":
            self.state = DISCONNECTED
            raise HdlcError("server answered DM (disconnected mode)")
        if kind == "FRMR":
            self.state = DISCONNECTED
            raise HdlcError("server rejected a frame (FRMR)")
        if kind != "I" or self.state != CONNECTED:
            return b"", None
        if frame.ns != self.vr:
            # a repeat of a frame we already have: acknowledge again, keep nothing
            return self._frame(rr_control(self.vr)), None
        self.vr = (self.vr + 1) & 7
        info = frame.info
        if not self._segments:
            if info[:3] != LLC_RESPONSE:
                raise HdlcError("I-frame without the LLC response header E6 E7 00")
            info = info[3:]
        self._segments += info
        if frame.segmented:
            return self._frame(rr_control(self.vr)), None
        apdu = bytes(self._segments)
        self._segments = bytearray()
        return b"", apdu
