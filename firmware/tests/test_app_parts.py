"""The app shell's pure parts: uplink records in the outbox, liveness, accelerated clock,
external register -> impulses, and the configuration store."""
from firmware.app.config import ConfigError, ConfigStore
from firmware.app.health import AcceleratedClock, Liveness
from firmware.app.main import RegisterFeed
from firmware.app.uplink import Uplink, reading_record, split
from firmware.core import events
from firmware.core.events import EventLog
from firmware.core.outbox import Outbox, RamSegments, RamSlots
from firmware.protocol import messages
from firmware.tests.check import eq, raises

T0 = 1795753800


def _uplink():
    return Uplink(Outbox(RamSegments(4, 1024), RamSlots()), "UJ-1")


def test_uplink_body_carries_its_outbox_sequence_as_s():
    up = _uplink()
    up.heartbeat(T0, {"up": 1})
    seq = up.heartbeat(T0 + 60, {"up": 61})
    eq(seq, 2)
    stored_seq, record = up.outbox.peek(2)[1]
    kind, body = split(record)
    eq(kind, "heartbeat")
    got = messages.decode_uplink(messages.topic("UJ-1", kind), body)
    eq((stored_seq, got["s"], got["t"], got["up"]), (2, 2, T0 + 60, 61))


def test_interval_record_becomes_the_protocol_row_order():
    # metering: (start_t, span_s, energy, avg_mv, avg_ma, count, flags)
    # protocol: [start_t, energy, avg_mv, avg_ma, flags, span_s]
    eq(reading_record((T0, 900, 125, 230000, 5000, 15, 2)), [T0, 125, 230000, 5000, 2, 900])


def test_events_are_queued_once_then_acked_in_the_log():
    up = _uplink()
    log = EventLog(8)
    log.append(T0, events.COVER_OPEN)
    log.append(T0 + 1, events.COVER_CLOSE)
    eq(up.events(T0 + 2, log), 1)
    eq(up.events(T0 + 3, log), 0)  # nothing pending any more
    body = messages.decode_uplink(messages.topic("UJ-1", "event"), split(up.outbox.peek(1)[0][1])[1])
    eq(body["e"], [[1, T0, 3, 0], [2, T0 + 1, 4, 0]])


def test_billing_snapshot_kind_number_becomes_its_name():
    up = _uplink()
    up.snapshot(T0, (1, 20261127, T0, 500, 990, None, 0))  # metering.SNAP_DAILY = 1
    body = messages.decode_uplink(messages.topic("UJ-1", "snapshot"), split(up.outbox.peek(1)[0][1])[1])
    eq((body["k"], body["key"], body["md"]), ("daily", 20261127, None))


def test_task_silent_longer_than_allowed_is_stale():
    live = Liveness()
    live.register("metering", 5000, 0)
    live.register("mqtt", 20000, 0)
    live.beat("metering", 4000)
    eq(live.stale(9000), [])       # 9000 - 4000 = 5000: not more than allowed
    eq(live.stale(9001), ["metering"])
    eq(live.all_alive(9001), False)


def test_accelerated_clock_runs_factor_times_faster():
    ticks = [2000]
    c = AcceleratedClock(lambda: 1000, lambda: ticks[0], factor=300)
    ticks[0] = 5000  # 3 s of wall time
    eq(c.now(), 1000 + 299 * 3)  # board 1000 s + (300 - 1) x 3 s
    eq(c.wall_s(900), 3)
    raises(ValueError, AcceleratedClock, lambda: 0, lambda: 0, 0)


def test_register_feed_turns_wh_into_impulses_without_losing_remainders():
    feed = RegisterFeed(3200)
    eq(feed.update(100000)[0], 0)  # baseline
    eq(feed.update(100001)[0], 3)  # 1 Wh x 3.2 imp/Wh = 3.2: 3 now, 0.2 carried
    eq(feed.update(100005)[0], 13)  # 4 Wh = 12.8 imp + 0.2 carried = 13
    eq(feed.update(99000)[0], 0)  # a decrease counts nothing


def test_config_missing_lists_required_settings_in_order():
    store = ConfigStore(RamSlots())
    eq(store.missing(), ["meter_id", "broker_host", "tariff", "key_hex"])
    store.set_many({"meter_id": "UJ-9", "broker_host": "h"}, T0)
    eq(store.missing(), ["tariff", "key_hex"])
    raises(ConfigError, store.meter_config)


def test_config_survives_reload_and_bad_update_keeps_old_values():
    slots = RamSlots()
    store = ConfigStore(slots)
    store.set_many({"meter_id": "UJ-9", "step_s": 30}, T0)
    raises(ConfigError, store.set_many, {"meter_id": "UJ-10", "step_s": 5}, T0)
    again = ConfigStore(slots)
    eq((again.get("meter_id"), again.get("step_s"), again.get("broker_port")), ("UJ-9", 30, 1883))
