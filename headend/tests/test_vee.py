"""VEE: validation rules, gaps and backfill requests, estimation that never overwrites actuals.

Expected values are worked by hand in the comments.
"""

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core.metering import PROFILE_AFTER_GAP, PROFILE_POWER_OFF
from firmware.protocol import messages
from headend import vee
from headend.store import UplinkStore
from headend.tests.conftest import register_meters

IV = 900
T0 = 1795737600  # 2026-11-27 00:00 UTC (`date -u -d 2026-11-27 +%s`)
NOW = T0 + 86400
MID = "UJ-VEE-1"
OFF, GAP = PROFILE_POWER_OFF, PROFILE_AFTER_GAP


def rules(findings):
    return [(f.start_t, f.rule) for f in findings]


def rec(i, energy, flags=0, span=IV):
    return (T0 + i * IV, energy, flags, span)


# --- validation (pure) -----------------------------------------------------------

def test_typical_energy_is_the_lower_median_of_positive_ordinary_intervals():
    # positive: 10 10 10 11 12 500 -> lower median index (6 - 1) // 2 = 2 -> 10; the 0 is ignored
    recs = [rec(0, 10), rec(1, 12), rec(2, 0), rec(3, 10), rec(4, 11), rec(5, 10), rec(6, 500)]
    assert vee.typical_energy(recs) == 10


def test_spike_above_the_configured_multiple_of_typical_is_flagged():
    recs = [rec(0, 10), rec(1, 12), rec(2, 10), rec(3, 11), rec(4, 10), rec(5, 500), rec(6, 100)]
    cfg = vee.VeeConfig(spike_multiple=10)
    # typical 10, limit 10 * 10 = 100: 500 is a spike, exactly 100 is not
    assert rules(vee.validate(recs, NOW, IV, cfg)) == [(T0 + 5 * IV, vee.SPIKE)]


def test_after_gap_record_may_hold_the_whole_outage_usage():
    # POWER_OFF over 4 intervals, then AFTER_GAP: allowance 10 x typical 10 x (1 + 4) = 500
    base = [rec(0, 10), rec(1, 10), rec(2, 10), rec(3, 0, OFF, 4 * IV)]
    ok = base + [rec(7, 450, GAP)]
    bad = base + [rec(7, 501, GAP)]
    cfg = vee.VeeConfig(spike_multiple=10, zero_run_intervals=0)
    assert vee.validate(ok, NOW, IV, cfg) == []
    assert rules(vee.validate(bad, NOW, IV, cfg)) == [(T0 + 7 * IV, vee.SPIKE)]


def test_negative_energy_is_flagged():
    assert rules(vee.validate([rec(0, 5), rec(1, -3)], NOW, IV)) == [(T0 + IV, vee.NEGATIVE)]


def test_zero_run_of_the_configured_length_is_flagged_but_power_off_is_not_zero_use():
    cfg = vee.VeeConfig(zero_run_intervals=4)
    four = [rec(0, 5)] + [rec(i, 0) for i in range(1, 5)] + [rec(5, 5)]
    assert rules(vee.validate(four, NOW, IV, cfg)) == [(T0 + i * IV, vee.ZERO_RUN)
                                                       for i in range(1, 5)]
    # 2 zeros, POWER_OFF, 2 zeros: two runs of 2, neither reaches 4
    split = [rec(0, 0), rec(1, 0), rec(2, 0, OFF, IV), rec(3, 0, GAP), rec(4, 0)]
    assert vee.validate(split, NOW, IV, cfg) == []


def test_overlap_and_misaligned_records_are_flagged():
    recs = [rec(0, 5), (T0 + 600, 5, 0, IV)]  # starts 600 s into the previous interval
    assert sorted(rules(vee.validate(recs, NOW, IV))) == [(T0 + 600, vee.MISALIGNED),
                                                          (T0 + 600, vee.OVERLAP)]


def test_clock_errors_future_and_far_past_are_flagged():
    cfg = vee.VeeConfig(future_tolerance_s=300, max_age_s=86400)
    recs = [(NOW - 2 * 86400, 5, 0, IV), (NOW - 900, 5, 0, IV), (NOW + 900, 5, 0, IV)]
    assert rules(vee.validate(recs, NOW, IV, cfg)) == [(NOW - 2 * 86400, vee.FAR_PAST),
                                                       (NOW + 900, vee.FUTURE)]


def test_resent_record_is_duplicate_when_equal_and_conflict_when_different():
    stored = {T0: 10, T0 + IV: 20}
    got = vee.check_incoming(stored, [rec(0, 10), rec(1, 25), rec(2, 7)])
    assert rules(got) == [(T0, vee.DUPLICATE), (T0 + IV, vee.CONFLICT)]


# --- gaps and estimation (pure) ---------------------------------------------------------

def test_gaps_are_uncovered_intervals_and_power_off_spans_are_not_gaps():
    recs = [rec(0, 5), rec(1, 0, OFF, 3 * IV), rec(4, 5, GAP), rec(7, 5)]
    # covered: [0,1) [1,4) [4,5) [7,8) -> missing [5,7)
    assert vee.find_gaps(recs, IV) == [(T0 + 5 * IV, T0 + 7 * IV)]
    # up to a later until_t: also the tail [8, 10)
    assert vee.find_gaps(recs, IV, T0, T0 + 10 * IV) == [(T0 + 5 * IV, T0 + 7 * IV),
                                                         (T0 + 8 * IV, T0 + 10 * IV)]


def test_linear_estimate_interpolates_between_neighbours_with_floor():
    assert vee.estimate_linear(10, 20, 4) == [12, 14, 16, 18]  # 10 + 10*i//5
    # 20 + (-10)*i//4 with floor: -10//4 = -3, -20//4 = -5, -30//4 = -8
    assert vee.estimate_linear(20, 10, 3) == [17, 15, 12]


def test_profile_estimate_is_the_mean_of_the_same_interval_on_previous_days():
    s = T0 + 10 * IV
    hist = {s - 86400: 30, s - 2 * 86400: 40, s - 4 * 86400: 50, s - 86400 + IV: 999}
    assert vee.estimate_profile(hist, s, 7) == 40  # (30 + 40 + 50) // 3; day 3 unknown
    assert vee.estimate_profile(hist, s, 1) == 30
    assert vee.estimate_profile({}, s, 7) is None


# --- with the database -------------------------------------------------------------------

def store(engine, seq, records, t=NOW):
    body = messages.encode_uplink("reading", MID, seq, t, {
        "iv": IV, "u": "Wh", "cum": 0,
        "r": [[s, e, None, None, f, span] for s, e, f, span in records]})
    UplinkStore(engine).write([messages.decode_uplink(messages.topic(MID, "reading"), body)],
                              now=t)


def prepared(engine):
    register_meters(engine, [MID])
    vee.create_tables(engine)


def test_gap_gets_one_backfill_request_satisfied_when_the_records_arrive(engine):
    prepared(engine)
    # at 13 intervals, intervals 11 and 12 may still be on their way (report delay 2):
    # coverage is judged on [0, 11)
    now = T0 + 13 * IV
    store(engine, 1, [rec(0, 5), rec(1, 0, OFF, 2 * IV), rec(3, 5, GAP), rec(4, 6)])
    store(engine, 2, [rec(7, 5), rec(8, 5), rec(9, 5)])
    cfg = vee.VeeConfig(zero_run_intervals=0)
    with Session(engine) as s:
        rep = vee.run_vee(s, MID, now, IV, cfg, since_t=T0)
        s.commit()
        # missing [5, 7) between records, and interval 10 which is due by now (12 - 2)
        assert rep.gaps == [(T0 + 5 * IV, T0 + 7 * IV), (T0 + 10 * IV, T0 + 11 * IV)]
        assert [(r.from_t, r.to_t) for r in rep.requested] == rep.gaps
    with Session(engine) as s:  # running again asks nothing new
        assert vee.run_vee(s, MID, now, IV, cfg, since_t=T0).requested == []
        s.commit()
    store(engine, 3, [rec(5, 4), rec(6, 4)])  # the meter answered the backfill
    with Session(engine) as s:
        rep = vee.run_vee(s, MID, now, IV, cfg, since_t=T0)
        s.commit()
        assert [(r.from_t, r.status) for r in rep.satisfied] == [(T0 + 5 * IV, vee.SATISFIED)]
        still = s.execute(select(vee.BackfillRequest.from_t).where(
            vee.BackfillRequest.status == vee.OPEN)).scalars().all()
        assert still == [T0 + 10 * IV]


def test_validation_flags_are_stored_once(engine):
    prepared(engine)
    store(engine, 1, [rec(i, 10) for i in range(6)] + [rec(6, 900)])
    cfg = vee.VeeConfig(spike_multiple=10, zero_run_intervals=0)
    with Session(engine) as s:
        vee.run_vee(s, MID, T0 + 9 * IV, IV, cfg, since_t=T0)
        vee.run_vee(s, MID, T0 + 9 * IV, IV, cfg, since_t=T0)
        s.commit()
        flags = s.execute(select(vee.VeeFlag.start_t, vee.VeeFlag.rule)).all()
        assert [tuple(f) for f in flags] == [(T0 + 6 * IV, vee.SPIKE)]  # 900 > 10 x 10


def test_conflicting_resend_is_flagged_and_the_first_copy_kept(engine):
    prepared(engine)
    store(engine, 1, [rec(0, 10)])
    with Session(engine) as s:
        found = vee.flag_incoming(s, MID, [rec(0, 99)], NOW)
        s.commit()
        assert rules(found) == [(T0, vee.CONFLICT)]
    store(engine, 2, [rec(0, 99)])
    with Session(engine) as s:
        assert vee.merged_profile(s, MID, T0, T0 + IV) == [(T0, 10, None)]


def test_linear_estimates_fill_a_gap_flagged_and_never_replace_actuals(engine):
    prepared(engine)
    store(engine, 1, [rec(0, 10), rec(5, 20)])  # intervals 1..4 missing
    with Session(engine) as s:
        made = vee.estimate_gaps(s, MID, [(T0 + IV, T0 + 5 * IV)], NOW, vee.LINEAR, IV)
        s.commit()
        assert [(r.start_t, r.energy, r.method) for r in made] == [
            (T0 + IV, 12, "linear"), (T0 + 2 * IV, 14, "linear"),
            (T0 + 3 * IV, 16, "linear"), (T0 + 4 * IV, 18, "linear")]  # 10 + 10*i//5
    store(engine, 2, [rec(2, 3)])  # an actual for interval 2 arrives late
    with Session(engine) as s:
        again = vee.estimate_gaps(s, MID, [(T0 + IV, T0 + 5 * IV)], NOW, vee.LINEAR, IV)
        assert again == []  # estimates exist; the actual is never estimated over
        merged = vee.merged_profile(s, MID, T0, T0 + 6 * IV)
        assert merged == [(T0, 10, None), (T0 + IV, 12, "linear"), (T0 + 2 * IV, 3, None),
                          (T0 + 3 * IV, 16, "linear"), (T0 + 4 * IV, 18, "linear"),
                          (T0 + 5 * IV, 20, None)]


def test_profile_estimate_uses_the_same_interval_of_previous_days(engine):
    prepared(engine)
    day = 86400
    target = T0 + 3 * day + 8 * IV
    store(engine, 1, [(target - day, 30, 0, IV), (target - 2 * day, 40, 0, IV),
                      (target - 3 * day, 50, 0, IV), (target - IV, 1, 0, IV)])
    with Session(engine) as s:
        made = vee.estimate_gaps(s, MID, [(target, target + IV)], target + day, vee.PROFILE, IV)
        s.commit()
        assert [(r.start_t, r.energy, r.method) for r in made] == [(target, 40, "profile")]
