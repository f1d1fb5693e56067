from firmware.core import localtime as lt
from firmware.tests.check import eq

# 2026-11-27 00:00:00 UTC, checked with `date -u -d 2026-11-27 +%s`
T_2026_11_27_UTC = 1795737600


def test_epoch_is_day_zero_and_a_thursday():
    eq(lt.days_from_civil(1970, 1, 1), 0)
    eq(lt.civil_from_days(0), (1970, 1, 1))
    eq(lt.weekday_of_day(0), 3)


def test_known_date_round_trips():
    days = lt.days_from_civil(2026, 11, 27)
    eq(days * 86400, T_2026_11_27_UTC)
    eq(lt.civil_from_days(days), (2026, 11, 27))
    eq(lt.weekday_of_day(days), 4)  # a Friday


def test_leap_days_and_century_rules():
    eq(lt.civil_from_days(lt.days_from_civil(2024, 2, 29)), (2024, 2, 29))
    eq(lt.days_from_civil(2024, 3, 1) - lt.days_from_civil(2024, 2, 28), 2)
    eq(lt.days_from_civil(2100, 3, 1) - lt.days_from_civil(2100, 2, 28), 1)
    eq(lt.days_from_civil(2000, 3, 1) - lt.days_from_civil(2000, 2, 28), 2)


def test_every_day_of_four_centuries_round_trips():
    start = lt.days_from_civil(1900, 1, 1)
    prev = lt.civil_from_days(start - 1)
    for days in range(start, start + 146097, 7):
        ymd = lt.civil_from_days(days)
        eq(lt.days_from_civil(*ymd), days, "day %d" % days)
        assert ymd > prev
        prev = ymd


def test_ist_local_date_changes_at_1830_utc():
    before = T_2026_11_27_UTC + 18 * 3600 + 29 * 60  # 23:59 IST
    eq(lt.local_date(before, lt.IST_OFFSET_S), (2026, 11, 27))
    eq(lt.local_date(before + 60, lt.IST_OFFSET_S), (2026, 11, 28))
    eq(lt.second_of_day(before + 60, lt.IST_OFFSET_S), 0)
    eq(lt.date_key(before + 60, lt.IST_OFFSET_S), 20261128)


def test_month_index_and_month_start():
    t = T_2026_11_27_UTC
    idx = lt.month_index(t, lt.IST_OFFSET_S)
    eq(idx, 2026 * 12 + 10)
    eq(lt.month_start_utc(idx + 1, lt.IST_OFFSET_S), lt.days_from_civil(2026, 12, 1) * 86400 - 19800)
    eq(lt.month_index(lt.month_start_utc(idx + 1, lt.IST_OFFSET_S) - 1, lt.IST_OFFSET_S), idx)
    eq(lt.month_start_utc(2027 * 12, 0), lt.days_from_civil(2027, 1, 1) * 86400)


def test_daily_window_wraps_midnight():
    eighteen, eight = 18 * 3600, 8 * 3600
    assert lt.in_daily_window(18 * 3600, eighteen, eight)
    assert lt.in_daily_window(0, eighteen, eight)
    assert lt.in_daily_window(eight - 1, eighteen, eight)
    assert not lt.in_daily_window(eight, eighteen, eight)
    assert not lt.in_daily_window(12 * 3600, eighteen, eight)
    assert lt.in_daily_window(9 * 3600, eight, eighteen)
    assert not lt.in_daily_window(5, 100, 100)
