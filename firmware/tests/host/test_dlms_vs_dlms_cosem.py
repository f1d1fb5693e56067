"""Cross-check our HDLC/DLMS codec against an independent implementation, dlms-cosem.

Both directions: dlms-cosem decodes the frames and APDUs we encode, and our
parser decodes what dlms-cosem encodes.  Hypothesis varies payloads, sequence
numbers, addresses and how the bytes are chunked.
"""
import datetime as dt

from dlms_cosem import dlms_data as dd
from dlms_cosem import enumerations as enums
from dlms_cosem import time as dtime
from dlms_cosem.cosem import selective_access
from dlms_cosem.hdlc import frames as F
from dlms_cosem.hdlc.address import HdlcAddress
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.protocol.xdlms import get as G
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.protocol import dlms, dlms_data, hdlc
from firmware.protocol.dlms_data import DateTime

CLIENT = HdlcAddress(16, None, "client")
SERVER = HdlcAddress(1, 17, "server")
ENERGY = bytes([1, 0, 1, 8, 0, 255])


def _connected_link():
    # dlms-cosem decodes I-frames as if the destination were a one-byte client
    # address, so frames *to* the server are checked with a one-byte server address.
    link = hdlc.HdlcLink(16, 1, params=hdlc.LinkParams(512, 512))
    link.connect()
    server = HdlcAddress(1, None, "server")
    ua = F.UnNumberedAcknowledgmentFrame(CLIENT, server, payload=b"").to_bytes()
    (frame,) = hdlc.FrameParser().feed(ua)
    link.receive(frame)
    return link


# -- frames we encode, dlms-cosem decodes -------------------------------------------------

def test_our_snrm_disc_and_rr_equal_dlms_cosem_frames():
    link = hdlc.HdlcLink(16, 1, 17)
    server, client = HdlcAddress(1, 17, "server"), HdlcAddress(16, None, "client")
    assert link.connect() == F.SetNormalResponseModeFrame(server, client).to_bytes()
    assert link.disconnect() == F.DisconnectFrame(server, client).to_bytes()
    for nr in range(8):
        ours = hdlc.encode_frame(link.server, link.client, hdlc.rr_control(nr))
        assert ours == F.ReceiveReadyFrame(server, client, receive_sequence_number=nr).to_bytes()
        # dlms-cosem parses RR frames in the server -> client direction
        back = hdlc.encode_frame(link.client, link.server, hdlc.rr_control(nr))
        assert F.ReceiveReadyFrame.from_bytes(back).receive_sequence_number == nr


def test_dlms_cosem_decodes_our_aarq_without_security():
    link = _connected_link()
    frame = F.InformationFrame.from_bytes(link.send(dlms.aarq()))
    assert frame.payload[:3] == hdlc.LLC_REQUEST
    req = acse.ApplicationAssociationRequest.from_bytes(frame.payload[3:])
    assert req.authentication is None and req.authentication_value is None
    assert req.ciphered is False
    ir = req.user_information.content
    assert ir.client_max_receive_pdu_size == dlms.DEFAULT_MAX_PDU
    conf = ir.proposed_conformance
    assert conf.get and conf.block_transfer_with_get_or_read and conf.selective_access
    assert not (conf.set or conf.action or conf.general_protection)


def test_dlms_cosem_decodes_our_aarq_with_password():
    apdu = dlms.aarq(b"ABCDEFGH", max_pdu=0x0400)
    req = acse.ApplicationAssociationRequest.from_bytes(apdu)
    assert req.authentication == enums.AuthenticationMechanism.LLS
    assert req.authentication_value == b"ABCDEFGH"
    # and dlms-cosem's own LLS AARQ is byte-identical to ours
    theirs = acse.ApplicationAssociationRequest(
        user_information=acse.UserInformation(content=xdlms.InitiateRequest(
            proposed_conformance=xdlms.Conformance(
                get=True, block_transfer_with_get_or_read=True, selective_access=True),
            client_max_receive_pdu_size=0x0400)),
        authentication=enums.AuthenticationMechanism.LLS,
        authentication_value=b"ABCDEFGH").to_bytes()
    assert apdu == theirs


def test_dlms_cosem_decodes_our_get_requests():
    link = _connected_link()
    frame = F.InformationFrame.from_bytes(link.send(dlms.get_request(3, ENERGY, 2, invoke_id=5)))
    req = G.GetRequestFactory.from_bytes(frame.payload[3:])
    assert isinstance(req, G.GetRequestNormal)
    assert req.cosem_attribute.interface == enums.CosemInterface.REGISTER
    assert req.cosem_attribute.instance.to_bytes() == ENERGY
    assert req.cosem_attribute.attribute == 2
    assert req.invoke_id_and_priority.invoke_id == 5
    assert req.access_selection is None
    nxt = G.GetRequestFactory.from_bytes(dlms.get_request_next(0x01020304, invoke_id=5))
    assert isinstance(nxt, G.GetRequestNext) and nxt.block_number == 0x01020304


def test_dlms_cosem_decodes_our_range_access():
    start = DateTime(2026, 11, 27, None, 0, 0, 0, None, -330, 0)
    end = DateTime(2026, 11, 27, None, 6, 0, 0, None, -330, 0)
    apdu = dlms.get_request(7, bytes([1, 0, 99, 1, 0, 255]), 2, access=dlms.range_access(start, end))
    req = G.GetRequestFactory.from_bytes(apdu)
    rd = req.access_selection
    assert isinstance(rd, selective_access.RangeDescriptor)
    assert rd.restricting_object.cosem_attribute.instance.to_bytes() == bytes([0, 0, 1, 0, 0, 255])
    ist = dt.timezone(dt.timedelta(minutes=330))
    assert rd.from_value == dt.datetime(2026, 11, 27, 0, 0, tzinfo=ist)
    assert rd.to_value == dt.datetime(2026, 11, 27, 6, 0, tzinfo=ist)


def test_dlms_cosem_decodes_our_entry_access_parameters():
    # dlms-cosem has no EntryDescriptor parser; its A-XDR parser reads the parameters
    raw = dlms.entry_access(10, 20, 1, 3)
    assert raw[0] == 2
    (params,) = dd.DlmsDataParser().parse(raw[1:])
    assert params.to_python() == [10, 20, 1, 3]


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(min_size=0, max_size=300), ns=st.integers(0, 7), nr=st.integers(0, 7),
       segmented=st.booleans(), physical=st.sampled_from([None, 17, 100, 1000]))
def test_dlms_cosem_decodes_our_i_frames(payload, ns, nr, segmented, physical):
    server = hdlc.server_address(1, physical)
    ours = hdlc.encode_frame(b"\x21", server, hdlc.i_control(ns, nr), payload, segmented)
    if not payload:
        return  # dlms-cosem always writes an HCS in I-frames; empty I-frames are not used
    theirs = F.InformationFrame.from_bytes(ours)
    assert theirs.payload == payload
    assert (theirs.send_sequence_number, theirs.receive_sequence_number) == (ns, nr)
    assert theirs.segmented == segmented


# -- frames dlms-cosem encodes, we decode -------------------------------------------------------

def _chunks(data, cuts):
    cuts = sorted(set(c % (len(data) + 1) for c in cuts))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(min_size=1, max_size=300), ns=st.integers(0, 7), nr=st.integers(0, 7),
       segmented=st.booleans(), garbage=st.binary(max_size=20),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_we_parse_dlms_cosem_i_frames_in_any_chunks(payload, ns, nr, segmented, garbage, cuts):
    frame = F.InformationFrame(CLIENT, SERVER, payload, segmented=segmented,
                               send_sequence_number=ns, receive_sequence_number=nr).to_bytes()
    stream = garbage + frame + frame
    p = hdlc.FrameParser()
    got = []
    for chunk in _chunks(stream, cuts):
        got += p.feed(chunk)
    assert len(got) == 2
    for f in got:
        assert (f.kind, f.info, (f.control >> 1) & 7, f.control >> 5, f.segmented) == ("I", payload, ns, nr, segmented)
        assert f.dest == b"\x21" and f.src == b"\x02\x23"


def test_we_parse_dlms_cosem_ua_with_and_without_parameters():
    params = bytes.fromhex("818014050201F4060201F4070400000001080400000001")
    for payload, want in ((b"", hdlc.LinkParams()), (params, hdlc.LinkParams(500, 500, 1, 1))):
        (f,) = hdlc.FrameParser().feed(F.UnNumberedAcknowledgmentFrame(CLIENT, SERVER, payload).to_bytes())
        assert f.kind == "UA" and hdlc.decode_params(f.info) == want


def test_we_parse_dlms_cosem_aare():
    for result, diag in ((enums.AssociationResult.ACCEPTED, enums.AcseServiceUserDiagnostics.NULL),
                         (enums.AssociationResult.REJECTED_PERMANENT,
                          enums.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED)):
        aare = acse.ApplicationAssociationResponse(
            result=result, result_source_diagnostics=diag,
            user_information=acse.UserInformation(content=xdlms.InitiateResponse(
                negotiated_conformance=xdlms.Conformance(get=True, block_transfer_with_get_or_read=True),
                server_max_receive_pdu_size=0x01F4)))
        ours = dlms.parse_aare(aare.to_bytes())
        assert ours.result == result.value and ours.diagnostic == diag.value
        assert ours.conformance == dlms.CONF_GET | dlms.CONF_BLOCK_TRANSFER_WITH_GET
        assert ours.max_pdu == 0x01F4


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=0, max_size=600), block=st.integers(1, 0xFFFFFFFF), last=st.booleans())
def test_we_parse_dlms_cosem_get_response_blocks(raw, block, last):
    cls = G.GetResponseLastBlock if last else G.GetResponseWithBlock
    apdu = cls(raw, block_number=block).to_bytes()
    assert dlms.parse_get_response(apdu) == (dlms.RESP_BLOCK, 1, raw, block, last)  # invoke id 1


def test_we_parse_dlms_cosem_get_response_error():
    apdu = G.GetResponseNormalWithError(enums.DataAccessResult.OBJECT_UNAVAILABLE).to_bytes()
    kind, _, error, _, _ = dlms.parse_get_response(apdu)
    assert (kind, error) == (dlms.RESP_ERROR, dlms.DAR_OBJECT_UNAVAILABLE)


# -- A-XDR data -------------------------------------------------------------------------------

_INT_TYPES = [
    (dd.IntegerData, -128, 127), (dd.LongData, -32768, 32767),
    (dd.UnsignedIntegerData, 0, 255), (dd.UnsignedLongData, 0, 65535),
    (dd.DoubleLongData, -2 ** 31, 2 ** 31 - 1), (dd.DoubleLongUnsignedData, 0, 2 ** 32 - 1),
    (dd.Long64Data, -2 ** 63, 2 ** 63 - 1), (dd.UnsignedLong64Data, 0, 2 ** 64 - 1),
    (dd.EnumData, 0, 255),
]


def _their_value(draw_leaf):
    return st.recursive(
        draw_leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=5).map(lambda xs: ("s", xs)),
            st.lists(children, max_size=5).map(lambda xs: ("a", xs))),
        max_leaves=20)


def _leaf():
    ints = st.one_of(*[st.integers(lo, hi).map(lambda v, c=c: ("i", c, v)) for c, lo, hi in _INT_TYPES])
    octets = st.binary(max_size=100).map(lambda b: ("o", b))
    text = st.text(alphabet="ABCabc0123 -", max_size=40).map(lambda t: ("v", t))
    return st.one_of(ints, octets, text)


def _to_theirs(node):
    kind = node[0]
    if kind == "i":
        return node[1](node[2])
    if kind == "o":
        return dd.OctetStringData(node[1])
    if kind == "v":
        return dd.VisibleStringData(node[1])
    items = [_to_theirs(n) for n in node[1]]
    return dd.DataStructure(items) if kind == "s" else dd.DataArray(items)


def _expected(node):
    kind = node[0]
    if kind == "i":
        return node[2]
    if kind in ("o", "v"):
        return node[1]
    items = [_expected(n) for n in node[1]]
    return tuple(items) if kind == "s" else items


@settings(max_examples=200, deadline=None)
@given(tree=_their_value(_leaf()))
def test_we_decode_data_that_dlms_cosem_encodes(tree):
    encoded = _to_theirs(tree).to_bytes()
    assert dlms_data.decode(encoded) == _expected(tree)


def test_dlms_cosem_parses_data_we_encode():
    ours = dlms_data.enc_structure([
        dlms_data.enc_int(dlms_data.DOUBLE_LONG_UNSIGNED, 1234567),
        dlms_data.enc_structure([dlms_data.enc_int(dlms_data.INTEGER, -3),
                                 dlms_data.enc_int(dlms_data.ENUM, 30)]),
        dlms_data.enc_octets(ENERGY), dlms_data.enc_visible("IS15959"),
        dlms_data.enc_array([dlms_data.enc_int(dlms_data.LONG, -2), dlms_data.enc_int(dlms_data.LONG64, -5)]),
    ])
    (theirs,) = dd.DlmsDataParser().parse(ours)
    assert theirs.to_python() == [1234567, [-3, 30], ENERGY, "IS15959", [-2, -5]]


@settings(max_examples=200, deadline=None)
@given(when=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
       offset_min=st.integers(-720, 720))
def test_date_time_agrees_with_dlms_cosem(when, offset_min):
    aware = when.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset_min)))
    raw = dtime.datetime_to_bytes(aware)
    ours = dlms_data.decode_datetime(raw)
    assert ours.to_utc() == int(aware.timestamp())
    if offset_min == 0:
        return  # dlms-cosem reads deviation 0 back as "no time zone"; we keep 0 = UTC
    their_dt, _ = dtime.datetime_from_bytes(dlms_data.encode_datetime(ours))
    assert their_dt == aware
