"""Calendar arithmetic on integer seconds, identical on CPython and MicroPython.

The meter keeps time as integer seconds since 1970-01-01 UTC.  Tariffs,
friendly hours and billing snapshots need the *local* civil date (India:
UTC+05:30, no daylight saving).  ``time.gmtime`` differs between ports (the
ESP32 epoch is 2000 on older builds), so the conversion is done here with
Howard Hinnant's days<->civil algorithms, in pure integer maths.

>>> local_date(1764201600, IST_OFFSET_S)
(2025, 11, 27)
"""

IST_OFFSET_S = 19800  # +05:30
DAY_S = 86400

SUNDAY = 6  # weekday numbers: Monday 0 .. Sunday 6


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y = year - 1 if month <= 2 else year
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (month + 9) % 12  # March = 0
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days):
    """(year, month, day) of a day number since 1970-01-01."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def weekday_of_day(days):
    """Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return (days + 3) % 7


def local_day(t, offset_s):
    """Local day number (days since 1970-01-01 in local time)."""
    return (t + offset_s) // DAY_S


def second_of_day(t, offset_s):
    """Seconds since local midnight, 0..86399."""
    return (t + offset_s) % DAY_S


def local_date(t, offset_s):
    """(year, month, day) in local time."""
    return civil_from_days(local_day(t, offset_s))


def date_key(t, offset_s):
    """Local date as an int YYYYMMDD, the form holiday calendars use."""
    y, m, d = local_date(t, offset_s)
    return y * 10000 + m * 100 + d


def month_index(t, offset_s):
    """A counter that changes exactly at each local month start: year*12 + month-1."""
    y, m, _ = local_date(t, offset_s)
    return y * 12 + m - 1


def local_midnight_utc(days, offset_s):
    """UTC seconds of the local midnight that starts local day ``days``."""
    return days * DAY_S - offset_s


def month_start_utc(month, offset_s):
    """UTC seconds of the local midnight that starts month ``month`` (a ``month_index``)."""
    return local_midnight_utc(days_from_civil(month // 12, month % 12 + 1, 1), offset_s)


def in_daily_window(t, start, end):
    """True when ``t`` (a ``second_of_day``) is in [start, end); a window with
    start > end wraps midnight.

    start == end is an empty window.
    """
    if start <= end:
        return start <= t < end
    return t >= start or t < end
