"""KPI tallies: accumulated per batch of feeders, merged in feeder order, summarised.

``Tally`` holds plain integers and lists only, so a worker process can
return it and batches merge in a fixed order (the result does not depend on
how many workers ran).  ``summary`` turns the merged tally into the KPI
document (JSON-able, no wall-clock values: same scenario + seed -> same
bytes).

The wrongful-disconnection check does not trust the firmware: friendly time
is recomputed here with ``datetime`` from the scenario's credit rules, at the
head-end's (true) time of the disconnection, with no tolerance.  Meters
whose clocks drift are commissioned with the friendly window widened by the
scenario's ``[clock] tolerance_s`` (``Scenario.meter_credit``), and the
time sync keeps their error inside it; a meter whose clock got further off
(no sync reached it) and disconnected inside the window is counted here.

>>> t = Tally(intervals=4); t.add_latency(120); t.add_latency(600)
>>> percentile(sorted(t.latency_s), 50), percentile(sorted(t.latency_s), 99)
(120, 600)
"""
import datetime

COUNTERS = (
    "meters", "meter_intervals", "reads_expected", "reads_on_time", "reads_total",
    "intervals_lost", "intervals_duplicated", "events_lost",
    "relay_opens", "wrongful_disconnections", "payments", "paid_paise",
    "topups_applied", "topups_applied_paise", "topups_rejected", "topups_undelivered",
    "billed_paise", "recon_abs_diff_paise", "recon_meters_off", "negative_meters",
    "negative_paise", "debt_paise", "outages", "meter_power_cuts", "journal_restores",
    "unmetered_wh", "reconnects_over_2h", "leaks_injected", "leaks_detected", "leak_false_alarms",
    "clock_syncs", "clock_over_tolerance_meters",
)
THEFT_KINDS = ("bypass", "magnet", "cover_open")


class Tally:
    """Mergeable counters and samples for a part of the fleet."""

    def __init__(self, intervals, days=1):
        for name in COUNTERS:
            setattr(self, name, 0)
        self.clock_max_abs_error_s = 0  # merged with max, not summed
        self.load_pulses = [0] * (intervals + 1)  # electricity pulses per interval index
        self.reads_by_day = [[0, 0] for _ in range(days)]  # [expected, on time] per day
        self.latency_s: list = []
        self.balances: list = []
        self.wrongful: list = []  # first few details, for the report
        self.recon_examples: list = []
        self.theft = {k: [0, 0] for k in THEFT_KINDS}  # kind -> [injected, detected]
        self.theft_false = {k: 0 for k in THEFT_KINDS}
        self.theft_truth: list = []  # (meter_id, kind, start_t, detected)

    def add_latency(self, s):
        self.latency_s.append(s)

    def merge(self, other):
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.clock_max_abs_error_s = max(self.clock_max_abs_error_s, other.clock_max_abs_error_s)
        for i, v in enumerate(other.load_pulses):
            self.load_pulses[i] += v
        for mine, theirs in zip(self.reads_by_day, other.reads_by_day):
            mine[0] += theirs[0]
            mine[1] += theirs[1]
        self.latency_s.extend(other.latency_s)
        self.balances.extend(other.balances)
        self.wrongful.extend(other.wrongful[:max(0, 20 - len(self.wrongful))])
        self.recon_examples.extend(other.recon_examples[:max(0, 20 - len(self.recon_examples))])
        for k in THEFT_KINDS:
            self.theft[k][0] += other.theft[k][0]
            self.theft[k][1] += other.theft[k][1]
            self.theft_false[k] += other.theft_false[k]
        self.theft_truth.extend(other.theft_truth)
        return self


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = -(-pct * len(sorted_values) // 100)  # ceil(pct/100 * n)
    return sorted_values[max(0, rank - 1)]


def friendly_independent(rules, t, prepaid_since):
    """True when disconnection is forbidden at UTC ``t`` (own implementation, via datetime).

    ``rules`` is the scenario's credit table (firmware field names, firmware defaults).
    """
    if rules.get("never_disconnect", False):
        return True
    if t < prepaid_since + rules.get("grace_days", 0) * 86400:
        return True
    off = rules.get("utc_offset_s", 19800)
    local = datetime.datetime.fromtimestamp(t, datetime.timezone(datetime.timedelta(seconds=off)))
    sod = local.hour * 3600 + local.minute * 60 + local.second
    start, end = rules.get("friendly_start_s", 18 * 3600), rules.get("friendly_end_s", 8 * 3600)
    in_window = (start <= sod < end) if start < end else (sod >= start or sod < end)
    if in_window:
        return True
    if local.weekday() in rules.get("friendly_weekdays", [6]):
        return True
    return int(local.strftime("%Y%m%d")) in rules.get("holidays", [])


def _rate(num, den):
    return None if not den else round(100.0 * num / den, 3)


def summary(t, sc):
    """The KPI document for a merged tally."""
    lat = sorted(t.latency_s)
    bal = t.balances
    theft = {}
    for k in THEFT_KINDS:
        inj, det = t.theft[k]
        theft[k] = {"injected": inj, "detected": det, "detection_rate_pct": _rate(det, inj),
                    "false_alarms": t.theft_false[k]}
    return {
        "scenario": sc.name, "seed": sc.seed, "meters": t.meters, "days": sc.days,
        "interval_s": sc.interval_s, "start_date": sc.start_date, "feeders": sc.feeders,
        "meter_intervals": t.meter_intervals,
        "daily_read_success_pct": _rate(t.reads_on_time, t.reads_expected),
        "reads": {"expected": t.reads_expected, "on_time": t.reads_on_time,
                  "delivered_total": t.reads_total,
                  "by_day": [{"day": i, "expected": e, "on_time": o} for i, (e, o) in enumerate(t.reads_by_day)]},
        "readings": {"intervals_lost": t.intervals_lost, "intervals_duplicated": t.intervals_duplicated,
                     "events_lost": t.events_lost},
        "reconnect_latency_s": {"samples": len(lat), "p50": percentile(lat, 50),
                                "p99": percentile(lat, 99), "max": lat[-1] if lat else None,
                                "over_2h": t.reconnects_over_2h},
        "wrongful_disconnections": t.wrongful_disconnections,
        "wrongful_examples": t.wrongful,
        "relay_opens_for_credit": t.relay_opens,
        "reconciliation": {"abs_difference_paise": t.recon_abs_diff_paise,
                           "meters_with_difference": t.recon_meters_off,
                           "examples": t.recon_examples},
        "money": {"payments": t.payments, "paid_paise": t.paid_paise,
                  "topups_applied": t.topups_applied, "topups_applied_paise": t.topups_applied_paise,
                  "topups_rejected": t.topups_rejected, "topups_in_flight_at_end": t.topups_undelivered,
                  "billed_paise": t.billed_paise},
        "arrears": {"negative_balance_meters": t.negative_meters,
                    "negative_balance_paise": t.negative_paise, "debt_paise": t.debt_paise,
                    "balance_p50_paise": percentile(sorted(bal), 50)},
        "theft": theft,
        "unmetered_wh": t.unmetered_wh,
        "water_leaks": {"injected": t.leaks_injected, "detected": t.leaks_detected,
                        "false_alarms": t.leak_false_alarms},
        "outages": {"feeder_outages": t.outages, "meter_power_cuts": t.meter_power_cuts,
                    "journal_restores": t.journal_restores},
        "clock": clock_kpis(t, sc),
    }


def clock_kpis(t, sc):
    """Meter clock drift against the head-end's time sync (``[clock]`` of the scenario)."""
    return {"drift_ppm": [sc.drift_ppb[0] / 1000, sc.drift_ppb[1] / 1000],
            "sync_hours": sc.sync_hours, "tolerance_s": sc.clock_tolerance_s,
            "syncs": t.clock_syncs, "max_abs_error_s": t.clock_max_abs_error_s,
            "meters_over_tolerance": t.clock_over_tolerance_meters}
