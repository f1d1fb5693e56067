"""Fault plans: feeder outages, theft and tamper, water leaks (with ground truth).

Plans are drawn up front from the feeder's seeded random stream, so the same
scenario and seed give the same faults whatever the batching or the number
of worker processes.  The ground truth (who steals, from when, how much) is
recorded for the KPIs; the head-end side never reads it.

Theft kinds:

- ``bypass``: a share of the load is wired around the meter: energy not
  metered and no event (only consumption analytics can see it);
- ``magnet``: a magnet saturates the CT, the meter under-registers, and the
  meter's magnetic-field sensor logs MAGNET;
- ``cover_open``: the terminal cover is opened (COVER_OPEN), metering intact.

>>> import random
>>> plan = outage_plan(random.Random(3), feeder=0, scheduled=[], rate_per_day=0.0,
...                    minutes=(30, 60), duration_s=86400)
>>> plan
[]
"""
THEFT_KINDS = ("bypass", "magnet", "cover_open")


class TheftPlan:
    """Ground truth of one injected theft/tamper on one meter."""

    __slots__ = ("kind", "start_t", "metered_share")

    def __init__(self, kind, start_t, metered_share):
        self.kind = kind
        self.start_t = start_t
        self.metered_share = metered_share  # share of the load the meter still sees

    def to_dict(self):
        return {"kind": self.kind, "start_t": self.start_t,
                "metered_share": round(self.metered_share, 3)}


def outage_plan(rnd, feeder, scheduled, rate_per_day, minutes, duration_s):
    """Sorted, non-overlapping ``(start_offset_s, end_offset_s)`` outages of one feeder.

    Scheduled outages come from the scenario; random ones arrive as a Poisson
    process of ``rate_per_day``.  Restores land on an arbitrary second (as
    the grid does), not on an interval boundary.
    """
    spans = [(o.start_s, o.start_s + o.duration_s) for o in scheduled if o.feeder == feeder]
    if rate_per_day > 0:
        t = 0.0
        while True:
            t += rnd.expovariate(rate_per_day / 86400.0)
            if t >= duration_s:
                break
            start = int(t)
            spans.append((start, start + rnd.randint(minutes[0] * 60, minutes[1] * 60) + rnd.randint(1, 59)))
    spans.sort()
    merged: list = []
    for a, b in spans:
        if a >= duration_s:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def theft_plan(rnd, service, start_t, duration_s, bypass_pct, magnet_pct, cover_pct):
    """A ``TheftPlan`` for one electricity meter, or None (most meters are honest).

    Bypass and magnet start after the first day so the head-end has a
    baseline; they divert 40-80 % of the load.
    """
    if service != "electricity":
        return None
    x = rnd.random() * 100.0
    later = start_t + 86400 + rnd.randrange(max(1, duration_s - 86400))
    if duration_s <= 86400:  # no baseline day: only the event-based tamper is injected
        x += bypass_pct + magnet_pct
    if x < bypass_pct:
        return TheftPlan("bypass", later, rnd.uniform(0.2, 0.6))
    x -= bypass_pct
    if x < magnet_pct:
        return TheftPlan("magnet", later, rnd.uniform(0.2, 0.6))
    x -= magnet_pct
    if x < cover_pct:
        return TheftPlan("cover_open", start_t + rnd.randrange(duration_s), 1.0)
    return None


def leak_pulses(rnd, service, leak_pct):
    """Constant leak flow in pulses per interval for a water meter (0: no leak)."""
    if service != "water" or rnd.random() * 100.0 >= leak_pct:
        return 0
    return rnd.choice((1, 1, 2, 3))  # 10-30 L per interval (40-120 L/h): a running toilet
