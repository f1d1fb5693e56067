"""The meter's STS token path with its plausibility guards (dual runtime).

Tokens are built with the firmware codec under the NectarAPI / IEC worked
example decoder key 0abc12def3456789 (production tables).  TIDs by hand:
minutes since 2014-01-01 00:00 UTC (1388534400, `date -u -d 2014-01-01 +%s`).
"""
from firmware.core import meter as M
from firmware.sts import acceptor as sts
from firmware.sts import codec, tid
from firmware.tests.check import eq, raises

KEY = 0x0ABC12DEF3456789
NOW = 1795753800  # 2026-11-27 04:30 UTC
# (1795753800 - 1388534400) / 60 = 6786990 minutes since the 2014 base date
NOW_TID = 6786990
WEEK_MIN = 7 * 1440  # 10080, the default tolerance


def make_meter(now=NOW, **sts_extra):
    cfg = dict(M.EXAMPLE_CONFIG)
    st = {"key_hex": "0abc12def3456789", "paise_per_unit": 1000}
    st.update(sts_extra)
    cfg["sts"] = st
    return M.Meter(M.MeterConfig.from_dict(cfg), now)


def credit_token(t, tenths=10, subclass=codec.ELECTRICITY):
    return codec.encode_credit(subclass, 3, t, tenths, KEY)


def test_tid_of_a_time_counts_minutes_since_the_2014_base_date():
    eq(tid.tid_from_utc(NOW, tid.BASE_2014_UTC), NOW_TID)


def test_tid_before_the_base_date_raises():
    raises(tid.TidRangeError, tid.tid_from_utc, tid.BASE_2014_UTC - 60, tid.BASE_2014_UTC)


def test_1993_base_rolls_over_on_2024_11_24():
    # 725846400 + 16777216 * 60 = 1732479360
    # (date -u -d @1732479360 -> Sun Nov 24 20:16:00 UTC 2024)
    eq(tid.rollover_utc(tid.BASE_1993_UTC), 1732479360)


def test_max_tid_is_the_clock_plus_the_tolerance():
    eq(tid.max_tid(NOW, tid.BASE_2014_UTC, 0, WEEK_MIN), NOW_TID + WEEK_MIN)


def test_max_tid_is_off_while_the_clock_is_before_the_base_date():
    eq(tid.max_tid(1000, tid.BASE_2014_UTC, 0, WEEK_MIN), None)


def test_token_vended_a_week_ahead_of_the_meter_clock_is_accepted():
    m = make_meter()
    eq(m.apply_sts_token(credit_token(NOW_TID + WEEK_MIN), NOW)[0], sts.ACCEPTED)


def test_token_one_minute_past_the_tolerance_is_refused_as_future_and_credit_unchanged():
    m = make_meter()
    before = m.account.credit_paise
    eq(m.apply_sts_token(credit_token(NOW_TID + WEEK_MIN + 1), NOW)[0], sts.FUTURE)
    eq(m.account.credit_paise, before)


def test_tolerance_is_configurable():
    m = make_meter(tid_tolerance_min=60)
    eq(m.apply_sts_token(credit_token(NOW_TID + 61), NOW)[0], sts.FUTURE)


def test_meter_with_an_unset_clock_still_accepts_tokens():
    m = make_meter(now=1000)
    eq(m.apply_sts_token(credit_token(NOW_TID), 1000)[0], sts.ACCEPTED)


def test_1993_base_year_moves_the_guard():
    # 1993 base: (1795753800 - 725846400) / 60 = 17831790 minutes > 2^24 - 1: past the
    # rollover the guard is the whole 24-bit range, so a TID near the top is accepted
    m = make_meter(base_year=1993)
    eq(m.apply_sts_token(credit_token(16777000), NOW)[0], sts.ACCEPTED)


def test_bad_base_year_is_a_config_error():
    raises(M.MeterConfigError, make_meter, NOW, base_year=2000)


def test_water_token_on_an_electricity_meter_is_unsupported_and_credit_unchanged():
    m = make_meter()
    before = m.account.credit_paise
    eq(m.apply_sts_token(credit_token(NOW_TID, subclass=codec.WATER), NOW)[0], sts.UNSUPPORTED)
    eq(m.account.credit_paise, before)


def test_credit_is_the_token_energy_at_the_configured_price_rounded_down():
    m = make_meter(paise_per_unit=855)
    before = m.account.credit_paise
    # 1.1 kWh = 1100 Wh; 1100 * 855 // 1000 = 940 (940.5 rounded down)
    eq(m.apply_sts_token(credit_token(NOW_TID, tenths=11), NOW)[0], sts.ACCEPTED)
    eq(m.account.credit_paise - before, 940)
