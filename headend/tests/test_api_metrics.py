"""/metrics: ingest rate and lag, command queue depth by state, comm health (SQLite and PostgreSQL).

Values are parsed back with prometheus_client's own text parser (an
independent reader of the exposition format).
"""
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from headend import models as M
from headend.tests.api_world import NOW, make_world


@pytest.fixture
def world(engine):
    w = make_world(engine, real_queue=True, metrics_window_s=300, comm_loss_after_s=2700)
    yield w
    w.client.close()


def scrape(world):
    r = world.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def seen(engine, rows):
    """uplinks_seen rows (meter, seq, t, received_at)."""
    with Session(engine) as s:
        for meter_id, seq, t, received_at in rows:
            s.add(M.UplinkSeen(meter_id=meter_id, seq=seq, kind="reading", t=t,
                               received_at=received_at))
        s.commit()


def test_ingest_rate_and_lag_over_the_window(world):
    # 10 uplinks received inside the 300 s window with lags 1..10 s, and 5 older ones outside it
    seen(world.engine, [("A-01", i, NOW - 100 - i, NOW - 100) for i in range(1, 11)])
    seen(world.engine, [("A-02", i, NOW - 900, NOW - 300) for i in range(1, 6)])  # not > NOW-300
    m = scrape(world)
    assert m[("urja_ingest_uplinks_per_second", ())] == 10 / 300
    # nearest rank: p50 -> ceil(0.5 * 10) = 5th smallest lag = 5 s; p99 -> ceil(9.9) = 10th = 10 s
    assert m[("urja_ingest_lag_seconds", (("quantile", "0.5"),))] == 5
    assert m[("urja_ingest_lag_seconds", (("quantile", "0.99"),))] == 10
    assert m[("urja_ingest_last_received_timestamp_seconds", ())] == NOW - 100


def test_lag_is_nan_when_nothing_arrived_in_the_window(world):
    m = scrape(world)
    assert m[("urja_ingest_uplinks_per_second", ())] == 0
    v = m[("urja_ingest_lag_seconds", (("quantile", "0.5"),))]
    assert v != v  # NaN


def test_command_queue_depth_by_state_includes_zero_states(world):
    world.post("op_a", "/commands", json={"kind": "topup", "meter_ids": ["A-01", "A-02", "A-03"],
                                          "args": [1000]})
    m = scrape(world)
    assert m[("urja_command_queue_depth", (("state", "QUEUED"),))] == 3
    for state in ("SENT", "DELIVERED", "APPLIED", "FAILED", "EXPIRED"):
        assert m[("urja_command_queue_depth", (("state", state),))] == 0


def test_comm_health_counts_meters_heard_within_comm_loss_window_per_tenant(world):
    # comm_loss_after_s = 2700: heard at NOW-2699 counts, NOW-2700 does not
    seen(world.engine, [("A-01", 1, NOW - 2699, NOW - 2699), ("A-02", 1, NOW - 2700, NOW - 2700),
                        ("A-01", 2, NOW - 10, NOW - 10), ("B-01", 1, NOW - 5, NOW - 5)])
    m = scrape(world)
    assert m[("urja_meters_active", (("tenant", "A"),))] == 20
    assert m[("urja_meters_communicating", (("tenant", "A"),))] == 1      # A-01 only
    assert m[("urja_meters_silent", (("tenant", "A"),))] == 19
    assert m[("urja_meters_communicating", (("tenant", "B"),))] == 1
    assert m[("urja_meters_silent", (("tenant", "B"),))] == 1


def test_held_disconnects_show_as_awaiting_approval(world):
    world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": ["A-05", "A-06"],
                                          "args": ["disconnect"]})
    assert scrape(world)[("urja_commands_awaiting_approval", ())] == 1


def test_in_process_ingest_counters_are_exported():
    from headend.ingest import Counters
    from headend.metrics import IngestCountersCollector
    from prometheus_client import CollectorRegistry, generate_latest
    c = Counters()
    c.received, c.stored, c.duplicates = 7, 5, 2
    reg = CollectorRegistry()
    reg.register(IngestCountersCollector(c, worker="w1"))
    text = generate_latest(reg).decode()
    assert 'urja_ingest_received_total{worker="w1"} 7.0' in text
    assert 'urja_ingest_duplicates_total{worker="w1"} 2.0' in text
