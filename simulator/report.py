"""Report: ``kpis.json`` and ``report.html`` with embedded PNG plots, for both modes.

Plots: city load curve (electricity, MW), balance distribution, a top-up
latency histogram, communication health over time.  Fast mode draws them
from the merged ``Tally`` (``plot_data_fast``; its ``kpis.json`` is
deterministic); networked mode from the head-end's database after the run
(``plot_data_networked``: stored readings, newest balances, top-up
commands, reading delivery delay per simulated hour), next to the KPI
document ``networked.run`` returned.

>>> html_escape("<a&b>")
'&lt;a&amp;b&gt;'
"""
import base64
import io
import json
import os

from simulator import consumers


def html_escape(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def kpis_json(summary):
    """The canonical bytes of the KPI document (sorted keys, so a seed gives one byte string)."""
    return json.dumps(summary, indent=1, sort_keys=True) + "\n"


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


class PlotData:
    """What the plots need, whichever mode produced it.

    ``load_wh[k]``: electricity energy in the interval ending at start +
    k x interval (index 0 unused); ``balances_paise``; ``latency_s`` and
    ``latency_title``/``latency_xlabel``; ``health``: ``("reads_by_day",
    [[expected, on_time], ...])`` or ``("delay_by_hour", [(hour, p50_s,
    max_s), ...])``.
    """

    def __init__(self, load_wh, balances_paise, latency_s, latency_title, latency_xlabel, health):
        self.load_wh = load_wh
        self.balances_paise = balances_paise
        self.latency_s = latency_s
        self.latency_title = latency_title
        self.latency_xlabel = latency_xlabel
        self.health = health


def plot_data_fast(tally):
    """Plot series of a fast-mode run (from the merged tally)."""
    return PlotData([p / consumers.ELEC_PULSES_PER_WH for p in tally.load_pulses],
                    tally.balances, tally.latency_s,
                    "Top-up to reconnect latency (%d reconnections)" % len(tally.latency_s),
                    "payment -> relay closed (minutes)", ("reads_by_day", tally.reads_by_day))


def plot_data_networked(engine, sc):
    """Plot series of a networked run, read from the head-end's database."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from headend import commands as C
    from headend import models as M

    ivl = sc.interval_s
    load = [0] * (sc.intervals + 1)
    delays: dict = {}
    with Session(engine) as s:
        rows = s.execute(select(M.Reading.start_t, func.sum(M.Reading.energy))
                         .join(M.Meter, M.Meter.id == M.Reading.meter_id)
                         .where(M.Meter.service == "electricity")
                         .group_by(M.Reading.start_t)).all()
        for start, wh in rows:
            k = (start - sc.start_t) // ivl + 1
            if 0 < k < len(load):
                load[k] += int(wh)
        balances = [b for (b,) in s.execute(select(M.MeterBalance.balance_paise))]
        latency = [done - made for made, done in s.execute(
            select(C.Command.created_at, C.Command.finished_at).where(
                C.Command.kind == "topup", C.Command.state == C.APPLIED))]
        for start, span, got in s.execute(select(M.Reading.start_t, M.Reading.span_s,
                                                 M.Reading.received_at)):
            hour = (start - sc.start_t) // 3600
            delays.setdefault(hour, []).append(max(0, got - (start + span)))
    health = []
    for hour in sorted(delays):
        d = sorted(delays[hour])
        health.append((hour, d[len(d) // 2], d[-1]))
    return PlotData(load, balances, latency,
                    "Payment to top-up applied, head-end command records (%d top-ups)" % len(latency),
                    "payment -> APPLIED ack stored (minutes)", ("delay_by_hour", health))


def plots(data, sc):
    """Base64 PNGs by title, from a ``PlotData`` (or a fast-mode ``Tally``)."""
    if not isinstance(data, PlotData):
        data = plot_data_fast(data)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    ivl = sc.interval_s
    hours = [k * ivl / 3600 for k in range(1, len(data.load_wh))]
    mw = [wh * 3600 / ivl / 1e6 for wh in data.load_wh[1:]]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(hours, mw, color="tab:orange")
    ax.set_xlabel("hours since %s 00:00 IST" % sc.start_date)
    ax.set_ylabel("MW")
    ax.set_title("City electricity load (all consumption, metered or not)"
                 if data.health[0] == "reads_by_day" else "City electricity load (stored readings)")
    fig.tight_layout()
    out["City load curve"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.hist([b / 100 for b in data.balances_paise], bins=50, color="tab:blue")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("balance at end (Rs)")
    ax.set_ylabel("meters")
    ax.set_title("Balance distribution")
    fig.tight_layout()
    out["Balance distribution"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.2))
    lat = [s / 60 for s in data.latency_s]
    if lat:
        ax.hist(lat, bins=40, color="tab:green")
    ax.set_xlabel(data.latency_xlabel)
    ax.set_ylabel("count")
    ax.set_title(data.latency_title)
    fig.tight_layout()
    out["Top-up latency"] = _png(fig)
    plt.close(fig)

    kind, series = data.health
    fig, ax = plt.subplots(figsize=(9, 2.8))
    if kind == "reads_by_day":
        days = list(range(len(series)))
        pct = [100.0 * o / e if e else 0 for e, o in series]
        ax.bar(days, pct, color="tab:purple")
        ax.axhline(98, color="red", lw=0.8, ls="--")
        ax.set_ylim(min(pct + [95]) - 1, 100.5)
        ax.set_xlabel("day")
        ax.set_ylabel("daily reads on time (%)")
        ax.set_title("Communication health (SLA 98 %, dashed)")
    else:
        hrs = [h for h, _, _ in series]
        ax.plot(hrs, [p / 60 for _, p, _ in series], color="tab:purple", label="median")
        ax.plot(hrs, [m / 60 for _, _, m in series], color="tab:red", lw=0.8, label="max")
        ax.set_xlabel("hour of the run (interval start)")
        ax.set_ylabel("minutes")
        ax.legend()
        ax.set_title("Communication health: interval end -> reading stored at the head-end")
    fig.tight_layout()
    out["Comm health"] = _png(fig)
    plt.close(fig)
    return out


def _rows(d, prefix=""):
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict):
            yield from _rows(v, prefix + k + ".")
        elif isinstance(v, list):
            if v and not isinstance(v[0], (dict, list)):
                yield prefix + k, v
            elif v and len(v) <= 20:
                yield prefix + k, json.dumps(v)
        else:
            yield prefix + k, v


HEADLINE = (
    ("daily_read_success_pct", "Daily read success (%)"),
    ("reconnect_latency_s.p50", "Top-up -> reconnect p50 (s)"),
    ("reconnect_latency_s.p99", "Top-up -> reconnect p99 (s)"),
    ("wrongful_disconnections", "Wrongful disconnections (must be 0)"),
    ("reconciliation.abs_difference_paise", "Reconciliation difference, paise (must be 0)"),
    ("money.paid_paise", "Revenue collected (paise)"),
    ("arrears.negative_balance_meters", "Meters with negative balance"),
    ("readings.intervals_lost", "Interval readings lost"),
    ("readings.intervals_duplicated", "Interval readings duplicated"),
    ("clock.max_abs_error_s", "Max meter clock error (s)"),
    ("clock.meters_over_tolerance", "Meters whose clock left the tolerance"),
)


def _get(d, dotted):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


NETWORKED_HEADLINE = (
    ("readings.lost", "Interval readings lost (must be 0)"),
    ("readings.duplicated", "Interval readings duplicated (must be 0)"),
    ("readings.altered", "Interval readings altered (must be 0)"),
    ("uplinks.lost", "Uplinks lost (must be 0)"),
    ("uplinks.open_seq_gaps", "Open uplink sequence gaps (must be 0)"),
    ("uplinks.unrecoverable_seq_gaps", "Sequence gaps the meters no longer hold (data_lost)"),
    ("seq_gaps.closed", "Sequence gaps closed (backfill or late)"),
    ("seq_gaps.backfill_commands", "Backfill commands sent"),
    ("reconciliation.abs_difference_paise", "Reconciliation difference, paise (must be 0)"),
    ("wrongful_disconnections", "Wrongful disconnections (must be 0)"),
    ("reconnect_latency_s.p50", "Top-up -> reconnect p50 (s)"),
    ("reconnect_latency_s.p99", "Top-up -> reconnect p99 (s)"),
    ("money.paid_paise", "Revenue collected (paise)"),
    ("ingest.readings_per_s_wall", "Readings stored per wall second"),
    ("ingest.lag_p99_sim_s", "Ingest lag p99 (simulated s)"),
)
MUST_BE_ZERO = ("wrongful_disconnections", "reconciliation.abs_difference_paise", "readings.lost",
                "readings.duplicated", "readings.altered", "uplinks.lost", "uplinks.open_seq_gaps",
                "uplinks.unrecoverable_seq_gaps")


def write(out_dir, summary, tally, sc, with_plots=True):
    """Write kpis.json and report.html of a fast-mode run into ``out_dir``; return their paths."""
    intro = ("%d meters, %d feeders, %d days from %s (IST), %d-minute intervals, seed %d, fast mode "
             "(every meter is the real firmware core)." % (
                 summary["meters"], summary["feeders"], sc.days, sc.start_date, sc.interval_s // 60,
                 sc.seed))
    return _write(out_dir, kpis_json(summary), summary, sc, intro, HEADLINE,
                  plot_data_fast(tally) if with_plots else None)


def write_networked(out_dir, k, engine, sc, with_plots=True):
    """Write kpis.json and report.html of a networked run (plots from the database ``engine``)."""
    conn = k["connections"]
    intro = ("%d meters, %d feeders, %s simulated hours from %s (IST) at x%d, seed %d, networked mode: "
             "every meter is the real firmware core with its real outbox, over %d MQTT connections "
             "(one per feeder) plus %d for the head-end, to a real Mosquitto and the real head-end "
             "on %s. Everything below is read back from the head-end's database." % (
                 k["meters"], k["feeders"], k.get("hours") or sc.days * 24, sc.start_date,
                 k["acceleration"], sc.seed, conn["feeder_links"], conn["headend"],
                 engine.dialect.name))
    text = json.dumps(k, indent=1, sort_keys=True, default=str) + "\n"
    return _write(out_dir, text, k, sc, intro, NETWORKED_HEADLINE,
                  plot_data_networked(engine, sc) if with_plots else None)


def _write(out_dir, text, summary, sc, intro, headline, data):
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, "kpis.json")
    with open(jpath, "w") as f:
        f.write(text)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Urja simulation: %s</title>"
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
             ".bad{color:#b00;font-weight:bold}</style></head><body>" % html_escape(sc.name),
             "<h1>Urja fleet simulation: %s</h1><p>%s</p>" % (html_escape(sc.name), html_escape(sc.description)),
             "<p>%s</p>" % html_escape(intro),
             "<h2>Headline</h2><table>"]
    for key, label in headline:
        v = _get(summary, key)
        bad = key in MUST_BE_ZERO and v
        parts.append("<tr><th>%s</th><td%s>%s</td></tr>" % (
            html_escape(label), " class='bad'" if bad else "", html_escape(v)))
    parts.append("</table>")
    if "theft" in summary:
        parts.append("<h2>Theft and tamper (against injected ground truth)</h2><table>"
                     "<tr><th>kind</th><th>injected</th><th>detected</th><th>rate %</th>"
                     "<th>false alarms</th></tr>")
        for kind, t in summary["theft"].items():
            parts.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                kind, t["injected"], t["detected"], t["detection_rate_pct"], t["false_alarms"]))
        parts.append("</table>")
    if data is not None:
        for title, b64 in plots(data, sc).items():
            parts.append("<h2>%s</h2><img alt='%s' src='data:image/png;base64,%s'>" % (title, title, b64))
    parts.append("<h2>All KPIs</h2><table>")
    for k, v in _rows(summary):
        parts.append("<tr><th>%s</th><td>%s</td></tr>" % (html_escape(k), html_escape(v)))
    parts.append("</table></body></html>\n")
    hpath = os.path.join(out_dir, "report.html")
    with open(hpath, "w") as f:
        f.write("".join(parts))
    return jpath, hpath
