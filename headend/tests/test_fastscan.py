"""The C scanner (headend/_fastingest.c) only accepts, and accepts exactly what the reference does.

Differential, frame by frame: the same bytes go through
``mqtt_fast.FrameReader`` + the reference classification
(``messages.decode_uplink``, the registry's unit) and through
``fastscan.ReadingReader``.  Flattened in arrival order, both must give the
same verdicts (body with its types, or the reference's rejection) and the
same packet ids to acknowledge, for any split of the bytes.  A body the
scanner took must be one the reference accepts, decoded to the same value.
``claim_arrays`` must build the same PostgreSQL literals as the Python
``store._claim_params``, or decline.

These tests need the extension: ``./dev setup`` (pip install -e .) builds it,
and a missing build fails here instead of silently testing nothing.
"""
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from firmware.protocol import messages
from headend import fastscan, mqtt_fast, store
from headend.tests.test_fastdecode import typed

T0 = 1795737600
UNITS = {"UJ-1": "Wh", "UJ-2": "Wh", "W-9": "L", 'Q"1': "Wh", "मीटर-1": "Wh"}
SETTINGS = dict(max_examples=800, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

def test_extension_is_built():
    assert fastscan.available(), (
        "headend._fastingest is not built: run ./dev setup (or pip install -e .) with a C "
        "compiler; the ingest would fall back to the slower Python path")


def publish(topic, payload, qos=1, packet_id=7, props=b"\x00", head_flags=0):
    t = topic.encode() if isinstance(topic, str) else topic
    body = struct.pack("!H", len(t)) + t
    if qos:
        body += struct.pack("!H", packet_id)
    body += props + payload
    return bytes([0x30 | (qos << 1) | head_flags]) + mqtt_fast.varint(len(body)) + body


def reading(meter="UJ-1", s=1, u="Wh", records=None, **extra):
    fields = {"iv": 900, "u": u, "cum": 1000 + s,
              "r": records if records is not None else [[T0 + 900 * s, 40, 230000, 1500, 0, None]]}
    fields.update(extra)
    return messages.encode_uplink("reading", meter, s, T0 + 900 * s, fields)


def reference_verdicts(chunks, units=UNITS):
    """[(verdict, packet id or None)] through FrameReader and the reference decoder."""
    reader, out = mqtt_fast.FrameReader(), []
    for chunk in chunks:
        pubs, _others = reader.feed(chunk)
        for p in pubs:
            out.append((classify(p.topic, p.payload, units), p.packet_id if p.qos else None))
    return out


def classify(topic, payload, units):
    try:
        body = messages.decode_uplink(topic, payload)
    except messages.MessageError as err:
        return ("dead", str(err))
    unit = units.get(body["m"])
    if unit is None:
        return ("dead", "not registered")
    if body["kind"] == "reading" and body["u"] != unit:
        return ("dead", "unit")
    return ("ok", typed(body))


def fast_verdicts(chunks, units=UNITS):
    """The same through ReadingReader: (verdicts, how many bodies the scanner took)."""
    reader, out, taken = fastscan.ReadingReader(lambda: units), [], 0
    for chunk in chunks:
        pubs, _others = reader.feed(chunk)
        for p in pubs:
            if type(p) is fastscan.Readings:
                qos1 = iter(p.ids)
                taken += len(p.bodies)
                # every body the scanner took is a QoS 1 frame in these tests
                out.extend((("ok", typed(b)), next(qos1)) for b in p.bodies)
                assert next(qos1, None) is None
            else:
                out.append((classify(p.topic, p.payload, units),
                            p.packet_id if p.qos else None))
    return out, taken


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def same(data, cuts=(), units=UNITS):
    chunks = split(data, cuts)
    ref = reference_verdicts(chunks, units)
    fast, taken = fast_verdicts(chunks, units)
    assert fast == ref
    return ref, taken


# --- what the scanner takes ------------------------------------------------------------------

def test_plain_readings_are_taken_in_c_with_their_packet_ids():
    data = b"".join(publish(messages.topic("UJ-1", "reading"), reading(s=s), packet_id=100 + s)
                    for s in range(5))
    reader = fastscan.ReadingReader(lambda: UNITS)
    pubs, others = reader.feed(data)
    assert others == [] and len(pubs) == 1 and type(pubs[0]) is fastscan.Readings
    assert pubs[0].ids == [100, 101, 102, 103, 104]
    assert pubs[0].bodies == [messages.decode_uplink(messages.topic("UJ-1", "reading"),
                                                     reading(s=s)) for s in range(5)]
    assert [typed(b) for b in pubs[0].bodies] == [
        typed(messages.decode_uplink(messages.topic("UJ-1", "reading"), reading(s=s)))
        for s in range(5)]


def test_taken_readings_byte_by_byte_and_in_any_split():
    data = b"".join(publish(messages.topic(m, "reading"), reading(m, s, u), packet_id=s + 1)
                    for s, (m, u) in enumerate([("UJ-1", "Wh"), ("W-9", "L"), ("UJ-2", "Wh")]))
    ref, taken = same(data, cuts=range(len(data)))  # one byte at a time
    assert taken == 3 and all(v[0] == "ok" for v, _ in ref)
    for cut in range(len(data)):
        assert same(data, cuts=[cut])[1] == 3


def test_qos0_reading_is_taken_without_a_packet_id():
    reader = fastscan.ReadingReader(lambda: UNITS)
    pubs, _ = reader.feed(publish(messages.topic("UJ-1", "reading"), reading(), qos=0))
    assert type(pubs[0]) is fastscan.Readings and len(pubs[0].bodies) == 1 and pubs[0].ids == []


def test_non_ascii_meter_extra_keys_and_several_records_are_taken():
    extra = {"bt": 123456789, "note": "नमस्ते", "x": [1, None, True, False, "a", [2]]}
    payload = reading("मीटर-1", 3, **extra)
    several = reading(records=[[T0, 1, 2, 3, 4, 5], [T0 + 900, -1, None, 2**64 - 1, -2**64, None]])
    data = (publish(messages.topic("मीटर-1", "reading"), payload)
            + publish(messages.topic("UJ-1", "reading"), several))
    ref, taken = same(data)
    assert taken == 2 and [v[0] for v, _ in ref] == ["ok", "ok"]


# --- what it leaves to the reference (and the verdicts still match) ---------------------------

LEFT = {
    "heartbeat": (messages.topic("UJ-1", "heartbeat"),
                  messages.encode_uplink("heartbeat", "UJ-1", 9, T0, {"up": 60})),
    "unknown meter": (messages.topic("UJ-404", "reading"), reading("UJ-404")),
    "other unit": (messages.topic("UJ-1", "reading"), reading(u="L")),
    "topic meter differs": (messages.topic("UJ-2", "reading"), reading("UJ-1")),
    "float": (messages.topic("UJ-1", "reading"),
              cbor2.dumps({"v": 1, "m": "UJ-1", "s": 1, "t": T0, "iv": 900, "u": "Wh",
                           "cum": 1.5, "r": []})),
    "bool for int": (messages.topic("UJ-1", "reading"),
                     cbor2.dumps({"v": 1, "m": "UJ-1", "s": True, "t": T0, "iv": 900, "u": "Wh",
                                  "cum": 1, "r": []})),
    "negative s": (messages.topic("UJ-1", "reading"),
                   cbor2.dumps({"v": 1, "m": "UJ-1", "s": -1, "t": T0, "iv": 900, "u": "Wh",
                                "cum": 1, "r": []})),
    "format 2": (messages.topic("UJ-1", "reading"),
                 cbor2.dumps({"v": 2, "m": "UJ-1", "s": 1, "t": T0, "iv": 900, "u": "Wh",
                              "cum": 1, "r": []})),
    "missing cum": (messages.topic("UJ-1", "reading"),
                    cbor2.dumps({"v": 1, "m": "UJ-1", "s": 1, "t": T0, "iv": 900, "u": "Wh",
                                 "r": []})),
    "record of 5": (messages.topic("UJ-1", "reading"),
                    cbor2.dumps({"v": 1, "m": "UJ-1", "s": 1, "t": T0, "iv": 900, "u": "Wh",
                                 "cum": 1, "r": [[1, 2, 3, 4, 5]]})),
    "bytes value": (messages.topic("UJ-1", "reading"),
                    cbor2.dumps({"v": 1, "m": "UJ-1", "s": 1, "t": T0, "iv": 900, "u": "Wh",
                                 "cum": 1, "r": [], "b": b"\x00"})),
    "non-shortest int": (messages.topic("UJ-1", "reading"),
                         reading().replace(b"\x61s\x01", b"\x61s\x18\x01")),
    "trailing byte": (messages.topic("UJ-1", "reading"), reading() + b"\x00"),
    "duplicate key": (messages.topic("UJ-1", "reading"),
                      b"\xa9" + reading()[1:] + b"\x61s\x02"),
    "truncated": (messages.topic("UJ-1", "reading"), reading()[:-1]),
    "bad utf-8 meter": (b"urja/v1/\xed\xa0\x80/up/reading", reading()),
    "dropped counter": ("$SYS/broker/publish/messages/dropped", b"17"),
    "too big": (messages.topic("UJ-1", "reading"), reading(pad="x" * 1100)),
    "slash in meter": (messages.topic("UJ/1", "reading"), reading("UJ/1")),
}


@pytest.mark.parametrize("case", sorted(LEFT))
def test_left_to_the_reference_with_the_same_verdict(case):
    topic, payload = LEFT[case]
    good = publish(messages.topic("UJ-2", "reading"), reading("UJ-2", 5), packet_id=1)
    frame = publish(topic, payload, packet_id=2)
    data = good + frame + good
    if case == "bad utf-8 meter":  # the reference refuses the connection's bytes outright
        with pytest.raises(UnicodeDecodeError):
            mqtt_fast.FrameReader().feed(data)
        with pytest.raises(UnicodeDecodeError):
            fastscan.ReadingReader(lambda: UNITS).feed(data)
        return
    ref, taken = same(data)
    assert taken == 2  # the good frames around it, not the odd one
    assert len(ref) == 3


def test_control_packets_between_readings_keep_their_order():
    good = publish(messages.topic("UJ-1", "reading"), reading(), packet_id=1)
    data = good + b"\xd0\x00" + good + b"\x90\x04\x00\x01\x00\x01" + good
    pubs, others = fastscan.ReadingReader(lambda: UNITS).feed(data)
    assert [type(p).__name__ for p in pubs] == ["Readings", "Readings", "Readings"]
    assert others == [(13, 0, b""), (9, 0, b"\x00\x01\x00\x01")]
    assert others == mqtt_fast.FrameReader().feed(data)[1]


MALFORMED = {
    "varint of 5 bytes": b"\x30\xff\xff\xff\xff\x01",
    "topic past the frame": b"\x32\x03\x00\x09ab",
    "packet id past the frame": b"\x32\x05\x00\x03a/b",
    "properties past the frame": b"\x32\x08\x00\x03a/b\x00\x01\x05",
    "qos 3": b"\x36\x07\x00\x03a/b\x00\x01",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_the_same_error_in_both_readers(case):
    good = publish(messages.topic("UJ-1", "reading"), reading(), packet_id=1)
    data = good + MALFORMED[case] + good
    errors = []
    for reader in (mqtt_fast.FrameReader(), fastscan.ReadingReader(lambda: UNITS)):
        with pytest.raises(mqtt_fast.MqttError) as err:
            reader.feed(data)
        errors.append(str(err.value))
    assert errors[0] == errors[1]


def test_registry_reload_is_seen_on_the_next_read():
    registry = {"units": {}}
    reader = fastscan.ReadingReader(lambda: registry["units"])
    frame = publish(messages.topic("UJ-1", "reading"), reading())
    pubs, _ = reader.feed(frame)
    assert type(pubs[0]) is mqtt_fast.Publish  # unknown meter: the worker's classify decides
    registry["units"] = {"UJ-1": "Wh"}
    pubs, _ = reader.feed(frame)
    assert type(pubs[0]) is fastscan.Readings


# --- hypothesis: valid readings, their mutations, random frames, any split -------------------

opt_int = st.one_of(st.none(), st.integers(min_value=-2**64, max_value=2**64 - 1))
records = st.lists(st.lists(opt_int, min_size=6, max_size=6), max_size=3)
extras = st.dictionaries(st.text(max_size=4), st.one_of(
    st.integers(min_value=-2**64, max_value=2**64 - 1), st.text(max_size=5), st.none(),
    st.booleans(), st.lists(st.integers(min_value=-5, max_value=5), max_size=3)), max_size=2)


@st.composite
def reading_frames(draw):
    meter = draw(st.sampled_from(sorted(UNITS) + ["UJ-404"]))
    body = {"v": 1, "m": meter, "s": draw(st.integers(0, 2**64 - 1)),
            "t": draw(st.integers(0, 2**64 - 1)), "iv": draw(st.integers(-2**64, 2**64 - 1)),
            "u": draw(st.sampled_from(["Wh", "L"])), "cum": draw(st.integers(-2**64, 2**64 - 1)),
            "r": draw(records)}
    for k, v in draw(extras).items():
        body.setdefault(k, v)
    keys = draw(st.permutations(sorted(body)))
    payload = cbor2.dumps({k: body[k] for k in keys})
    flips = draw(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=2))
    if flips and draw(st.booleans()):
        payload = bytearray(payload)
        for at, byte in flips:
            payload[at % len(payload)] = byte
        payload = bytes(payload)
    topic_meter = meter if draw(st.integers(0, 9)) else draw(st.sampled_from(sorted(UNITS)))
    return publish(messages.topic(topic_meter, "reading"), payload,
                   qos=1, packet_id=draw(st.integers(1, 65535)))


@settings(**SETTINGS)
@given(st.lists(reading_frames(), min_size=1, max_size=6), st.lists(st.integers(0, 4000),
                                                                     max_size=4))
def test_hypothesis_readings_and_mutations_match_the_reference(frames, cuts):
    data = b"".join(frames)
    try:
        reference_verdicts([data])
    except (mqtt_fast.MqttError, UnicodeDecodeError):
        assume(False)  # a mutation broke the frame layer: covered by the malformed tests
    same(data, cuts)


@settings(**SETTINGS)
@given(st.binary(max_size=120), st.lists(st.integers(0, 200), max_size=3))
def test_hypothesis_random_payloads_match_the_reference(payload, cuts):
    same(publish(messages.topic("UJ-1", "reading"), payload), cuts)


# --- claim_arrays: the statement's arrays in C, in PostgreSQL's binary format ---------------

NAMES = ("m", "s", "k", "t", "iv", "cum", "rst", "re", "rmv", "rma", "rf", "rsp")
SQL_TYPES = dict.fromkeys(NAMES, "bigint") | {"m": "text", "k": "text", "iv": "integer",
                                               "rf": "integer", "rsp": "integer"}


def bodies_of(payloads):
    return [messages.decode_uplink(messages.topic(m, "reading"), p) for m, p in payloads]


def expected_columns(bodies):
    """What each column holds for a batch of one-record readings (store._claim_params' rules)."""
    rows = [b["r"][0] for b in bodies]
    return {"m": [b["m"] for b in bodies], "s": [b["s"] for b in bodies],
            "k": ["reading"] * len(bodies), "t": [b["t"] for b in bodies],
            "iv": [b["iv"] for b in bodies], "cum": [b["cum"] for b in bodies],
            "rst": [r[0] for r in rows], "re": [r[1] for r in rows], "rmv": [r[2] for r in rows],
            "rma": [r[3] for r in rows], "rf": [r[4] or 0 for r in rows],
            "rsp": [b["iv"] if r[5] is None else r[5] for b, r in zip(bodies, rows)]}


def decode_binary_array(data, name):
    """PostgreSQL's binary array format (array_send), read independently of the C writer."""
    ndim, has_nulls, oid = struct.unpack_from("!iiI", data)
    want_oid = {"text": 25, "bigint": 20, "integer": 23}[SQL_TYPES[name]]
    assert oid == want_oid and has_nulls in (0, 1)
    if ndim == 0:
        assert len(data) == 12
        return []
    assert ndim == 1
    n, lower = struct.unpack_from("!iI", data, 12)
    assert lower == 1
    pos, out = 20, []
    for _ in range(n):
        (length,) = struct.unpack_from("!i", data, pos)
        pos += 4
        if length == -1:
            out.append(None)
            continue
        raw = data[pos:pos + length]
        pos += length
        if SQL_TYPES[name] == "text":
            out.append(raw.decode("utf-8"))
        else:
            assert length == (4 if SQL_TYPES[name] == "integer" else 8)
            out.append(int.from_bytes(raw, "big", signed=True))
    assert pos == len(data) and has_nulls == (None in out)
    return out


def check_claim_arrays(bodies):
    arrays = store._c_claim_arrays(bodies)
    assert arrays is not None
    want = expected_columns(bodies)
    assert {n: decode_binary_array(a, n) for n, a in zip(NAMES, arrays)} == want
    # and the Python path's text literals say the same
    text = store._claim_params(bodies, 0)
    assert all(text[n] == store._text_array(want[n], "text" if SQL_TYPES[n] == "text" else "x")
               for n in NAMES)
    return arrays


SAMPLE = [("UJ-1", reading(s=1)), ("मीटर-1", reading("मीटर-1", 2)),
          ('Q"1', reading('Q"1', 3, records=[[T0, -5, None, -2**63, None, 60]])),
          ("UJ-2", reading("UJ-2", 4, records=[[None, 2**63 - 1, 0, 0, 7, None]]))]


def test_claim_arrays_hold_the_python_paths_values():
    check_claim_arrays(bodies_of(SAMPLE))
    check_claim_arrays([])


def test_claim_arrays_read_back_by_postgresql_as_the_text_literals(engine):
    if engine.dialect.name != "postgresql":
        return  # the SQLite half of the fixture has no arrays
    bodies = bodies_of(SAMPLE)
    arrays = check_claim_arrays(bodies)
    text = store._claim_params(bodies, 0)
    wrap = {"text": store._PgText, "bigint": store._PgInt8, "integer": store._PgInt4}
    raw = engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        for name, data in zip(NAMES, arrays):
            sql = "SELECT %%s::%s[]" % SQL_TYPES[name]
            got = cur.execute(sql, (wrap[SQL_TYPES[name]](data),)).fetchone()[0]
            assert got == cur.execute(sql, (text[name],)).fetchone()[0], name
    finally:
        raw.close()


@pytest.mark.parametrize("why,bodies", [
    ("two records", bodies_of([("UJ-1", reading(records=[[1, 2, 3, 4, 5, 6]] * 2))])),
    ("beyond bigint", bodies_of([("UJ-1", reading(records=[[2**63, 1, 1, 1, 1, 1]]))])),
    ("beyond integer", bodies_of([("UJ-1", reading(records=[[1, 1, 1, 1, 2**31, 1]]))])),
    ("not a reading", [messages.decode_uplink(messages.topic("UJ-1", "heartbeat"),
                       messages.encode_uplink("heartbeat", "UJ-1", 1, T0, {"up": 1}))]),
])
def test_claim_arrays_declines_what_python_must_build(why, bodies):
    assert store._c_claim_arrays(bodies) is None


@settings(**SETTINGS)
@given(st.lists(st.tuples(st.sampled_from(sorted(UNITS)), st.integers(0, 2**63 - 1),
                          st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
                                   min_size=4, max_size=4),
                          st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)),
                          st.one_of(st.none(), st.integers(-2**31, 2**31 - 1))), max_size=8))
def test_hypothesis_claim_arrays(rows):
    bodies = bodies_of([(m, messages.encode_uplink("reading", m, s, T0, {
        "iv": 900, "u": UNITS[m], "cum": s, "r": [row + [flags, span]]}))
        for m, s, row, flags, span in rows])
    check_claim_arrays(bodies)


def test_bodies_are_left_out_of_the_cyclic_gc():
    import gc
    extra = reading(x=[1, [2, None]])
    pubs, _ = fastscan.ReadingReader(lambda: UNITS).feed(
        publish(messages.topic("UJ-1", "reading"), extra))
    body = pubs[0].bodies[0]
    assert not any(gc.is_tracked(o) for o in (body, body["r"], body["r"][0], body["x"],
                                              body["x"][1]))
    body["later"] = [body]  # a container stored later: the dict is watched again
    assert gc.is_tracked(body)
