"""The ``time`` downlink (clock sync) in the meter core: checked, logged, journaled, exactly once.

The core decides and logs CLOCK_SET (value = the step in seconds); the app
moves the board clock (``firmware/app/main.py`` ``App.set_clock``).
"""
from firmware.core import auth, events, journal, localtime
from firmware.core.meter import BAD_VALUE, EXAMPLE_CONFIG, Meter, MeterConfig, clock_sync_time
from firmware.core.outbox import RamSlots
from firmware.tests.check import eq

T0 = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 27), localtime.IST_OFFSET_S)
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MID = EXAMPLE_CONFIG["meter_id"]
CLOCK_EPOCH_T = 1767225600  # 2026-01-01 00:00 UTC: the oldest time a ``time`` command may set
MAX_CLOCK_STEP_S = 86400  # the default limit of an unforced step: a day


def meter(slots=None, now=T0):
    j = journal.Journal(slots, max_payload=8192) if slots is not None else None
    return Meter(MeterConfig.from_dict(EXAMPLE_CONFIG), now=now, journal=j, opening_credit_paise=5000)


def time_cmd(counter, *fields, expires=T0 + 86400 * 400):
    return auth.make_command(KEY, "time", MID, counter, expires, ["TS-%d" % counter] + list(fields))


def clock_events(m):
    return [(e[1], e[3]) for e in m.log.pending() if e[2] == events.CLOCK_SET]


def test_time_fields_are_an_int_utc_second_after_the_epoch_and_an_optional_force():
    eq(clock_sync_time(["TS", T0]), T0)
    eq(clock_sync_time(["TS", T0, "force"]), T0)
    for fields in (["TS", CLOCK_EPOCH_T - 1], ["TS", "1795753800"], ["TS", True], ["TS"],
                   ["TS", T0, "please"], ["TS", T0, "force", 1], ["TS", 2 ** 32], ("TS", T0), None):
        eq(clock_sync_time(fields), None, repr(fields))


def test_time_within_the_limit_is_applied_once_and_logs_clock_set_with_the_step():
    slots = RamSlots()
    m = meter(slots)
    commits = m.commits
    eq(m.apply_command(time_cmd(1, T0 + 3600 + 42), T0 + 3600),
       (auth.OK, "clock %d step 42" % (T0 + 3600 + 42)))
    eq(clock_events(m), [(T0 + 3600, 42)])
    eq((m.guard.last_counter, m.commits), (1, commits + 1))  # journaled with the command
    # the same command again (a QoS 1 re-delivery) is REPLAYED and logs nothing
    eq(m.apply_command(time_cmd(1, T0 + 3600 + 42), T0 + 3700)[0], auth.REPLAYED)
    eq(len(clock_events(m)), 1)
    # and the restored meter remembers it
    again = meter(slots, now=T0 + 3800)
    eq(again.apply_command(time_cmd(1, T0 + 3600 + 42), T0 + 3800)[0], auth.REPLAYED)


def test_backward_step_is_negative_in_the_event():
    m = meter()
    eq(m.apply_command(time_cmd(1, T0 + 600 - 300), T0 + 600)[0], auth.OK)
    eq(clock_events(m), [(T0 + 600, -300)])


def test_time_before_the_epoch_is_bad_value_and_changes_nothing():
    slots = RamSlots()
    m = meter(slots)
    before = (m.guard.last_counter, m.commits, slots.slots[:], m.log.last_seq)
    result, detail = m.apply_command(time_cmd(1, CLOCK_EPOCH_T - 1), T0 + 60)
    eq(result, BAD_VALUE)
    assert "utc_s >=" in detail, detail
    eq((m.guard.last_counter, m.commits, slots.slots, m.log.last_seq), before)


def test_jump_beyond_the_limit_is_bad_value_unless_forced():
    m = meter()
    eq(m.max_clock_step_s, MAX_CLOCK_STEP_S)
    far = T0 + MAX_CLOCK_STEP_S + 1
    result, detail = m.apply_command(time_cmd(1, far), T0)
    eq(result, BAD_VALUE)
    assert "exceeds %d" % MAX_CLOCK_STEP_S in detail, detail
    eq(clock_events(m), [])
    eq(m.apply_command(time_cmd(2, T0 + MAX_CLOCK_STEP_S), T0)[0], auth.OK)  # at the limit: fine
    eq(m.apply_command(time_cmd(3, far + 10 * 86400, "force"), T0)[0], auth.OK)
    eq([v for _, v in clock_events(m)], [MAX_CLOCK_STEP_S, MAX_CLOCK_STEP_S + 1 + 10 * 86400])


def test_the_limit_is_the_meters_configured_one():
    m = meter()
    m.max_clock_step_s = 60
    eq(m.apply_command(time_cmd(1, T0 + 61), T0)[0], BAD_VALUE)
    eq(m.apply_command(time_cmd(2, T0 + 60), T0)[0], auth.OK)


def test_an_unset_clock_takes_any_time_after_the_epoch():
    m = meter(now=1000)  # RTC lost: 1970
    eq(m.apply_command(time_cmd(1, T0, expires=2000), 1000)[0], auth.OK)
    eq(clock_events(m), [(1000, T0 - 1000)])
    # a step beyond 32 bits (forced to 2038+) is clamped in the event's signed 32-bit value
    eq(m.apply_command(time_cmd(2, 2 ** 31 + 5000, "force", expires=2000), 1000)[0], auth.OK)
    eq(clock_events(m)[-1], (1000, 0x7FFFFFFF))


def test_forged_time_command_is_bad_mac():
    m = meter()
    cmd = auth.make_command(b"\x01" * 32, "time", MID, 1, T0 + 3600, ["TS-1", T0 + 5])
    eq(m.apply_command(cmd, T0)[0], auth.BAD_MAC)
    eq(clock_events(m), [])
