"""Tariff engine: worked examples, every expected value computed by hand below.

Slab convention: [upto, rate] with ``upto`` the cumulative bound in billing
units, as Indian tariff orders write "0-100 units, 101-300 units, above 300"
(e.g. TANGEDCO LT IA, http://www.tangedco.gov.in/TariffDetailsNew.php).
"""
from firmware.core.tariff import Biller, ExactCharge, Tariff, TariffError, TariffSchedule
from firmware.tests.check import eq, raises

# 2026-01-01 00:00 IST = 2025-12-31 18:30 UTC (`date -u -d '2025-12-31 18:30' +%s`)
JAN1_IST = 1767205800
# 2026-01-31 23:45 IST = 18:15 UTC (`date -u -d '2026-01-31 18:15' +%s`)
JAN31_2345_IST = 1769883300
# 2026-02-01 00:00 IST = 2026-01-31 18:30 UTC (`date -u -d '2026-01-31 18:30' +%s`)
FEB1_IST = 1769884200
H = 3600


def jan(day, hh=0, mm=0):
    """UTC seconds of 2026-01-<day> hh:mm IST."""
    return JAN1_IST + (day - 1) * 86400 + hh * H + mm * 60


def tariff(**kw):
    d = {"id": "DOM-LT1", "version": 1, "service": "electricity", "unit_size": 1000,
         "slabs": [[100, 350], [300, 450], [None, 650]]}
    for k in kw:
        d[k] = kw[k]
    return Tariff.from_dict(d)


def test_tariff_error_is_its_own_class_made_once():
    # made on first use (issue 3): every way of naming it gives the class that is raised
    from firmware.core import credit, tariff as tariff_mod
    eq(tariff_mod.TariffError is TariffError and TariffError.__name__ == "TariffError", True)
    eq(issubclass(TariffError, ValueError) and TariffError is not credit.CreditError, True)
    eq(type(raises(ValueError, ExactCharge(10).add, -1)) is TariffError, True)


def test_helper_times_match_date_command():
    eq(jan(31, 23, 45), JAN31_2345_IST)
    eq(jan(32), FEB1_IST)


# --- slabs -----------------------------------------------------------------

def test_250_kwh_in_one_call_is_100_at_first_rate_and_150_at_second():
    # 100*350 + 150*450 = 35000 + 67500 = 102500
    eq(Biller(tariff()).charge_usage(jan(5, 10), 250000), 102500)


def test_exactly_100_kwh_is_all_first_slab():
    b = Biller(tariff())
    eq(b.charge_usage(jan(5, 10), 100000), 35000)  # 100 * 350
    eq(b.month_to_date_qty(), 100000)


def test_100_001_kwh_prices_the_last_wh_at_second_slab_rate():
    b = Biller(tariff())
    # 100 kWh * 350 + 1 Wh * 450/1000 = 35000.45 -> floor 35000, carry 0.45
    eq(b.charge_usage(jan(5, 10), 100001), 35000)
    # +1 Wh at 0.45 -> 35000.90 exact, floor still 35000: debit 0
    eq(b.charge_usage(jan(5, 11), 1), 0)
    # +1 Wh -> 35001.35 exact, floor 35001: debit 1
    eq(b.charge_usage(jan(5, 12), 1), 1)


def test_one_interval_crossing_a_slab_boundary_splits_at_the_boundary():
    b = Biller(tariff())
    eq(b.charge_usage(jan(5, 10), 99500), 34825)  # 99.5 * 350
    # 500 Wh at 0.350 + 500 Wh at 0.450 = 175 + 225 = 400
    eq(b.charge_usage(jan(5, 10, 15), 1000), 400)


def test_one_interval_crossing_two_slab_boundaries():
    b = Biller(tariff())
    eq(b.charge_usage(jan(5, 10), 99000), 34650)  # 99 * 350
    # 1 kWh*350 + 200 kWh*450 + 2 kWh*650 = 350 + 90000 + 1300 = 91650
    eq(b.charge_usage(jan(5, 10, 15), 203000), 91650)


def test_ceb_published_worked_example_with_40_pct_adjustment():
    # Ceylon Electricity Board domestic worked example, 210 units in 31 days
    # (http://www.lankafreezone.com/mypage_35_Ceylon-Electricity-Board-Bill-Calculator.html):
    # blocks 0-31 @3.00, 32-62 @4.70, 63-93 @7.50, 94-124 @21.00, 125-186 @24.00, 187+ @36.00
    # energy Rs 93.00+145.70+232.50+651.00+1488.00+864.00 = Rs 3474.20;
    # with the 40 % fuel adjustment per block: Rs 4863.88 = 486388 paise.
    ceb = tariff(slabs=[[31, 300], [62, 470], [93, 750], [124, 2100], [186, 2400], [None, 3600]])
    eq(Biller(ceb).charge_usage(jan(3, 12), 210000), 347420)
    eq(Biller(tariff(slabs=ceb.slabs, duty_bp=4000)).charge_usage(jan(3, 12), 210000), 486388)


# --- time of day -------------------------------------------------------------

PEAK = [[18 * H, 22 * H, 20]]  # 18:00-22:00 +20 %


def test_tod_window_starts_at_its_start_second():
    # 1 kWh in slab 1: 350 outside, 350 * 1.2 = 420 inside
    eq(Biller(tariff(tod=PEAK)).charge_usage(jan(5, 17, 45), 1000), 350)
    eq(Biller(tariff(tod=PEAK)).charge_usage(jan(5, 18), 1000), 420)
    eq(Biller(tariff(tod=PEAK)).charge_usage(jan(5, 18) - 1, 1000), 350)


def test_tod_window_end_second_is_outside():
    eq(Biller(tariff(tod=PEAK)).charge_usage(jan(5, 21, 45), 1000), 420)
    eq(Biller(tariff(tod=PEAK)).charge_usage(jan(5, 22), 1000), 350)


def test_tod_window_wrapping_midnight_covers_2345_and_0000():
    night = tariff(tod=[[23 * H, 6 * H, -20]])  # 23:00-06:00 -20 %: 350 * 0.8 = 280
    b = Biller(night)
    eq(b.charge_usage(jan(5, 22, 45), 1000), 350)
    eq(b.charge_usage(jan(5, 23, 45), 1000), 280)
    eq(b.charge_usage(jan(6, 0, 0), 1000), 280)
    eq(b.charge_usage(jan(6, 5, 45), 1000), 280)
    eq(b.charge_usage(jan(6, 6, 0), 1000), 350)


def test_solar_rebate_and_peak_surcharge_in_one_tariff():
    two = tariff(tod=[[9 * H, 17 * H, -20], [18 * H, 22 * H, 20]])
    b = Biller(two)
    eq(b.charge_usage(jan(5, 12), 10000), 2800)  # 10 * 350 * 0.8
    eq(b.charge_usage(jan(5, 17, 30), 10000), 3500)  # gap between windows: 0 %
    eq(b.charge_usage(jan(5, 19), 10000), 4200)  # 10 * 350 * 1.2


# --- month end ----------------------------------------------------------------

def test_new_local_month_resets_the_slabs():
    b = Biller(tariff())
    eq(b.charge_usage(jan(10, 12), 150000), 57500)  # 100*350 + 50*450
    eq(b.charge_usage(JAN31_2345_IST, 1000), 450)  # still January: slab 2
    eq(b.month_to_date_qty(), 151000)
    eq(b.charge_usage(FEB1_IST, 1000), 350)  # 00:00 IST on 1 Feb: slab 1 again
    eq(b.month_to_date_qty(), 1000)


def test_month_to_date_reads_zero_for_a_month_not_yet_charged():
    b = Biller(tariff())
    b.charge_usage(JAN31_2345_IST, 5000)
    eq(b.month_to_date_qty(JAN31_2345_IST + 899), 5000)
    eq(b.month_to_date_qty(FEB1_IST), 0)


def test_month_follows_utc_offset_not_utc():
    # 2026-01-31 23:45 IST is 18:15 UTC, still 31 Jan in UTC too; but 00:00 IST on
    # 1 Feb is 18:30 UTC on 31 Jan: with offset 0 it is the same month, no reset.
    b = Biller(tariff(utc_offset_s=0))
    b.charge_usage(JAN31_2345_IST, 100000)
    eq(b.charge_usage(FEB1_IST, 1000), 450)


# --- rounding and duty --------------------------------------------------------

def test_twenty_one_paisa_charges_with_5_pct_duty_debit_exactly_21():
    # rate 1 paisa/kWh, 1 kWh per call: exact 1 * 1.05 = 1.05 paise per call.
    # Debits floor(1.05k) - floor(1.05(k-1)): 1 for k = 1..19 (floor(19.95) = 19),
    # then floor(21.00) - 19 = 2. Total 21 (not 20 = rounding down each call,
    # not 40 = rounding up each call).
    b = Biller(tariff(slabs=[[None, 1]], duty_bp=500))
    debits = [b.charge_usage(jan(5, 0, 15 * k), 1000) for k in range(20)]
    eq(sum(debits), 21)
    eq(debits[:19], [1] * 19)
    eq(debits[19], 2)


def test_duty_applies_to_exact_tod_amount_without_intermediate_rounding():
    # 1 Wh at 350 paise/kWh, +20 % ToD, 5 % duty: 0.35 * 1.2 * 1.05 = 0.441 paise.
    # Rounding each step to paise would give 0 forever; exactly, 3 Wh = 1.323 -> 1.
    b = Biller(tariff(tod=PEAK, duty_bp=500))
    eq([b.charge_usage(jan(5, 19), 1) for _ in range(3)], [0, 0, 1])


def test_exact_charge_never_debits_more_than_the_exact_total():
    acc = ExactCharge(1000)
    total = 0
    for n in (999, 1, 1, 1998, 500, 500):  # 0.999, 1.000, 1.001, 2.999, 3.499, 3.999
        total += acc.add(n)
    eq(total, 3)  # floor(3.999)
    eq(acc.carry, 999)


def test_exact_charge_rejects_a_negative_amount():
    raises(TariffError, ExactCharge(10).add, -1)


# --- fixed charge -------------------------------------------------------------

def test_fixed_charge_with_duty_once_per_local_day():
    b = Biller(tariff(fixed_paise_per_day=1000, duty_bp=500))
    eq(b.charge_day(jan(5, 0)), 1050)  # 1000 * 1.05
    # a second call the same local day (reboot, replay) charges nothing
    eq(b.charge_day(jan(5, 23, 59)), 0)
    eq(b.charge_day(jan(6, 0)), 1050)


def test_fixed_charge_fractions_carry_between_days():
    b = Biller(tariff(fixed_paise_per_day=333, duty_bp=500))
    # 333 * 1.05 = 349.65 -> 349; day 2 exact 699.30 -> 699 - 349 = 350
    eq(b.charge_day(jan(5)), 349)
    eq(b.charge_day(jan(6)), 350)


def test_fixed_and_energy_share_one_rounding_carry():
    # fixed 1 paisa * 1.5 (duty 5000 bp) = 1.5; energy 1 kWh at 1 paisa * 1.5 = 1.5
    b = Biller(tariff(slabs=[[None, 1]], fixed_paise_per_day=1, duty_bp=5000))
    eq(b.charge_day(jan(5)), 1)
    eq(b.charge_usage(jan(5, 1), 1000), 2)  # floor(3.0) - 1


def test_fixed_charge_day_follows_local_midnight():
    b = Biller(tariff(fixed_paise_per_day=100))
    eq(b.charge_day(JAN31_2345_IST), 100)
    eq(b.charge_day(FEB1_IST - 1), 0)  # 23:59:59 IST, same local day
    eq(b.charge_day(FEB1_IST), 100)


def test_clock_set_back_does_not_charge_a_day_twice():
    b = Biller(tariff(fixed_paise_per_day=100))
    eq(b.charge_day(jan(6)), 100)
    eq(b.charge_day(jan(5)), 0)


# --- water and gas --------------------------------------------------------------

def test_water_slabs_per_kl():
    water = tariff(service="water", slabs=[[10, 700], [20, 1400], [None, 2800]])
    # 25 kL = 25000 L: 10*700 + 10*1400 + 5*2800 = 7000 + 14000 + 14000 = 35000
    eq(Biller(water).charge_usage(jan(5, 8), 25000), 35000)


def test_water_litres_accumulate_fractional_paise():
    water = tariff(service="water", slabs=[[10, 700], [None, 1400]])
    b = Biller(water)
    # 1 L = 0.7 paise: 0.7 -> 0, 1.4 -> 1, 2.1 -> 2
    eq([b.charge_usage(jan(5, 8), 1) for _ in range(3)], [0, 1, 1])


def test_gas_per_scm():
    gas = tariff(service="gas", slabs=[[None, 5000]])
    # 1234 L = 1.234 SCM (1 m3 = 1000 L) * 5000 paise = 6170
    eq(Biller(gas).charge_usage(jan(5, 8), 1234), 6170)


# --- schedule -------------------------------------------------------------------

def test_passive_tariff_activates_at_the_exact_second():
    at = jan(15)
    sched = TariffSchedule(tariff(), tariff(version=2, activates_at=at))
    assert not sched.apply_due(at - 1)
    eq(sched.version, 1)
    assert sched.apply_due(at)
    eq(sched.version, 2)
    eq(sched.passive, None)
    assert not sched.apply_due(at + 1)


def test_passive_with_activates_at_zero_applies_immediately():
    sched = TariffSchedule(tariff())
    sched.set_passive(tariff(version=3))
    assert sched.apply_due(0)
    eq(sched.version, 3)


def test_passive_version_not_above_active_is_rejected():
    sched = TariffSchedule(tariff(version=4))
    err = raises(TariffError, sched.set_passive, tariff(version=4))
    assert "version" in str(err)
    raises(TariffError, sched.set_passive, tariff(version=3))
    eq(sched.passive, None)


def test_passive_of_other_service_is_rejected():
    sched = TariffSchedule(tariff())
    raises(TariffError, sched.set_passive, tariff(version=2, service="water"))


def test_month_to_date_carries_across_a_switch_in_the_same_month():
    at = jan(15)
    sched = TariffSchedule(tariff(), tariff(version=2, activates_at=at,
                                            slabs=[[100, 400], [None, 500]]))
    b = Biller(sched.active)
    eq(b.charge_usage(jan(10), 90000), 31500)  # 90 * 350
    assert sched.apply_due(at)
    b.use_tariff(sched.active)
    # new rates, old position: 10 kWh * 400 + 10 kWh * 500 = 9000
    eq(b.charge_usage(at, 20000), 9000)
    eq(b.month_to_date_qty(), 110000)


# --- validation -----------------------------------------------------------------

def _bad(field, **kw):
    err = raises(TariffError, tariff, **kw)
    assert field in str(err), str(err)


def test_unsorted_slabs_are_rejected():
    _bad("slabs[1]", slabs=[[300, 350], [100, 450], [None, 650]])
    _bad("slabs[1]", slabs=[[100, 350], [100, 450], [None, 650]])


def test_slabs_without_open_last_slab_are_rejected():
    _bad("slabs[1]", slabs=[[100, 350], [300, 450]])
    _bad("slabs[0]", slabs=[[None, 350], [None, 450]])
    _bad("slabs", slabs=[])


def test_negative_rate_is_rejected():
    _bad("slabs[2]", slabs=[[100, 350], [300, 450], [None, -1]])


def test_overlapping_tod_windows_are_rejected():
    _bad("tod", tod=[[18 * H, 22 * H, 20], [21 * H, 23 * H, 10]])
    # a wrapping window overlapping an early-morning one
    _bad("tod", tod=[[5 * H, 7 * H, 10], [23 * H, 6 * H, -20]])
    # overlapping by a single second
    _bad("tod", tod=[[18 * H, 22 * H, 20], [22 * H - 1, 23 * H, 10]])


def test_touching_tod_windows_are_accepted():
    t = tariff(tod=[[18 * H, 22 * H, 20], [22 * H, 6 * H, -20], [6 * H, 18 * H, 0]])
    eq(len(t.tod), 3)


def test_tod_pct_below_minus_100_is_rejected():
    _bad("tod[0]", tod=[[0, H, -101]])


def test_bad_service_is_rejected():
    _bad("service", service="steam")


def test_bad_scalars_are_rejected_by_name():
    _bad("version", version=0)
    _bad("duty_bp", duty_bp=-5)
    _bad("fixed_paise_per_day", fixed_paise_per_day=-1)
    _bad("unit_size", unit_size=0)
    _bad("activates_at", activates_at="soon")
    _bad("duty_pct", duty_pct=5)  # unknown field: a typo must not silently bill 0 duty
    _bad("id", id="")


def test_negative_or_fractional_quantity_is_rejected():
    raises(TariffError, Biller(tariff()).charge_usage, jan(5), -1)
    raises(TariffError, Biller(tariff()).charge_usage, jan(5), 1.5)


# --- persistence ----------------------------------------------------------------

def test_to_state_round_trip_continues_identically():
    t = tariff(tod=PEAK, duty_bp=500, fixed_paise_per_day=333)
    a = Biller(t)
    a.charge_usage(jan(5, 19), 99999)
    a.charge_day(jan(5, 19))
    b = Biller.from_state(a.to_state())
    eq(b.to_state(), a.to_state())
    for bill in (a, b):
        eq(bill.charge_day(jan(5, 20)), 0)
    steps = [(jan(5, 19, 15), 7), (jan(5, 20), 3333), (jan(6), 0), (FEB1_IST, 1)]
    eq([a.charge_usage(s, q) for s, q in steps], [b.charge_usage(s, q) for s, q in steps])
    eq(a.to_state(), b.to_state())


def test_schedule_state_round_trip_keeps_the_passive():
    sched = TariffSchedule(tariff(), tariff(version=2, activates_at=jan(15)))
    copy = TariffSchedule.from_state(sched.to_state())
    eq(copy.to_state(), sched.to_state())
    assert copy.apply_due(jan(15))
    eq(copy.version, 2)


def test_tariff_dict_round_trip():
    t = tariff(tod=PEAK, duty_bp=500)
    eq(Tariff.from_dict(t.to_dict()).to_dict(), t.to_dict())


def _members_dict(members):
    # what the journal writes for a generator of (name, value) pairs: a nested object
    d = {}
    for k, v in members:
        d[k] = _members_dict(v) if hasattr(v, "send") else v
    return d


def test_state_members_are_the_same_data_as_to_state_for_the_journal():
    sched = TariffSchedule(tariff(tod=[[64800, 79200, 20]], duty_bp=500))
    eq(_members_dict(sched.state_members()), {"active": sched.active.to_dict(), "passive": None})
    sched.set_passive(tariff(version=2, activates_at=jan(5), fixed_paise_per_day=700))
    eq(_members_dict(sched.state_members()), sched.to_state())
    b = Biller(sched.active)
    b.charge_usage(jan(2, 19), 1234)
    b.charge_day(jan(2, 19))
    eq(_members_dict(b.state_members()), b.to_state())
    eq(_members_dict(sched.active.state_members()), sched.active.to_dict())
