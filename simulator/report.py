"""Report: ``kpis.json`` (deterministic) and ``report.html`` with embedded PNG plots.

Plots: city load curve (electricity, MW), balance distribution, top-up ->
reconnect latency histogram, daily read success by day.

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


def plots(tally, sc):
    """Base64 PNGs by title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    ivl = sc.interval_s
    hours = [k * ivl / 3600 for k in range(1, len(tally.load_pulses))]
    mw = [p / consumers.ELEC_PULSES_PER_WH * 3600 / ivl / 1e6 for p in tally.load_pulses[1:]]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(hours, mw, color="tab:orange")
    ax.set_xlabel("hours since %s 00:00 IST" % sc.start_date)
    ax.set_ylabel("MW")
    ax.set_title("City electricity load (all consumption, metered or not)")
    fig.tight_layout()
    out["City load curve"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.hist([b / 100 for b in tally.balances], bins=50, color="tab:blue")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("balance at end (Rs)")
    ax.set_ylabel("meters")
    ax.set_title("Balance distribution")
    fig.tight_layout()
    out["Balance distribution"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.2))
    lat = [s / 60 for s in tally.latency_s]
    if lat:
        ax.hist(lat, bins=40, color="tab:green")
    ax.set_xlabel("payment -> relay closed (minutes)")
    ax.set_ylabel("reconnections")
    ax.set_title("Top-up to reconnect latency (%d reconnections)" % len(lat))
    fig.tight_layout()
    out["Reconnect latency"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 2.8))
    days = list(range(len(tally.reads_by_day)))
    pct = [100.0 * o / e if e else 0 for e, o in tally.reads_by_day]
    ax.bar(days, pct, color="tab:purple")
    ax.axhline(98, color="red", lw=0.8, ls="--")
    ax.set_ylim(min(pct + [95]) - 1, 100.5)
    ax.set_xlabel("day")
    ax.set_ylabel("daily reads on time (%)")
    ax.set_title("Communication health (SLA 98 %, dashed)")
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
)


def _get(d, dotted):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def write(out_dir, summary, tally, sc, with_plots=True):
    """Write kpis.json and report.html into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, "kpis.json")
    with open(jpath, "w") as f:
        f.write(kpis_json(summary))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Urja simulation: %s</title>"
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
             ".bad{color:#b00;font-weight:bold}</style></head><body>" % html_escape(sc.name),
             "<h1>Urja fleet simulation: %s</h1><p>%s</p>" % (html_escape(sc.name), html_escape(sc.description)),
             "<p>%d meters, %d feeders, %d days from %s (IST), %d-minute intervals, seed %d, fast mode "
             "(every meter is the real firmware core).</p>" % (
                 summary["meters"], summary["feeders"], sc.days, sc.start_date, sc.interval_s // 60, sc.seed),
             "<h2>Headline</h2><table>"]
    for key, label in HEADLINE:
        v = _get(summary, key)
        bad = key in ("wrongful_disconnections", "reconciliation.abs_difference_paise") and v
        parts.append("<tr><th>%s</th><td%s>%s</td></tr>" % (
            html_escape(label), " class='bad'" if bad else "", html_escape(v)))
    parts.append("</table><h2>Theft and tamper (against injected ground truth)</h2><table>"
                 "<tr><th>kind</th><th>injected</th><th>detected</th><th>rate %</th><th>false alarms</th></tr>")
    for kind, t in summary["theft"].items():
        parts.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            kind, t["injected"], t["detected"], t["detection_rate_pct"], t["false_alarms"]))
    parts.append("</table>")
    if with_plots:
        for title, b64 in plots(tally, sc).items():
            parts.append("<h2>%s</h2><img alt='%s' src='data:image/png;base64,%s'>" % (title, title, b64))
    parts.append("<h2>All KPIs</h2><table>")
    for k, v in _rows(summary):
        parts.append("<tr><th>%s</th><td>%s</td></tr>" % (html_escape(k), html_escape(v)))
    parts.append("</table></body></html>\n")
    hpath = os.path.join(out_dir, "report.html")
    with open(hpath, "w") as f:
        f.write("".join(parts))
    return jpath, hpath
