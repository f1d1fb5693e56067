"""headend.mqtt_fast: frames byte by byte (against gmqtt's encoder and the MQTT 5 spec), and
the subscriber against a real Mosquitto (re-subscribe, acks only when told)."""
import asyncio
import threading

import pytest
from gmqtt import Message
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.package import LoginPackageFactor, PublishPacket

from headend import mqtt_fast as F
from headend.tests.conftest import Meters, wait_until


class _Proto:  # what gmqtt's encoders read from a protocol object
    proto_ver = MQTTv50
    proto_name = b"MQTT"

    class id_generator:
        n = 0

        @classmethod
        def next_id(cls):
            cls.n += 1
            return cls.n


def gmqtt_publish(topic, payload, qos=1, **properties):
    _mid, frame = PublishPacket.build_package(Message(topic, payload, qos=qos, **properties),
                                              _Proto)
    return bytes(frame)


def test_varint_matches_the_spec_boundaries():
    # MQTT 5.0, 1.5.5: 0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455
    assert [F.varint(n) for n in (0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455)] == [
        b"\x00", b"\x7f", b"\x80\x01", b"\xff\x7f", b"\x80\x80\x01", b"\xff\xff\x7f",
        b"\x80\x80\x80\x01", b"\xff\xff\xff\x7f"]
    with pytest.raises(F.MqttError):
        F.varint(268435456)


def test_connect_is_byte_for_byte_what_gmqtt_sends():
    ours = F.connect_packet("ingest-0", keepalive_s=30, clean_start=False,
                            session_expiry_s=604800, receive_maximum=65535)
    theirs = LoginPackageFactor.build_package("ingest-0", None, None, False, 30, _Proto,
                                              session_expiry_interval=604800,
                                              receive_maximum=65535)
    assert ours == bytes(theirs)


def test_subscribe_and_puback_bytes():
    # SUBSCRIBE: 0x82, length, packet id 1, no properties, filter "a/#", options qos 1
    assert F.subscribe_packet(1, [("a/#", 1)]) == b"\x82\x09\x00\x01\x00\x00\x03a/#\x01"
    assert F.puback_packet(0x1234) == b"\x40\x02\x12\x34"
    assert F.pubacks([1, 2]) == b"\x40\x02\x00\x01\x40\x02\x00\x02"


def test_a_gmqtt_publish_with_properties_parses_whole():
    frame = gmqtt_publish("urja/v1/UJ-1/up/reading", b"\xa1\x01\x02", qos=1,
                          message_expiry_interval=60, content_type="application/cbor",
                          user_property=("k", "v"))
    pubs, others = F.FrameReader().feed(frame)
    assert others == []
    [p] = pubs
    assert (p.topic, p.payload, p.qos, p.packet_id, p.dup) == (
        "urja/v1/UJ-1/up/reading", b"\xa1\x01\x02", 1, _Proto.id_generator.n, False)


def test_frames_split_anywhere_or_byte_by_byte_give_the_same_messages():
    frames = b"".join(gmqtt_publish("t/%d" % i, bytes([i]) * (i * 50), qos=i % 2)
                      for i in range(6)) + b"\xd0\x00"  # + PINGRESP
    whole, whole_other = F.FrameReader().feed(frames)
    assert [(p.topic, len(p.payload), p.qos) for p in whole] == [
        ("t/%d" % i, i * 50, i % 2) for i in range(6)]
    assert whole_other == [(F.PINGRESP, 0, b"")]
    for step in (1, 2, 3, 7, 129):
        r = F.FrameReader()
        got, other = [], []
        for i in range(0, len(frames), step):
            p, o = r.feed(frames[i:i + step])
            got += p
            other += o
        assert [(p.topic, p.payload, p.qos, p.packet_id) for p in got] == [
            (p.topic, p.payload, p.qos, p.packet_id) for p in whole], step
        assert other == whole_other


def test_a_long_payload_uses_a_multi_byte_length():
    frame = gmqtt_publish("x", b"z" * 20000, qos=1)
    assert frame[1] & 0x80 and frame[2] & 0x80 and not frame[3] & 0x80  # three length bytes
    [p], _ = F.FrameReader().feed(frame)
    assert p.payload == b"z" * 20000


def test_a_malformed_length_is_an_error_not_a_hang():
    with pytest.raises(F.MqttError):
        F.FrameReader().feed(b"\x30\xff\xff\xff\xff\x01")


def test_control_packets_come_back_with_their_bodies():
    connack = b"\x20\x03\x01\x00\x00"          # session present, success, no properties
    suback = b"\x90\x04\x00\x01\x00\x01"        # id 1, no properties, granted qos 1
    pubs, others = F.FrameReader().feed(connack + suback)
    assert pubs == [] and others == [(F.CONNACK, 0, b"\x01\x00\x00"),
                                     (F.SUBACK, 0, b"\x00\x01\x00\x01")]


# --- against Mosquitto ---------------------------------------------------------------------

class Runner:
    """A FastSubscriber on its own event loop thread."""

    def __init__(self, broker, client_id, ack=True):
        self.got, self.subscribes = [], 0
        self.ack = ack
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.sub = F.FastSubscriber(broker.host, broker.port, client_id,
                                    [("$share/g/urja/v1/+/up/#", 1)], self._on, self._subbed,
                                    reconnect_delay_s=0.2)
        self.call(self.sub.start())

    def _on(self, conn, pubs):
        self.got += [(p.topic, p.payload) for p in pubs]
        if self.ack:
            self.sub.ack_all(conn, [p.packet_id for p in pubs])

    def _subbed(self):
        self.subscribes += 1

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def close(self):
        self.call(self.sub.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def publish(broker, n, first=0):
    m = Meters(broker)
    m.wait([m.publish_raw("urja/v1/UJ-1/up/heartbeat", b"%d" % i) for i in range(first, first + n)])
    m.close()


def test_unacknowledged_messages_come_back_on_the_next_connection_and_acked_ones_do_not(broker):
    r = Runner(broker, "fast-0", ack=False)
    wait_until(lambda: r.subscribes == 1, what="SUBACK")
    publish(broker, 5)
    wait_until(lambda: len(r.got) == 5, what="5 messages")
    r.close()                                  # never acknowledged
    again = Runner(broker, "fast-0", ack=True)
    wait_until(lambda: len(again.got) >= 5, what="redelivery")
    again.close()
    assert sorted(again.got) == sorted(r.got)
    third = Runner(broker, "fast-0", ack=True)
    wait_until(lambda: third.subscribes == 1, what="SUBACK")
    publish(broker, 1, first=5)
    wait_until(lambda: len(third.got) >= 1, what="the new message")
    third.close()
    assert third.got == [("urja/v1/UJ-1/up/heartbeat", b"5")]   # the acked five stayed acked


def test_after_a_broker_restart_the_subscriber_subscribes_again_and_receives(broker):
    r = Runner(broker, "fast-1")
    wait_until(lambda: r.subscribes == 1, what="SUBACK")
    broker.restart()
    wait_until(lambda: r.subscribes == 2, timeout_s=20, what="a second SUBACK")
    publish(broker, 3)
    wait_until(lambda: len(r.got) == 3, what="3 messages after the restart")
    r.close()
    assert r.sub.connects == 2


def test_a_silent_broker_link_is_dropped_after_one_and_a_half_keepalives():
    # a "broker" that accepts TCP and answers CONNACK + SUBACK, then never says anything
    async def main():
        async def handle(reader, writer):
            await reader.read(1024)
            writer.write(b"\x20\x03\x00\x00\x00" + b"\x90\x04\x00\x01\x00\x01")
            await asyncio.sleep(30)
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sub = F.FastSubscriber("127.0.0.1", port, "x", [("a", 1)], lambda c, p: None,
                               keepalive_s=1, reconnect_delay_s=0.1)
        await sub.start()
        first = sub.conn
        await asyncio.wait_for(first.closed, 5)   # 1.5 s without a byte: aborted
        sub._stopping = True
        await sub.stop()
        server.close()
        return first.open
    assert asyncio.run(main()) is False
