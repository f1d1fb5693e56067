"""MQTT 3.1.1 codec, PacketReader and Session; dual-runtime.

Every expected frame is assembled by hand from OASIS "MQTT Version 3.1.1"
(29 October 2014); section numbers in the comments.  Cross-source checks:
the remaining-length table (2.2.3 Table 2.4) is also quoted in
micropython-lib issue #165, 321 -> C1 02 is the mqtt.org wiki example
(encode_decode_len), and "A\\U0002A6D4" -> 00 05 41 F0 AA 9B 94 is the
UTF-8 string example of 1.5.3 Figure 1.3.  host/test_mqtt_mosquitto.py
exchanges the same packets with a real Mosquitto.
"""
from firmware.protocol import mqtt
from firmware.protocol.mqtt import MqttError, PacketReader, Publish, Session
from firmware.tests.check import eq, raises

# The broker's control packets decode to tuples led by their packet type (2.2.1)
CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP = 2, 4, 9, 11, 13


def H(s):
    return bytes.fromhex(s.replace(" ", ""))


# 3.1.2: "MQTT" protocol name, level 4
PROTOCOL = "00 04 4D 51 54 54 04"


# ------------------------------------------------------------ remaining length (2.2.3)

# Table 2.4 boundaries: each row's first and last value
LENGTH_TABLE = [
    (0, "00"), (127, "7F"),
    (128, "80 01"), (16383, "FF 7F"),
    (16384, "80 80 01"), (2097151, "FF FF 7F"),
    (2097152, "80 80 80 01"), (268435455, "FF FF FF 7F"),
]


def test_remaining_length_encodes_table_2_4_boundaries():
    for n, want in LENGTH_TABLE:
        eq(mqtt.encode_remaining_length(n), H(want), "length %d" % n)


def test_remaining_length_decodes_table_2_4_boundaries():
    for n, enc in LENGTH_TABLE:
        data = b"\x30" + H(enc)
        eq(mqtt.decode_remaining_length(data, 1), (n, len(data)), "length %d" % n)


def test_remaining_length_321_is_c1_02():
    # mqtt.org wiki: 321 = 65 + 2*128 -> 65+128 = 0xC1, then 2
    eq(mqtt.encode_remaining_length(321), H("C1 02"))


def test_remaining_length_over_268435455_or_negative_is_refused():
    raises(MqttError, mqtt.encode_remaining_length, 268435456)
    raises(MqttError, mqtt.encode_remaining_length, -1)


def test_remaining_length_with_fifth_byte_is_malformed():
    err = raises(MqttError, mqtt.decode_remaining_length, H("30 FF FF FF FF 7F"), 1)
    assert "4th byte" in str(err)


def test_remaining_length_cut_short_is_incomplete():
    eq(mqtt.decode_remaining_length(H("30 80"), 1), None)
    eq(mqtt.decode_remaining_length(H("30"), 1), None)


# ------------------------------------------------------------ encoders

def test_connect_minimal_clean_session_bytes():
    # 3.1: 0x10, len 14; flags 0x02 = clean session (3.1.2.4); keepalive 60 = 00 3C;
    # payload: client id "m1" = 00 02 6D 31.  10 + 4 = 14 = 0x0E
    eq(mqtt.encode_connect("m1", keepalive_s=60), H("10 0E" + PROTOCOL + "02 00 3C 00 02 6D 31"))


def test_connect_with_will_and_credentials_matches_figure_3_6_flags():
    # Figure 3.6: user 1, password 1, will retain 0, will QoS 01, will 1, clean 1 -> 0xCE,
    # keepalive 10.  Payload order (3.1.3): client id, will topic, will message, user, password.
    # 10 + cid 4 + "w" 3 + "off" 5 + "u" 3 + "p" 3 = 28 = 0x1C
    got = mqtt.encode_connect("m1", keepalive_s=10, username="u", password=b"p",
                              will_topic="w", will_message=b"off", will_qos=1)
    eq(got, H("10 1C" + PROTOCOL + "CE 00 0A 00 02 6D 31 00 01 77 00 03 6F 66 66"
              "00 01 75 00 01 70"))


def test_connect_persistent_session_with_retained_qos2_will_flags():
    # clean 0; will flag 0x04, will QoS 2 -> 0x10, will retain 0x20: 0x34
    got = mqtt.encode_connect("m1", keepalive_s=0, clean_session=False,
                              will_topic="w", will_message=b"", will_qos=2, will_retain=True)
    eq(got, H("10 13" + PROTOCOL + "34 00 00 00 02 6D 31 00 01 77 00 00"))


def test_connect_refuses_password_without_username_and_empty_id_on_persistent_session():
    raises(MqttError, mqtt.encode_connect, "m1", password=b"p")  # 3.1.2.9
    raises(MqttError, mqtt.encode_connect, "", clean_session=False)  # 3.1.3.1
    raises(MqttError, mqtt.encode_connect, "m1", will_qos=1)  # 3.1.2.6: no will flag
    raises(MqttError, mqtt.encode_connect, "m1", keepalive_s=65536)


def test_connect_with_empty_client_id_and_clean_session_is_allowed():
    eq(mqtt.encode_connect("", keepalive_s=60), H("10 0C" + PROTOCOL + "02 00 3C 00 00"))


def test_publish_qos0_bytes():
    # 3.3: 0x30; topic "a/b" (Figure 3.11) = 00 03 61 2F 62; payload "hello"; 5 + 5 = 10
    eq(mqtt.encode_publish("a/b", b"hello"), H("30 0A 00 03 61 2F 62 68 65 6C 6C 6F"))


def test_publish_qos1_with_packet_id_10_bytes():
    # 0x32 = QoS 1 (bits 2-1 = 01); Figure 3.11 packet id 10 = 00 0A; 5 + 2 + 5 = 12
    eq(mqtt.encode_publish("a/b", b"hello", qos=1, packet_id=10),
       H("32 0C 00 03 61 2F 62 00 0A 68 65 6C 6C 6F"))


def test_publish_dup_and_retain_flags():
    # 3.3.1: DUP bit 3 (0x08), RETAIN bit 0: 0x30 | 0x08 | 0x02 | 0x01 = 0x3B
    eq(mqtt.encode_publish("a/b", b"", qos=1, packet_id=1, retain=True, dup=True),
       H("3B 07 00 03 61 2F 62 00 01"))
    eq(mqtt.encode_publish("a/b", b"", retain=True), H("31 05 00 03 61 2F 62"))


def test_publish_topic_is_utf8_with_length_prefix_figure_1_3():
    # 1.5.3 Figure 1.3: "A" U+2A6D4 -> 00 05 41 F0 AA 9B 94
    eq(mqtt.encode_publish("A\U0002A6D4", b""), H("30 07 00 05 41 F0 AA 9B 94"))


def test_publish_of_128_byte_body_uses_two_length_bytes():
    # topic "t" = 3 bytes + 125 payload bytes = 128 -> 80 01 (Table 2.4)
    frame = mqtt.encode_publish("t", b"x" * 125)
    eq(frame[:6], H("30 80 01 00 01 74"))
    eq(len(frame), 131)


def test_publish_refuses_wildcards_empty_topic_qos2_and_bad_ids():
    raises(MqttError, mqtt.encode_publish, "a/+/b", b"")  # 3.3.2.1
    raises(MqttError, mqtt.encode_publish, "a/#", b"")
    raises(MqttError, mqtt.encode_publish, "", b"")  # 4.7.3
    raises(MqttError, mqtt.encode_publish, "a\x00b", b"")  # 1.5.3
    raises(MqttError, mqtt.encode_publish, "a", b"", qos=2, packet_id=1)
    raises(MqttError, mqtt.encode_publish, "a", b"", qos=1, packet_id=0)  # 2.3.1
    raises(MqttError, mqtt.encode_publish, "a", b"", qos=1, packet_id=65536)
    raises(MqttError, mqtt.encode_publish, "a", b"", qos=0, dup=True)  # 3.3.1.1


def test_puback_bytes():
    eq(mqtt.encode_puback(10), H("40 02 00 0A"))  # 3.4
    eq(mqtt.encode_puback(0x1234), H("40 02 12 34"))


def test_subscribe_bytes_figure_3_22_topics():
    # 3.8: 0x82 (reserved flags 0010); packet id 10; "a/b" QoS 1, "c/d" QoS 0; 2 + 6 + 6 = 14
    eq(mqtt.encode_subscribe(10, [("a/b", 1), ("c/d", 0)]),
       H("82 0E 00 0A 00 03 61 2F 62 01 00 03 63 2F 64 00"))


def test_unsubscribe_bytes():
    # 3.10: 0xA2; packet id 10; "a/b", "c/d"; 2 + 5 + 5 = 12
    eq(mqtt.encode_unsubscribe(10, ["a/b", "c/d"]), H("A2 0C 00 0A 00 03 61 2F 62 00 03 63 2F 64"))


def test_pingreq_and_disconnect_bytes():
    eq(mqtt.PINGREQ_PACKET, H("C0 00"))  # 3.12
    eq(mqtt.DISCONNECT_PACKET, H("E0 00"))  # 3.14


def test_valid_topic_filters_are_accepted():
    # 4.7.1.2 / 4.7.1.3 examples: "#", "sport/#", "+", "+/tennis/#", "sport/+/player1", "/+"
    for f in ("#", "sport/#", "+", "+/tennis/#", "sport/+/player1", "/+", "a/b"):
        mqtt.check_topic_filter(f)


def test_invalid_topic_filters_are_refused():
    # 4.7.1.2: "sport/tennis#" and "sport/tennis/#/ranking" invalid; 4.7.1.3: "sport+" invalid
    for f in ("sport/tennis#", "sport/tennis/#/ranking", "sport+", "", "a/b+/c", "#/a"):
        raises(MqttError, mqtt.check_topic_filter, f)
    raises(MqttError, mqtt.encode_subscribe, 1, [("a/#/b", 0)])
    raises(MqttError, mqtt.encode_subscribe, 1, [])  # 3.8.3: at least one filter
    raises(MqttError, mqtt.encode_subscribe, 1, [("a", 2)])  # this client takes QoS 0/1 only


# ------------------------------------------------------------ decoders

def read_one(data):
    packets = PacketReader().feed(data)
    eq(len(packets), 1, "packets in %r" % data)
    return packets[0]


def test_packet_type_numbers_are_table_2_1():
    eq((mqtt.CONNACK, mqtt.PUBACK, mqtt.SUBACK, mqtt.UNSUBACK, mqtt.PINGRESP),
       (CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP))


def test_connack_accepted_without_and_with_session_present():
    eq(read_one(H("20 02 00 00")), (CONNACK, 0, False))  # 3.2
    eq(read_one(H("20 02 01 00")), (CONNACK, 0, True))  # 3.2.2.2: bit 0 of acknowledge flags


def test_connack_refusals_have_names():
    # 3.2.2.3 Table 3.1
    names = ["UNACCEPTABLE_PROTOCOL_VERSION", "IDENTIFIER_REJECTED", "SERVER_UNAVAILABLE",
             "BAD_USERNAME_OR_PASSWORD", "NOT_AUTHORIZED"]
    for code in range(1, 6):
        eq(read_one(bytes((0x20, 2, 0, code))), (CONNACK, code, False))
        eq(mqtt.connack_name(code), names[code - 1])
    eq(mqtt.connack_name(0), "ACCEPTED")


def test_malformed_connacks_are_refused():
    for bad in ("20 02 02 00",   # 3.2.2.1: reserved acknowledge flag bits
                "20 02 01 05",   # 3.2.2.2: session present with a refusal
                "20 02 00 06",   # 3.2.2.3: return codes 6-255 reserved
                "20 03 00 00 00"):
        raises(MqttError, PacketReader().feed, H(bad))


def test_incoming_qos0_publish():
    p = read_one(H("30 0A 00 03 61 2F 62 68 65 6C 6C 6F"))
    assert isinstance(p, Publish)
    eq((p.topic, p.payload, p.qos, p.packet_id, p.retain, p.dup), ("a/b", b"hello", 0, 0, False, False))


def test_incoming_qos1_publish_with_dup_and_retain():
    p = read_one(H("3B 0C 00 03 61 2F 62 00 0A 68 65 6C 6C 6F"))
    eq((p.topic, p.payload, p.qos, p.packet_id, p.retain, p.dup), ("a/b", b"hello", 1, 10, True, True))


def test_incoming_publish_with_empty_payload():
    p = read_one(H("32 07 00 03 61 2F 62 00 01"))
    eq((p.payload, p.packet_id), (b"", 1))


def test_malformed_incoming_publishes_are_refused():
    for bad in ("36 07 00 03 61 2F 62 00 01",  # QoS 3 (3.3.1.2)
                "34 07 00 03 61 2F 62 00 01",  # QoS 2: never subscribed at QoS 2
                "38 05 00 03 61 2F 62",        # DUP on QoS 0 (3.3.1.1)
                "32 07 00 03 61 2F 62 00 00",  # packet id 0 (2.3.1)
                "30 05 00 03 61 2F 23",        # wildcard "a/#" in a topic name (3.3.2.1)
                "30 04 00 02 C3 28",           # invalid UTF-8 (1.5.3)
                "30 05 00 09 61 2F 62",        # topic length past the end
                "32 05 00 03 61 2F 62"):       # QoS 1 without packet id
        raises(MqttError, PacketReader().feed, H(bad))


def test_puback_unsuback_pingresp():
    eq(read_one(H("40 02 00 0A")), (PUBACK, 10))
    eq(read_one(H("B0 02 12 34")), (UNSUBACK, 0x1234))
    eq(read_one(H("D0 00")), (PINGRESP,))


def test_suback_granted_qos_and_failure_0x80():
    s = read_one(H("90 05 00 0A 00 01 80"))  # 3.9.3: 0x00, 0x01, 0x80 = failure
    eq(s, (SUBACK, 10, [0, 1, mqtt.SUBACK_FAILURE]))
    eq(mqtt.SUBACK_FAILURE, 0x80)


def test_suback_with_reserved_return_code_is_refused():
    raises(MqttError, PacketReader().feed, H("90 03 00 0A 03"))


def test_reserved_types_and_flags_are_refused_from_the_first_byte():
    for bad in ("00", "F0",  # 2.2.1: types 0 and 15 reserved
                "21",        # CONNACK with flags 0001 (2.2.2 Table 2.2)
                "41", "D8", "B2"):
        raises(MqttError, PacketReader().feed, H(bad))


def test_client_only_and_qos2_packets_from_a_broker_are_refused():
    for bad in ("C0 00", "E0 00", "10 00", "82 00", "A2 00",  # sent by clients only
                "50 02 00 01", "62 02 00 01", "70 02 00 01"):  # PUBREC/PUBREL/PUBCOMP
        raises(MqttError, PacketReader().feed, H(bad))


def test_refused_first_bytes_say_why():
    for first, why in ((0x00, "reserved packet type 0 (2.2.1)"),
                       (0xF0, "reserved packet type 15 (2.2.1)"),
                       (0x36, "PUBLISH with QoS 3 is malformed (3.3.1.2)"),
                       (0x34, "PUBLISH at QoS 2 is not supported (we never subscribe at QoS 2)"),
                       (0x21, "CONNACK with reserved flags 0x1, must be 0x0 (2.2.2)"),
                       (0x60, "PUBREL with reserved flags 0x0, must be 0x2 (2.2.2)"),
                       (0xC0, "PINGREQ is a client packet; a broker must not send it"),
                       (0x82, "SUBSCRIBE is a client packet; a broker must not send it"),
                       (0x62, "PUBREL is QoS 2 flow, which this client does not use")):
        err = raises(MqttError, PacketReader().feed, bytes((first,)))
        eq(str(err), why, hex(first))


def test_wrong_fixed_lengths_are_refused():
    for bad in ("40 03 00 0A 00", "40 01 0A", "B0 00", "D0 01 00", "90 02 00 0A"):
        raises(MqttError, PacketReader().feed, H(bad))


# ------------------------------------------------------------ PacketReader

STREAM = H("20 02 00 00" "90 03 00 01 01" "32 0C 00 03 61 2F 62 00 0A 68 65 6C 6C 6F" "D0 00")


def kinds(packets):
    return ["Publish" if isinstance(p, Publish) else p[0] for p in packets]


WANT = [CONNACK, SUBACK, "Publish", PINGRESP]


def test_reader_returns_all_packets_of_one_chunk():
    eq(kinds(PacketReader().feed(STREAM)), WANT)


def test_reader_byte_by_byte():
    r = PacketReader()
    got = []
    for i in range(len(STREAM)):
        got.extend(r.feed(STREAM[i:i + 1]))
    eq(kinds(got), WANT)
    eq(got[2].payload, b"hello")
    eq(r.buffered, 0)


def test_reader_split_at_every_position():
    for cut in range(len(STREAM) + 1):
        r = PacketReader()
        got = r.feed(STREAM[:cut]) + r.feed(STREAM[cut:])
        eq(kinds(got), WANT, "cut at %d" % cut)


def test_reader_holds_a_partial_packet_until_it_completes():
    r = PacketReader()
    eq(kinds(r.feed(H("D0 00 32 0C 00 03"))), [PINGRESP])
    eq(r.buffered, 4)
    got = r.feed(H("61 2F 62 00 0A 68 65 6C 6C 6F"))
    eq(got[0].packet_id, 10)


def test_reader_takes_a_multi_byte_length_split_inside_the_length():
    frame = mqtt.encode_publish("t", b"x" * 16381)  # 3 + 16381 = 16384 -> 80 80 01
    eq(frame[:4], H("30 80 80 01"))
    r = PacketReader(max_packet=20000)
    eq(r.feed(frame[:2]), [])
    eq(r.feed(frame[2:3]), [])
    got = r.feed(frame[3:])
    eq(len(got[0].payload), 16381)


def test_reader_assembles_a_big_publish_from_read_sized_chunks_between_small_packets():
    payload = bytes([(i * 7) & 0xFF for i in range(5000)])
    stream = H("D0 00") + mqtt.encode_publish("a/b", payload, qos=1, packet_id=9) + H("90 03 00 01 01")
    r = PacketReader()
    got = []
    held = []
    for i in range(0, len(stream), 512):
        got.extend(r.feed(stream[i:i + 512]))
        held.append(r.buffered)
    eq(kinds(got), [PINGRESP, "Publish", SUBACK])
    eq(got[1].payload, payload)
    eq(got[1].packet_id, 9)
    eq(held[0], 510)  # 512 read, PINGRESP's 2 bytes decoded
    eq(held[-1], 0)


def test_reader_accepts_a_packet_of_exactly_max_packet_bytes():
    frame = mqtt.encode_publish("t", b"x" * 95)  # 2 header + 3 topic + 95 = 100 bytes
    eq(len(frame), 100)
    eq(len(PacketReader(max_packet=100).feed(frame)), 1)


def test_reader_refuses_oversized_packet_from_its_header_alone():
    # 0x63 = 99 -> 2 + 99 = 101 bytes > 100: refused with only the 2 header bytes seen
    err = raises(MqttError, PacketReader(max_packet=100).feed, H("30 63"))
    assert "max_packet" in str(err)
    raises(MqttError, PacketReader().feed, H("30 FF FF FF 7F"))  # 256 MB claimed


def test_reader_rejects_garbage_first_byte():
    raises(MqttError, PacketReader().feed, H("00 20 02 00 00"))


# ------------------------------------------------------------ Session

def connected_session(now=0, **kw):
    s = Session("m1", **kw)
    s.connect(now)
    eq(s.received((CONNACK, 0, False), now), [])
    return s


def test_session_connect_frame_is_the_encoded_connect():
    s = Session("m1", keepalive_s=60)
    eq(s.connect(0), H("10 0E" + PROTOCOL + "02 00 3C 00 02 6D 31"))
    assert not s.connected


def test_publish_before_connack_is_refused():
    s = Session("m1")
    s.connect(0)
    raises(MqttError, s.publish, "a", b"x", 1, False, 0)


def test_refused_connack_leaves_session_disconnected():
    s = Session("m1")
    s.connect(0)
    eq(s.received((CONNACK, 5, False), 1), [])
    assert not s.connected


def test_packet_ids_count_from_one():
    s = connected_session()
    eq(s.publish("a", b"1", 1, False, 0), (1, mqtt.encode_publish("a", b"1", 1, 1)))
    eq(s.subscribe([("b", 1)], 0)[0], 2)
    eq(s.unsubscribe(["b"], 0)[0], 3)
    eq(s.publish("a", b"q0", 0, False, 0)[0], 0)  # QoS 0 takes no id


def test_packet_ids_wrap_after_65535_and_skip_ids_in_flight():
    s = connected_session()
    eq(s.publish("a", b"x", 1, False, 0)[0], 1)  # id 1 stays unacked
    last = 0
    for _ in range(65534):  # ids 2..65535
        last = s.next_packet_id()
    eq(last, 65535)
    eq(s.next_packet_id(), 2)  # wraps to 1, which is in flight


def test_in_flight_window_is_bounded():
    s = connected_session(max_in_flight=2)
    s.publish("a", b"1", 1, False, 0)
    s.publish("a", b"2", 1, False, 0)
    err = raises(MqttError, s.publish, "a", b"3", 1, False, 0)
    assert "PUBACK" in str(err)
    s.received((PUBACK, 1), 1)
    eq(s.publish("a", b"3", 1, False, 1)[0], 3)


def test_puback_removes_only_its_message_and_unknown_ids_are_ignored():
    s = connected_session()
    for i in range(3):
        s.publish("a", str(i), 1, False, 0)
    s.received((PUBACK, 2), 1)
    eq(s.in_flight_ids(), [1, 3])
    eq(s.received((PUBACK, 77), 1), [])
    eq(s.in_flight_ids(), [1, 3])


def test_unacked_qos1_publish_is_resent_with_dup_after_retry_s():
    s = connected_session(keepalive_s=0, retry_s=20)
    s.publish("a/b", b"hello", 1, False, 100)
    eq(s.poll(119), [])
    # 0x3A = 0x30 | DUP 0x08 | QoS1 0x02
    eq(s.poll(120), [H("3A 0C 00 03 61 2F 62 00 01 68 65 6C 6C 6F")])
    eq(s.poll(121), [])  # the retry timer restarted at 120
    eq(len(s.poll(140)), 1)
    eq(s.resent, 2)


def test_retry_s_zero_resends_only_on_reconnect():
    s = connected_session(keepalive_s=0, retry_s=0)
    s.publish("a/b", b"hello", 1, False, 0)
    eq(s.poll(100000), [])


def test_persistent_session_resends_unacked_with_dup_in_order_after_connack():
    s = connected_session(clean_session=False, keepalive_s=0)
    s.publish("a/b", b"1", 1, False, 0)
    s.publish("a/b", b"2", 1, True, 0)
    s.publish("a/b", b"3", 1, False, 0)
    s.received((PUBACK, 2), 1)
    s.connection_lost()
    eq(s.poll(500), [])  # nothing goes out while down
    s.connect(600)
    frames = s.received((CONNACK, 0, True), 600)
    eq(frames, [H("3A 08 00 03 61 2F 62 00 01 31"), H("3A 08 00 03 61 2F 62 00 03 33")])


def test_clean_session_sends_unacked_again_as_new_publishes():
    s = connected_session(clean_session=True, keepalive_s=0)
    s.publish("a/b", b"1", 1, False, 0)
    s.connection_lost()
    s.connect(10)
    eq(s.received((CONNACK, 0, False), 10), [H("32 08 00 03 61 2F 62 00 01 31")])


def test_incoming_qos1_publish_is_acked_and_qos0_is_not():
    s = connected_session()
    eq(s.received(Publish("a/b", b"x", 1, 10), 5), [H("40 02 00 0A")])
    eq(s.received(Publish("a/b", b"x", 0, 0), 5), [])


def test_pingreq_after_keepalive_of_silence_from_us():
    s = connected_session(keepalive_s=60)
    s.received((PINGRESP,), 30)  # broker heard at 30, we last sent at 0
    eq(s.poll(59), [])
    eq(s.poll(60), [H("C0 00")])
    eq(s.poll(61), [])  # one PINGREQ outstanding at a time
    s.received((PINGRESP,), 62)
    assert not s.ping_outstanding


def test_pingreq_when_broker_silent_for_keepalive_even_while_we_publish():
    s = connected_session(keepalive_s=60)
    s.publish("a", b"x", 0, False, 40)
    eq(s.poll(59), [])
    eq(s.poll(60), [H("C0 00")])  # 60 - last_received 0 >= 60


def test_broker_is_dead_after_one_and_a_half_keepalives_without_a_packet():
    s = connected_session(keepalive_s=60)  # last packet (CONNACK) at 0
    assert not s.broker_dead(89)
    assert s.broker_dead(90)  # 1.5 * 60 = 90
    s.received((PINGRESP,), 50)
    assert not s.broker_dead(139)
    assert s.broker_dead(140)  # 50 + 90


def test_broker_that_never_sends_connack_counts_as_dead():
    s = Session("m1", keepalive_s=10)
    s.connect(100)
    assert not s.broker_dead(114)
    assert s.broker_dead(115)


def test_keepalive_zero_never_pings_nor_declares_broker_dead():
    s = connected_session(keepalive_s=0)
    eq(s.poll(10 ** 6), [])
    assert not s.broker_dead(10 ** 6)


def test_suback_clears_pending_subscribe_id_for_reuse():
    s = connected_session()
    pid, _ = s.subscribe([("a/#", 1)], 0)
    s.received((SUBACK, pid, [1]), 1)
    for _ in range(65534):
        s.next_packet_id()
    eq(s.next_packet_id(), pid)  # free again after a full wrap


def test_error_reports_name_the_field_or_packet_they_are_about():
    # mqtt raises by number, mqtt_more formats: the texts callers see are these
    def why(fn, *args):
        return str(raises(MqttError, fn, *args))
    eq(why(mqtt.encode_connect, "m", 60, True, "u", 5), "password must be bytes or str, got int")
    eq(why(mqtt.encode_connect, "m", 60, True, None, None, "w", b"", 3),
       "will_qos must be 0..2, got 3")
    eq(why(mqtt.encode_subscribe, 1, [("a", 2)]), "requested qos must be 0..1, got 2")
    eq(why(mqtt.check_topic_filter, "a\x00"), "topic filter must not contain U+0000 (1.5.3)")
    eq(why(mqtt.encode_publish, "a/+", b""),
       "topic name 'a/+' must not contain wildcards + or # (3.3.2.1)")
    eq(why(PacketReader().feed, H("40 02 00 00")), "PUBACK with packet id 0 (2.3.1)")
    eq(why(PacketReader().feed, H("b0 03 00 01 00")), "UNSUBACK remaining length must be 2, got 3")
    eq(why(PacketReader(max_packet=100).feed, H("30 63")),
       "incoming PUBLISH of 101 bytes exceeds max_packet 100")
    eq(why(PacketReader().feed, H("20 02 00 06")), "CONNACK return code 6 is reserved (3.2.2.3)")
    eq(why(Session("m").publish, "a", b""), "not connected: wait for an accepted CONNACK")


def test_methods_a_meter_never_calls_still_work_on_a_session():
    s = connected_session()
    eq(s.unsubscribe(["a/#"], now=5), (1, mqtt.encode_unsubscribe(1, ["a/#"])))
    eq(s.last_sent, 5)
    eq(s.in_flight_ids(), [])
    eq(s.disconnect(), mqtt.DISCONNECT_PACKET)
    eq(s.connected, False)
    eq(hasattr(s, "no_such_method"), False)
