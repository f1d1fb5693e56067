"""Crash and overload: a killed worker loses nothing; a broker that drops is detected."""
import json
import os
import signal
import subprocess
import sys

import pytest

from headend.store import open_gaps
from headend.tests.conftest import (Meters, WorkerThread, count, make_broker, register_meters,
                                    wait_until)

T0 = 1795737600
IV = 900
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_worker_process(db_url, broker, client_id):
    proc = subprocess.Popen(
        [sys.executable, "-m", "headend.ingest", "--db", db_url, "--host", broker.host,
         "--port", str(broker.port), "--client-id", client_id, "--batch-ms", "20"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # {"subscribed": ...} once the subscription is in place
    if json.loads(line or "{}").get("subscribed") != client_id:
        proc.kill()
        raise AssertionError("worker did not start: %r %s" % (line, proc.stdout.read()))
    return proc


def publish_day(m, ids, intervals):
    infos = []
    for i in intervals:
        for mid in ids:
            infos.append(m.publish("reading", mid, i + 1, T0 + (i + 1) * IV,
                                   {"iv": IV, "u": "Wh", "cum": 10 * (i + 1),
                                    "r": [[T0 + i * IV, 10, None, None, 0, IV]]}))
    m.wait(infos)


def test_killing_the_worker_mid_stream_and_restarting_it_loses_nothing(db_url, engine, broker):
    ids = ["UJ-%04d" % k for k in range(50)]
    register_meters(engine, ids)
    m = Meters(broker)
    worker = start_worker_process(db_url, broker, "ingest-0")
    try:
        publish_day(m, ids, range(0, 40))                    # 2000 uplinks
        wait_until(lambda: count(engine, "readings") > 0, what="first commits")
        worker.send_signal(signal.SIGKILL)                   # no goodbye, no final commit
        worker.wait()
        at_kill = count(engine, "readings")
        publish_day(m, ids, range(40, 96))                   # 2800 more while nobody listens
        assert count(engine, "readings") == at_kill
        worker = start_worker_process(db_url, broker, "ingest-0")  # same persistent session
        wait_until(lambda: count(engine, "readings") >= 4800, timeout_s=60, what="4800 readings")
    finally:
        worker.kill()
        worker.wait()
        m.close()
    assert at_kill < 4800  # the kill really happened before everything was stored
    assert count(engine, "readings") == 4800   # 50 meters x 96 intervals, each once
    assert count(engine, "uplinks_seen") == 4800
    assert open_gaps(engine) == []


def test_two_workers_in_one_shared_group_split_the_load_and_store_everything_once(
        engine, broker):
    ids = ["UJ-%04d" % k for k in range(20)]
    register_meters(engine, ids)
    a = WorkerThread(engine, broker, client_id="ingest-a").start()
    b = WorkerThread(engine, broker, client_id="ingest-b").start()
    m = Meters(broker)
    try:
        publish_day(m, ids, range(96))                       # 20 x 96 = 1920 uplinks
        wait_until(lambda: count(engine, "readings") >= 1920, what="1920 readings")
        wait_until(lambda: a.counters.received + b.counters.received >= 1920, what="received")
    finally:
        m.close()
        a.stop()
        b.stop()
    assert count(engine, "readings") == 1920
    assert a.counters.received > 0 and b.counters.received > 0   # both took a share
    assert a.counters.received + b.counters.received == 1920     # each message went to one


def test_a_broker_that_drops_for_a_stopped_worker_shows_up_as_a_sequence_gap(engine):
    # Mosquitto's default-sized queue, shrunk to 10 so the test is quick: while the
    # worker is away the broker keeps 10 messages for its session and drops the rest.
    broker = make_broker("max_queued_messages 10\nsys_interval 1\n")
    m = Meters(broker)
    try:
        register_meters(engine, ["UJ-1"])
        w = WorkerThread(engine, broker, client_id="ingest-0").start()
        m.wait([m.publish("heartbeat", "UJ-1", 1, T0, {"up": 1})])
        wait_until(lambda: w.counters.stored == 1, what="seq 1 stored")
        w.stop()                                            # persistent session stays
        m.wait([m.publish("heartbeat", "UJ-1", s, T0 + s, {"up": s}) for s in range(2, 101)])
        w = WorkerThread(engine, broker, client_id="ingest-0").start()
        # Mosquitto drops the newest messages once the queue is full, so the loss is a
        # tail; it becomes visible as a gap when the meter's next message arrives.
        m.wait([m.publish("heartbeat", "UJ-1", 101, T0 + 101, {"up": 101})])
        wait_until(lambda: open_gaps(engine, "UJ-1"), what="a recorded gap")
        wait_until(lambda: w.counters.broker_dropped > 0, what="broker drop counter")
        w.stop()
    finally:
        m.close()
        broker.stop()
    # 99 sent while away (2..100), at most 10 queued: at least 89 missing, all inside 2..100
    gaps = open_gaps(engine, "UJ-1")
    missing = sum(last - first + 1 for _m, first, last in gaps)
    assert missing >= 89
    assert all(2 <= first <= last <= 100 for _m, first, last in gaps)
    assert count(engine, "uplinks_seen") == 101 - missing


def test_with_the_ingest_broker_settings_a_stopped_worker_misses_nothing(engine, broker):
    m = Meters(broker)
    try:
        register_meters(engine, ["UJ-1"])
        w = WorkerThread(engine, broker, client_id="ingest-0").start()
        m.wait([m.publish("heartbeat", "UJ-1", 1, T0, {"up": 1})])
        wait_until(lambda: w.counters.stored == 1, what="seq 1 stored")
        w.stop()
        m.wait([m.publish("heartbeat", "UJ-1", s, T0 + s, {"up": s}) for s in range(2, 3001)])
        w = WorkerThread(engine, broker, client_id="ingest-0").start()
        wait_until(lambda: count(engine, "uplinks_seen") >= 3000, what="3000 uplinks")
        w.stop()
    finally:
        m.close()
    assert count(engine, "heartbeats") == 3000   # 3x Mosquitto's default queue of 1000
    assert open_gaps(engine, "UJ-1") == []


@pytest.mark.parametrize("client", ["fast", "gmqtt"])
def test_a_broker_restart_mid_stream_loses_nothing_because_the_worker_resubscribes(engine,
                                                                                   client):
    """Mosquitto restarted (SIGTERM, persistence on) while meters publish and a worker commits.

    Mosquitto 2.0.11 restores the worker's persistent session but not its shared
    subscription, so the worker must subscribe again on every reconnect (without
    that, this test times out: nothing published after the restart arrives).
    The meters reconnect only once the worker has re-subscribed: a meter that
    reaches the broker before any worker of the group publishes into the void
    (no subscriber), which becomes a sequence gap for the backfill to repair
    (test_ingest_backfill.py), not something the worker can prevent.
    """
    from headend.ingest import MOSQUITTO_INGEST_CONF
    ids = ["UJ-%04d" % k for k in range(30)]
    register_meters(engine, ids)
    broker = make_broker(MOSQUITTO_INGEST_CONF)
    m = Meters(broker)
    w = WorkerThread(engine, broker, client_id="ingest-0", client=client).start()
    infos = []
    try:
        for i in range(60):
            for mid in ids:
                infos.append(m.publish("reading", mid, i + 1, T0 + (i + 1) * IV,
                                       {"iv": IV, "u": "Wh", "cum": 10 * (i + 1),
                                        "r": [[T0 + i * IV, 10, None, None, 0, IV]]}))
            if i == 20:
                wait_until(lambda: count(engine, "readings") > 0, what="first commits")
                m.client.loop_stop()   # the meters stay away until we say so
                broker.restart()       # SIGTERM: sessions and queued messages are saved
                wait_until(lambda: w.counters.subscribes >= 2, timeout_s=20,
                           what="the worker's second SUBACK")
                m.client.reconnect()   # re-sends whatever was in flight at the restart
                m.client.loop_start()
        m.wait(infos, timeout_s=60)
        wait_until(lambda: count(engine, "uplinks_seen") >= 1800, timeout_s=30,
                   what="1800 uplinks")
    finally:
        w.stop()
        m.close()
        broker.stop()
    assert count(engine, "readings") == 1800      # 30 meters x 60 intervals, each once
    assert count(engine, "uplinks_seen") == 1800
    assert open_gaps(engine) == []
