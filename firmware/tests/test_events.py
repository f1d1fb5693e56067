import json
import random

from firmware.core import events as ev
from firmware.tests.check import eq, raises

T0 = 1795737600  # 2026-11-27 00:00:00 UTC; above 2**30, so it exercises the 'I' column


def filled(capacity, n, code=ev.MAGNET):
    """A log with events seq 1..n at t = T0 + seq, value = 10 * seq."""
    log = ev.EventLog(capacity)
    for seq in range(1, n + 1):
        eq(log.append(T0 + seq, code, 10 * seq), seq)
    return log


def seqs(records):
    return [r[0] for r in records]


def test_names_cover_every_code_once_and_codes_fit_a_byte():
    codes = [
        ev.POWER_FAIL, ev.POWER_RESTORE, ev.COVER_OPEN, ev.COVER_CLOSE, ev.MAGNET,
        ev.REVERSE_CURRENT, ev.NEUTRAL_MISSING, ev.RELAY_OPENED, ev.RELAY_CLOSED,
        ev.TOPUP_APPLIED, ev.TOPUP_REJECTED, ev.TARIFF_CHANGED, ev.TARIFF_SCHEDULED,
        ev.LOW_CREDIT_WARNING, ev.CREDIT_EXHAUSTED, ev.EMERGENCY_STARTED, ev.CREDIT_STATE,
        ev.LOAD_TRIP, ev.LOAD_LOCKOUT, ev.REGISTER_DECREASE, ev.CLOCK_SET,
        ev.JOURNAL_RESTORED, ev.EVENTS_LOST, ev.READ_FAILED, ev.READ_RESTORED,
        ev.FW_CONFIRMED, ev.FW_ROLLED_BACK,
    ]
    eq(len(set(codes)), 27)
    eq(sorted(ev.NAMES.keys()), sorted(codes))
    eq(ev.NAMES[ev.TOPUP_APPLIED], "TOPUP_APPLIED")
    for code in codes:
        assert 0 < code < 256


def test_every_name_is_its_code_whether_a_global_or_made_on_demand():
    for code, name in ev.NAMES.items():
        eq(getattr(ev, name), code, name)
    eq((ev.POWER_FAIL, ev.MAGNET, ev.EVENTS_LOST, ev.FW_ROLLED_BACK), (1, 5, 23, 27))
    raises(AttributeError, getattr, ev, "NO_SUCH_EVENT")


def test_sequence_numbers_start_at_one_and_count_up():
    log = ev.EventLog(4)
    eq(log.last_seq, 0)
    eq(log.append(T0, ev.POWER_FAIL), 1)
    eq(log.append(T0 + 5, ev.POWER_RESTORE), 2)
    eq(log.append(T0 + 9, ev.TOPUP_APPLIED, 50000), 3)
    eq(log.pending(), [(1, T0, ev.POWER_FAIL, 0), (2, T0 + 5, ev.POWER_RESTORE, 0),
                       (3, T0 + 9, ev.TOPUP_APPLIED, 50000)])


def test_pending_is_oldest_first_and_respects_limit():
    log = filled(8, 5)
    eq(log.pending(2), [(1, T0 + 1, ev.MAGNET, 10), (2, T0 + 2, ev.MAGNET, 20)])
    eq(log.pending(0), [])


def test_ack_removes_delivered_events_from_pending():
    log = filled(8, 5)
    eq(log.ack(3), 3)
    eq(seqs(log.pending()), [4, 5])
    eq(log.unacked(), 2)


def test_ack_below_current_changes_nothing_and_above_newest_is_clamped():
    log = filled(8, 5)
    log.ack(3)
    eq(log.ack(1), 3)
    eq(log.ack(99), 5)
    eq(log.pending(), [])
    eq(log.append(T0 + 50, ev.MAGNET), 6)
    eq(seqs(log.pending()), [6])


def test_sequence_numbers_are_never_reused_after_wrap():
    log = filled(3, 3)
    log.ack(3)
    eq(log.append(T0 + 4, ev.COVER_OPEN), 4)
    eq(log.append(T0 + 5, ev.COVER_CLOSE), 5)
    eq(log.pending(), [(4, T0 + 4, ev.COVER_OPEN, 0), (5, T0 + 5, ev.COVER_CLOSE, 0)])


def test_wrap_over_acked_events_loses_nothing():
    log = filled(3, 3)
    log.ack(3)
    for seq in range(4, 7):  # overwrites 1, 2, 3, all delivered
        log.append(T0 + seq, ev.MAGNET, 10 * seq)
    eq(log.lost, 0)
    eq(seqs(log.pending()), [4, 5, 6])


def test_wrap_without_acks_counts_each_lost_event_and_reports_a_marker():
    # capacity 3, 7 events, nothing acked: 1..4 overwritten, 5..7 kept
    log = filled(3, 7)
    eq(log.lost, 4)
    eq(log.pending(), [
        (4, T0 + 4, ev.EVENTS_LOST, 4),  # seq and t of the newest lost event
        (5, T0 + 5, ev.MAGNET, 50),
        (6, T0 + 6, ev.MAGNET, 60),
        (7, T0 + 7, ev.MAGNET, 70),
    ])


def test_marker_counts_against_the_limit():
    log = filled(3, 7)
    eq(log.pending(1), [(4, T0 + 4, ev.EVENTS_LOST, 4)])
    eq(seqs(log.pending(2)), [4, 5])


def test_acking_the_marker_clears_it_but_lost_stays_as_lifetime_count():
    log = filled(3, 7)
    log.ack(4)
    eq(seqs(log.pending()), [5, 6, 7])
    eq(log.missing(), 0)
    eq(log.lost, 4)


def test_partial_ack_shrinks_the_marker_to_what_is_still_missing():
    log = filled(3, 7)  # lost 1..4
    log.ack(2)  # head-end says it already had 1 and 2
    eq(log.pending()[0], (4, T0 + 4, ev.EVENTS_LOST, 2))  # 3 and 4 missing


def test_wrap_with_some_acks_loses_only_the_undelivered():
    log = filled(4, 4)
    log.ack(2)
    for seq in range(5, 9):  # overwrites 1, 2 (acked), 3, 4 (not acked)
        log.append(T0 + seq, ev.MAGNET, 10 * seq)
    eq(log.lost, 2)  # 4 overwritten, 2 of them undelivered
    eq(log.pending(), [(4, T0 + 4, ev.EVENTS_LOST, 2), (5, T0 + 5, ev.MAGNET, 50),
                       (6, T0 + 6, ev.MAGNET, 60), (7, T0 + 7, ev.MAGNET, 70),
                       (8, T0 + 8, ev.MAGNET, 80)])


def test_losses_after_a_marker_ack_start_a_new_marker():
    log = filled(2, 4)  # lost 1, 2
    log.ack(2)
    eq(log.append(T0 + 5, ev.MAGNET, 50), 5)  # overwrites 3: lost
    eq(log.lost, 3)
    eq(log.pending(), [(3, T0 + 3, ev.EVENTS_LOST, 1), (4, T0 + 4, ev.MAGNET, 40),
                       (5, T0 + 5, ev.MAGNET, 50)])


def test_capacity_one_keeps_only_the_newest():
    log = ev.EventLog(1)
    eq(log.append(T0 + 1, ev.POWER_FAIL), 1)
    eq(log.pending(), [(1, T0 + 1, ev.POWER_FAIL, 0)])
    eq(log.append(T0 + 2, ev.POWER_RESTORE), 2)
    eq(log.append(T0 + 3, ev.POWER_FAIL), 3)
    eq(log.lost, 2)
    eq(log.pending(), [(2, T0 + 2, ev.EVENTS_LOST, 2), (3, T0 + 3, ev.POWER_FAIL, 0)])
    log.ack(3)
    eq(log.append(T0 + 4, ev.POWER_RESTORE), 4)
    eq(log.lost, 2)
    eq(log.pending(), [(4, T0 + 4, ev.POWER_RESTORE, 0)])


def test_extreme_values_are_stored_exactly():
    log = ev.EventLog(4)
    log.append(0xFFFFFFFF, ev.CLOCK_SET, -0x80000000)
    log.append(0, ev.REGISTER_DECREASE, 0x7FFFFFFF)
    eq(log.pending(), [(1, 0xFFFFFFFF, ev.CLOCK_SET, -2147483648),
                       (2, 0, ev.REGISTER_DECREASE, 2147483647)])


def test_out_of_range_or_unknown_events_are_refused_and_nothing_is_logged():
    log = ev.EventLog(4)
    raises(ev.EventError, log.append, -1, ev.MAGNET)
    raises(ev.EventError, log.append, 0x100000000, ev.MAGNET)  # would wrap to 0 in an array
    raises(ev.EventError, log.append, T0, ev.MAGNET, 0x80000000)
    raises(ev.EventError, log.append, T0, ev.MAGNET, -0x80000001)
    raises(ev.EventError, log.append, T0, 0)
    raises(ev.EventError, log.append, T0, 99)
    raises(ev.EventError, log.append, T0, ev.EVENTS_LOST)  # synthetic only
    raises(ev.EventError, log.append, T0, ev.MAGNET, 1.5)
    raises(ev.EventError, log.append, T0, ev.MAGNET, True)
    eq(log.last_seq, 0)
    eq(log.pending(), [])
    raises(ev.EventError, ev.EventLog, 0)


def test_to_state_round_trip_through_json_keeps_seq_acks_and_losses():
    log = filled(3, 7)
    log.ack(5)
    state = json.loads(json.dumps(log.to_state()))
    # only undelivered events are journalled
    eq(state["events"], [[T0 + 6, ev.MAGNET, 60], [T0 + 7, ev.MAGNET, 70]])
    back = ev.EventLog.from_state(state)
    eq(back.pending(), log.pending())
    eq((back.last_seq, back.acked, back.lost), (7, 5, 4))
    eq(back.append(T0 + 8, ev.POWER_FAIL), 8)


def test_to_state_round_trip_keeps_an_unacked_marker():
    back = ev.EventLog.from_state(json.loads(json.dumps(filled(3, 7).to_state())))
    eq(back.pending()[0], (4, T0 + 4, ev.EVENTS_LOST, 4))
    back.append(T0 + 8, ev.MAGNET, 80)  # overwrites 5: lost
    eq(back.lost, 5)
    eq(back.pending()[0], (5, T0 + 5, ev.EVENTS_LOST, 5))


def test_restored_log_behaves_like_the_original_on_a_random_walk():
    random.seed(20261127)
    for capacity in (1, 2, 5):
        log = ev.EventLog(capacity)
        t = T0
        for step in range(300):
            back = ev.EventLog.from_state(json.loads(json.dumps(log.to_state())))
            if random.randrange(3):
                t += random.randrange(100)
                code = random.randrange(1, 23)  # real codes, never EVENTS_LOST
                value = random.randrange(2000) - 1000
                eq(back.append(t, code, value), log.append(t, code, value))
            else:
                upto = log.acked + random.randrange(capacity + 2)
                eq(back.ack(upto), log.ack(upto))
            what = "capacity %d step %d" % (capacity, step)
            eq(back.pending(capacity + 1), log.pending(capacity + 1), what)
            eq((back.lost, back.missing(), back.unacked()),
               (log.lost, log.missing(), log.unacked()), what)


def test_every_event_is_delivered_or_counted_as_lost():
    # A receiver that acks what it gets must account for every seq exactly once.
    random.seed(7)
    log = ev.EventLog(4)
    delivered = 0
    reported_lost = 0
    for _ in range(500):
        for _ in range(random.randrange(4)):
            log.append(T0, ev.MAGNET)
        if random.randrange(2):
            batch = log.pending(random.randrange(1, 4))
            for seq, _t, code, value in batch:
                if code == ev.EVENTS_LOST:
                    reported_lost += value
                else:
                    delivered += 1
            if batch:
                log.ack(batch[-1][0])
    for seq, _t, code, value in log.pending(100):
        if code == ev.EVENTS_LOST:
            reported_lost += value
        else:
            delivered += 1
    eq(delivered + reported_lost, log.last_seq)
    eq(reported_lost, log.lost)


def test_recent_gives_the_newest_events_oldest_first_delivered_or_not():
    log = filled(8, 5)
    log.ack(5)
    eq(log.recent(3), [(3, T0 + 3, ev.MAGNET, 30), (4, T0 + 4, ev.MAGNET, 40),
                       (5, T0 + 5, ev.MAGNET, 50)])
    eq(log.pending(), [])  # recent does not touch delivery


def test_recent_holds_only_what_the_ring_still_has_and_no_lost_marker():
    log = filled(4, 10)  # 1..6 overwritten, 7..10 in the ring, undelivered
    eq([e[0] for e in log.recent(16)], [7, 8, 9, 10])
    eq([e[2] for e in log.recent(16)], [ev.MAGNET] * 4)
    eq(log.pending(16)[0][2], ev.EVENTS_LOST)  # pending still reports the loss


def test_recent_of_nothing_or_a_silly_n_is_empty():
    eq(ev.EventLog(4).recent(5), [])
    log = filled(4, 2)
    eq((log.recent(0), log.recent(-1)), ([], []))


def test_recent_after_restore_shows_the_events_the_journal_kept():
    log = filled(8, 6)
    log.ack(4)
    again = ev.EventLog.from_state(log.to_state())
    eq([e[0] for e in again.recent(16)], [5, 6])
