"""Benchmark: >= 50 real firmware DUTs in a simulated city, driven by the simulator.

The simulator's networked mode (``simulator/networked.py``) runs ``--meters``
simulated meters (one MQTT connection per feeder) and, through
``simulator/dut_meters.py``, ``--count`` ``micropython`` meter processes on the
unix board (one MQTT connection each), all against one private Mosquitto and
the real head-end (ingest worker + dispatcher, SQLite).  The simulator's
consumer model drives every DUT's pulse input over its control socket, its
payment habits pay the DUTs' top-ups through the signed webhook, and the
head-end's dispatcher delivers them over MQTT.  Scenario:
``hil_tests/scenarios/duts_net.toml`` (the DUTs' meter clocks run at the
scenario's acceleration, ``--acceleration`` overrides it).

Per DUT (``DutFleet.results``): Wh injected == Wh on the wire == Wh stored,
uplink sequence without gap, payments acked OK once and equal to the meter's
top-ups, balance conservation, the head-end's balance and shadow ledger
(to the paisa), alive, resident memory.  Prints the table, wall times and
memory; writes ``bench/results/hil_scale.json``.

    python bench/hil_scale.py [--count 50] [--meters 200] [--hours 4] [--acceleration 300]
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import networked  # noqa: E402
from simulator.dut_meters import format_table  # noqa: E402
from tools.mosquitto import Broker  # noqa: E402

SCENARIO = ROOT / "hil_tests" / "scenarios" / "duts_net.toml"


def run(count=50, meters=200, hours=4.0, acceleration=300, seed=None):
    """One run; returns the networked KPI document (``duts`` holds the per-DUT table)."""
    from headend import migrations
    from headend.db import make_engine

    workdir = tempfile.mkdtemp(prefix="urja-hil-scale-")
    url = "sqlite:///%s/urja.db" % workdir
    migrations.upgrade(url)
    engine = make_engine(url)
    broker = Broker(os.path.join(workdir, "mosq"))
    broker.start()
    try:
        sc, plan = networked.load(SCENARIO, meters=meters, seed=seed)
        plan.duts = count
        plan.hours = hours
        plan.acceleration = acceleration
        t0 = time.monotonic()
        k = networked.run(sc, plan, engine, broker)
        k["bench_wall_s"] = round(time.monotonic() - t0, 2)
        k["cpu_count"] = os.cpu_count()
        return k
    finally:
        broker.stop()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50, help="micropython DUT processes (default 50)")
    ap.add_argument("--meters", type=int, default=200, help="simulated meters beside them")
    ap.add_argument("--hours", type=float, default=4.0, help="simulated hours (default 4)")
    ap.add_argument("--acceleration", type=int, default=300,
                    help="simulated seconds per wall second, DUT clocks too (default 300)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hil_scale.json"))
    args = ap.parse_args()
    k = run(args.count, args.meters, args.hours, args.acceleration)
    d = k["duts"]
    for line in format_table(d["table"]):
        print(line)
    for r in d["table"]:
        if not r["ok"]:
            print("  %s failed: %s (%s)" % (r["meter"], ", ".join(r["failed"]),
                                            r["reconcile_detail"]))
    print("%d DUTs + %d simulated meters, %.1f simulated h at %dx: boot %.1f s (DUT clocks lead "
          "by %d s), run %.1f s, with drain %.1f s, bench wall %.1f s" % (
              d["count"], k["meters"], args.hours, args.acceleration, d["boot_s"],
              d["clock_lead_s"], k["wall_s"]["simulated_run"], k["wall_s"]["with_drain"],
              k["bench_wall_s"]))
    print("DUT RSS mean %s KiB, max %s KiB (peak %s KiB); %d payments; %d/%d DUTs passed, "
          "%d wire decode errors" % (d["rss_kib_mean"], d["rss_kib_max"], d["hwm_kib_max"],
                                      d["payments"], d["passed"], d["count"],
                                      d["wire_decode_errors"]))
    print("simulated meters: readings lost %d, duplicated %d; uplinks queued %d stored %d; "
          "reconciliation not agreeing %d (of %d meters incl. DUTs)" % (
              k["readings"]["lost"], k["readings"]["duplicated"], k["uplinks"]["queued"],
              k["uplinks"]["stored"], k["reconciliation"]["not_agreeing"],
              k["reconciliation"]["meters"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(k, f, indent=1, default=str)
    return 0 if d["passed"] == d["count"] and networked.guardrails_hold(k) else 1


if __name__ == "__main__":
    sys.exit(main())
