"""A minimal DLMS/COSEM meter (server) over HDLC, sans-IO: a peer for tests and HIL.

It answers SNRM with UA, AARQ with AARE (checking a low-level-security
password if one is set), GET.request-normal/next from a table of encoded
attribute values, and DISC with UA.  Long values go out in GET blocks of
``block_size`` bytes, and long I-frames in HDLC segments of ``max_info``
bytes that the client must fetch with RR -- the two mechanisms a real meter
uses for load profiles.  Not a conformant meter: no SN referencing, no SET,
no ACTION, no selective access (the descriptor is ignored).

>>> m = MeterPeer({(3, b"\\x01\\x00\\x01\\x08\\x00\\xff", 2): b"\\x06\\x00\\x00\\x04\\xd2"})
>>> m.feed(bytes.fromhex("7ea0070321930f017e"))[:4].hex()
'7ea01221'
"""
from firmware.protocol import dlms, hdlc
from firmware.protocol.dlms_data import encode_length


class MeterPeer:
    """``objects`` maps (class_id, obis bytes, attribute) -> encoded A-XDR data bytes."""

    def __init__(self, objects, server_logical=1, server_physical=None, client_sap=16,
                 password=None, max_info=128, block_size=0, conformance=0x00101D, max_pdu=512):
        self.objects = objects
        self.server = hdlc.server_address(server_logical, server_physical)
        self.client = hdlc.client_address(client_sap)
        self.password = password
        self.max_info = max_info
        self.block_size = block_size
        self.conformance = conformance
        self.max_pdu = max_pdu
        self.parser = hdlc.FrameParser()
        self.connected = False
        self.associated = False
        self.vs = self.vr = 0
        self._pending = []  # HDLC segments not yet sent
        self._blocks = []  # GET blocks not yet sent
        self._block_no = 0
        self._invoke = 0xC1
        self.log = []  # APDUs received, for tests to inspect

    def _frame(self, control, info=b"", segmented=False):
        return hdlc.encode_frame(self.client, self.server, control, info, segmented)

    def _send_info(self, apdu) -> bytes:
        info = hdlc.LLC_RESPONSE + apdu
        chunks = [info[i:i + self.max_info] for i in range(0, len(info), self.max_info)]
        self._pending = chunks[1:]
        return self._i_frame(chunks[0], bool(self._pending))

    def _i_frame(self, chunk, segmented) -> bytes:
        frame = self._frame(hdlc.i_control(self.vs, self.vr), chunk, segmented)
        self.vs = (self.vs + 1) & 7
        return frame

    def feed(self, data) -> bytes:
        """Bytes from the client -> bytes the meter answers (may be b'')."""
        out = b""
        for f in self.parser.feed(data):
            if f.dest != self.server or f.src != self.client:
                continue
            out += self._on_frame(f)
        return out

    def _on_frame(self, f) -> bytes:
        kind = f.kind
        if kind == "SNRM":
            self.connected, self.associated = True, False
            self.vs = self.vr = 0
            params = hdlc.LinkParams(self.max_info, self.max_info)
            return self._frame(hdlc.UA, hdlc.encode_params(params) or
                               b"\x81\x80\x06\x05\x01\x80\x06\x01\x80")
        if kind == "DISC":
            was = self.connected
            self.connected = self.associated = False
            return self._frame(hdlc.UA if was else hdlc.DM)
        if not self.connected:
            return self._frame(hdlc.DM)
        if kind == "RR":
            if self._pending:
                chunk = self._pending.pop(0)
                return self._i_frame(chunk, bool(self._pending))
            return b""
        if kind != "I":
            return b""
        self.vr = (self.vr + 1) & 7
        if f.info[:3] != hdlc.LLC_REQUEST:
            return b""
        apdu = f.info[3:]
        self.log.append(apdu)
        return self._send_info(self._answer(apdu))

    # -- application layer ------------------------------------------------------------
    def _answer(self, apdu) -> bytes:
        if apdu[0] == dlms.AARQ:
            return self._aare(apdu)
        if apdu[0] == dlms.GET_REQUEST and self.associated:
            self._invoke = apdu[2]
            if apdu[1] == 1:
                key = ((apdu[3] << 8) | apdu[4], bytes(apdu[5:11]), apdu[11])
                data = self.objects.get(key)
                if data is None:
                    return bytes((dlms.GET_RESPONSE, 1, self._invoke, 1, dlms.DAR_OBJECT_UNDEFINED))
                if self.block_size and len(data) > self.block_size:
                    self._blocks = [data[i:i + self.block_size] for i in range(0, len(data), self.block_size)]
                    self._block_no = 0
                    return self._next_block()
                return bytes((dlms.GET_RESPONSE, 1, self._invoke, 0)) + data
            if apdu[1] == 2:
                asked = (apdu[3] << 24) | (apdu[4] << 16) | (apdu[5] << 8) | apdu[6]
                if asked != self._block_no or not self._blocks:
                    return bytes((dlms.GET_RESPONSE, 2, self._invoke, 1)) + \
                        self._block_no.to_bytes(4, "big") + bytes((1, dlms.DAR_NO_LONG_GET_IN_PROGRESS))
                return self._next_block()
        return b"\xd8\x01\x02"  # exception-response: service not allowed / not supported

    def _next_block(self) -> bytes:
        raw = self._blocks.pop(0)
        self._block_no += 1
        last = 0 if self._blocks else 1
        return (bytes((dlms.GET_RESPONSE, 2, self._invoke, last)) + self._block_no.to_bytes(4, "big")
                + b"\x00" + encode_length(len(raw)) + raw)

    def _aare(self, aarq) -> bytes:
        password = _find_password(aarq)
        diag = dlms.DIAG_NULL
        if self.password is not None and password != self.password:
            diag = dlms.DIAG_AUTHENTICATION_FAILURE if password is not None else dlms.DIAG_AUTHENTICATION_REQUIRED
        result = dlms.ACCEPTED if diag == dlms.DIAG_NULL else dlms.REJECTED_PERMANENT
        self.associated = result == dlms.ACCEPTED
        body = (b"\xa1\x09\x06\x07\x60\x85\x74\x05\x08\x01\x01"
                + b"\xa2\x03\x02\x01" + bytes((result,))
                + b"\xa3\x05\xa1\x03\x02\x01" + bytes((diag,)))
        if self.associated:
            c, m = self.conformance, self.max_pdu
            ir = b"\x08\x00\x06\x5f\x1f\x04\x00" + bytes(
                ((c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF, m >> 8, m & 0xFF)) + b"\x00\x07"
        else:
            ir = b"\x0e\x01\x06\x00"  # ConfirmedServiceError: initiate error, other
        body += b"\xbe" + bytes((len(ir) + 2, 0x04, len(ir))) + ir
        return bytes((dlms.AARE, len(body))) + body


def _find_password(aarq):
    """The calling-authentication-value (tag AC, charstring 80) of an AARQ, or None."""
    pos, end = 2, len(aarq)
    while pos + 2 <= end:
        tag, n = aarq[pos], aarq[pos + 1]
        if tag == 0xAC and n >= 2:
            return bytes(aarq[pos + 4:pos + 4 + aarq[pos + 3]])
        pos += 2 + n
    return None
