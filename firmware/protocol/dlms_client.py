"""Sans-IO DLMS/COSEM client session over HDLC: SNRM/UA, AARQ/AARE, GET, DISC/UA.

The caller owns the serial port and the clock.  Each request method returns
the bytes to write; :meth:`DlmsClient.feed` takes whatever bytes arrived and
returns ``(to_send, event)``: bytes to write at once (an RR for the next
HDLC segment, a GET.request-next for the next block) and an :class:`Event`
when a request is finished (else None).  On a receive timeout the caller
drops the session (``disconnect``) and starts again; retries are policy,
not protocol, and live in the master.

The session's states and their legal transitions are one table, ``_NEXT``;
anything else raises :class:`DlmsStateError`.

>>> c = DlmsClient(server_physical=17)
>>> c.connect().hex()
'7ea00802232193bd647e'
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

from firmware.protocol import dlms, hdlc
from firmware.protocol.dlms_data import decode

IDLE = const(0)
_LINKING = const(1)  # SNRM sent
LINKED = const(2)  # UA received, no association
_ASSOCIATING = const(3)  # AARQ sent
READY = const(4)  # associated, nothing outstanding
READING = const(5)  # GET outstanding (possibly mid block transfer)
_CLOSING = const(6)  # DISC sent
CLOSED = const(7)
STATE_NAMES = ("IDLE", "LINKING", "LINKED", "ASSOCIATING", "READY", "READING", "CLOSING", "CLOSED")

# events
EV_LINKED = const(1)  # value: None
EV_ASSOCIATED = const(2)  # value: dlms.Aare
EV_REJECTED = const(3)  # value: dlms.Aare (see .reason())
EV_DATA = const(4)  # value: decoded A-XDR data
EV_ACCESS_ERROR = const(5)  # value: Data-Access-Result code (dlms.DAR_NAMES)
EV_CLOSED = const(6)  # value: None

_ACTIVE = (_LINKING, LINKED, _ASSOCIATING, READY, READING)

# (state, trigger) -> next state.  Triggers: our calls and what the server sent.
_NEXT = {
    (IDLE, "connect"): _LINKING,
    (CLOSED, "connect"): _LINKING,
    (_LINKING, "ua"): LINKED,
    (LINKED, "associate"): _ASSOCIATING,
    (_ASSOCIATING, "accepted"): READY,
    (_ASSOCIATING, "rejected"): LINKED,
    (READY, "get"): READING,
    (READING, "block"): READING,
    (READING, "data"): READY,
    (READING, "access_error"): READY,
    (_CLOSING, "ua"): CLOSED,
    (_CLOSING, "dm"): CLOSED,
}
for _s in _ACTIVE:
    _NEXT[(_s, "disconnect")] = _CLOSING


class DlmsStateError(RuntimeError):
    """A call or a server frame that the session's state does not allow."""


class Event:
    """Outcome of a request: ``kind`` (EV_*) and ``value``."""

    def __init__(self, kind, value=None):
        self.kind = kind
        self.value = value

    def __repr__(self):
        return "Event(%d, %r)" % (self.kind, self.value)


class DlmsClient:
    """One client association with one meter (public client SAP 16 by default).

    ``password`` (bytes) selects low-level security; None means no security.
    ``max_data_bytes`` caps a block-transfer read so a profile cannot eat the heap.
    """

    def __init__(self, client_sap=16, server_logical=1, server_physical=None,
                 server_address_size=0, password=None,
                 conformance=dlms.DEFAULT_CONFORMANCE, max_pdu=dlms.DEFAULT_MAX_PDU,
                 link_params=None, max_data_bytes=16384):
        self.link = hdlc.HdlcLink(client_sap, server_logical, server_physical,
                                  server_address_size, link_params)
        self.parser = hdlc.FrameParser()
        self.password = password
        self.conformance = conformance
        self.max_pdu = max_pdu
        self.max_data_bytes = max_data_bytes
        self.state = IDLE
        self.aare = None
        self.invoke_id = 0
        self._blocks = None

    def _go(self, trigger):
        nxt = _NEXT.get((self.state, trigger))
        if nxt is None:
            raise DlmsStateError("%s not allowed in state %s" % (trigger, STATE_NAMES[self.state]))
        self.state = nxt

    # -- requests ------------------------------------------------------------------
    def connect(self) -> bytes:
        """SNRM (HDLC connect)."""
        self._go("connect")
        self.parser.reset()
        return self.link.snrm()

    def associate(self) -> bytes:
        """AARQ in an I-frame."""
        self._go("associate")
        return self.link.send(dlms.aarq(self.password, self.conformance, self.max_pdu))

    def get(self, class_id: int, obis, attribute: int, access=b"") -> bytes:
        """GET.request-normal for one attribute; the result arrives as EV_DATA."""
        self._go("get")
        self.invoke_id = (self.invoke_id % 15) + 1
        self._blocks = None
        return self.link.send(dlms.get_request(class_id, obis, attribute, self.invoke_id, access))

    def disconnect(self) -> bytes:
        """DISC; the server's UA (or DM) ends in EV_CLOSED."""
        self._go("disconnect")
        return self.link.disc()

    # -- responses -----------------------------------------------------------------
    def feed(self, data) -> tuple:
        """Bytes from the meter -> (bytes to send now, Event or None)."""
        out = b""
        event = None
        for frame in self.parser.feed(data):
            if not self.link.is_for_us(frame):
                continue
            if self.state == _CLOSING and frame.kind == "DM":
                self._go("dm")
                self.link.state = hdlc.DISCONNECTED
                event = Event(EV_CLOSED)
                continue
            reply, apdu = self.link.receive(frame)
            out += reply
            if frame.kind == "UA":
                if self.state == _LINKING:
                    self._go("ua")
                    event = Event(EV_LINKED)
                elif self.state == _CLOSING:
                    self._go("ua")
                    event = Event(EV_CLOSED)
            if apdu is not None:
                send, ev = self._on_apdu(apdu)
                out += send
                event = ev or event
        return out, event

    def _on_apdu(self, apdu) -> tuple:
        if self.state == _ASSOCIATING:
            aare = dlms.parse_aare(apdu)
            self.aare = aare
            if aare.accepted:
                self._go("accepted")
                return b"", Event(EV_ASSOCIATED, aare)
            self._go("rejected")
            return b"", Event(EV_REJECTED, aare)
        if self.state != READING:
            raise DlmsStateError("unexpected APDU 0x%02x in state %s" % (
                apdu[0] if apdu else 0, STATE_NAMES[self.state]))
        resp = dlms.parse_get_response(apdu)
        if resp.invoke_id != self.invoke_id:
            raise dlms.DlmsError("response invoke id %d, expected %d" % (resp.invoke_id, self.invoke_id))
        if resp.kind == dlms.RESP_ERROR:
            self._blocks = None
            self._go("access_error")
            return b"", Event(EV_ACCESS_ERROR, resp.error)
        if resp.kind == dlms.RESP_DATA:
            self._go("data")
            return b"", Event(EV_DATA, decode(resp.data))
        if self._blocks is None:
            self._blocks = dlms.BlockAssembler(self.max_data_bytes)
        if not self._blocks.add(resp):
            self._go("block")
            return self.link.send(dlms.get_request_next(resp.block_number, self.invoke_id)), None
        data = bytes(self._blocks.data)
        self._blocks = None
        self._go("data")
        return b"", Event(EV_DATA, decode(data))
