"""Sans-IO DLMS/COSEM client session over HDLC: SNRM/UA, AARQ/AARE, GET, DISC/UA.

The caller owns the serial port and the clock.  Each request method returns
the bytes to write; :meth:`DlmsClient.feed` takes whatever bytes arrived and
returns ``(to_send, event)``: bytes to write at once (an RR for the next
HDLC segment, a GET.request-next for the next block) and an event
``(kind, value)`` (kind EV_*) when a request is finished (else None).  On a
receive timeout the caller drops the session (``disconnect``) and starts
again; retries are policy, not protocol, and live in the master.

The session's states and their legal transitions are one table, ``_NEXT``;
anything else raises ``DlmsStateError`` (a RuntimeError).

>>> c = DlmsClient(address=17)
>>> c.connect().hex()
'7ea00802232193bd647e'
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.protocol import dlms, dlms_data, hdlc

# States; public as IDLE, LINKING, ... (``dlms_more``)
_IDLE = const(0)
_LINKING = const(1)  # SNRM sent
_LINKED = const(2)  # UA received, no association
_ASSOCIATING = const(3)  # AARQ sent
_READY = const(4)  # associated, nothing outstanding
_READING = const(5)  # GET outstanding (possibly mid block transfer)
_CLOSING = const(6)  # DISC sent
_CLOSED = const(7)

# events (kind, value); public as EV_LINKED, ... (``dlms_more``)
_EV_LINKED = const(1)  # value: None
_EV_ASSOCIATED = const(2)  # value: dlms.Aare
_EV_REJECTED = const(3)  # value: dlms.Aare (see .reason())
_EV_DATA = const(4)  # value: decoded A-XDR data
_EV_ACCESS_ERROR = const(5)  # value: Data-Access-Result code (dlms.DAR_NAMES)
_EV_CLOSED = const(6)  # value: None

# Triggers: our calls and what the server sent
_CONNECT = const(0)
_UA = const(1)
_ASSOCIATE = const(2)
_ACCEPTED = const(3)
_REJECTED = const(4)
_GET = const(5)
_BLOCK = const(6)
_DATA = const(7)
_ACCESS_ERROR = const(8)
_DM = const(9)
_DISCONNECT = const(10)
# the trigger names (0..10), then the state names (11 + state): one str for both, one object
_NAMES = const("connect ua associate accepted rejected get block data access_error dm disconnect"
               " IDLE LINKING LINKED ASSOCIATING READY READING CLOSING CLOSED")

# state, trigger -> next state: one row of three bytes per transition (a bytes literal
# stays in flash with the bytecode)
_NEXT = const(
    b"\x00\x00\x01"  # IDLE, connect -> LINKING
    b"\x07\x00\x01"  # CLOSED, connect -> LINKING
    b"\x01\x01\x02"  # LINKING, ua -> LINKED
    b"\x02\x02\x03"  # LINKED, associate -> ASSOCIATING
    b"\x03\x03\x04"  # ASSOCIATING, accepted -> READY
    b"\x03\x04\x02"  # ASSOCIATING, rejected -> LINKED
    b"\x04\x05\x05"  # READY, get -> READING
    b"\x05\x06\x05"  # READING, block -> READING
    b"\x05\x07\x04"  # READING, data -> READY
    b"\x05\x08\x04"  # READING, access_error -> READY
    b"\x06\x01\x07"  # CLOSING, ua -> CLOSED
    b"\x06\x09\x07"  # CLOSING, dm -> CLOSED
    # disconnect from any active state
    b"\x01\x0a\x06"  # LINKING, disconnect -> CLOSING
    b"\x02\x0a\x06"  # LINKED
    b"\x03\x0a\x06"  # ASSOCIATING
    b"\x04\x0a\x06"  # READY
    b"\x05\x0a\x06"  # READING
)

# What the session needs of the other layers, as private consts (compiled away): the
# HDLC control bytes (poll/final set) of UA and DM, dlms's GET.response kinds and defaults
_PF = const(0x10)
_UA_CONTROL = const(0x73)
_DM_CONTROL = const(0x1F)
_RESP_DATA = const(1)
_RESP_ERROR = const(2)
_DEFAULT_CONFORMANCE = const(0x001014)
_DEFAULT_MAX_PDU = const(1024)


def __getattr__(name):
    # DlmsStateError (a RuntimeError: a call or a server frame that the session's state
    # does not allow) is made on first use and kept in the module dict: held from import
    # on, the class would cost heap a meter with a sane peer never needs.  Raise sites
    # here call ``__getattr__("DlmsStateError")``.  The state and event numbers under
    # public names are in ``dlms_more``, loaded on first use.
    if name == "DlmsStateError":
        g = globals()
        if name not in g:
            g[name] = type(name, (RuntimeError,), {})
        return g[name]
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    from firmware.protocol import dlms_more
    if name in dlms_more.PUBLIC[__name__]:
        return getattr(dlms_more, name)
    raise AttributeError(name)


class DlmsClient:
    """One client association with one meter (public client SAP 16 by default).

    ``client``, ``server``, ``address``, ``size`` and ``params`` are the HDLC
    addressing and parameters (see ``hdlc.HdlcLink``: client SAP, server logical
    and physical address, server address size, proposed ``LinkParams``).
    ``password`` (bytes) selects low-level security; None means no security.
    ``max_bytes`` caps a block-transfer read so a profile cannot eat the heap.
    """

    def __init__(self, client=16, server=1, address=None, size=0, password=None,
                 conformance=_DEFAULT_CONFORMANCE, max_pdu=_DEFAULT_MAX_PDU, params=None,
                 max_bytes=16384):
        self.link = hdlc.HdlcLink(client, server, address, size, params)
        self.parser = hdlc.FrameParser()
        self.password = password
        self.conformance = conformance
        self.max_pdu = max_pdu
        self.max_bytes = max_bytes
        self.state = _IDLE
        self.invoke_id = 0
        self._buf = None  # a long GET's data so far (bytearray)
        self._count = 0  # blocks of it received (numbered from 1)

    def _fire(self, event):
        """Take the transition for trigger ``event`` (a _CONNECT, _UA, ... number)."""
        t = _NEXT
        for i in range(0, len(t), 3):
            if t[i] == self.state and t[i + 1] == event:
                self.state = t[i + 2]
                return
        raise __getattr__("DlmsStateError")("%s not allowed in state %s" % (
            _NAMES.split()[event], _NAMES.split()[11 + self.state]))

    # -- requests ------------------------------------------------------------------
    def connect(self) -> bytes:
        """SNRM (HDLC connect)."""
        self._fire(_CONNECT)
        self.parser.reset()
        return self.link.connect()

    def associate(self) -> bytes:
        """AARQ in an I-frame."""
        self._fire(_ASSOCIATE)
        return self.link.send(dlms.aarq(self.password, self.conformance, self.max_pdu))

    def get(self, class_id: int, obis, attribute: int, access=b"") -> bytes:
        """GET.request-normal for one attribute; the result arrives as EV_DATA."""
        self._fire(_GET)
        self.invoke_id = (self.invoke_id % 15) + 1
        self._buf = None
        return self.link.send(dlms.get_request(class_id, obis, attribute, self.invoke_id, access))

    def disconnect(self) -> bytes:
        """DISC; the server's UA (or DM) ends in EV_CLOSED."""
        self._fire(_DISCONNECT)
        return self.link.disconnect()

    # -- responses -----------------------------------------------------------------
    def feed(self, data) -> tuple:
        """Bytes from the meter -> (bytes to send now, event (kind, value) or None)."""
        out = b""
        event = None  # type: tuple | None
        link = self.link
        for frame in self.parser.feed(data):
            if frame.dest != link.client or frame.src != link.server:
                continue  # not for us
            control = frame.control | _PF  # of a U-frame: the poll/final bit does not matter
            if self.state == _CLOSING and control == _DM_CONTROL:
                self._fire(_DM)
                link.state = hdlc.DISCONNECTED
                event = (_EV_CLOSED, None)
                continue
            reply, apdu = link.receive(frame)
            out += reply
            if control == _UA_CONTROL:
                if self.state == _LINKING:
                    self._fire(_UA)
                    event = (_EV_LINKED, None)
                elif self.state == _CLOSING:
                    self._fire(_UA)
                    event = (_EV_CLOSED, None)
            if apdu is None:
                continue
            # an APDU: the AARE, or a GET.response
            if self.state == _ASSOCIATING:
                aare = dlms.parse_aare(apdu)
                accepted = aare.accepted
                self._fire(_ACCEPTED if accepted else _REJECTED)
                event = (_EV_ASSOCIATED if accepted else _EV_REJECTED, aare)
                continue
            if self.state != _READING:
                raise __getattr__("DlmsStateError")("unexpected APDU 0x%02x in state %s" % (
                    apdu[0] if apdu else 0, _NAMES.split()[11 + self.state]))
            kind, invoke_id, value, block, last = dlms.parse_get_response(apdu)
            if invoke_id != self.invoke_id:
                raise dlms.err(20, (invoke_id, self.invoke_id))  # a DlmsError
            if kind == _RESP_ERROR:
                self._buf = None
                self._fire(_ACCESS_ERROR)
                event = (_EV_ACCESS_ERROR, value)
                continue
            if kind != _RESP_DATA:
                # a block of a long GET: numbered from 1, the whole capped at max_bytes
                if self._buf is None:
                    self._buf = bytearray()
                    self._count = 0
                if block != self._count + 1:
                    raise dlms.err(21, (block, self._count + 1))
                if len(self._buf) + len(value) > self.max_bytes:
                    raise dlms.err(22, self.max_bytes)
                self._buf += value
                self._count = block
                if not last:
                    self._fire(_BLOCK)
                    out += link.send(dlms.get_request_next(block, self.invoke_id))
                    continue
                value = bytes(self._buf)
                self._buf = None
            data, end = dlms_data.decode_at(value)  # dlms_data.decode, inline: one value filling it
            if end != len(value):
                raise dlms_data.err(12, len(value) - end)  # a DlmsDataError
            self._fire(_DATA)
            event = (_EV_DATA, data)
        return out, event
