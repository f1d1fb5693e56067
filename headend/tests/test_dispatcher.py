"""Dispatcher end to end: real Mosquitto, real firmware Meter as the peer, simulated hours.

The peer is ``firmware.core.meter.Meter`` behind a paho MQTT 3.1.1 client
that behaves like the meter's shell (docs/protocol.md): client id = meter
id, clean session off, ``urja/v1/<meter>/cmd`` at QoS 1, and for each command
``apply_command`` then an ``ack`` uplink built with ``messages.encode_uplink``.
The clock is simulated, so "offline for hours" takes milliseconds.
SQLite and PostgreSQL (``db_url``), a private broker per test (``broker``).
"""
import threading

import paho.mqtt.client as paho
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import events
from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig
from firmware.protocol import messages
from headend import commands as C
from headend import ledger as L
from headend import models as M
from headend import payments as P
from headend.dispatcher import Dispatcher
from headend.tests.conftest import register_meters, wait_until
from headend.tests.test_commands import create_tables

T0 = 1795737600  # 2026-11-27 00:00:00 UTC
METER = "UJ-77"
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MASTER = bytes(range(100, 132))
SECRETS = {"upi-gw": b"s3cret"}
OPENING_PAISE = 10000


class SimClock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


class MeterPeer:
    """A firmware Meter reachable over MQTT the way the device is."""

    def __init__(self, broker, clock):
        cfg = dict(EXAMPLE_CONFIG, meter_id=METER)
        self.meter = Meter(MeterConfig.from_dict(cfg), now=clock(),
                           opening_credit_paise=OPENING_PAISE)
        self.broker, self.clock = broker, clock
        self.seq = 0
        self.results = []  # (command id, counter, result name) in the order applied
        self.acks_published = 0
        self.client = None

    def _on_message(self, client, userdata, msg):
        cmd = messages.decode_command(msg.payload)
        result, detail = self.meter.apply_command(cmd, self.clock())
        name = C.RESULT_NAMES[result]
        self.results.append((cmd["id"], cmd["counter"], name))
        self.seq += 1
        body = messages.encode_uplink("ack", METER, self.seq, self.clock(),
                                      {"id": cmd["id"], "c": cmd["counter"], "r": result,
                                       "rn": name, "d": detail})
        client.publish(messages.topic(METER, "ack"), body, qos=1)
        self.acks_published += 1

    def connect(self):
        subscribed = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=METER, clean_session=False,
                        protocol=paho.MQTTv311)
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe(messages.command_topic(METER), qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect(self.broker.host, self.broker.port, keepalive=60)
        c.loop_start()
        assert subscribed.wait(10), "meter peer not subscribed"
        self.client = c

    def go_offline(self):
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None

    def credit_paise(self):
        return self.meter.status()["credit_paise"]


@pytest.fixture
def setup(engine, broker):
    create_tables(engine)
    register_meters(engine, [METER])
    with Session(engine) as s:
        s.add(M.MeterKey.seal(MASTER, METER, KEY))
        s.commit()
    clock = SimClock(T0)
    peer = MeterPeer(broker, clock)
    started = []

    def dispatcher(**kw):
        d = Dispatcher(engine, broker.host, broker.port, MASTER, client_id="disp-test",
                       clock=clock, **kw).start()
        started.append(d)
        return d
    yield engine, broker, clock, peer, dispatcher
    for d in started:
        d.stop()
    if peer.client is not None:
        peer.go_offline()


def pay(engine, amount, now, ttl_s=None, txn="UPI-1"):
    raw = ('{"amount_paise": %d, "payer_vpa": "asha@upi", "txn_ref": "%s", '
           '"meter_id": "%s", "gateway": "upi-gw"}' % (amount, txn, METER)).encode()
    with Session(engine) as s:
        status, out = P.handle_payment_webhook(
            s, raw, {"X-Urja-Signature": P.sign_body(SECRETS["upi-gw"], raw)}, now=now,
            secrets=SECRETS, ttl_s=ttl_s)
    assert status == 201, out
    return out["receipt"]["topup"]["command_id"]


def command(engine, command_id):
    with Session(engine) as s:
        return s.get(C.Command, command_id)


def step_until(d, engine, command_id, states, timeout_s=20.0):
    def check():
        d.step()
        cmd = command(engine, command_id)
        return cmd if cmd.state in states else None
    return wait_until(check, timeout_s, "command %s in %s" % (command_id, states))


def topups_applied(peer):
    # TOPUP_APPLIED events in the meter's own event log: [t, code, value = paise credited]
    return [e for e in peer.meter.log.to_state()["events"] if e[1] == events.TOPUP_APPLIED]


def test_topup_reaches_an_online_meter_and_is_acked(setup):
    engine, broker, clock, peer, dispatcher = setup
    peer.connect()
    cid = pay(engine, 50000, clock())
    d = dispatcher()
    cmd = step_until(d, engine, cid, {C.APPLIED})
    assert (cmd.result_name, cmd.counter) == ("OK", 1)
    assert peer.credit_paise() == OPENING_PAISE + 50000  # 10000 + 50000


def test_meter_offline_for_hours_gets_the_topup_once_across_a_head_end_restart(setup):
    engine, broker, clock, peer, dispatcher = setup
    peer.connect()      # the meter's persistent session exists at the broker ...
    peer.go_offline()   # ... and then it drops off the network
    cid = pay(engine, 50000, clock())
    first = dispatcher()
    cmd = step_until(first, engine, cid, {C.DELIVERED})  # the broker holds it for the meter
    assert (cmd.counter, cmd.attempts) == (1, 1)
    first.stop()        # head-end goes down between SENT and the ack

    clock.advance(5 * 3600)  # five hours later the meter comes back
    peer.connect()
    wait_until(lambda: peer.acks_published >= 1, 10, "the meter's ack")
    assert peer.results[0] == (cid, 1, "OK")
    assert command(engine, cid).state == C.DELIVERED  # nobody was there to hear it

    second = dispatcher()  # same client id: the broker kept the ack for it
    cmd = step_until(second, engine, cid, {C.APPLIED})
    assert cmd.result_name == "OK"
    # any copy re-sent meanwhile was answered REPLAYED: credited exactly once
    assert [r[2] for r in peer.results[1:]] == ["REPLAYED"] * (len(peer.results) - 1)
    assert peer.credit_paise() == OPENING_PAISE + 50000
    assert [e[2] for e in topups_applied(peer)] == [50000]
    with Session(engine) as s:
        assert [(e.kind, e.amount_paise) for e in L.entries(s, METER)] == [
            (L.PAYMENT_RECEIVED, 50000), (L.TOPUP_APPLIED, 50000)]


def test_an_unacked_command_is_resent_after_the_timeout_and_the_copy_answers_replayed(setup):
    engine, broker, clock, peer, dispatcher = setup
    policy = C.RetryPolicy(puback_timeout_s=30, ack_timeout_s=120)
    d = dispatcher(policy=policy)
    peer.connect()
    peer.go_offline()
    cid = pay(engine, 20000, clock())
    step_until(d, engine, cid, {C.DELIVERED})
    clock.advance(121)  # past the first ack wait (120 s): re-publish the same bytes
    assert d.step()["sent"] == 1
    step_until(d, engine, cid, {C.DELIVERED})
    peer.connect()  # both copies are waiting in the meter's session
    cmd = step_until(d, engine, cid, {C.APPLIED})
    wait_until(lambda: len(peer.results) == 2, 10, "both copies at the meter")
    assert [r[2] for r in peer.results] == ["OK", "REPLAYED"]
    assert (cmd.attempts, peer.credit_paise()) == (2, OPENING_PAISE + 20000)


def test_a_topup_that_outlives_its_expiry_ends_expired_with_an_alert(setup):
    engine, broker, clock, peer, dispatcher = setup
    alerts = []
    policy = C.RetryPolicy(ack_timeout_s=600, max_ack_timeout_s=600, late_ack_grace_s=300)
    d = dispatcher(policy=policy, alert_hook=alerts.append)
    peer.connect()
    peer.go_offline()
    cid = pay(engine, 30000, clock(), ttl_s=3600)
    step_until(d, engine, cid, {C.DELIVERED})
    clock.advance(3600 + 301)  # expires_at + the late-ack grace, still offline
    cmd = step_until(d, engine, cid, {C.EXPIRED})
    assert [(a.kind, a.command_id) for a in alerts] == [("command_expired", cid)]
    with Session(engine) as s:
        assert s.scalars(select(C.CommandAlert.kind)).all() == ["command_expired"]

    peer.connect()  # the stale copies reach the meter, which refuses them itself
    wait_until(lambda: peer.acks_published >= 1, 10, "the meter's ack")
    d.step()
    assert {r[2] for r in peer.results} == {"EXPIRED"}
    assert peer.credit_paise() == OPENING_PAISE
    assert command(engine, cid).state == C.EXPIRED
    with Session(engine) as s:
        assert [e.kind for e in L.entries(s, METER)] == [L.PAYMENT_RECEIVED,
                                                         L.TOPUP_UNDELIVERED]


def test_a_meter_without_a_key_gets_nothing_and_the_command_fails_with_an_alert(setup):
    engine, broker, clock, peer, dispatcher = setup
    register_meters(engine, ["UJ-NOKEY"])
    with Session(engine) as s:
        C.enqueue(s, "UJ-NOKEY", "relay", ["connect"], clock(), command_id="R-1")
        s.commit()
    d = dispatcher()
    assert d.step()["sent"] == 0
    cmd = command(engine, "R-1")
    assert (cmd.state, cmd.counter) == (C.FAILED, None)
    with Session(engine) as s:
        assert s.scalars(select(C.CommandAlert.kind)).all() == ["command_unsignable"]
