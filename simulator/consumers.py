"""Consumer load profiles: mean pulses per metering interval, by class, weekday and month.

The firmware counts pulses, so the profiles are expressed in the meter's own
pulses (electricity 3200 imp/kWh; water and gas 1 pulse per 10 litres, the
``litres_per_pulses`` the fleet commissions).  Shapes, from Indian load
research folklore and the demo household (tools/demo.py):

- residential: morning (06-09) and evening (18-23) peaks; weekends a little
  higher by day; cooling load (fans, coolers, AC) in summer (Apr-Jun) and,
  smaller, in the humid monsoon (Jul-Sep);
- commercial: a shop 10-21, lower on Sundays, AC in summer;
- agricultural pump: 5 HP (3.7 kW) in the rostered three-phase supply
  windows (22-04 and 11-14), mostly idle in the monsoon;
- water: morning and evening draws, nothing at night (so a leak shows as
  night flow); gas (PNG cooking): breakfast, lunch, dinner.

Each meter scales its class profile (``scale``, drawn once) and a day factor;
the fleet adds interval noise.  Floats are fine here: this is the consumer's
behaviour, the meter only ever sees integer pulses.

>>> t = base_table("residential", weekday=4, month=11, interval_s=900)
>>> len(t), round(t[19 * 4])        # 19:00 IST, 2300 W for 15 min at 3200 imp/kWh
(96, 1840)
"""
ELEC_PULSES_PER_WH = 3.2  # 3200 imp/kWh
LITRES_PER_PULSE = 10
SUNDAY = 6

# Watts by local hour.
_RESIDENTIAL_W = [220, 200, 190, 190, 200, 320, 1400, 2100, 1600, 800, 600, 650,
                  700, 650, 600, 650, 800, 1300, 1900, 2300, 2200, 1700, 900, 400]
_COOLING_W = [900, 900, 800, 700, 500, 300, 200, 200, 300, 500, 700, 900,
              1100, 1200, 1200, 1100, 1000, 900, 800, 900, 1100, 1200, 1100, 1000]
_COMMERCIAL_W = [300] * 10 + [2500, 3000, 3000, 3000, 3000, 3000, 3000, 3200, 3500, 3500, 3000] + [300] * 3
_PUMP_HOURS = (22, 23, 0, 1, 2, 3, 11, 12, 13)
_PUMP_W = 3700
# Litres by local hour.
_WATER_L = [0, 0, 0, 0, 0, 20, 90, 80, 60, 20, 10, 10, 15, 10, 10, 10, 15, 20, 50, 50, 30, 10, 0, 0]
_GAS_L = [0, 0, 0, 0, 0, 0, 0, 250, 200, 0, 0, 0, 200, 150, 0, 0, 0, 0, 0, 250, 250, 0, 0, 0]

KINDS = ("residential", "commercial", "agricultural", "water", "gas")
_cache: dict = {}


def _cooling_share(month):
    if month in (4, 5, 6):
        return 1.0
    if month in (7, 8, 9):
        return 0.5
    if month in (3, 10):
        return 0.25
    return 0.0


def _hourly(kind, weekday, month):
    """Mean per local hour: W for electricity, litres per hour for water and gas."""
    if kind == "residential":
        c = _cooling_share(month)
        day = 1.1 if weekday >= 5 else 1.0
        return [(w * (day if 9 <= h < 18 else 1.0)) + c * _COOLING_W[h]
                for h, w in enumerate(_RESIDENTIAL_W)]
    if kind == "commercial":
        c = _cooling_share(month)
        f = 0.7 if weekday == SUNDAY else 1.0
        return [w * f + (c * 1500 if 10 <= h < 21 else 0) for h, w in enumerate(_COMMERCIAL_W)]
    if kind == "agricultural":
        f = 0.3 if month in (7, 8, 9) else 1.0
        return [_PUMP_W * f if h in _PUMP_HOURS else 15 for h in range(24)]
    if kind == "water":
        return list(_WATER_L)
    if kind == "gas":
        return list(_GAS_L)
    raise ValueError("unknown consumer kind %r" % (kind,))


def base_table(kind, weekday, month, interval_s):
    """Mean pulses per interval for each interval of a local day (cached, shared)."""
    key = (kind, weekday, month, interval_s)
    t = _cache.get(key)
    if t is None:
        hourly = _hourly(kind, weekday, month)
        per_hour = 3600 // interval_s
        if kind in ("water", "gas"):
            f = 1.0 / per_hour / LITRES_PER_PULSE
        else:
            f = interval_s / 3600.0 * ELEC_PULSES_PER_WH  # W -> Wh in the interval -> pulses
        t = [hourly[i // per_hour] * f for i in range(24 * per_hour)]
        _cache[key] = t
    return t


def draw_scale(rnd, kind):
    """Per-consumer size relative to the class profile (log-normal-ish, median 1)."""
    if kind == "agricultural":
        return rnd.choice((0.6, 1.0, 1.0, 1.5, 2.0))  # 3, 5, 7.5, 10 HP pumps
    return min(4.0, max(0.2, rnd.lognormvariate(0.0, 0.45)))
