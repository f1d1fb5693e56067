"""A prepaid meter's day, computed by the real firmware core.

One domestic electricity meter (3200 imp/kWh) in IST runs from midnight to
midnight on a telescopic tariff with peak and solar time-of-day rates.  It
starts with little credit: the low-credit warnings fire, emergency credit
starts, the relay opens when emergency credit is spent outside the friendly
hours, the consumer recharges by UPI (an authenticated top-up, as the
head-end will send it) and the relay closes again.

Then a small city runs the same firmware over the real network path: 20
simulated meters publish to a Mosquitto the demo starts itself, the real
head-end ingests into SQLite, UPI payments come in through the signed
webhook and go back to the meters as authenticated top-ups, one feeder is
cut off for a while; the KPIs come from the head-end's database.

    ./dev demo                 # table + out/demo/meter_day.png + .csv + out/demo/fleet/
    ./dev demo --no-fleet      # only the single meter (no broker needed)
    ./dev demo --no-plot       # terminal only
    ./dev demo --help
"""
import argparse
import csv
import os
import sys

from firmware.core import auth, credit, events, localtime
from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig

DAY_START = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 27), localtime.IST_OFFSET_S)
STEP_S = 60

# Typical north-Indian winter household, watts by local hour (lights, geyser, TV, fridge).
HOURLY_W = [220, 200, 190, 190, 200, 320, 1400, 2100, 1600, 800, 600, 650,
            700, 650, 600, 650, 800, 1300, 1900, 2300, 2200, 1700, 900, 400]
RECHARGE_AT_LOCAL_S = 19 * 3600 + 40 * 60  # the consumer pays at 19:40
RECHARGE_PAISE = 30000  # Rs 300 by UPI
OPENING_CREDIT_PAISE = 4500  # Rs 45 left at midnight


def demo_config():
    cfg = dict(EXAMPLE_CONFIG)
    cfg["credit"] = {
        "low_credit_paise": 3000,
        "emergency_credit_paise": 500,
        "friendly_start_s": 18 * 3600,  # no disconnection 18:00-08:00 (UPPCL)
        "friendly_end_s": 8 * 3600,
        "friendly_weekdays": [6],
        "warn_pct_of_last_topup": [30, 10],
    }
    return MeterConfig.from_dict(cfg)


def load_w(local_s):
    """Smoothly interpolated household load at a local second of day."""
    h, rem = divmod(local_s, 3600)
    a, b = HOURLY_W[h], HOURLY_W[(h + 1) % 24]
    return a + (b - a) * rem // 3600


def run_day():
    """Simulate the day; returns (rows per minute, event list, meter)."""
    config = demo_config()
    meter = Meter(config, now=DAY_START, opening_credit_paise=OPENING_CREDIT_PAISE)
    pulse_milli = 0  # pulses x 1000, so no pulse is lost to rounding
    rows = []
    counter = 1
    for minute in range(1, 24 * 60 + 1):
        now = DAY_START + minute * STEP_S
        local_s = (minute - 1) * STEP_S
        w = load_w(local_s) if meter.relay_closed else 0
        # W * 60 s / 3600 s/h / 1000 Wh/kWh * 3200 imp/kWh, in milli-pulses
        pulse_milli += w * 60 * 3200 * 1000 // 3600000
        pulses, pulse_milli = divmod(pulse_milli, 1000)
        meter.add_pulses(pulses, now)
        meter.power_sample(w, now)
        meter.step(now)
        if local_s + STEP_S == RECHARGE_AT_LOCAL_S:
            cmd = auth.make_topup(config.key, config.meter_id, counter, now + 3600,
                                  "UPI-20261127-0001", RECHARGE_PAISE)
            counter += 1
            result, detail = meter.apply_command(cmd, now)
            rows.append(("recharge", now, result, detail))
        st = meter.status()
        rows.append(("minute", now, w, st))
    return rows, meter


def fmt_rupees(paise):
    sign = "-" if paise < 0 else ""
    return "%sRs %d.%02d" % (sign, abs(paise) // 100, abs(paise) % 100)


def hhmm(t):
    s = localtime.second_of_day(t, localtime.IST_OFFSET_S)
    return "%02d:%02d" % (s // 3600, s // 60 % 60)


def print_table(rows, meter, out):
    minutes = [r for r in rows if r[0] == "minute"]
    out.write("Urja demo: one prepaid meter, 27 Nov 2026 (IST), real firmware core\n")
    out.write("%-11s %7s %12s %12s %-18s %-6s\n" % ("hour (IST)", "avg W", "energy", "balance", "credit state", "relay"))
    out.write("%-11s %7s %12s %12s %-18s %-6s\n" % ("", "", "(cumul.)", "(at end)", "(at end)", "(at end)"))
    for h in range(24):
        chunk = minutes[h * 60:(h + 1) * 60]
        avg_w = sum(r[2] for r in chunk) // len(chunk)
        st = chunk[-1][3]
        out.write("%02d:00-%02d:00 %7d %8.2f kWh %12s %-18s %-6s\n" % (
            h, h + 1, avg_w, st["energy_wh"] / 1000, fmt_rupees(st["balance_paise"]), st["state"], st["relay"]))
    out.write("\nEvents (from the meter's event log):\n")
    for seq, t, code, value in meter.log.pending(limit=64):
        if code == events.CREDIT_STATE:
            value = "-> " + credit.STATE_NAMES[value]
        elif code in (events.TOPUP_APPLIED, events.CREDIT_EXHAUSTED, events.EMERGENCY_STARTED):
            value = fmt_rupees(value)
        elif code == events.LOW_CREDIT_WARNING:
            value = "%d %% of last recharge left" % value
        out.write("  #%-3d %s  %-20s %s\n" % (seq, hhmm(t), events.NAMES[code], value))
    for r in rows:
        if r[0] == "recharge":
            out.write("  UPI recharge of %s at %s: %s (%s)\n" % (
                fmt_rupees(RECHARGE_PAISE), hhmm(r[1]), auth.REASON_NAMES.get(r[2], r[2]), r[3]))
    st = meter.status()
    out.write("\nEnd of day: %.3f kWh, balance %s, state %s, relay %s\n" % (
        st["energy_wh"] / 1000, fmt_rupees(st["balance_paise"]), st["state"], st["relay"]))


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utc", "local", "load_w", "energy_wh", "balance_paise", "state", "relay"])
        for r in rows:
            if r[0] == "minute":
                st = r[3]
                w.writerow([r[1], hhmm(r[1]), r[2], st["energy_wh"], st["balance_paise"], st["state"], st["relay"]])


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r for r in rows if r[0] == "minute"]
    hours = [(r[1] - DAY_START) / 3600 for r in minutes]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 1]})
    ax1.plot(hours, [r[2] for r in minutes], color="tab:orange")
    ax1.set_ylabel("load (W)")
    ax1.set_title("Prepaid meter day (firmware core) - 27 Nov 2026, IST")
    ax2.plot(hours, [r[3]["balance_paise"] / 100 for r in minutes], color="tab:blue")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_ylabel("balance (Rs)")
    for r in rows:
        if r[0] == "recharge":
            x = (r[1] - DAY_START) / 3600
            ax2.annotate("UPI recharge", (x, 0), xytext=(x - 5, 150),
                         arrowprops={"arrowstyle": "->"})
    ax3.fill_between(hours, [1 if r[3]["relay"] == "closed" else 0 for r in minutes],
                     step="post", color="tab:green")
    ax3.set_yticks([0, 1], ["open", "closed"])
    ax3.set_ylabel("relay")
    ax3.set_xlabel("local time (h)")
    ax3.set_xlim(0, 24)
    ax3.set_xticks(range(0, 25, 3))
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, 8, color="grey", alpha=0.08)
        ax.axvspan(18, 24, color="grey", alpha=0.08)
    ax1.text(0.2, ax1.get_ylim()[1] * 0.9, "friendly hours (shaded): no disconnection", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="./dev demo",
        description="Run one prepaid meter through a day on the real firmware core.",
        epilog="example: ./dev demo --out out/demo   (writes meter_day.png and meter_day.csv)",
    )
    parser.add_argument("--out", default="out/demo", help="folder for the plot and CSV (default: out/demo)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--no-fleet", action="store_true",
                        help="skip the networked city (which starts its own Mosquitto)")
    parser.add_argument("--fleet-meters", type=int, default=20, help="meters in the city (default 20)")
    args = parser.parse_args(argv)
    rows, meter = run_day()
    print_table(rows, meter, sys.stdout)
    os.makedirs(args.out, exist_ok=True)
    write_csv(rows, os.path.join(args.out, "meter_day.csv"))
    if not args.no_plot:
        png = os.path.join(args.out, "meter_day.png")
        plot(rows, png)
        print("\nPlot: %s   Data: %s" % (png, os.path.join(args.out, "meter_day.csv")))
    if not args.no_fleet:
        return run_fleet(os.path.join(args.out, "fleet"), args.fleet_meters)
    return 0


def run_fleet(out_dir, meters):
    """The networked city: a private broker, the real head-end on SQLite, real firmware meters."""
    import json

    from simulator import cli as sim_cli

    scenario = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "simulator", "scenarios", "partition_net.toml")
    print("\nA city of %d meters over MQTT (private Mosquitto, head-end on SQLite, one feeder "
          "cut off for a while)..." % meters)
    rc = sim_cli.main(["run", scenario, "--mode", "networked", "--meters", str(meters),
                       "--report", out_dir])
    with open(os.path.join(out_dir, "kpis.json")) as f:
        k = json.load(f)
    r, money = k["readings"], k["money"]
    print("  readings produced by the meters      %d" % r["produced"])
    print("  stored once by the head-end          %d lost, %d duplicated" % (r["lost"], r["duplicated"]))
    print("  UPI payments -> top-ups applied      %d of %d (%s of %s)" % (
        money["topups_applied"], money["payments"], fmt_rupees(money["topups_applied_paise"]),
        fmt_rupees(money["paid_paise"])))
    print("  KPIs: %s   head-end database: %s" % (os.path.join(out_dir, "kpis.json"),
                                                 os.path.join(out_dir, "headend.db")))
    return rc


if __name__ == "__main__":
    sys.exit(main())
