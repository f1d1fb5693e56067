"""One feeder's MQTT connection, multiplexing its meters (networked mode).

Real connections: ONE paho MQTT 3.1.1 connection per feeder, client id
``sim-feeder-<n>``, persistent session (clean session off).  It publishes
each meter's uplinks on that meter's own topic (``urja/v1/<meter>/up/<kind>``)
and subscribes to each meter's command topic at QoS 1, so the head-end sees
exactly the topics and bytes a fleet of single-meter connections would send.
What a per-meter connection would add and this does not: one last will per
meter (a connection has one) and per-meter TCP/keepalive load on the broker.

Uplinks come from each meter's real ``Outbox`` (firmware/core/outbox.py, on
``RamSegments``) the way the firmware's MQTT pump sends them
(firmware/app/main.py ``App._pump``): oldest first, QoS 1, released only by
the broker's PUBACK (contiguously per meter), and after any reconnect the
pump starts again from the oldest unreleased message, so a message whose
PUBACK was lost goes again and the head-end dedupes it on (m, s).  The pump
publishes only while connected: during an outage the readings wait in the
outboxes, not in a client library queue.

``backfill`` downlinks are answered by the firmware app's own code:
``FeederLink.backfill`` calls ``firmware.app.uplink.queue_backfill`` (what
``App.backfill`` calls) on the meter's outbox and ``MeterPort.backfills``, so
the ranges queued, the merge at ``MAX_BACKFILLS`` and the ack's ``n`` / ``lo``
are the app's.  The pump then publishes those ranges first, re-read from the
outbox's history (``Outbox.history``), as ``App._next_publish`` orders them:
before newer uplinks and before the ack.  A re-sent uplink's PUBACK releases
nothing; the queued ranges live in RAM like the app's, so a link loss sends
the un-PUBACKed part again and a power cut (``MeterPort.reset(reboot=True)``)
forgets them (the head-end asks again).  Memory: a few ints per queued range,
at most ``MAX_BACKFILLS`` ranges per meter; the history is the outbox's flash.

Thread rule: paho's network thread only puts events on ``inbox``; the
simulator thread (``drain``/``pump``) does everything else.

>>> link = FeederLink(0, "127.0.0.1", 1883, meters, inbox)     # doctest: +SKIP
>>> link.connect(); ...; link.pump()                           # doctest: +SKIP
"""
import collections
import queue

import paho.mqtt.client as paho

from firmware.app.uplink import queue_backfill, split
from firmware.protocol import messages

PUMP_BATCH = 64  # messages peeked from one meter's outbox per pump call
MAX_OUTSTANDING = 20000  # published, PUBACK not seen: well below paho's 65535 message ids


class MeterPort:
    """One meter's side of the link: its outbox, what is published and awaiting PUBACK."""

    __slots__ = ("meter_id", "outbox", "published_upto", "waiting", "acked", "backfills",
                 "resending")

    def __init__(self, meter_id, outbox):
        self.meter_id = meter_id
        self.outbox = outbox
        self.published_upto = outbox.released
        self.waiting = collections.deque()  # seqs published on this connection, in order
        self.acked = set()
        self.backfills = []  # [next seq, last seq] ranges to publish again (App._backfills)
        self.resending = set()  # seqs of backfills published on this connection, no PUBACK yet

    def reset(self, reboot=False):
        """Link lost: everything unreleased is sent again on the next connection, and
        re-sent uplinks without a PUBACK go again (the app advances a range only on a
        PUBACK).  ``reboot``: the meter restarted, its RAM (queued ranges) is gone."""
        self.published_upto = self.outbox.released
        self.waiting.clear()
        self.acked.clear()
        if reboot:
            self.backfills = []
        elif self.resending:
            self.backfills.insert(0, [min(self.resending), max(self.resending)])
        self.resending.clear()


class FeederLink:
    """The MQTT connection of feeder ``feeder`` for ``ports`` (meter id -> MeterPort)."""

    def __init__(self, feeder, host, port, ports, inbox, keepalive_s=30):
        self.feeder = feeder
        self.client_id = "sim-feeder-%d" % feeder
        self.host, self.port = host, port
        self.ports = ports
        self.inbox = inbox
        self.keepalive_s = keepalive_s
        self.client = None
        self.gen = 0  # connection generation: events of an old client are ignored
        self.state = "down"  # down | connecting | up
        self.mids = {}  # paho mid -> (MeterPort, seq, a backfill re-send?) on this connection
        self.published = 0
        self.republished = 0  # uplinks published again for ``backfill`` (App.republished)
        self.connects = 0
        self.connect_failures = 0
        self.dirty = set(ports)  # meters whose outbox may hold unsent messages

    # --- paho thread: queue only ------------------------------------------------------
    def _callbacks(self, client, gen):
        inbox, feeder = self.inbox, self.feeder
        topics = [(messages.command_topic(mid), 1) for mid in sorted(self.ports)]

        def on_connect(cl, userdata, flags, reason_code, properties):
            if reason_code == 0:
                cl.subscribe(topics)
            else:
                inbox.put(("down", feeder, gen))

        def on_subscribe(cl, userdata, mid, reason_codes, properties):
            inbox.put(("up", feeder, gen))

        def on_disconnect(cl, userdata, flags, reason_code, properties):
            inbox.put(("down", feeder, gen))

        def on_publish(cl, userdata, mid, reason_code, properties):
            inbox.put(("puback", feeder, gen, mid))

        def on_message(cl, userdata, msg):
            inbox.put(("cmd", feeder, gen, msg.topic, msg.payload))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message

    # --- simulator thread ---------------------------------------------------------------
    def connect(self):
        """Try once (fresh client, same id and session); False when the broker refuses."""
        self.gen += 1
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, protocol=paho.MQTTv311)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        self._callbacks(client, self.gen)
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError:
            self.connect_failures += 1
            return False
        client.loop_start()
        self.client = client
        self.state = "connecting"
        return True

    def drop(self):
        """Leave the connection (partition, power cut, or after the broker went away)."""
        client, self.client = self.client, None
        self.gen += 1
        self.state = "down"
        self.mids.clear()
        for p in self.ports.values():
            p.reset()
        self.dirty = set(self.ports)
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001 - the socket may already be dead
                pass
            client.loop_stop()

    def on_event(self, item, now):
        """Apply one inbox event of this feeder; returns a command payload or None."""
        kind, gen = item[0], item[2]
        if gen != self.gen:
            return None  # from a connection we already dropped
        if kind == "up":
            self.state = "up"
            self.connects += 1
            for mid in sorted(self.ports):  # retained presence, as the firmware announces it
                self.client.publish(messages.online_topic(mid), b"1", qos=1, retain=True)
        elif kind == "down":
            self.drop()
        elif kind == "puback":
            sent = self.mids.pop(item[3], None)
            if sent is not None:
                port, seq, again = sent
                if again:
                    port.resending.discard(seq)
                    return None
                port.acked.add(seq)
                upto = 0
                while port.waiting and port.waiting[0] in port.acked:
                    upto = port.waiting.popleft()
                    port.acked.discard(upto)
                if upto:
                    port.outbox.ack(upto, now)
        elif kind == "cmd":
            return item[3], item[4]
        return None

    def mark(self, meter_id):
        """The meter queued something: the next pump looks at its outbox."""
        self.dirty.add(meter_id)

    def backfill(self, meter_id, first, last):
        """A ``backfill`` the meter's core accepted, queued as the app does: (n, lo).

        >>> link.backfill("UJ-0000001", 40, 49)     # doctest: +SKIP
        (10, 1)
        """
        port = self.ports[meter_id]
        # what was sent: the app publishes one at a time and counts its PUBACKs; here
        # the release cursor follows contiguous PUBACKs
        n, lo, _queued = queue_backfill(port.outbox, port.backfills, port.outbox.released,
                                        first, last)
        self.mark(meter_id)
        return n, lo

    def pump(self):
        """Publish the dirty meters' unsent outbox messages, oldest first; returns how many."""
        if self.state != "up":
            return 0
        n = 0
        for meter_id in sorted(self.dirty):
            port = self.ports[meter_id]
            box = port.outbox
            ranges = port.backfills
            while ranges:  # App._next_publish: backfill ranges first, from the history
                if len(self.mids) >= MAX_OUTSTANDING:
                    self.published += n
                    return n
                rng = ranges[0]
                batch = box.history(rng[0], rng[1], PUMP_BATCH)
                if not batch:
                    ranges.pop(0)  # done (or the ring erased the rest meanwhile)
                    continue
                for seq, record in batch:
                    self._publish(port, seq, record, True)
                    port.resending.add(seq)
                    rng[0] = seq + 1
                    self.republished += 1
            while True:
                if len(self.mids) >= MAX_OUTSTANDING:
                    self.published += n
                    return n  # the rest stays dirty for the next pump
                batch = box.peek(PUMP_BATCH, after=port.published_upto)
                if not batch:
                    break
                for seq, record in batch:
                    self._publish(port, seq, record, False)
                    port.waiting.append(seq)
                    port.published_upto = seq
                    n += 1
            self.dirty.discard(meter_id)
        self.published += n
        return n

    def _publish(self, port, seq, record, again):
        """One outbox record on its meter's topic at QoS 1; ``again``: a backfill re-send."""
        kind, body = split(record)
        info = self.client.publish(messages.topic(port.meter_id, kind), body, qos=1)
        self.mids[info.mid] = (port, seq, again)


def drain(inbox, links, now, on_command):
    """Apply queued network events; ``on_command(feeder, topic, payload)`` for downlinks."""
    while True:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return
        out = links[item[1]].on_event(item, now)
        if out is not None:
            on_command(item[1], out[0], out[1])
