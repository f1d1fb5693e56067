"""End-to-end ingest: paho meters -> real Mosquitto -> IngestWorker -> SQLite / PostgreSQL."""
import pytest
from sqlalchemy import text

from headend.tests.conftest import Meters, count, register_meters, wait_until
from headend.store import open_gaps

T0 = 1795737600  # 2026-11-28 00:00:00 UTC (a 900 s boundary: 1795737600 / 900 = 1995264)
IV = 900


def reading(i, energy, cum):
    """Fields of a reading uplink holding interval ``i`` of the day (one record)."""
    return {"iv": IV, "u": "Wh", "cum": cum,
            "r": [[T0 + i * IV, energy, 230000, 1000, 0, IV]]}


def meter_ids(n):
    return ["UJ-%04d" % k for k in range(n)]


# "c": reading uplinks decoded by headend/_fastingest.c (the default when built);
# "python": the reference path it must agree with
@pytest.mark.parametrize("scanner", ["c", "python"])
def test_readings_from_50_meters_x_96_intervals_are_stored_exactly_once(engine, start_worker,
                                                                        meters, scanner):
    ids = meter_ids(50)
    register_meters(engine, ids)
    worker = start_worker(scanner=scanner)
    assert worker.worker.scanner == scanner
    infos = []
    for i in range(96):
        for k, mid in enumerate(ids):
            # meter k uses k+1 Wh per interval; seq = i + 1
            infos.append(meters.publish("reading", mid, i + 1, T0 + (i + 1) * IV,
                                        reading(i, k + 1, (k + 1) * (i + 1))))
    meters.wait(infos)
    wait_until(lambda: count(engine, "readings") >= 4800, what="4800 readings")
    wait_until(lambda: worker.counters.received >= 4800, what="all received")
    # the counters move just after the commit the rows below came from
    wait_until(lambda: worker.counters.stored >= 4800, what="stored counter")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM readings")).scalar() == 4800
        assert conn.execute(text(
            "SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, start_t FROM readings) d")).scalar() == 4800
        # sum over meters of 96 * (k+1) = 96 * (1 + ... + 50) = 96 * 1275 = 122400 Wh
        assert conn.execute(text("SELECT SUM(energy) FROM readings")).scalar() == 122400
        assert conn.execute(text("SELECT COUNT(*) FROM uplinks_seen")).scalar() == 4800
    assert worker.counters.stored == 4800
    assert worker.counters.readings == 4800
    assert worker.counters.duplicates == 0
    assert worker.counters.dead_lettered == 0
    assert count(engine, "dead_letters") == 0


def test_same_meter_and_sequence_published_twice_is_stored_once(engine, start_worker, meters):
    register_meters(engine, ["UJ-1"])
    worker = start_worker()
    meters.wait([meters.publish("reading", "UJ-1", 7, T0 + IV, reading(0, 50, 50)),
                 meters.publish("reading", "UJ-1", 7, T0 + IV, reading(0, 50, 50))])
    wait_until(lambda: worker.counters.received >= 2, what="both copies received")
    wait_until(lambda: worker.counters.stored + worker.counters.duplicates >= 2, what="commit")
    assert count(engine, "readings") == 1
    assert worker.counters.stored == 1
    assert worker.counters.duplicates == 1


def test_uplinks_resent_after_a_reconnect_are_deduplicated(engine, start_worker, broker):
    register_meters(engine, ["UJ-1", "UJ-2"])
    worker = start_worker()
    first = Meters(broker, client_id="UJ-fleet")
    batch = [(mid, i) for mid in ("UJ-1", "UJ-2") for i in range(10)]
    first.wait([first.publish("reading", mid, i + 1, T0 + (i + 1) * IV, reading(i, 5, 5 * (i + 1)))
                for mid, i in batch])
    first.close()
    # the meters' outboxes did not see the acks: after reconnecting they send all 20 again
    again = Meters(broker, client_id="UJ-fleet")
    again.wait([again.publish("reading", mid, i + 1, T0 + (i + 1) * IV, reading(i, 5, 5 * (i + 1)))
                for mid, i in batch])
    again.close()
    wait_until(lambda: worker.counters.stored + worker.counters.duplicates >= 40, what="40 handled")
    assert count(engine, "readings") == 20
    assert worker.counters.stored == 20
    assert worker.counters.duplicates == 20


@pytest.mark.parametrize("scanner", ["c", "python"])
def test_malformed_uplinks_are_dead_lettered_with_a_reason_and_nothing_else_stored(
        engine, start_worker, meters, scanner):
    from firmware.protocol import messages
    register_meters(engine, ["UJ-1"])
    register_meters(engine, ["WT-1"], service="water")
    worker = start_worker(scanner=scanner)
    good = messages.encode_uplink("reading", "UJ-1", 1, T0, reading(0, 5, 5))
    no_cum = dict(reading(0, 5, 5))
    del no_cum["cum"]
    import cbor2  # independent encoder: a body our own encoder would refuse to build
    cases = [
        ("urja/v1/UJ-1/up/reading", b"\xff\x00\x01", "not valid CBOR"),
        ("urja/v1/UJ-1/up/reading",
         cbor2.dumps({"v": 1, "m": "UJ-1", "s": 2, "t": T0, **no_cum}), "reading.cum: missing"),
        ("urja/v1/UJ-2/up/reading", good, "body says meter 'UJ-1'"),
        ("urja/v1/UJ-1/up/bogus", good, "unknown uplink kind"),
        ("urja/v1/UJ-9/up/reading",
         messages.encode_uplink("reading", "UJ-9", 1, T0, reading(0, 5, 5)), "not registered"),
        ("urja/v1/WT-1/up/reading",
         messages.encode_uplink("reading", "WT-1", 1, T0, reading(0, 5, 5)), "counts in L"),
    ]
    meters.wait([meters.publish_raw(topic, payload) for topic, payload, _ in cases])
    wait_until(lambda: count(engine, "dead_letters") >= len(cases), what="dead letters")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT topic, payload, reason FROM dead_letters")).all()
    by_payload = {(r.topic, bytes(r.payload)): r.reason for r in rows}
    for topic, payload, reason_part in cases:
        assert reason_part in by_payload[(topic, payload)], (topic, by_payload)
    for table in ("readings", "uplinks_seen", "events", "status_history"):
        assert count(engine, table) == 0, table
    # the counters move just after the commit the rows above came from
    wait_until(lambda: worker.counters.dead_lettered == len(cases), what="dead-letter counter")
    assert worker.counters.stored == 0


def test_sequence_gaps_are_recorded_and_closed_when_the_late_messages_arrive(
        engine, start_worker, meters):
    register_meters(engine, ["UJ-1"])
    worker = start_worker()
    sent = [s for s in range(1, 11) if s not in (4, 5, 8)]
    meters.wait([meters.publish("heartbeat", "UJ-1", s, T0 + s, {"up": s}) for s in sent])
    # 1..10 without 4, 5, 8 -> missing runs [4, 5] and [8, 8]
    wait_until(lambda: open_gaps(engine, "UJ-1") == [("UJ-1", 4, 5), ("UJ-1", 8, 8)],
               what="two open gaps")
    meters.wait([meters.publish("heartbeat", "UJ-1", 8, T0 + 8, {"up": 8})])
    wait_until(lambda: open_gaps(engine, "UJ-1") == [("UJ-1", 4, 5)], what="gap 8 closed")
    with engine.connect() as conn:
        closed = conn.execute(text(
            "SELECT first_seq, last_seq FROM seq_gaps WHERE closed_at IS NOT NULL")).all()
    assert [tuple(r) for r in closed] == [(8, 8)]
    # the scan commits in a thread, then the worker's loop adds to its counters
    wait_until(lambda: worker.counters.gaps_closed == 1, what="gaps_closed counted")
    assert worker.counters.gaps_opened == 2
    assert worker.counters.gaps_closed == 1
