"""Benchmark: the fast-mode fleet simulator, 100k meters x 1 simulated day of 15-minute intervals.

Prints and writes ``bench/results/simulator.json``:

- meter-intervals per second and wall time for the fleet run (every meter
  is the real firmware ``Meter``; one ``step`` per meter per interval);
- the bare SimPy event rate on this machine, measured in the same run
  (processes doing nothing but ``yield env.timeout``), and the ratio;
- memory: bytes per simulated meter (Meter + consumer + head-end ledger,
  tracemalloc), peak RSS of the parent and of the largest worker, and what
  1 M meters would need (batches keep one batch per worker in memory);
- microseconds per bare ``Meter.step`` for comparison;
- the load average when it started (the machine may be shared).

Targets (issue 7): <= 60 s wall for 100k meters x 1 day, >= 0.3 x the bare
SimPy event rate, 1 M meters in < 2 GB.

    python bench/simulator.py [--meters 100000] [--days 1] [--workers 2] [--batch-meters 5000]

Networked (``--networked``, writes ``bench/results/simulator_networked.json``):
N meters (default 10k, 500 per feeder = one MQTT connection per feeder) run
the first ``--hours`` of ``simulator/scenarios/partition_net.toml`` without
its faults against a private Mosquitto and the real head-end (ingest +
dispatcher) on SQLite or ``--db URL``; prints sustained readings/s (stored
interval readings / wall time until everything is stored) and the ingest
lag p50/p99 (commit time - message time, converted to wall ms).

    python bench/simulator.py --networked --meters 10000 --hours 2 [--db postgresql+psycopg://...]
"""
import argparse
import json
import os
import pathlib
import resource
import sys
import time
import tracemalloc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import simpy  # noqa: E402

from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig  # noqa: E402
from simulator import fleet, kpis, scenario  # noqa: E402

TARGET_WALL_S = 60
TARGET_RATIO = 0.3
TARGET_1M_BYTES = 2 * 1024 ** 3


def bare_simpy_rate(processes=2000, steps=200):
    """SimPy timeouts per second with no work attached (the ceiling for any SimPy model)."""
    env = simpy.Environment()

    def proc(env):
        for _ in range(steps):
            yield env.timeout(900)
    for _ in range(processes):
        env.process(proc(env))
    t = time.perf_counter()
    env.run()
    return processes * steps / (time.perf_counter() - t)


def meter_step_us(n=2000, intervals=24):
    """Mean microseconds of one bare Meter.step (no journal) with 1 kWh-ish of pulses."""
    cfg = MeterConfig.from_dict(EXAMPLE_CONFIG)
    t0 = 1795717800
    meters = [Meter(cfg, now=t0, opening_credit_paise=10 ** 7) for _ in range(n)]
    for m in meters:
        m.step(t0)
    t = time.perf_counter()
    for k in range(1, intervals + 1):
        now = t0 + k * 900
        for m in meters:
            m.add_pulses(800, now)
            m.step(now)
    return (time.perf_counter() - t) / (n * intervals) * 1e6


def bytes_per_meter(sc, n=2000):
    """tracemalloc bytes per simulated meter (Meter, consumer, ledger) in one feeder run."""
    sc = scenario.load(ROOT / "simulator/scenarios/quick.toml", meters=n, days=1)
    sc.meters_per_feeder = n
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    env = simpy.Environment(initial_time=sc.start_t)
    run = fleet.FeederRun(sc, 0, env, kpis.Tally(sc.intervals, 1), fleet.base_configs(sc))
    env.run(until=sc.start_t + 6 * 3600)  # a few hours in: profiles and ledgers populated
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del run
    return used / n


def networked_bench(args):
    """The networked run (see the module docstring); returns the KPI document."""
    import shutil
    import tempfile

    from tools.mosquitto import Broker
    from headend import migrations
    from headend.db import make_engine
    from headend.ingest import MOSQUITTO_INGEST_CONF
    from simulator import networked

    workdir = tempfile.mkdtemp(prefix="urja-bench-net-")
    broker = Broker(workdir, extra_config=MOSQUITTO_INGEST_CONF)
    os.chmod(workdir, 0o777)  # Mosquitto run as root drops to its own user: let it write
    os.chmod(os.path.join(workdir, "data"), 0o777)
    url = args.db or "sqlite:///%s/urja.db" % workdir
    migrations.upgrade(url)
    engine = make_engine(url)
    sc, plan = networked.load(ROOT / "simulator/scenarios/partition_net.toml", meters=args.meters)
    sc.meters_per_feeder = 500
    plan.partitions, plan.hours = [], args.hours
    plan.acceleration = args.acceleration
    plan.tick_s = 300
    plan.drain_timeout_s = 600
    broker.start()
    try:
        k = networked.run(sc, plan, engine, broker,
                          progress=lambda t: print("  simulated %s h" % ((t - sc.start_t) // 3600),
                                                   flush=True))
    finally:
        broker.stop()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    k["database"] = engine.dialect.name
    k["hours"] = args.hours
    k["cpus"] = os.cpu_count()
    ing = k["ingest"]
    print("networked: %d meters (%d feeder connections), %d simulated h at x%d, %s"
          % (k["meters"], k["connections"]["feeder_links"], args.hours, args.acceleration,
             k["database"]))
    print("  %d readings (%d uplinks) stored in %.1f s wall (%.1f s until the last step): "
          "%.0f readings/s, %.0f uplinks/s sustained"
          % (k["readings"]["stored"], k["uplinks"]["stored"], k["wall_s"]["with_drain"],
             k["wall_s"]["simulated_run"], ing["readings_per_s_wall"], ing["uplinks_per_s_wall"]))
    print("  ingest lag p50 %s / p99 %s simulated s = p99 %s ms wall; lost %d, duplicated %d, "
          "reconciliation %d paise" % (ing["lag_p50_sim_s"] and round(ing["lag_p50_sim_s"]),
                                      ing["lag_p99_sim_s"] and round(ing["lag_p99_sim_s"]),
                                      ing["lag_p99_wall_ms"], k["readings"]["lost"],
                                      k["readings"]["duplicated"],
                                      k["reconciliation"]["abs_difference_paise"]))
    return k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=100000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-meters", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/simulator.json"))
    ap.add_argument("--networked", action="store_true",
                    help="networked mode against Mosquitto and the real head-end (default 10k meters)")
    ap.add_argument("--hours", type=int, default=2, help="networked: simulated hours to run")
    ap.add_argument("--acceleration", type=int, default=3600,
                    help="networked: simulated seconds per wall second (stretches when saturated)")
    ap.add_argument("--db", default=None, help="networked: database URL (default a temp SQLite)")
    args = ap.parse_args(argv)
    if args.networked:
        if args.meters == 100000:
            args.meters = 10000
        if args.out == str(ROOT / "bench/results/simulator.json"):
            args.out = str(ROOT / "bench/results/simulator_networked.json")
        k = networked_bench(args)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(k, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
        return 0

    load_avg = os.getloadavg()[0]
    simpy_rate = bare_simpy_rate()
    step_us = meter_step_us()
    per_meter = bytes_per_meter(None)
    sc = scenario.load(ROOT / "simulator/scenarios/quick.toml", meters=args.meters, days=args.days)
    sc.meters_per_feeder = 500
    sc.outages = [o for o in sc.outages if o.feeder < sc.feeders]

    t = time.perf_counter()
    tally = fleet.run_fleet(sc, workers=args.workers, batch_meters=args.batch_meters)
    wall = time.perf_counter() - t
    rate = tally.meter_intervals / wall
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    # Resident memory does not grow with the fleet (one batch per worker), only the
    # per-meter result lists do (a balance and a few counters, ~100 B per meter).
    est_1m = self_rss + args.workers * child_rss + 1_000_000 * 100
    s = kpis.summary(tally, sc)
    result = {
        "meters": args.meters, "days": args.days, "interval_s": sc.interval_s,
        "workers": args.workers, "batch_meters": args.batch_meters, "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(load_avg, 2),
        "meter_intervals": tally.meter_intervals,
        "wall_s": round(wall, 2),
        "meter_intervals_per_s": round(rate),
        "meter_intervals_per_s_per_worker": round(rate / max(1, args.workers)),
        "bare_simpy_events_per_s": round(simpy_rate),
        "ratio_to_bare_simpy": round(rate / simpy_rate, 3),
        "meter_step_us": round(step_us, 2),
        "bytes_per_meter_live": round(per_meter),
        "peak_rss_parent_bytes": self_rss,
        "peak_rss_largest_worker_bytes": child_rss,
        "estimated_1m_meters_bytes": est_1m,
        "reconciliation_abs_difference_paise": s["reconciliation"]["abs_difference_paise"],
        "wrongful_disconnections": s["wrongful_disconnections"],
        "targets": {
            "wall_s_le_60": wall <= TARGET_WALL_S,
            "ratio_ge_0.3": rate / simpy_rate >= TARGET_RATIO,
            "1m_meters_lt_2GB": est_1m < TARGET_1M_BYTES,
        },
    }
    print("fleet: %d meters x %d day(s): %d meter-intervals in %.1f s = %d meter-intervals/s (%d workers)"
          % (args.meters, args.days, tally.meter_intervals, wall, rate, args.workers))
    print("bare SimPy: %d events/s -> ratio %.3f (target >= %.1f)" % (simpy_rate, rate / simpy_rate, TARGET_RATIO))
    print("Meter.step alone: %.1f us; live memory per simulated meter: %d B" % (step_us, per_meter))
    print("peak RSS: parent %.0f MB, largest worker %.0f MB; 1 M meters est. %.2f GB"
          % (self_rss / 2 ** 20, child_rss / 2 ** 20, est_1m / 2 ** 30))
    print("load average at start: %.2f on %d CPUs; targets: %s" % (load_avg, os.cpu_count(), result["targets"]))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
