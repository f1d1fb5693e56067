"""headend.fastdecode accepts and rejects exactly what messages.decode_uplink does.

Differential: every payload goes through both decoders; the outcomes (value
with its types, or exception type and text) must be identical.  Hostile
CBOR vectors are from RFC 8949 Appendix A (examples) and section 3
(encoding rules), written out by hand below; hypothesis adds valid
messages of every kind, byte mutations of them, and random CBOR.
"""
import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.protocol import cbor as ref_cbor
from firmware.protocol import messages
from headend import fastdecode

T0 = 1795737600  # 2026-11-27 00:00 UTC
SETTINGS = dict(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def typed(value):
    """A comparable picture of a value that keeps types (1 != True, Tag != int, dict order ignored)."""
    if isinstance(value, dict):
        return ("dict", sorted(((typed(k), typed(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, ref_cbor.Tag):
        return ("tag", value.tag, typed(value.value))
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    return (type(value).__name__, value)


def outcome(decode, topic, payload):
    try:
        return ("ok", typed(decode(topic, payload)))
    except Exception as err:  # the verdict, whatever it is, must match
        return ("error", type(err).__name__, str(err))


def same_verdict(topic, payload):
    ref = outcome(messages.decode_uplink, topic, payload)
    fast = outcome(fastdecode.decode_uplink, topic, payload)
    assert fast == ref, (topic, payload.hex(), ref, fast)
    return ref


# --- valid messages of every kind ----------------------------------------------

ints = st.integers(min_value=0, max_value=2**40)
opt_int = st.one_of(st.none(), st.integers(min_value=-2**63, max_value=2**63))
meter_ids = st.text(alphabet="ABCXYZ-0123456789", min_size=1, max_size=12)

FIELDS = {
    "reading": st.fixed_dictionaries({
        "iv": st.sampled_from([900, 1800, 3600]), "u": st.sampled_from(["Wh", "L"]), "cum": ints,
        "r": st.lists(st.lists(opt_int, min_size=6, max_size=6), max_size=4)}),
    "event": st.fixed_dictionaries({"e": st.lists(st.lists(opt_int, min_size=4, max_size=4),
                                                  max_size=5)},
                                   optional={"lost": ints}),
    "status": st.fixed_dictionaries({
        "bal": st.integers(-10**9, 10**9), "cr": ints, "em": ints, "dt": ints,
        "st": st.sampled_from(["OK", "LOW", "DISCONNECTED"]), "rl": st.booleans(),
        "ld": st.sampled_from(["off", "on"]), "tv": ints, "tt": ints, "tc": ints}),
    "heartbeat": st.fixed_dictionaries({"up": ints}, optional={
        "hf": ints, "rssi": opt_int, "ob": ints, "dr": ints, "fw": st.text(max_size=8),
        "jw": ints}),
    "ack": st.fixed_dictionaries({"id": st.text(max_size=20), "c": ints, "r": ints,
                                  "rn": st.text(max_size=10)}, optional={"d": st.text()}),
    "snapshot": st.fixed_dictionaries({
        "k": st.sampled_from(["daily", "monthly"]), "key": ints, "at": ints, "cum": ints,
        "bal": st.integers(-10**9, 10**9)}, optional={"md": opt_int, "f": ints}),
}


@st.composite
def valid_uplinks(draw):
    kind = draw(st.sampled_from(messages.UPLINK_KINDS))
    meter = draw(meter_ids)
    fields = draw(FIELDS[kind])
    if draw(st.booleans()):  # unknown fields are allowed (forward compatible)
        fields["bt"] = draw(st.integers(0, 2**62))
    payload = messages.encode_uplink(kind, meter, draw(ints), draw(ints), fields)
    return messages.topic(meter, kind), payload


@given(valid_uplinks())
@settings(**SETTINGS)
def test_valid_uplinks_of_every_kind_decode_identically(case):
    topic, payload = case
    assert same_verdict(topic, payload)[0] == "ok"


@given(valid_uplinks(), st.data())
@settings(**SETTINGS)
def test_mutated_uplinks_get_the_same_verdict(case, data):
    topic, payload = case
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "append", "delete"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "append":
            buf += data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and buf:
            del buf[i]
    same_verdict(topic, bytes(buf))


@given(st.binary(max_size=64), st.sampled_from(messages.UPLINK_KINDS))
@settings(**SETTINGS)
def test_garbage_bytes_get_the_same_verdict(payload, kind):
    same_verdict(messages.topic("UJ-1", kind), payload)


# random CBOR values, including everything the reference refuses or builds differently
cbor_leaves = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.text(max_size=6), st.binary(max_size=6),
    st.booleans(), st.none(), st.floats(allow_nan=False, width=16), st.floats(),
    st.just(cbor2.undefined), st.sampled_from([cbor2.CBORSimpleValue(16),
                                               cbor2.CBORSimpleValue(255)]))
cbor_values = st.recursive(
    cbor_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-3, 3), st.binary(max_size=2)),
                        inner, max_size=4),
        st.builds(cbor2.CBORTag, st.sampled_from([1, 2, 3, 24, 28, 29, 37, 100, 4711]), inner)),
    max_leaves=12)


@given(st.data())
@settings(**SETTINGS)
def test_random_cbor_bodies_get_the_same_verdict(data):
    kind = data.draw(st.sampled_from(messages.UPLINK_KINDS))
    base = {"v": 1, "m": "UJ-1", "s": data.draw(ints), "t": T0}
    base.update(data.draw(FIELDS[kind]))
    extra = data.draw(st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-2, 2)),
                                      cbor_values, max_size=3))
    for key in data.draw(st.lists(st.sampled_from(sorted(base)), max_size=2)):
        base[key] = data.draw(cbor_values)  # break a known field
    base.update(extra)
    opts = data.draw(st.sampled_from([{}, {"canonical": True}, {"indefinite_containers": True},
                                      {"value_sharing": True}, {"string_referencing": True}]))
    try:
        payload = cbor2.dumps(base, **opts)
    except Exception:  # cbor2 cannot encode this value (e.g. an undefined key)
        return
    same_verdict(messages.topic("UJ-1", kind), payload)


# --- hand-written hostile vectors (RFC 8949) -----------------------------------

HB = "heartbeat"
HB_TOPIC = "urja/v1/UJ-1/up/heartbeat"


def heartbeat(pairs_hex):
    """A heartbeat map: v=1, m="UJ-1", s=7, t=T0, up=60, then extra pairs (hex)."""
    # a5/a6: map of 5/6 pairs; 6176 01 = "v":1; 616d 64554a2d31 = "m":"UJ-1";
    # 6173 07 = "s":7; 6174 1a6b084c00 = "t":1795737600 (0x6B08C800); 627570 183c = "up":60
    n = 5 + (1 if pairs_hex else 0)
    return bytes.fromhex("a%d" % n + "6176016" + "16d64554a2d31" + "617307" + "61741a6b08c800"
                         + "627570183c" + pairs_hex)


def fast_path_declines(topic, payload):
    """True when fastdecode leaves the verdict to the reference (None or an exception)."""
    try:
        return fastdecode._fast(topic, payload) is None
    except Exception:
        return True


def test_hand_built_heartbeat_is_taken_by_the_fast_path():
    payload = heartbeat("")
    assert 1795737600 == 0x6B08C800
    assert fastdecode._fast(HB_TOPIC, payload) is not None
    assert same_verdict(HB_TOPIC, payload) == outcome(
        lambda t, p: {"v": 1, "m": "UJ-1", "s": 7, "t": T0, "up": 60, "kind": HB},
        HB_TOPIC, payload)


def test_firmware_encoded_reading_is_taken_by_the_fast_path():
    payload = messages.encode_uplink("reading", "UJ-1", 3, T0, {
        "iv": 900, "u": "Wh", "cum": 10, "r": [[T0, 10, 230000, None, 0, 900]]})
    assert fastdecode._fast(messages.topic("UJ-1", "reading"), payload) is not None


HOSTILE = {
    # "x": bignum 2**64 (RFC 8949 A: 0xc249010000000000000000)
    "bignum_2_64_extra": "6178c249010000000000000000",
    # "x": tag 2 holding h'01' = the integer 1 to cbor2, Tag(2, b'\x01') to the reference
    "bignum_small_extra": "6178c24101",
    # "x": tag 28 (shareable) around 1: cbor2 yields 1
    "shared_value_extra": "6178d81c01",
    # "x": indefinite array [_ 1, [2, 3]] (RFC 8949 A: 0x9f018202039f0405ffff, shortened)
    "indefinite_extra": "61789f01820203ff",
    # "x": undefined (0xf7) and simple(16) (0xf0)
    "undefined_extra": "6178f7",
    "simple16_extra": "6178f0",
    # "x": simple value 16 in the two-byte form (0xf810): not well-formed (RFC 8949 3.3)
    "two_byte_simple_extra": "6178f810",
    # "x": half float 1.5 (RFC 8949 A: 0xf93e00): both decode it; the fast path defers
    "half_float_extra": "6178f93e00",
    # h'01': 1 -- a byte-string key
    "bytes_key_extra": "410101",
    # "x": "\xff" -- invalid UTF-8
    "bad_utf8_extra": "617861ff",
    # "x": 1 written in a non-shortest head 0x1801 (accepted by both)
    "long_head_extra": "61781801",
}


def test_hostile_extra_fields_get_the_same_verdict_and_skip_the_fast_path():
    for name, pair in HOSTILE.items():
        payload = heartbeat(pair)
        same_verdict(HB_TOPIC, payload)
        assert fast_path_declines(HB_TOPIC, payload), name


def test_duplicate_key_is_rejected_by_both():
    # the base map already has "up": 60; a 6th pair "up": 61 (627570 183d) duplicates it
    ref = same_verdict(HB_TOPIC, heartbeat("627570183d"))
    assert ref[0] == "error" and "duplicate" in ref[2]


def test_trailing_byte_is_rejected_by_both():
    ref = same_verdict(HB_TOPIC, heartbeat("") + b"\x00")
    assert ref[0] == "error" and "trailing" in ref[2]


def test_sequence_as_bignum_is_rejected_by_both():
    # "s": tag 2 h'07' instead of the integer 7
    payload = heartbeat("").replace(bytes.fromhex("617307"), bytes.fromhex("6173c24107"))
    ref = same_verdict(HB_TOPIC, payload)
    assert ref[0] == "error" and "heartbeat.s" in ref[2]


def test_nesting_seventeen_deep_is_rejected_by_both():
    # "x": 17 nested one-element arrays around 0: 0x81 * 17 + 0x00; the reference allows 16
    ref = same_verdict(HB_TOPIC, heartbeat("6178" + "81" * 17 + "00"))
    assert ref[0] == "error" and "nesting" in ref[2]


def test_more_than_1024_items_is_rejected_by_both():
    # "x": array of 1100 zeros: head 0x99 044c (1100), then 1100 x 0x00 -> 1106 items in all
    ref = same_verdict(HB_TOPIC, heartbeat("6178" + "99044c" + "00" * 1100))
    assert ref[0] == "error" and "1024" in ref[2]


def test_topic_and_body_meter_mismatch_is_rejected_by_both():
    ref = same_verdict("urja/v1/UJ-2/up/heartbeat", heartbeat(""))
    assert ref[0] == "error" and ref[2].startswith("m:")


def test_unknown_kind_topic_is_rejected_by_both():
    ref = same_verdict("urja/v1/UJ-1/up/weather", heartbeat(""))
    assert ref[0] == "error" and ref[2].startswith("topic:")


@given(st.dictionaries(
    st.one_of(st.text(max_size=3), st.integers(-2**65, 2**65), st.binary(max_size=2)),
    st.one_of(cbor_values, st.lists(st.lists(cbor_values, max_size=6), max_size=3),
              st.integers(-2**65, 2**65)), max_size=6))
@settings(**SETTINGS)
def test_the_unrolled_plain_check_agrees_with_the_recursive_one(body):
    assert fastdecode._plain_body(body) == fastdecode._plain(body, 0)


# --- readings skip messages.validate: the one-pass check must agree with it ----------

reading_field_values = st.one_of(
    st.integers(-2**65, 2**65), st.booleans(), st.none(), st.text(max_size=3),
    st.lists(st.lists(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=1),
                                st.binary(max_size=1)), min_size=5, max_size=7), max_size=2))


@given(st.lists(st.tuples(st.sampled_from(["v", "m", "s", "t", "iv", "u", "cum", "r", "bt"]),
                          reading_field_values), max_size=2),
       st.lists(st.sampled_from(["v", "m", "s", "t", "iv", "u", "cum", "r"]), max_size=1))
@settings(**SETTINGS)
def test_reading_fields_of_any_type_get_the_same_verdict(changes, removed):
    # one or two fields changed (or one left out) at a time, so each check is hit alone
    body = {"v": 1, "m": "UJ-1", "s": 3, "t": T0, "iv": 900, "u": "Wh", "cum": 10,
            "r": [[T0, 10, 230000, None, 0, 900]]}
    body.update(changes)
    for key in removed:
        body.pop(key, None)
    same_verdict(messages.topic("UJ-1", "reading"), cbor2.dumps(body))


@given(st.lists(st.lists(st.one_of(st.none(), st.integers(-2**65, 2**65), st.booleans(),
                                   st.text(max_size=1), st.binary(max_size=1)),
                         min_size=5, max_size=7), min_size=1, max_size=3))
@settings(**SETTINGS)
def test_reading_records_of_any_shape_get_the_same_verdict(rows):
    body = {"v": 1, "m": "UJ-1", "s": 3, "t": T0, "iv": 900, "u": "Wh", "cum": 10, "r": rows}
    same_verdict(messages.topic("UJ-1", "reading"), cbor2.dumps(body))


def test_a_valid_reading_is_accepted_without_the_reference_schema_check(monkeypatch):
    def refuse(kind, body):
        raise AssertionError("messages.validate called for a plain valid reading")
    payload = messages.encode_uplink("reading", "UJ-1", 3, T0, {
        "iv": 900, "u": "Wh", "cum": 10, "r": [[T0, 10, 230000, None, 0, 900]]})
    monkeypatch.setattr(messages, "validate", refuse)
    assert fastdecode._READING_FAST
    assert fastdecode.decode_uplink(messages.topic("UJ-1", "reading"), payload)["cum"] == 10
