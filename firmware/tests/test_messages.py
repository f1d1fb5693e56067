from firmware.protocol import cbor, messages as msg
from firmware.tests.check import eq, raises

T = 1795737600


def reading_fields():
    return {"iv": 900, "u": "Wh", "cum": 123456,
            "r": [[T, 250, 230100, 1200, 0, 900], [T + 900, 0, None, None, 4, 1800]]}


def test_topics_follow_the_documented_layout():
    eq(msg.topic("UJ-1", "reading"), "urja/v1/UJ-1/up/reading")
    eq(msg.command_topic("UJ-1"), "urja/v1/UJ-1/cmd")
    eq(msg.online_topic("UJ-1"), "urja/v1/UJ-1/online")
    eq(msg.parse_topic("urja/v1/UJ-1/up/event"), ("UJ-1", "event"))


def test_bad_topics_are_rejected_with_a_reason():
    for bad in ("urja/v2/UJ-1/up/event", "urja/v1/UJ-1/down/event", "urja/v1//up/event",
                "urja/v1/UJ-1/up/selfie", "urja/v1/UJ-1/up"):
        raises(msg.MessageError, msg.parse_topic, bad)


def test_reading_round_trips_through_cbor():
    body = msg.encode_uplink("reading", "UJ-1", 42, T, reading_fields())
    got = msg.decode_uplink("urja/v1/UJ-1/up/reading", body)
    eq(got["s"], 42)
    eq(got["r"], reading_fields()["r"])
    eq(got["kind"], "reading")


def test_envelope_fields_are_pinned_bytes():
    # {"m": "A", "s": 1, "t": 2, "v": 1, "up": 3}: keys sorted bytewise (RFC 8949 4.2.1:
    # shorter encodings first): a5 | 61 6d 61 41 | 61 73 01 | 61 74 02 | 61 76 01 | 62 75 70 03
    body = msg.encode_uplink("heartbeat", "A", 1, 2, {"up": 3})
    eq(body, bytes.fromhex("a5616d614161730161740261760162757003"))


def test_every_kind_validates_its_required_fields():
    samples = {
        "event": {"e": [[1, T, 14, 30]]},
        "status": {"bal": -500, "cr": 0, "em": 500, "dt": 0, "st": "EMERGENCY", "rl": True,
                   "ld": "NORMAL", "tv": 1, "tt": 10000, "tc": 10500},
        "heartbeat": {"up": 3600, "hf": 40000, "rssi": None, "ob": 3, "dr": 0, "fw": "0.1.0"},
        "ack": {"id": "T-1", "c": 1, "r": 0, "rn": "OK", "d": "credited"},
        "snapshot": {"k": "daily", "key": 20261127, "at": T, "cum": 5000, "bal": 100, "md": None},
    }
    for kind in samples:
        body = msg.encode_uplink(kind, "UJ-1", 1, T, samples[kind])
        eq(msg.decode_uplink(msg.topic("UJ-1", kind), body)["kind"], kind)
        for field in samples[kind]:
            broken = dict(samples[kind])
            broken[field] = "wrong" if not isinstance(broken[field], str) else 5
            raises(msg.MessageError, msg.encode_uplink, kind, "UJ-1", 1, T, broken)


def test_reading_records_must_be_integer_rows_of_six():
    for bad in ([[T, 1, 2, 3, 4]], [[T, 1.5, None, None, 0, 900]], [[T, True, None, None, 0, 900]], [5]):
        f = reading_fields()
        f["r"] = bad
        err = raises(msg.MessageError, msg.encode_uplink, "reading", "UJ-1", 1, T, f)
        assert "reading.r[0]" in str(err)


def test_meter_in_body_must_match_the_topic():
    body = msg.encode_uplink("heartbeat", "UJ-1", 1, T, {"up": 1})
    err = raises(msg.MessageError, msg.decode_uplink, "urja/v1/UJ-2/up/heartbeat", body)
    assert "topic says" in str(err)


def test_garbage_and_wrong_shapes_are_clear_errors():
    raises(msg.MessageError, msg.decode_uplink, "urja/v1/UJ-1/up/heartbeat", b"\xff\x00")
    raises(msg.MessageError, msg.decode_uplink, "urja/v1/UJ-1/up/heartbeat", cbor.encode([1, 2]))
    body = cbor.encode({"v": 2, "m": "UJ-1", "s": 1, "t": 1, "up": 1})
    err = raises(msg.MessageError, msg.decode_uplink, "urja/v1/UJ-1/up/heartbeat", body)
    assert "format" in str(err)


def test_commands_round_trip_and_need_every_field():
    cmd = {"kind": "topup", "meter_id": "UJ-1", "counter": 3, "expires_at": T, "id": "T-3",
           "fields": ["T-3", 10000], "mac": "ab" * 32}
    eq(msg.decode_command(msg.encode_command(cmd))["fields"], ["T-3", 10000])
    short = dict(cmd)
    del short["mac"]
    raises(msg.MessageError, msg.encode_command, short)
    raises(msg.MessageError, msg.decode_command, cbor.encode(short))
    raises(msg.MessageError, msg.decode_command, b"\x1c")


def test_schema_tuples_for_the_head_end_are_the_checks_the_meter_runs():
    # headend.fastdecode compares these exact tuples before it trusts its fast path
    eq(msg._ENVELOPE, ("v", "int", True, "m", "str", True, "s", "int", True, "t", "int", True))
    eq(msg.SCHEMA["reading"], ("iv", "int", True, "u", "str", True, "cum", "int", True,
                               "r", "list", True))
    eq(sorted(msg.SCHEMA), sorted(msg.UPLINK_KINDS))
    cf = msg.COMMAND_FIELDS
    eq([cf[i] for i in range(0, len(cf), 3)],
       ["kind", "meter_id", "counter", "expires_at", "id", "fields", "mac"])
    for kind in msg.UPLINK_KINDS:
        fields = msg.SCHEMA[kind]
        body = {"v": 1, "m": "UJ-1", "s": 1, "t": T}
        for i in range(0, len(fields), 3):
            if fields[i + 2]:  # required: missing is refused, then add it
                raises(msg.MessageError, msg.validate, kind, dict(body))
                body[fields[i]] = {"int": 1, "int?": None, "str": "x", "bool": True,
                                   "list": []}[fields[i + 1]]
        if kind == "snapshot":
            body["k"] = "daily"
        msg.validate(kind, body)


def test_message_error_is_one_value_error_class():
    assert issubclass(msg.MessageError, ValueError)
    assert msg.MessageError is msg.MessageError
    err = raises(ValueError, msg.decode_command, b"\x1c")
    assert isinstance(err, msg.MessageError)
