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

# States; public as IDLE, LINKING, ... (``dlms_more``)
_IDLE = const(0)
_LINKING = const(1)  # SNRM sent
_LINKED = const(2)  # UA received, no association
_ASSOCIATING = const(3)  # AARQ sent
_READY = const(4)  # associated, nothing outstanding
_READING = const(5)  # GET outstanding (possibly mid block transfer)
_CLOSING = const(6)  # DISC sent
_CLOSED = const(7)
_STATE_NAMES = const("IDLE LINKING LINKED ASSOCIATING READY READING CLOSING CLOSED")

# events (kind, value)
EV_LINKED = const(1)  # value: None
EV_ASSOCIATED = const(2)  # value: dlms.Aare
EV_REJECTED = const(3)  # value: dlms.Aare (see .reason())
EV_DATA = const(4)  # value: decoded A-XDR data
EV_ACCESS_ERROR = const(5)  # value: Data-Access-Result code (dlms.DAR_NAMES)
EV_CLOSED = const(6)  # value: None

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
_TRIGGER_NAMES = const("connect ua associate accepted rejected get block data access_error dm disconnect")

# state, trigger -> next state: one row of three per transition.  Bytes, built from a
# list that is let go after import (a dict of tuples cost ~600 bytes of heap).
_NEXT = bytes([
    _IDLE, _CONNECT, _LINKING,
    _CLOSED, _CONNECT, _LINKING,
    _LINKING, _UA, _LINKED,
    _LINKED, _ASSOCIATE, _ASSOCIATING,
    _ASSOCIATING, _ACCEPTED, _READY,
    _ASSOCIATING, _REJECTED, _LINKED,
    _READY, _GET, _READING,
    _READING, _BLOCK, _READING,
    _READING, _DATA, _READY,
    _READING, _ACCESS_ERROR, _READY,
    _CLOSING, _UA, _CLOSED,
    _CLOSING, _DM, _CLOSED,
    # disconnect from any active state
    _LINKING, _DISCONNECT, _CLOSING,
    _LINKED, _DISCONNECT, _CLOSING,
    _ASSOCIATING, _DISCONNECT, _CLOSING,
    _READY, _DISCONNECT, _CLOSING,
    _READING, _DISCONNECT, _CLOSING,
])


def __getattr__(name):
    # DlmsStateError (a RuntimeError: a call or a server frame that the session's state
    # does not allow) is made on first use and kept in the module dict: held from import
    # on, the class would cost heap a meter with a sane peer never needs.  Raise sites
    # here call ``__getattr__("DlmsStateError")``.  The state numbers under public names
    # are in ``dlms_more``, loaded on first use.
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
        self.state = _IDLE
        self.invoke_id = 0
        self._blocks = None  # a long GET's data so far (bytearray)
        self._block_number = 0  # of the last block received

    def _go(self, trigger):
        t = _NEXT
        for i in range(0, len(t), 3):
            if t[i] == self.state and t[i + 1] == trigger:
                self.state = t[i + 2]
                return
        raise __getattr__("DlmsStateError")("%s not allowed in state %s" % (
            _TRIGGER_NAMES.split()[trigger], _STATE_NAMES.split()[self.state]))

    # -- requests ------------------------------------------------------------------
    def connect(self) -> bytes:
        """SNRM (HDLC connect)."""
        self._go(_CONNECT)
        self.parser.reset()
        return self.link.snrm()

    def associate(self) -> bytes:
        """AARQ in an I-frame."""
        self._go(_ASSOCIATE)
        return self.link.send(dlms.aarq(self.password, self.conformance, self.max_pdu))

    def get(self, class_id: int, obis, attribute: int, access=b"") -> bytes:
        """GET.request-normal for one attribute; the result arrives as EV_DATA."""
        self._go(_GET)
        self.invoke_id = (self.invoke_id % 15) + 1
        self._blocks = None
        return self.link.send(dlms.get_request(class_id, obis, attribute, self.invoke_id, access))

    def disconnect(self) -> bytes:
        """DISC; the server's UA (or DM) ends in EV_CLOSED."""
        self._go(_DISCONNECT)
        return self.link.disc()

    # -- responses -----------------------------------------------------------------
    def feed(self, data) -> tuple:
        """Bytes from the meter -> (bytes to send now, event (kind, value) or None)."""
        out = b""
        event = None
        for frame in self.parser.feed(data):
            if not self.link.is_for_us(frame):
                continue
            kind = frame.kind
            if self.state == _CLOSING and kind == "DM":
                self._go(_DM)
                self.link.state = hdlc.DISCONNECTED
                event = (EV_CLOSED, None)
                continue
            reply, apdu = self.link.receive(frame)
            out += reply
            if kind == "UA":
                if self.state == _LINKING:
                    self._go(_UA)
                    event = (EV_LINKED, None)
                elif self.state == _CLOSING:
                    self._go(_UA)
                    event = (EV_CLOSED, None)
            if apdu is not None:
                send, ev = self._on_apdu(apdu)
                out += send
                event = ev or event
        return out, event

    def _on_apdu(self, apdu) -> tuple:
        if self.state == _ASSOCIATING:
            aare = dlms.parse_aare(apdu)
            if aare.accepted:
                self._go(_ACCEPTED)
                return b"", (EV_ASSOCIATED, aare)
            self._go(_REJECTED)
            return b"", (EV_REJECTED, aare)
        if self.state != _READING:
            raise __getattr__("DlmsStateError")("unexpected APDU 0x%02x in state %s" % (
                apdu[0] if apdu else 0, _STATE_NAMES.split()[self.state]))
        kind, invoke_id, value, block, last = dlms.parse_get_response(apdu)
        if invoke_id != self.invoke_id:
            raise dlms.DlmsError("response invoke id %d, expected %d" % (invoke_id, self.invoke_id))
        if kind == dlms.RESP_ERROR:
            self._blocks = None
            self._go(_ACCESS_ERROR)
            return b"", (EV_ACCESS_ERROR, value)
        if kind == dlms.RESP_DATA:
            self._go(_DATA)
            return b"", (EV_DATA, decode(value))
        # a block of a long GET: numbered from 1, the whole capped at max_data_bytes
        if self._blocks is None:
            self._blocks = bytearray()
            self._block_number = 0
        if block != self._block_number + 1:
            raise dlms.DlmsError("block %d received, expected %d" % (block, self._block_number + 1))
        if len(self._blocks) + len(value) > self.max_data_bytes:
            raise dlms.DlmsError("long GET larger than %d bytes" % self.max_data_bytes)
        self._blocks += value
        self._block_number = block
        if not last:
            self._go(_BLOCK)
            return self.link.send(dlms.get_request_next(block, self.invoke_id)), None
        data = bytes(self._blocks)
        self._blocks = None
        self._go(_DATA)
        return b"", (EV_DATA, decode(data))
