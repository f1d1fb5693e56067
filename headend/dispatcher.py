"""The command dispatcher: durable queue in the database -> meters over MQTT, acks back.

One loop (``Dispatcher.step``, repeated by ``run``):

1. apply what the MQTT thread received: PUBACKs (SENT -> DELIVERED), meter
   ``ack`` uplinks (``commands.handle_ack``), ``online`` = 1 (re-send that
   meter's un-acked commands soon);
2. expire open commands past ``expires_at`` (+ grace once sent), with alerts;
3. take due commands (QUEUED, or un-acked past their retry time), sign the
   new ones with the meter's key (``MeterKey``, decrypted with the master
   key), commit SENT, then publish to ``urja/v1/<meter>/cmd`` at QoS 1.

Durability: all state is in the database, so a restarted dispatcher carries
on where the old one stopped.  The MQTT session is persistent (stable client
id, clean session off) and incoming acks are acknowledged to the broker only
after their transaction committed (paho ``manual_ack``), so acks that arrive
while the head-end is down or crashing wait in the broker.  Meters use
persistent sessions too, so a command published while a meter is offline is
handed to it when it reconnects.  A lost ack or a lost command costs one
re-send: the meter answers a copy it already applied with REPLAYED, which
counts as applied.

All database work happens in the thread that calls ``step``; paho's network
thread only queues what it saw.

    python -m headend.dispatcher --host 127.0.0.1 --port 1883     (URJA_DATABASE_URL, URJA_MASTER_KEY)

>>> d = Dispatcher(engine, "127.0.0.1", 1883, master_key).start()     # doctest: +SKIP
>>> d.step()                                                          # doctest: +SKIP
{'acks': 0, 'pubacks': 0, 'expired': 0, 'sent': 1}
"""
import argparse
import logging
import queue
import sys
import threading
import time

import paho.mqtt.client as paho
from sqlalchemy.orm import Session

from firmware.protocol import messages
from headend import commands as C
from headend import ledger  # noqa: F401 - registers the ledger's command-outcome listener
from headend import ota  # noqa: F401 - registers the OTA jobs' listener (next chunk on each ack)
from headend import models as M
from headend.db import make_engine

log = logging.getLogger("urja.dispatcher")

ACK_FILTER = messages.PREFIX + "+/up/" + messages.ACK
ONLINE_FILTER = messages.PREFIX + "+/online"


class DispatcherError(RuntimeError):
    """The dispatcher could not connect or subscribe."""


class Dispatcher:
    """Publishes due commands and applies acks; state lives in the database.

    ``clock`` returns UTC seconds (injectable for simulated hours);
    ``alert_hook(CommandAlert)`` is called for every alert it raises.
    """

    def __init__(self, engine, host, port, master_key, client_id="urja-dispatcher",
                 policy=None, clock=time.time, alert_hook=None, batch=100):
        self.engine = engine
        self.host, self.port, self.client_id = host, port, client_id
        self.master_key = master_key
        self.policy = policy or C.RetryPolicy()
        self.clock = clock
        self.alert_hook = alert_hook
        self.batch = batch
        self.inbox = queue.Queue()
        self._in_flight = {}  # paho mid -> (command id, counter)
        self._keys = {}
        self._client = None
        self._subscribed = threading.Event()
        self.counters = {"sent": 0, "resent": 0, "acks": 0, "pubacks": 0, "expired": 0,
                         "bad_acks": 0}

    # --- MQTT (paho network thread: queue only) -------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(ACK_FILTER, 1), (ONLINE_FILTER, 1)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        self.inbox.put(("message", msg.topic, msg.payload, msg.mid, msg.qos))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.inbox.put(("puback", mid))

    def start(self, timeout_s=10.0):
        """Connect (persistent session) and wait for the subscription; returns self."""
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(1, 30)
        self._client = client
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise DispatcherError("no SUBACK from %s:%d within %ss" % (self.host, self.port,
                                                                        timeout_s))
        return self

    def stop(self):
        """Disconnect; anything not acknowledged stays in the broker and the database."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    # --- the loop (caller's thread: all database work) ------------------------------------

    def _now(self):
        return int(self.clock())

    def _key(self, session, meter_id):
        key = self._keys.get(meter_id)
        if key is None:
            row = session.get(M.MeterKey, meter_id)
            if row is None:
                return None
            key = self._keys[meter_id] = row.open(self.master_key)
        return key

    def _apply_inbox(self, session, now):
        acks = pubacks = 0
        to_ack = []
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] == "puback":
                sent = self._in_flight.pop(item[1], None)
                if sent is not None:
                    C.mark_delivered(session, sent[0], sent[1], now, self.policy)
                    pubacks += 1
                continue
            _, topic, payload, mid, qos = item
            if topic.endswith("/online"):
                meter_id = topic[len(messages.PREFIX):].split("/")[0]
                if payload == b"1":
                    C.meter_online(session, meter_id, now, self.policy)
            else:
                try:
                    body = messages.decode_uplink(topic, payload)
                except messages.MessageError as err:
                    # the ingest dead-letters it with the reason; we only count it
                    self.counters["bad_acks"] += 1
                    log.warning("undecodable ack on %s: %s", topic, err)
                else:
                    C.handle_ack(session, body["m"], body, now, self.alert_hook)
                    acks += 1
            to_ack.append((mid, qos))
        return acks, pubacks, to_ack

    def _send_due(self, session, now):
        sent = []
        for cmd in C.due(session, now, self.batch):
            try:
                key = self._key(session, cmd.meter_id)
            except M.MeterKeyError as err:
                key, why = None, str(err)
            else:
                why = "no key for meter %s" % cmd.meter_id
            if key is None:
                if cmd.state == C.QUEUED:
                    cmd.reason = why
                    C.transition(session, cmd, C.REJECT, now, detail=why)
                    C.raise_alert(session, now, cmd.meter_id, cmd.id, "command_unsignable",
                                  why, self.alert_hook)
                continue
            first = cmd.state == C.QUEUED
            payload = C.prepare_send(session, cmd, key, now, self.policy)
            sent.append((cmd.id, cmd.counter, cmd.meter_id, payload, first))
        session.commit()  # SENT (and the counter) is durable before anything leaves
        for command_id, counter, meter_id, payload, first in sent:
            info = self._client.publish(messages.command_topic(meter_id), payload, qos=1)
            self._in_flight[info.mid] = (command_id, counter)
            self.counters["sent" if first else "resent"] += 1
        return len(sent)

    def step(self):
        """One round: inbox, expiry, sending.  Returns what it did (counts)."""
        now = self._now()
        with Session(self.engine, expire_on_commit=False) as session:
            acks, pubacks, to_ack = self._apply_inbox(session, now)
            session.commit()
            for mid, qos in to_ack:  # only now may the broker forget them
                if self._client is not None:
                    self._client.ack(mid, qos)
            expired = C.expire_due(session, now, self.policy, self.alert_hook)
            session.commit()
            sent = self._send_due(session, now)
        self.counters["acks"] += acks
        self.counters["pubacks"] += pubacks
        self.counters["expired"] += len(expired)
        return {"acks": acks, "pubacks": pubacks, "expired": len(expired), "sent": sent}

    def run(self, stop, interval_s=0.2):
        """Call ``step`` until ``stop`` (a threading.Event) is set; a failing round is retried."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # database down: keep going, state is safe in the database
                log.exception("dispatcher round failed")
            stop.wait(interval_s)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m headend.dispatcher",
        description="Urja command dispatcher: durable downlink queue -> MQTT, acks back.",
        epilog="example: URJA_DATABASE_URL=sqlite:///out/urja.db URJA_MASTER_KEY=<64 hex> "
               "python -m headend.dispatcher --port 1883")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--client-id", default="urja-dispatcher",
                   help="stable: a restarted dispatcher must reuse it to get acks sent meanwhile")
    p.add_argument("--db", default=None, help="database URL (default URJA_DATABASE_URL)")
    p.add_argument("--interval-s", type=float, default=0.2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    d = Dispatcher(make_engine(args.db), args.host, args.port, M.master_key_from_env(),
                   args.client_id).start()
    stop = threading.Event()
    try:
        d.run(stop, args.interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
