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
    python bench/simulator.py --python python3 --python pypy3     # both interpreters, one file

The bare SimPy rate is the best of five identical runs (three before the
fleet, two after: the machine is shared), measured in the same interpreter
as the fleet run it is compared with, so a JIT gets the same warm-up on both
sides of the ratio.  ``ratio_to_bare_simpy`` divides the fleet's rate with
all workers by that single-process rate (the definition the target was set
with); ``ratio_per_worker_to_bare_simpy`` is the per-core view.  ``--python
pypy3`` uses ``.venv-pypy/bin/python`` when it exists (PyPy 3.9 with simpy
and tomli; see ``PYPY_HELP``), else ``pypy3`` on PATH, and is skipped with
instructions when simpy is missing there.  The JSON holds one entry per
interpreter in ``runs``.

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
try:
    import tracemalloc
except ImportError:  # PyPy has no tracemalloc
    tracemalloc = None

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


def best_bare_simpy_rate(repeats=3):
    """The best of ``repeats`` bare runs: the same rule under every interpreter.

    Taking the best (not the first) gives a JIT its warm-up, and only ever
    raises the bar the fleet's rate is divided by.
    """
    return [round(bare_simpy_rate()) for _ in range(repeats)]


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
    """tracemalloc bytes per simulated meter (Meter, consumer, ledger) in one feeder run
    (None where there is no tracemalloc, e.g. PyPy)."""
    if tracemalloc is None:
        return None
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


def interpreter_name():
    impl = sys.implementation.name
    if impl == "pypy":
        v = sys.pypy_version_info  # type: ignore[attr-defined]
        return "PyPy %d.%d.%d (Python %d.%d)" % (v[0], v[1], v[2], *sys.version_info[:2])
    return "%s %d.%d.%d" % ((("CPython" if impl == "cpython" else impl),) + tuple(sys.version_info[:3]))


def resolve_python(name):
    """An interpreter for ``--python``: a path, a command on PATH, or ``pypy3``, which
    prefers the project's ``.venv-pypy`` (simpy + tomli installed there)."""
    import shutil
    if name == "pypy3" and (ROOT / ".venv-pypy/bin/python").exists():
        return str(ROOT / ".venv-pypy/bin/python")
    return shutil.which(name) or (name if os.path.exists(name) else None)


PYPY_HELP = """PyPy with SimPy is needed for this run.  Set it up (Debian/Ubuntu, as root):
    apt-get install -y pypy3          # and pypy3-venv where 'pypy3 -m venv' asks for it
    pypy3 -m venv .venv-pypy
    .venv-pypy/bin/python -m pip install 'simpy>=4.1' tomli
then: python bench/simulator.py --python python3 --python pypy3"""


def fleet_bench(args):
    """One fast-mode run in this interpreter (see the module docstring); returns the result."""
    load_avg = os.getloadavg()[0]
    bare_before = best_bare_simpy_rate()
    step_us = meter_step_us()
    per_meter = bytes_per_meter(None)
    sc = scenario.load(ROOT / "simulator/scenarios/quick.toml", meters=args.meters, days=args.days)
    sc.meters_per_feeder = 500
    sc.outages = [o for o in sc.outages if o.feeder < sc.feeders]

    t = time.perf_counter()
    tally = fleet.run_fleet(sc, workers=args.workers, batch_meters=args.batch_meters)
    wall = time.perf_counter() - t
    bare_after = best_bare_simpy_rate(2)  # the machine is shared: measure on both sides
    simpy_rate = max(bare_before + bare_after)
    rate = tally.meter_intervals / wall
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    # Resident memory does not grow with the fleet (one batch per worker), only the
    # per-meter result lists do (a balance and a few counters, ~100 B per meter).
    est_1m = self_rss + args.workers * child_rss + 1_000_000 * 100
    s = kpis.summary(tally, sc)
    result = {
        "python": interpreter_name(), "executable": sys.executable,
        "meters": args.meters, "days": args.days, "interval_s": sc.interval_s,
        "workers": args.workers, "batch_meters": args.batch_meters, "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(load_avg, 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "meter_intervals": tally.meter_intervals,
        "wall_s": round(wall, 2),
        "meter_intervals_per_s": round(rate),
        "meter_intervals_per_s_per_worker": round(rate / max(1, args.workers)),
        "bare_simpy_events_per_s": round(simpy_rate),
        "bare_simpy_samples": {"before": bare_before, "after": bare_after},
        "ratio_to_bare_simpy": round(rate / simpy_rate, 3),
        "ratio_per_worker_to_bare_simpy": round(rate / max(1, args.workers) / simpy_rate, 3),
        "meter_step_us": round(step_us, 2),
        "bytes_per_meter_live": None if per_meter is None else round(per_meter),
        "peak_rss_parent_bytes": self_rss,
        "peak_rss_largest_worker_bytes": child_rss,
        "estimated_1m_meters_bytes": est_1m,
        "reconciliation_abs_difference_paise": s["reconciliation"]["abs_difference_paise"],
        "wrongful_disconnections": s["wrongful_disconnections"],
        "kpis_sha256": __import__("hashlib").sha256(
            json.dumps(s, sort_keys=True).encode()).hexdigest(),
        "targets": {
            # the wall target is for the 100k-meter day only
            "wall_s_le_60": wall <= TARGET_WALL_S if (args.meters, args.days) == (100000, 1) else None,
            "ratio_ge_0.3": rate / simpy_rate >= TARGET_RATIO,
            "1m_meters_lt_2GB": est_1m < TARGET_1M_BYTES,
        },
    }
    return result


def print_fleet(r):
    print("[%s] fleet: %d meters x %d day(s): %d meter-intervals in %.1f s = %d meter-intervals/s "
          "(%d workers)" % (r["python"], r["meters"], r["days"], r["meter_intervals"], r["wall_s"],
                            r["meter_intervals_per_s"], r["workers"]))
    print("[%s] bare SimPy (best of %s): %d events/s -> ratio %.3f (target >= %.1f), per worker %.3f"
          % (r["python"], r["bare_simpy_samples"], r["bare_simpy_events_per_s"],
             r["ratio_to_bare_simpy"], TARGET_RATIO, r["ratio_per_worker_to_bare_simpy"]))
    print("[%s] Meter.step alone: %.1f us; live memory per simulated meter: %s B"
          % (r["python"], r["meter_step_us"], r["bytes_per_meter_live"]))
    print("[%s] peak RSS: parent %.0f MB, largest worker %.0f MB; 1 M meters est. %.2f GB"
          % (r["python"], r["peak_rss_parent_bytes"] / 2 ** 20,
             r["peak_rss_largest_worker_bytes"] / 2 ** 20, r["estimated_1m_meters_bytes"] / 2 ** 30))
    print("[%s] load average %.2f -> %.2f on %d CPUs; targets: %s"
          % (r["python"], r["load_avg_1m_at_start"], r["load_avg_1m_at_end"], r["cpus"],
             r["targets"]))


def run_under(python, args):
    """The fleet bench in another interpreter (a child process); its result, or a skip note."""
    import subprocess
    import tempfile
    exe = resolve_python(python)
    if exe is None:
        msg = "%s: not found" % python
        print("bench: %s\n%s" % (msg, PYPY_HELP if "pypy" in python else ""), file=sys.stderr)
        return {"python": python, "skipped": msg}
    probe = subprocess.run([exe, "-c", "import simpy\ntry:\n import tomllib\nexcept ImportError:\n"
                            " import tomli"], capture_output=True, text=True)
    if probe.returncode != 0:
        msg = "%s (%s) cannot import simpy/tomli: %s" % (python, exe, probe.stderr.strip().splitlines()[-1:])
        print("bench: %s\n%s" % (msg, PYPY_HELP if "pypy" in python else ""), file=sys.stderr)
        return {"python": python, "executable": exe, "skipped": msg}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [exe, __file__, "--one-run", "--meters", str(args.meters), "--days", str(args.days),
               "--workers", str(args.workers), "--batch-meters", str(args.batch_meters),
               "--out", out.name]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            return {"python": python, "executable": exe,
                    "skipped": "the run failed with exit code %d" % proc.returncode}
        with open(out.name) as f:
            return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=100000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-meters", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/simulator.json"))
    ap.add_argument("--python", action="append", metavar="EXE",
                    help="run the fast-mode bench under EXE (repeat for several, e.g. "
                         "--python python3 --python pypy3); each run measures its own bare "
                         "SimPy rate.  Default: this interpreter only")
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)  # child of --python
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

    if args.one_run:
        r = fleet_bench(args)
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1, sort_keys=True)
        return 0
    runs = []
    for python in args.python or [sys.executable]:
        exe = resolve_python(python)
        if exe is not None and os.path.realpath(exe) == os.path.realpath(sys.executable) and not runs:
            r = fleet_bench(args)  # this interpreter, in-process (first, so RUSAGE_CHILDREN is its own)
        else:
            r = run_under(python, args)
        if "skipped" not in r:
            print_fleet(r)
        runs.append(r)
    done = [r for r in runs if "skipped" not in r]
    doc = {"meters": args.meters, "days": args.days, "workers": args.workers, "runs": runs}
    if done:
        doc["best"] = min(done, key=lambda r: r["wall_s"])["python"]
        # The interpreters' SimPy rates differ (PyPy's can be the lower one): also divide
        # every fleet rate by the fastest bare SimPy of any interpreter, the strictest bar.
        top = max(r["bare_simpy_events_per_s"] for r in done)
        doc["fastest_bare_simpy_events_per_s"] = top
        for r in done:
            r["ratio_to_fastest_bare_simpy"] = round(r["meter_intervals_per_s"] / top, 3)
            print("[%s] ratio to the fastest bare SimPy of all runs (%d events/s): %.3f"
                  % (r["python"], top, r["ratio_to_fastest_bare_simpy"]))
        # same scenario and seed: every interpreter must have simulated the same city
        doc["kpis_identical_across_runs"] = len(set(r["kpis_sha256"] for r in done)) == 1
        print("KPIs identical across the %d runs: %s" % (len(done), doc["kpis_identical_across_runs"]))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
