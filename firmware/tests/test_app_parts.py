"""The app shell's pure parts: uplink records in the outbox, liveness, accelerated clock,
external register -> impulses, the configuration store, and the settings the running
app reads (a snapshot at boot, the store reloaded on demand)."""
import asyncio

from firmware.app.config import ConfigError, ConfigStore
from firmware.app.downlinks import OTA_MAX_CHUNK, ota_manifest, version_code
from firmware.app.health import AcceleratedClock, Liveness
from firmware.app.main import CLI_IDLE_UNLOAD_MS, App, RegisterFeed
from firmware.app.uplink import (MAX_BACKFILLS, MAX_RECORDS_PER_READING, Uplink, queue_backfill,
                                 reading_record, records_end_cum, split)
from firmware.core import events
from firmware.core.events import EventLog
from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig
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


def _readings(up):
    out = []
    for _seq, record in up.outbox.peek(64):
        kind, body = split(record)
        if kind == "reading":
            out.append(messages.decode_uplink(messages.topic("UJ-1", kind), body))
    return out


def test_reading_cum_is_the_register_at_the_end_of_the_last_record_when_the_step_runs_late():
    # T0 is an interval start. 1000 Wh inside the first interval, then 100 Wh that arrive
    # after the boundary but before the (late) step that closes the interval.
    m = Meter(MeterConfig.from_dict(EXAMPLE_CONFIG), now=T0, opening_credit_paise=100000)
    m.add_pulses(3200, T0 + 600)
    eq(m.step(T0 + 600), [])
    m.add_pulses(320, T0 + 930)  # after the boundary T0 + 900
    out = m.step(T0 + 960)
    records = [r for kind, r in out if kind == "interval"]
    eq([(r[0], r[2]) for r in records], [(T0, 1000)])
    eq(m.energy_units, 1100)  # the register at the step is ahead of the record's end
    up = _uplink()
    up.readings(T0 + 960, 900, records_end_cum(m), records)
    body = _readings(up)[0]
    eq(body["cum"], 1000, "cum")
    eq(body["cum"], sum(r[1] for r in body["r"]))  # nothing counted before the first record
    # the next interval's record starts from there: registers and records stay consistent
    m.add_pulses(640, T0 + 1500)
    out = m.step(T0 + 1800)
    records = [r for kind, r in out if kind == "interval"]
    up.readings(T0 + 1800, 900, records_end_cum(m), records)
    second = _readings(up)[1]
    eq((second["r"][0][1], second["cum"]), (300, 1300))  # 100 late Wh + 200 Wh, register 1300


def test_reading_cum_after_a_power_off_gap_ends_with_the_gap_record():
    m = Meter(MeterConfig.from_dict(EXAMPLE_CONFIG), now=T0, opening_credit_paise=100000)
    m.add_pulses(3200, T0 + 600)
    m.step(T0 + 600)
    m.add_pulses(320, T0 + 4 * 900 + 30)  # supply back 3 intervals later
    records = [r for kind, r in m.step(T0 + 4 * 900 + 60) if kind == "interval"]
    eq([(r[0], r[2], r[6]) for r in records], [(T0, 1000, 0), (T0 + 900, 0, 1)])
    up = _uplink()
    up.readings(T0 + 4 * 900 + 60, 900, records_end_cum(m), records)
    eq(_readings(up)[0]["cum"], 1000)


def test_each_reading_message_carries_the_register_at_the_end_of_its_own_records():
    n = MAX_RECORDS_PER_READING + 2
    records = [(T0 + 900 * i, 900, 10 + i, None, None, 1, 0) for i in range(n)]
    up = _uplink()
    up.readings(T0 + 900 * n, 900, 5000, records)
    first, second = _readings(up)
    eq(len(first["r"]), MAX_RECORDS_PER_READING)
    eq(second["cum"], 5000)
    eq(first["cum"], 5000 - (10 + n - 2) - (10 + n - 1))


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


def test_version_code_packs_major_minor_patch_for_event_values():
    eq(version_code("1.1.0"), 10100)
    eq(version_code("0.4.12"), 412)
    for v in ("1.1", "1.1.0-rc1", "1.100.0", "a.b.c", "", None, 7):
        eq(version_code(v), 0, repr(v))


def test_ota_manifest_cuts_the_image_into_equal_chunks_of_at_most_the_limit():
    digest = "ab" * 32
    m = ota_manifest(["OTA-1", "1.1.0", 171082, digest, 42])
    eq((m["version"], m["size"], m["chunk_size"], m["sha256"]), ("1.1.0", 171082, 4074, digest))
    eq(ota_manifest(["OTA-1", "1.1.0", 10, digest, 4])["chunk_size"], 3)  # 3, 3, 3, 1
    eq(ota_manifest(["OTA-1", "1.1.0", 10, digest, 6]), None)  # 2-byte chunks make 5, not 6
    eq(ota_manifest(["OTA-1", "1.1.0", OTA_MAX_CHUNK * 2 + 1, digest, 2]), None)  # chunks too big
    for fields in (["OTA-1", "1.1.0", 0, digest, 1], ["OTA-1", "1.1.0", 10, digest, True],
                   ["OTA-1", 110, 10, digest, 1], ["OTA-1", "1.1.0", 10, None, 1],
                   ["OTA-1", "1.1.0", 10, digest], None):
        eq(ota_manifest(fields), None, repr(fields))


class _Clock:
    def __init__(self):
        self.t = T0

    def now(self):
        return self.t

    def set(self, t):
        self.t = t


class _Board:
    """What ``App.__init__`` and the CLI's ``info`` touch."""

    name = "test-board"
    commissioning = None

    def __init__(self):
        self.clock = _Clock()

    def poll(self):
        pass


class _Uart:
    def __init__(self):
        self.rx = b""
        self.tx = b""

    def read(self, n):
        data, self.rx = self.rx[:n], self.rx[n:]
        return data

    def write(self, data):
        self.tx += data
        return len(data)


class _Parts:
    def __init__(self):
        self.config_slots = RamSlots()
        self.cli = None
        self.dlms = None


def test_running_app_reads_settings_from_its_boot_snapshot_and_the_store_when_reloaded():
    parts = _Parts()
    app = App(_Board(), parts, ms=lambda: 0)
    eq(app.commission_from({"meter_id": "UJ-9", "broker_host": "h", "heartbeat_s": 600}), True)
    app.release_config()  # as at the end of start_meter
    eq((app.setting("heartbeat_s"), app.setting("broker_port"), app.setting("step_s")), (600, 1883, 60))
    # written behind the app's back: the snapshot does not change (settings apply at next boot) ...
    ConfigStore(parts.config_slots).set_many({"heartbeat_s": 1200}, T0)
    eq(app.setting("heartbeat_s"), 600)
    # ... but the store, loaded again when the CLI or a config downlink asks, has it, and
    # while it is loaded the tasks read it (a CLI ``set`` shows at once, as it always did)
    eq(app.config.get("heartbeat_s"), 1200)
    eq(app.setting("heartbeat_s"), 1200)
    eq(app.commission_from({"meter_id": "UJ-10"}), False)  # stored settings win
    app.release_config()
    eq((app.setting("heartbeat_s"), app.config.get("meter_id")), (1200, "UJ-9"))


def test_cli_loads_at_its_first_byte_and_unloads_once_the_technician_has_gone():
    parts = _Parts()
    parts.cli = _Uart()
    ms = [0]
    app = App(_Board(), parts, ms=lambda: ms[0])
    app.commission_from({"meter_id": "UJ-9", "broker_host": "h"})
    app.release_config()

    async def drive():
        task = asyncio.create_task(app.poll_task())  # it serves the CLI UART too
        await asyncio.sleep(0.06)
        eq(app.cli, None)  # nobody typed: no CLI on the heap
        parts.cli.rx = b"info\r\n"
        await asyncio.sleep(0.06)
        eq(parts.cli.tx.startswith(b"OK meter=UJ-9 commissioned=0"), True)
        ms[0] += CLI_IDLE_UNLOAD_MS - 1
        await asyncio.sleep(0.06)
        eq(app.cli is None, False)
        parts.cli.rx = b"inf"  # half a line holds it
        ms[0] += CLI_IDLE_UNLOAD_MS
        await asyncio.sleep(0.06)
        ms[0] += CLI_IDLE_UNLOAD_MS
        await asyncio.sleep(0.06)
        eq(app.cli is None, False)
        parts.cli.rx, parts.cli.tx = b"o\r\n", b""
        await asyncio.sleep(0.06)
        eq(parts.cli.tx.startswith(b"OK meter=UJ-9"), True)
        ms[0] += CLI_IDLE_UNLOAD_MS
        await asyncio.sleep(0.06)
        eq(app.cli, None)  # idle, nothing half typed: unloaded
        eq(app.setting("broker_host"), "h")
        parts.cli.rx, parts.cli.tx = b"info\r\n", b""  # the next visit loads it again
        await asyncio.sleep(0.06)
        eq(parts.cli.tx.startswith(b"OK meter=UJ-9"), True)
        task.cancel()

    asyncio.run(drive())


class _Watchdog:
    timeout_ms = 400

    def __init__(self):
        self.fed = 0

    def feed(self):
        self.fed += 1


def _run_tasks(app, tasks, wdt=None, for_s=0.15):
    """``app.run`` with these (name, coroutine function, silence ms) for a while; its console."""
    import firmware.app.main as main_mod

    lines = []
    app.tasks = lambda: tasks
    app.board.start_watchdog = lambda: wdt

    async def go():
        runner = asyncio.create_task(app.run(watchdog=wdt is not None))
        await asyncio.sleep(for_s)
        runner.cancel()
        asyncio.get_event_loop().set_exception_handler(None)

    main_mod.print = lambda *a: lines.append(" ".join(str(x) for x in a))  # type: ignore[attr-defined]
    try:
        asyncio.run(go())
    finally:
        del main_mod.print
    return lines


def test_a_task_ended_by_an_exception_is_named_on_the_console_and_the_others_run_on():
    app = App(_Board(), _Parts())
    ticks = [0]

    async def poll(wdt=None):
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.01)

    async def metering():
        await asyncio.sleep(0.02)
        raise ValueError("bad step")

    lines = _run_tasks(app, [("poll", poll, 2000), ("metering", metering, 2000)])
    eq([ln for ln in lines if "crashed" in ln], ["urja: task metering crashed: ValueError: bad step"])
    eq(ticks[0] > 5, True)


def test_poll_feeds_the_watchdog_only_while_every_task_beats_and_says_once_who_is_silent():
    ms = [0]
    app = App(_Board(), _Parts(), ms=lambda: ms[0])
    wdt = _Watchdog()

    async def metering():  # beats for 300 ms of the app's clock, then hangs
        while ms[0] < 300:
            app.beat("metering")
            await asyncio.sleep(0.001)
        while True:
            await asyncio.sleep(0.001)

    async def clock():
        while True:
            ms[0] += 20
            await asyncio.sleep(0.001)

    asyncio_task = []

    async def poll(wdt=None):
        asyncio_task.append(asyncio.create_task(clock()))
        await app.poll_task(wdt)

    lines = _run_tasks(app, [("poll", poll, 2000), ("metering", metering, 1000)], wdt, 0.4)
    asyncio_task[0].cancel()
    # fed at most every min(500, 400 // 4) = 100 ms, and only until metering has been silent
    # for longer than allowed (300 + 1000 ms): 14 times at most
    eq(1 <= wdt.fed <= 14, True, wdt.fed)
    eq([ln for ln in lines if "watchdog" in ln], ["urja: watchdog not fed, silent tasks: metering"])


def test_queue_backfill_requeues_only_what_was_sent_and_merges_past_the_limit():
    up = _uplink()
    for i in range(10):
        up.heartbeat(T0 + i, {"up": i})  # held: s 1..10
    box, ranges = up.outbox, []
    # sent up to 6: 4..9 asked, all 6 counted, only 4..6 queued (7..9 go out once anyway)
    eq(queue_backfill(box, ranges, 6, 4, 9), (6, 1, True))
    eq(ranges, [[4, 6]])
    # nothing of 8..9 was sent yet: counted, nothing queued
    eq(queue_backfill(box, ranges, 6, 8, 9), (2, 1, False))
    eq(ranges, [[4, 6]])
    for first in (1, 2, 3):
        queue_backfill(box, ranges, 10, first, first)
    eq(len(ranges), MAX_BACKFILLS)
    # one more than the limit merges into the last range (may re-send a little more)
    eq(queue_backfill(box, ranges, 10, 9, 10), (2, 1, True))
    eq(ranges, [[4, 6], [1, 1], [2, 2], [3, 10]])
