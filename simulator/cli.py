"""``urja-sim``: run a fleet scenario and write the KPIs and a report.

    urja-sim run simulator/scenarios/quick.toml --report out/sim
    urja-sim run simulator/scenarios/monsoon_outage.toml --meters 2000 --days 3 --seed 11
    urja-sim run city_rollout.toml --workers 2 --json        # KPIs on stdout for scripts
    urja-sim run simulator/scenarios/partition_net.toml --mode networked --report out/net
        (networked: a private Mosquitto + the real head-end on SQLite, or --db URL)

Exit codes: 0 ran and the guardrails hold (0 wrongful disconnections,
0 paise reconciliation difference, 0 readings lost or duplicated);
1 ran but a guardrail failed; 2 bad scenario or arguments.
"""
import argparse
import json
import os
import sys

from simulator import fleet, kpis, report, scenario


def _progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety, not a dependency of the result
        return None, None
    bar = tqdm(total=total, unit="meter-interval", unit_scale=True, file=sys.stderr,
               desc="simulating", smoothing=0.1)
    return bar, bar.update


def guardrails_hold(summary):
    return (summary["wrongful_disconnections"] == 0
            and summary["reconciliation"]["abs_difference_paise"] == 0
            and summary["readings"]["intervals_lost"] == 0
            and summary["readings"]["intervals_duplicated"] == 0)


def run_networked(args):
    """Networked mode: the fleet speaks MQTT to a private Mosquitto and the real
    head-end (ingest, dispatcher, payments) on ``--db`` (default: SQLite in the
    report folder).  KPIs come from the head-end's database."""
    import contextlib
    import tempfile

    from headend import migrations
    from headend.db import make_engine
    from headend.ingest import MOSQUITTO_INGEST_CONF
    from simulator import networked
    from tools.mosquitto import BrokerError, running_broker

    try:
        sc, plan = networked.load(args.scenario, meters=args.meters, days=args.days, seed=args.seed)
    except scenario.ScenarioError as err:
        print("urja-sim: %s" % err, file=sys.stderr)
        return 2
    out_dir = args.report or tempfile.mkdtemp(prefix="urja-sim-")
    os.makedirs(out_dir, exist_ok=True)
    if args.db:
        url = args.db
    else:
        # a fresh head-end for every run: the scenario provisions its own meters
        db_path = os.path.join(os.path.abspath(out_dir), "headend.db")
        for leftover in (db_path, db_path + "-wal", db_path + "-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
        url = "sqlite:///%s" % db_path
    with contextlib.ExitStack() as stack:
        try:
            broker = stack.enter_context(running_broker(MOSQUITTO_INGEST_CONF,
                                                        prefix="urja-sim-broker-"))
        except BrokerError as err:
            print("urja-sim: %s" % err, file=sys.stderr)
            return 2
        migrations.upgrade(url)
        engine = make_engine(url)
        hours = sc.days * 24
        bar = None
        progress = None
        if not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=hours, unit="h", desc="urja-sim (networked)", file=sys.stderr)
            progress = lambda hour: bar.update(1)  # noqa: E731 - one simulated hour
        k = networked.run(sc, plan, engine, broker, progress=progress)
        if bar is not None:
            bar.close()
        # the same report as fast mode, its KPIs and plots read from the head-end's database
        jpath, hpath = report.write_networked(out_dir, k, engine, sc, with_plots=not args.no_plots)
        engine.dispose()
    text = json.dumps(k, indent=1, sort_keys=True, default=str) + "\n"
    print("urja-sim: wrote %s and %s (head-end database %s)" % (jpath, hpath, url), file=sys.stderr)
    if args.json or not args.report:
        sys.stdout.write(text)
    ok = networked.guardrails_hold(k)
    if not ok:
        print("urja-sim: GUARDRAIL FAILED (lost/duplicated readings, lost uplinks or open "
              "sequence gaps, reconciliation or wrongful disconnections)", file=sys.stderr)
    return 0 if ok else 1


def run(args):
    if args.mode == "networked":
        return run_networked(args)
    try:
        sc = scenario.load(args.scenario, meters=args.meters, days=args.days, seed=args.seed)
    except scenario.ScenarioError as err:
        print("urja-sim: %s" % err, file=sys.stderr)
        return 2
    total = sc.meters * sc.intervals
    bar, update = (None, None) if args.no_progress else _progress_bar(total)
    tally = fleet.run_fleet(sc, workers=args.workers, batch_meters=args.batch_meters, progress=update)
    if bar is not None:
        bar.close()
    summary = kpis.summary(tally, sc)
    if args.report:
        jpath, hpath = report.write(args.report, summary, tally, sc, with_plots=not args.no_plots)
        print("urja-sim: wrote %s and %s" % (jpath, hpath), file=sys.stderr)
    if args.json or not args.report:
        sys.stdout.write(report.kpis_json(summary))
    ok = guardrails_hold(summary)
    if not ok:
        print("urja-sim: GUARDRAIL FAILED (wrongful disconnections, reconciliation or readings)",
              file=sys.stderr)
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="urja-sim", description="Fleet simulator: a SimPy city of meters running the real firmware core.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a scenario file")
    r.add_argument("scenario", help="scenario TOML file (see simulator/scenarios/)")
    r.add_argument("--meters", type=int, help="override fleet.meters")
    r.add_argument("--days", type=int, help="override days")
    r.add_argument("--seed", type=int, help="override seed (same seed -> same KPIs)")
    r.add_argument("--mode", choices=("fast", "networked"), default="fast")
    r.add_argument("--report", metavar="DIR", help="write DIR/kpis.json and DIR/report.html")
    r.add_argument("--json", action="store_true", help="print the KPIs JSON on stdout")
    r.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (results do not depend on it)")
    r.add_argument("--batch-meters", type=int, default=5000, help="meters held in memory per worker")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument("--no-plots", action="store_true", help="HTML report without plots")
    r.add_argument("--db", metavar="URL",
                   help="networked mode: head-end database (default: SQLite in the report folder)")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
