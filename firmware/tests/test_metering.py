"""Metering core, hand-computed examples (runs on CPython and MicroPython)."""

from firmware.core import localtime as lt
from firmware.core import metering as m
from firmware.tests.check import eq, raises

# 2026-11-27 00:00:00 UTC (`date -u -d 2026-11-27 +%s`, as in test_localtime)
T_2026_11_27_UTC = 1795737600
# 2026-11-27 00:00 IST = 2026-11-26 18:30 UTC = 1795737600 - 19800
IST_MIDNIGHT_NOV27 = T_2026_11_27_UTC - 19800  # 1795717800
HOUR = 3600


# ------------------------------------------------------------ PulseRegister

def test_3200_pulses_at_3200_imp_per_kwh_are_1000_wh():
    r = m.PulseRegister.electricity(3200)
    eq(r.add(3200), 1000)
    eq(r.total_units, 1000)


def test_one_pulse_at_3200_imp_per_kwh_is_0_wh_and_the_remainder_is_kept():
    r = m.PulseRegister.electricity(3200)
    eq(r.add(1), 0)
    # 1 + 15 = 16 pulses * 1000 / 3200 = 5 Wh, the first pulse was not lost
    eq(r.add(15), 5)
    eq(r.total_units, 5)


def test_16_pulses_at_3200_imp_per_kwh_are_5_wh():
    eq(m.PulseRegister.electricity(3200).add(16), 5)  # 16 * 1000 / 3200 = 5


def test_single_pulse_adds_do_not_drift():
    r = m.PulseRegister.electricity(3200)
    got = 0
    for _ in range(6400):
        got += r.add(1)
    eq(got, 2000)  # 6400 * 1000 / 3200
    eq(r.total_units, 2000)
    eq(r.total_pulses, 6400)


def test_1600_imp_per_kwh_register_floors_partial_wh():
    r = m.PulseRegister.electricity(1600)
    eq(r.add(7), 4)  # 7 * 1000 / 1600 = 4.375 -> 4
    eq(r.add(1), 1)  # 8 * 1000 / 1600 = 5 exactly


def test_water_10_litres_per_pulse():
    r = m.PulseRegister(10, 1)
    eq(r.add(7), 70)


def test_water_half_litre_per_pulse_keeps_the_odd_pulse():
    r = m.PulseRegister(1, 2)
    eq(r.add(3), 1)  # 1.5 L -> 1
    eq(r.add(1), 1)  # 4 pulses = 2 L


def test_gas_one_pulse_per_hundredth_cubic_metre_is_10_litres():
    # 0.01 m3 = 10 L
    eq(m.PulseRegister(10, 1).add(123), 1230)


def test_negative_pulses_are_rejected_and_register_unchanged():
    r = m.PulseRegister.electricity(3200, total_pulses=16)
    raises(m.MeteringError, r.add, -1)
    eq(r.total_pulses, 16)
    eq(r.total_units, 5)


def test_bad_pulse_constant_is_rejected():
    raises(m.MeteringError, m.PulseRegister.electricity, 0)
    raises(m.MeteringError, m.PulseRegister, 1, -3)


def test_pulse_register_state_round_trip_keeps_the_remainder():
    r = m.PulseRegister.electricity(3200)
    r.add(17)  # 17 * 5 / 16 = 5.3125 -> 5 Wh, remainder 5/16
    back = m.PulseRegister.from_state(r.to_state())
    eq(back.total_units, 5)
    eq(back.add(15), 5)  # 32 pulses = 10 Wh


# ------------------------------------------------------------ CounterDelta

def test_first_counter_reading_returns_zero():
    eq(m.CounterDelta(16).update(12345), 0)


def test_counter_wrap_65535_to_3_is_4_pulses():
    c = m.CounterDelta(16)
    c.update(65535)
    eq(c.update(3), 4)  # 65535 -> 0 is 1 pulse, 0 -> 3 is 3 more


def test_unchanged_counter_is_zero_pulses():
    c = m.CounterDelta(16)
    c.update(100)
    eq(c.update(100), 0)


def test_signed_pcnt_reading_wraps_the_same_way():
    c = m.CounterDelta(16)
    c.update(-1)  # PCNT's signed -1 is 0xFFFF
    eq(c.update(1), 2)


def test_8_bit_counter_wraps_at_256():
    c = m.CounterDelta(8)
    c.update(250)
    eq(c.update(4), 10)  # 256 - 250 + 4


# ------------------------------------------------------- CumulativeRegister

def test_cumulative_increase_returns_the_delta():
    r = m.CumulativeRegister(1000)
    eq(r.update(1250), 250)
    eq(r.value, 1250)
    eq(r.status, m.REG_OK)


def test_cumulative_decrease_keeps_value_and_reports_register_decrease():
    r = m.CumulativeRegister(1000)
    r.update(1250)
    eq(r.update(900), 0)
    eq(r.status, m.REG_DECREASE)
    eq(m.REGISTER_STATUS_NAMES[r.status], "REGISTER_DECREASE")
    eq(r.value, 1250)


def test_one_read_glitch_down_then_normal_reading_counts_from_before_the_glitch():
    r = m.CumulativeRegister(1000)
    r.update(1250)
    r.update(900)
    eq(r.update(1300), 50)  # 1300 - 1250
    eq(r.value, 1300)


def test_meter_register_rollover_at_modulus_is_counted():
    r = m.CumulativeRegister(999999900, modulus=10 ** 9)
    eq(r.update(50), 150)  # 50 + 1_000_000_000 - 999_999_900
    eq(r.status, m.REG_ROLLOVER)
    eq(r.value, 1000000050)  # unwrapped, keeps growing


def test_drop_far_from_the_modulus_is_a_glitch_not_a_rollover():
    r = m.CumulativeRegister(500000000, modulus=10 ** 9)
    # wrapped delta 0 + 10**9 - 5*10**8 = 5*10**8 Wh > window 10**9 // 100 = 10**7
    eq(r.update(0), 0)
    eq(r.status, m.REG_DECREASE)
    eq(r.value, 500000000)


def test_rollover_window_edge_is_one_percent_of_modulus():
    r = m.CumulativeRegister(995, modulus=1000)  # window 1000 // 100 = 10 Wh
    eq(r.update(6), 0)  # 6 + 1000 - 995 = 11 > 10
    eq(r.status, m.REG_DECREASE)
    eq(r.update(5), 10)  # 5 + 1000 - 995 = 10 <= 10
    eq(r.status, m.REG_ROLLOVER)


def test_increase_above_max_step_is_a_jump_and_not_counted():
    r = m.CumulativeRegister(1000, max_step_wh=100)
    eq(r.update(1101), 0)
    eq(r.status, m.REG_JUMP)
    eq(r.value, 1000)
    eq(r.update(1100), 100)
    eq(r.status, m.REG_OK)


def test_invalid_readings_are_flagged_and_ignored():
    r = m.CumulativeRegister(10, modulus=10 ** 9)
    for bad in (-5, 10 ** 9, "12"):
        eq(r.update(bad), 0)
        eq(r.status, m.REG_INVALID)
    eq(r.value, 10)


def test_rebase_after_meter_swap_counts_from_the_new_meter():
    r = m.CumulativeRegister(1250)
    r.update(20)  # new meter starts near zero
    eq(r.status, m.REG_DECREASE)
    r.rebase(20)
    eq(r.update(35), 15)
    eq(r.value, 1265)


# ------------------------------------------------------- IntervalProfile

def test_sample_exactly_on_boundary_closes_the_interval_and_starts_the_next():
    p = m.IntervalProfile(900)
    eq(p.add_sample(0, 100, 230000, 5000), ())
    eq(p.add_sample(600, 110, 232000, 7000), ())
    # 00:15:00: energy 130 - 100 = 30; avg V (230000+232000)/2, avg I (5000+7000)/2
    eq(p.add_sample(900, 130, 240000, 1000), [(0, 900, 30, 231000, 6000, 2, 0)])
    p.add_sample(1799, 140, 240000, 1000)
    # the 00:15:00 sample's V/I and count belong to the new interval; 150 - 130 = 20
    eq(p.add_sample(1800, 150), [(900, 900, 20, 240000, 1000, 2, 0)])


def test_energy_between_a_last_sample_and_an_off_boundary_one_goes_to_the_new_interval():
    p = m.IntervalProfile(900)
    p.add_sample(0, 100)
    p.add_sample(840, 110)
    eq(p.add_sample(960, 125), [(0, 900, 10, None, None, 2, 0)])  # 110 - 100
    eq(p.add_sample(1800, 140), [(900, 900, 30, None, None, 1, 0)])  # 140 - 110


def test_average_rounds_to_nearest_and_skips_missing_values():
    p = m.IntervalProfile(900)
    p.add_sample(0, 0, 1, None)
    p.add_sample(60, 0, 2, 7)
    # V (1+2)/2 = 1.5 -> 2; I only one value: 7
    eq(p.add_sample(900, 0), [(0, 900, 0, 2, 7, 2, 0)])


def test_power_off_gap_emits_one_power_off_record_and_flags_the_next_interval():
    p = m.IntervalProfile(900)
    p.add_sample(0, 100)
    p.add_sample(600, 110)
    # 3700 s is in interval [3600, 4500): [900, 3600) had no samples
    eq(p.add_sample(3700, 150), [(0, 900, 10, None, None, 2, 0),
                                 (900, 2700, 0, None, None, 0, m.PROFILE_POWER_OFF)])
    # energy across the gap (150 - 110) plus 160 - 150 lands in [3600, 4500)
    eq(p.add_sample(4500, 160), [(3600, 900, 50, None, None, 1, m.PROFILE_AFTER_GAP)])


def test_thirty_days_of_minute_samples_give_2880_quarter_hours_and_all_the_energy():
    p = m.IntervalProfile(900)
    t0 = IST_MIDNIGHT_NOV27
    cum = first = 5000
    records = []
    minutes = 30 * 24 * 60
    for i in range(minutes + 1):  # the last sample, at exactly +30 days, closes the last interval
        if i:
            cum += i % 7  # 0..6 Wh a minute
        records.extend(p.add_sample(t0 + 60 * i, cum))
    eq(len(records), 30 * 96)
    total = 0
    for start, interval_s, energy, _, _, count, flags in records:
        total += energy
        assert interval_s == 900 and count == 15 and flags == 0
        assert (start + lt.IST_OFFSET_S) % 900 == 0  # aligned in IST too
    eq(total, cum - first)
    eq(records[0][0], t0)
    eq(records[-1][0], t0 + 30 * 86400 - 900)


def test_half_hour_profile_has_48_records_a_day():
    p = m.IntervalProfile(1800)
    n = 0
    for i in range(24 * 60 + 1):
        n += len(p.add_sample(IST_MIDNIGHT_NOV27 + 60 * i, i))
    eq(n, 48)


def test_profile_rejects_time_or_energy_going_back():
    p = m.IntervalProfile(900)
    p.add_sample(100, 50)
    raises(m.MeteringError, p.add_sample, 99, 50)
    raises(m.MeteringError, p.add_sample, 101, 49)


def test_profile_state_round_trip_mid_interval():
    p = m.IntervalProfile(900)
    p.add_sample(0, 100, 230000)
    p.add_sample(300, 104, 232000)
    back = m.IntervalProfile.from_state(p.to_state())
    eq(back.add_sample(900, 112), [(0, 900, 12, 231000, None, 2, 0)])


# ------------------------------------------------------------- MaxDemand

def _feed_slots(md, energies, step=300):
    # one reading at the end of each 5-minute slot
    for k, e in enumerate(energies):
        md.add(step * (k + 1), e)


def test_sliding_window_max_demand_by_hand():
    md = m.MaxDemand(1800, 300)
    _feed_slots(md, [100, 200, 300, 400, 500, 600, 50, 50])
    md.advance(2700)
    # windows of 6 slots close at 1800: 100+200+300+400+500+600 = 2100 Wh -> 2100*3600//1800 = 4200 W
    #                       at 2100: 200+...+600+50 = 2050 -> 4100 W; at 2400: 1900 -> 3800 W
    eq(md.max_w, 4200)
    eq(md.max_t, 1800)


def test_sliding_window_catches_a_peak_that_straddles_fixed_blocks():
    md = m.MaxDemand(900, 300)
    _feed_slots(md, [0, 300, 300, 300, 0])
    md.advance(1800)
    # fixed 15-min blocks would see 600 and 300 Wh; the window 300..1200 has 900 Wh
    # -> 900 * 3600 // 900 = 3600 W
    eq(md.max_w, 3600)
    eq(md.max_t, 1200)


def test_energy_inside_a_slot_adds_up_and_open_slot_is_not_yet_a_maximum():
    md = m.MaxDemand(1800, 300)
    for s in range(60, 301, 60):
        md.add(s, 20)  # 5 readings of 20 Wh in slot 0
    eq(md.max_w, 0)
    eq(md.demand_w(), 200)  # 100 Wh * 3600 // 1800
    md.advance(300)  # nothing later than 300 yet: slot 0 still open
    eq(md.max_w, 0)
    md.advance(301)
    eq(md.max_w, 200)


def test_gap_longer_than_window_empties_it():
    md = m.MaxDemand(1800, 300)
    md.add(300, 600)
    md.advance(300 * 20)
    eq(md.max_w, 1200)  # 600 * 3600 // 1800
    eq(md.demand_w(), 0)


def test_reset_clears_maximum_but_keeps_the_window():
    md = m.MaxDemand(1800, 300)
    _feed_slots(md, [900])
    md.advance(301)
    eq(md.max_w, 1800)  # 900 * 2
    md.reset()
    eq((md.max_w, md.max_t), (0, None))
    md.add(600, 0)
    md.advance(601)
    eq(md.max_w, 1800)  # slot 0's 900 Wh is still inside the window ending at 600


def test_max_demand_rejects_negative_energy_and_bad_window():
    raises(m.MeteringError, m.MaxDemand(1800, 300).add, 300, -1)
    raises(m.MeteringError, m.MaxDemand, 1000, 300)


def test_max_demand_state_round_trip():
    md = m.MaxDemand(1800, 300)
    _feed_slots(md, [100, 200, 300])
    back = m.MaxDemand.from_state(md.to_state())
    for k, e in enumerate([400, 500, 600]):
        back.add(300 * (k + 4), e)
    back.advance(2100)
    eq(back.max_w, 4200)  # the same 2100 Wh window as the uninterrupted example


# ---------------------------------------------------------- BillingSnapshots

NOV27_2359_IST = T_2026_11_27_UTC + 18 * HOUR + 29 * 60  # 1795804140
NOV28_MIDNIGHT_IST = NOV27_2359_IST + 60  # 1795804200
# 2026-12-01 00:00 IST = 1795737600 + 4 * 86400 - 19800
DEC01_MIDNIGHT_IST = 1796063400


def test_first_observation_sets_the_baseline_only():
    eq(m.BillingSnapshots(lt.IST_OFFSET_S).observe(NOV27_2359_IST, 500, 1000, 0), [])


def test_daily_snapshot_at_ist_midnight_which_is_1830_utc():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    b.observe(NOV27_2359_IST, 500, 1000, 0)
    eq(b.observe(NOV28_MIDNIGHT_IST, 510, 990, 0),
       [(m.SNAP_DAILY, 20261127, NOV28_MIDNIGHT_IST, 510, 990, None, 0)])
    eq(b.observe(NOV28_MIDNIGHT_IST + 60, 520, 980, 0), [])


def test_observation_after_midnight_snapshots_the_last_values_before_it():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    b.observe(NOV27_2359_IST, 500, 1000, 0)
    eq(b.observe(NOV28_MIDNIGHT_IST + 60, 520, 980, 0),
       [(m.SNAP_DAILY, 20261127, NOV28_MIDNIGHT_IST, 500, 1000, None, 0)])


def test_monthly_snapshot_at_month_end_carries_max_demand():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    b.observe(DEC01_MIDNIGHT_IST - 300, 9000, 1500, 4200)
    got = b.observe(DEC01_MIDNIGHT_IST + 300, 9010, 1490, 4200)
    eq(got, [(m.SNAP_DAILY, 20261130, DEC01_MIDNIGHT_IST, 9000, 1500, None, 0),
             (m.SNAP_MONTHLY, 2026 * 12 + 10, DEC01_MIDNIGHT_IST, 9000, 1500, 4200, 0)])


def test_missed_days_give_one_stale_daily_snapshot_each():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    noon_27 = IST_MIDNIGHT_NOV27 + 12 * HOUR
    b.observe(noon_27, 700, 800, 0)
    got = b.observe(noon_27 + 3 * 86400, 700, 800, 0)
    stale = m.SNAP_STALE
    eq(got, [(m.SNAP_DAILY, 20261127, IST_MIDNIGHT_NOV27 + 86400, 700, 800, None, stale),
             (m.SNAP_DAILY, 20261128, IST_MIDNIGHT_NOV27 + 2 * 86400, 700, 800, None, stale),
             (m.SNAP_DAILY, 20261129, IST_MIDNIGHT_NOV27 + 3 * 86400, 700, 800, None, stale)])


def test_outage_over_month_end_orders_daily_then_monthly():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    noon_29 = IST_MIDNIGHT_NOV27 + 2 * 86400 + 12 * HOUR
    b.observe(noon_29, 700, 800, 3000)
    got = b.observe(noon_29 + 3 * 86400, 700, 800, 0)
    eq([(r[0], r[1], r[5]) for r in got],
       [(m.SNAP_DAILY, 20261129, None), (m.SNAP_DAILY, 20261130, None),
        (m.SNAP_MONTHLY, 2026 * 12 + 10, 3000), (m.SNAP_DAILY, 20261201, None)])


def test_long_outage_keeps_the_newest_31_days_and_every_month():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    jan01_noon = lt.local_midnight_utc(lt.days_from_civil(2026, 1, 1), lt.IST_OFFSET_S) + 12 * HOUR
    apr01_noon = lt.local_midnight_utc(lt.days_from_civil(2026, 4, 1), lt.IST_OFFSET_S) + 12 * HOUR
    b.observe(jan01_noon, 1, 2, 777)
    got = b.observe(apr01_noon, 1, 2, 0)
    # 90 midnights (Jan 2 .. Apr 1); kept: the 31 that end Mar 1 .. Mar 31
    eq(len(got), 31 + 3)
    eq([(r[0], r[1], r[5]) for r in got[:2]],
       [(m.SNAP_MONTHLY, 2026 * 12 + 0, 777), (m.SNAP_MONTHLY, 2026 * 12 + 1, 0)])
    eq(got[2][1], 20260301)
    eq(got[-2][1], 20260331)
    eq((got[-1][0], got[-1][1], got[-1][5]), (m.SNAP_MONTHLY, 2026 * 12 + 2, 0))


def test_billing_rejects_time_going_back():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    b.observe(NOV27_2359_IST, 500, 1000, 0)
    raises(m.MeteringError, b.observe, NOV27_2359_IST - 1, 500, 1000, 0)


def test_billing_state_round_trip_across_midnight():
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    b.observe(NOV27_2359_IST, 500, 1000, 0)
    back = m.BillingSnapshots.from_state(b.to_state())
    eq(back.observe(NOV28_MIDNIGHT_IST + 60, 520, 980, 0),
       [(m.SNAP_DAILY, 20261127, NOV28_MIDNIGHT_IST, 500, 1000, None, 0)])


def test_energy_reported_at_a_closed_boundary_counts_in_the_open_slot():
    md = m.MaxDemand(window_s=600, step_s=300)
    md.add(300, 100)
    md.advance(301)  # closes the slot [0, 300): all energy up to t=300 is in
    md.add(300, 50)  # more energy reported at the same instant: not time going back
    md.advance(601)  # closes [300, 600)
    # windows: [0,300)+... -> 100 Wh; [0,600) -> 150 Wh over 600 s = 900 W
    eq(md.max_w, 900)
    raises(m.MeteringError, md.add, 299, 1)  # a real step back in time still fails
