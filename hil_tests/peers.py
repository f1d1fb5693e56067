"""Peers the plugin adds around a DUT (the meter's own peers live in hil_tests/conftest.py).

``BrokerTap`` writes every message on a broker to a test's ``broker.log``,
decoded with ``firmware.protocol.messages`` (docs/protocol.md), so a failed
test shows what went over the wire.

>>> tap = BrokerTap("127.0.0.1", 1883, "reports/hil/test_x/broker.log")
>>> tap.close()
"""
import json
import threading
import time

from firmware.protocol import messages


def describe(topic, payload):
    """One log line for a message: decoded body as JSON, else hex."""
    try:
        if "/up/" in topic:
            return json.dumps(messages.decode_uplink(topic, payload), default=repr)
        if topic.endswith("/cmd") or "/down" in topic:
            return json.dumps(messages.decode_command(payload), default=repr)
    except Exception as e:  # a body that breaks the protocol is logged as such, not hidden
        return "UNDECODABLE (%s: %s) %s" % (type(e).__name__, e, payload.hex())
    return repr(payload) if len(payload) < 80 else payload.hex()


class BrokerTap:
    """A paho client subscribed to ``#`` that logs every message with its arrival time."""

    def __init__(self, host, port, log_path):
        import paho.mqtt.client as mqtt

        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.file = open(log_path, "a", encoding="utf-8")
        self.count = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-tap-%d" % id(self))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise AssertionError("the broker tap could not connect to %s:%d" % (host, port))

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe("#", qos=1)
        self._write("--- connected, subscribed to #")
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        self.count += 1
        self._write("%s q%d%s %s" % (msg.topic, msg.qos, " retained" if msg.retain else "",
                                     describe(msg.topic, msg.payload)))

    def _write(self, text):
        with self.lock:
            if self.file is not None:
                self.file.write("[%8.3f] %s\n" % (time.monotonic() - self.t0, text))
                self.file.flush()

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None
