"""Sequence gaps that do not close by themselves get a ``backfill`` downlink; its ack decides.

docs/protocol.md, "Downlink commands", kind ``backfill``: fields ``[id,
first_s, last_s]``; the meter re-publishes the held uplinks in the range
(byte-identical, same ``s``) and acks OK with ``n`` (re-queued) and ``lo``
(oldest ``s`` still held).  These tests play the meter through the head-end's
own command path (``commands.prepare_send`` / ``handle_ack``), and end to end
through the real dispatcher and a real Mosquitto with the firmware meter core
deciding on the command.
"""
import threading
import time
import types

import paho.mqtt.client as paho
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firmware.core import auth
from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig
from firmware.protocol import messages
from headend import commands as C
from headend import metrics
from headend import models as M
from headend.dispatcher import Dispatcher
from headend.store import UplinkStore, open_gaps, request_backfills, scan_gaps
from headend.tests.conftest import WorkerThread, register_meters, wait_until

T0 = 1795737600
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MASTER = bytes(range(100, 132))
POLICY = C.RetryPolicy()
GRACE_S = 300


def heartbeat(m, s):
    return {"v": 1, "m": m, "s": s, "t": T0 + s, "kind": "heartbeat", "up": s}


def store(engine, meter, seqs, now=T0):
    UplinkStore(engine).write([heartbeat(meter, s) for s in seqs], now=now)
    return scan_gaps(engine, [meter], now)


def commands(engine):
    with Session(engine) as s:
        return [(c.id, c.kind, c.fields, c.state) for c in
                s.scalars(select(C.Command).order_by(C.Command.created_at, C.Command.id))]


def gap_rows(engine, meter):
    with Session(engine) as s:
        return [(g.first_seq, g.last_seq, g.closed_at is not None, g.unrecoverable_at is not None,
                 g.backfill_command_id) for g in
                s.scalars(select(M.SeqGap).where(M.SeqGap.meter_id == meter)
                          .order_by(M.SeqGap.first_seq, M.SeqGap.id))]


def send_and_ack(engine, command_id, now, **ack_fields):
    """Sign and 'send' the command, then apply the meter's OK ack carrying ``ack_fields``."""
    with Session(engine) as s:
        cmd = s.get(C.Command, command_id)
        C.prepare_send(s, cmd, KEY, now, POLICY)
        ack = {"id": cmd.id, "c": cmd.counter, "r": auth.OK, "rn": "OK"}
        ack.update(ack_fields)
        C.handle_ack(s, cmd.meter_id, ack, now + 1)
        s.commit()


def alerts(engine, kind):
    with Session(engine) as s:
        return [a.message for a in s.scalars(select(C.CommandAlert)
                                             .where(C.CommandAlert.kind == kind))]


def scrape(engine):
    settings = types.SimpleNamespace(metrics_window_s=300, comm_loss_after_s=2700)
    return metrics.render(metrics.build_registry(engine, settings, clock=lambda: T0))


# --- when a backfill is asked for ------------------------------------------------------------

def test_a_gap_that_closes_within_the_grace_period_gets_no_backfill(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 3])
    assert request_backfills(engine, T0 + GRACE_S - 1, GRACE_S) == (0, 0)
    store(engine, "UJ-1", [2], now=T0 + 10)               # the late uplink arrives
    assert request_backfills(engine, T0 + 10 * GRACE_S, GRACE_S) == (0, 0)
    assert commands(engine) == []


def test_a_gap_still_open_after_the_grace_period_gets_exactly_one_backfill(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 2, 5])
    assert request_backfills(engine, T0 + GRACE_S - 1, GRACE_S) == (0, 0)
    assert request_backfills(engine, T0 + GRACE_S, GRACE_S) == (1, 0)
    assert request_backfills(engine, T0 + 2 * GRACE_S, GRACE_S) == (0, 0)
    [(cid, kind, fields, state)] = commands(engine)
    assert (kind, fields[1:], state) == ("backfill", [3, 4], C.QUEUED)
    assert fields[0] == cid and cid.startswith("BF-")
    assert gap_rows(engine, "UJ-1") == [(3, 4, False, False, cid)]


def test_concurrent_workers_queue_one_backfill_per_gap(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 4, 9])                       # gaps 2..3 and 5..8
    results, errors = [], []
    start = threading.Barrier(4)

    def worker():
        try:
            start.wait()
            results.append(request_backfills(engine, T0 + GRACE_S, GRACE_S))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r[0] for r in results) == 2
    assert sorted(f[1:] for _id, _k, f, _s in commands(engine)) == [[2, 3], [5, 8]]


def test_a_gap_longer_than_the_meter_accepts_asks_for_its_newest_part(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 25002])                      # 2..25001 missing
    request_backfills(engine, T0 + GRACE_S, GRACE_S)
    [(_id, _kind, fields, _state)] = commands(engine)
    assert fields[1:] == [25001 - C.BACKFILL_MAX_SPAN + 1, 25001]


def test_backfill_fields_are_checked_against_the_spec(engine):
    register_meters(engine, ["UJ-1"])
    with Session(engine) as s:
        for bad in ([5, 4], [1, 1 + C.BACKFILL_MAX_SPAN], [1], [-1, 3], [1.0, 3], [True, 3]):
            with pytest.raises(C.CommandError):
                C.enqueue(s, "UJ-1", "backfill", bad, now=T0)
        assert C.enqueue(s, "UJ-1", "backfill", [1, C.BACKFILL_MAX_SPAN], now=T0).state == \
            C.QUEUED


def test_the_signed_backfill_carries_the_documented_canonical_bytes(engine):
    register_meters(engine, ["UJ-1"])
    with Session(engine) as s:
        cmd = C.enqueue(s, "UJ-1", "backfill", [3, 4], now=T0, command_id="BF-9")
        payload = C.prepare_send(s, cmd, KEY, T0, POLICY)
        sent = messages.decode_command(payload)
    assert (sent["kind"], sent["fields"]) == ("backfill", ["BF-9", 3, 4])
    assert auth.canonical("backfill", "UJ-1", sent["counter"], T0 + 86400, sent["fields"]) == \
        b"URJA1|backfill|UJ-1|1|%d|BF-9|3|4" % (T0 + 86400)
    assert auth.DownlinkGuard("UJ-1").check(KEY, sent, T0) == auth.OK


# --- what the ack says -----------------------------------------------------------------------

def test_an_ack_whose_lo_is_above_the_gap_marks_it_unrecoverable_and_it_is_not_asked_again(
        engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 2, 5, 6])
    request_backfills(engine, T0 + GRACE_S, GRACE_S)
    [(cid, _k, _f, _s)] = commands(engine)
    send_and_ack(engine, cid, T0 + GRACE_S, n=2, lo=5)     # holds 5, 6 only: 3..4 are gone
    assert commands(engine)[0][3] == C.APPLIED
    assert gap_rows(engine, "UJ-1") == [(3, 4, False, True, cid)]
    assert open_gaps(engine, "UJ-1") == [("UJ-1", 3, 4)]   # still unfilled, honestly
    assert open_gaps(engine, "UJ-1", unrecoverable=False) == []
    assert alerts(engine, "data_lost") == ["uplinks s 3..4 are gone: the meter holds s >= 5 only"]
    assert b"urja_ingest_unrecoverable_sequence_gaps 1.0" in scrape(engine)
    assert b"urja_ingest_open_sequence_gaps 1.0" in scrape(engine)
    store(engine, "UJ-1", [7], now=T0 + 2 * GRACE_S)        # later scans leave it alone
    assert request_backfills(engine, T0 + 10 * GRACE_S, GRACE_S) == (0, 0)
    assert gap_rows(engine, "UJ-1") == [(3, 4, False, True, cid)]
    assert len(commands(engine)) == 1


def test_an_ack_whose_lo_is_at_or_below_the_gap_waits_for_the_resent_uplinks(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 2, 5])
    request_backfills(engine, T0 + GRACE_S, GRACE_S)
    [(cid, _k, _f, _s)] = commands(engine)
    send_and_ack(engine, cid, T0 + GRACE_S, n=2, lo=1)
    assert gap_rows(engine, "UJ-1") == [(3, 4, False, False, cid)]
    store(engine, "UJ-1", [3, 4], now=T0 + GRACE_S + 5)     # the re-sent uplinks
    assert gap_rows(engine, "UJ-1") == [(3, 4, True, False, cid)]
    assert open_gaps(engine) == []


def test_lo_inside_the_gap_recovers_the_held_part_and_gives_up_the_rest_without_asking_again(
        engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 2, 9])                        # 3..8 missing
    request_backfills(engine, T0 + GRACE_S, GRACE_S)
    [(cid, _k, _f, _s)] = commands(engine)
    send_and_ack(engine, cid, T0 + GRACE_S, n=3, lo=6)      # holds 6.. : 3..5 gone
    store(engine, "UJ-1", [6, 7, 8], now=T0 + GRACE_S + 5)
    rows = gap_rows(engine, "UJ-1")
    assert rows[0] == (3, 8, True, False, cid)
    assert rows[1][:4] == (3, 5, False, False)               # what is left, a new gap
    assert request_backfills(engine, T0 + 3 * GRACE_S, GRACE_S) == (0, 1)
    assert len(commands(engine)) == 1                        # not asked for again
    assert open_gaps(engine, "UJ-1", unrecoverable=False) == []
    assert open_gaps(engine, "UJ-1") == [("UJ-1", 3, 5)]


def test_a_backfill_that_did_not_fill_the_gap_is_asked_again_at_most_three_times(engine):
    # the meter acked OK (lo below the gap) but reset before re-sending: its queued
    # ranges live in RAM (docs/protocol.md), so only asking again gets the data
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 4])
    now = T0 + GRACE_S
    for attempt in (1, 2, 3):
        assert request_backfills(engine, now, GRACE_S) == (1, 0)
        cid = commands(engine)[-1][0]
        assert cid.endswith("-%d" % attempt)
        assert request_backfills(engine, now + GRACE_S, GRACE_S) == (0, 0)  # still open
        send_and_ack(engine, cid, now + GRACE_S, n=2, lo=1)
        now += 2 * GRACE_S + 1                       # finished more than the grace ago
    assert request_backfills(engine, now + 10 * GRACE_S, GRACE_S) == (0, 0)
    assert [(f[1:], st) for _id, _k, f, st in commands(engine)] == [([2, 3], C.APPLIED)] * 3


def test_an_ok_ack_without_n_and_lo_raises_an_alert_and_leaves_the_gap_alone(engine):
    register_meters(engine, ["UJ-1"])
    store(engine, "UJ-1", [1, 3])
    request_backfills(engine, T0 + GRACE_S, GRACE_S)
    [(cid, _k, _f, _s)] = commands(engine)
    send_and_ack(engine, cid, T0 + GRACE_S)
    assert gap_rows(engine, "UJ-1") == [(2, 2, False, False, cid)]
    assert alerts(engine, "unexpected_ack") == [
        "backfill ack without integer n and lo: n=None lo=None"]


# --- end to end: ingest -> queue -> dispatcher -> Mosquitto -> meter -> ack -> gap ---------

class OutboxMeter:
    """A meter: the firmware core decides on commands, an outbox holds uplinks from ``lo`` on.

    Every command goes through the real ``firmware.core.meter.Meter.apply_command``
    (authentication, replay guard, journal; it answers OK to a good ``backfill``).
    The outbox part is written from the spec (docs/protocol.md): re-publish the
    held uplinks of the range byte for byte, then ack OK with ``n`` and ``lo``.
    """

    def __init__(self, broker, meter_id, lo):
        self.meter_id, self.lo = meter_id, lo
        self.core = Meter(MeterConfig.from_dict(dict(EXAMPLE_CONFIG, meter_id=meter_id)),
                          now=int(time.time()))
        self.outbox = {}     # s -> (topic, payload), everything ever created
        self.seq = 0
        self.answered = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=meter_id,
                                  clean_session=False, protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        subscribed = threading.Event()
        self.client.on_connect = lambda cl, *a: cl.subscribe(messages.command_topic(meter_id), 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_command
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "meter not subscribed"

    def uplink(self, kind, fields, publish=True):
        self.seq += 1
        topic = messages.topic(self.meter_id, kind)
        payload = messages.encode_uplink(kind, self.meter_id, self.seq, int(time.time()), fields)
        self.outbox[self.seq] = (topic, payload)
        if publish:  # publish=False: lost on the way (e.g. the ingest had no subscription)
            self.client.publish(topic, payload, qos=1)

    def _on_command(self, client, userdata, msg):
        cmd = messages.decode_command(msg.payload)
        result, detail = self.core.apply_command(cmd, int(time.time()))
        fields = {"id": cmd["id"], "c": cmd["counter"], "r": result,
                  "rn": C.RESULT_NAMES[result], "d": detail}
        if result == auth.OK and cmd["kind"] == "backfill":
            first, last = cmd["fields"][1], cmd["fields"][2]
            held = [s for s in range(max(first, self.lo), last + 1) if s in self.outbox]
            for s in held:
                client.publish(*self.outbox[s], qos=1)
            fields.update(n=len(held), lo=self.lo)
        self.answered.append((cmd["id"], fields["rn"]))
        self.uplink("ack", fields)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_lost_uplinks_come_back_through_a_backfill_or_are_marked_gone(engine, broker):
    ids = ["UJ-HOLDS", "UJ-REUSED"]
    register_meters(engine, ids)
    with Session(engine) as s:
        for mid in ids:
            s.add(M.MeterKey.seal(MASTER, mid, KEY))
        s.commit()
    worker = WorkerThread(engine, broker, client_id="ingest-bf", backfill_grace_s=1,
                          gap_scan_s=0.2).start()
    dispatcher = Dispatcher(engine, broker.host, broker.port, MASTER,
                            client_id="disp-bf").start()
    holds = OutboxMeter(broker, "UJ-HOLDS", lo=1)      # still has everything
    reused = OutboxMeter(broker, "UJ-REUSED", lo=8)    # flash reused: s < 8 overwritten
    try:
        for meter in (holds, reused):
            for s in range(1, 11):                     # 4..6 never reach the head-end
                meter.uplink("heartbeat", {"up": s}, publish=s not in (4, 5, 6))

        def settled():
            dispatcher.step()
            with Session(engine) as s:
                n = s.scalar(select(func.count()).select_from(C.Command)
                             .where(C.Command.state == C.APPLIED))
            return n == 2 and not open_gaps(engine, unrecoverable=False)
        wait_until(settled, timeout_s=30, what="both backfills applied and gaps settled")
    finally:
        holds.close()
        reused.close()
        dispatcher.stop()
        worker.stop()
    # UJ-HOLDS: the three lost uplinks were re-sent and stored once; the gap closed
    with engine.connect() as conn:
        stored = dict(conn.execute(select(M.UplinkSeen.meter_id, func.count())
                                   .group_by(M.UplinkSeen.meter_id)).all())
    assert stored["UJ-HOLDS"] == 11                      # 10 heartbeats + 1 ack
    assert [r[:4] for r in gap_rows(engine, "UJ-HOLDS")] == [(4, 6, True, False)]
    # UJ-REUSED: nothing to re-send; the gap is marked unrecoverable and alerted
    assert stored["UJ-REUSED"] == 8                      # 7 heartbeats + 1 ack
    assert [r[:4] for r in gap_rows(engine, "UJ-REUSED")] == [(4, 6, False, True)]
    assert alerts(engine, "data_lost") == [
        "uplinks s 4..6 are gone: the meter holds s >= 8 only"]
    assert [(m.answered) for m in (holds, reused)] == [[(c, "OK")] for c in
                                                       (gap_rows(engine, "UJ-HOLDS")[0][4],
                                                        gap_rows(engine, "UJ-REUSED")[0][4])]
    assert worker.counters.backfills_requested == 2
