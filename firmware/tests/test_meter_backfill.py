"""The ``backfill`` downlink in the meter core: checked, journaled, exactly once; the app re-publishes."""
from firmware.core import auth, journal, localtime
from firmware.core.meter import (BAD_VALUE, EXAMPLE_CONFIG, RESULT_NAMES, Meter, MeterConfig,
                                 backfill_range)
from firmware.core.outbox import RamSlots
from firmware.tests.check import eq

T0 = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 27), localtime.IST_OFFSET_S)
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MID = EXAMPLE_CONFIG["meter_id"]
MAX_BACKFILL_SPAN = 10000  # sequence numbers one backfill command may ask for (meter.py)


def meter(slots=None):
    j = journal.Journal(slots, max_payload=8192) if slots is not None else None
    return Meter(MeterConfig.from_dict(EXAMPLE_CONFIG), now=T0, journal=j, opening_credit_paise=5000)


def backfill(counter, first, last, cid=None, key=KEY):
    return auth.make_command(key, "backfill", MID, counter, T0 + 3600, [cid or "BF-%d" % counter,
                                                                         first, last])


def test_backfill_range_reads_the_two_sequence_numbers():
    eq(backfill_range(["BF-1", 40, 49]), (40, 49))
    eq(backfill_range(["BF-1", 7, 7]), (7, 7))
    eq(backfill_range(["BF-1", 1, MAX_BACKFILL_SPAN]), (1, MAX_BACKFILL_SPAN))


def test_backfill_range_refuses_reversed_too_wide_negative_or_mistyped_fields():
    for fields in (["BF", 50, 49], ["BF", 1, MAX_BACKFILL_SPAN + 1], ["BF", -1, 5],
                   ["BF", "1", 5], ["BF", 1, True], ["BF", 1], ["BF", 1, 2, 3], ("BF", 1, 2), None):
        eq(backfill_range(fields), None, repr(fields))


def test_authentic_backfill_is_applied_with_its_range_in_the_detail():
    m = meter()
    eq(m.apply_command(backfill(1, 40, 49), T0 + 60), (auth.OK, "backfill 40..49"))
    eq(m.guard.last_counter, 1)


def test_backfill_with_a_bad_range_is_bad_value_and_changes_nothing():
    slots = RamSlots()
    m = meter(slots)
    before = (m.guard.last_counter, m.commits, slots.slots[:])
    for i, (first, last) in enumerate(((9, 3), (1, 10001), (-5, 3))):
        result, detail = m.apply_command(backfill(1 + i, first, last), T0 + 60)
        eq((result, RESULT_NAMES[result]), (BAD_VALUE, "BAD_VALUE"))
        assert "first <= last" in detail, detail
    eq((m.guard.last_counter, m.commits, slots.slots), before)


def test_backfill_counter_is_journaled_so_a_resent_command_is_replayed_after_a_restart():
    slots = RamSlots()
    m = meter(slots)
    commits = m.commits
    cmd = backfill(1, 1, 20)
    eq(m.apply_command(cmd, T0 + 60)[0], auth.OK)
    eq(m.commits, commits + 1)
    again = meter(slots)
    eq(again.apply_command(cmd, T0 + 120)[0], auth.REPLAYED)


def test_backfill_with_a_wrong_mac_is_rejected_before_its_fields_are_looked_at():
    m = meter()
    eq(m.apply_command(backfill(1, 9, 3, key=b"x" * 32), T0 + 60)[0], auth.BAD_MAC)
    eq(m.guard.last_counter, 0)
