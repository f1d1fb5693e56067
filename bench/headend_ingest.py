"""Benchmark: head-end ingest throughput and lag against the bare broker rate.

One run, one machine, one private Mosquitto on loopback:

1. bare: the publishers send every reading; a subscriber discards them:
   ``headend.mqtt_fast`` (PUBACKs every read chunk at once) and gmqtt
   (optimistic QoS 1 acks); paho-mqtt on request (``--bare-clients``).  The
   ratio is taken over the fastest of them in the same run.
2. ingest: the same publishers, the same readings, into ``headend.ingest``
   (decode with firmware.protocol.messages, dedupe, batched commit, PUBACK
   after commit) on PostgreSQL (default) or SQLite.

Readings committed per second = stored readings / (last commit - first
receive); lag = commit time - the moment the publisher created the message
(an extra ``bt`` key in microseconds, ignored by the schema).  It prints
``ratio=`` (committed readings/s over the fastest bare rate) and writes
``bench/results/headend_ingest.json``.  Each reading uplink carries one
15-minute record, so readings/s = messages/s.

With ``--workers N`` (N > 1) the ingest runs as N ``python -m headend.ingest``
processes in one shared subscription group; their JSON counter lines (every
0.1 s) give the committed count, so the rate there carries +-0.1 s of
timing and the lag is the workers' own (from the whole-second ``t``).

Backlog (``--backlog METERS``): METERS meters come back after a day offline
and each flushes its outbox of ``--per-meter`` (default 96) readings in
sequence order, all at once, into the running ingest.  Reports the time to
drain (first message received -> last reading committed), checks that
nothing was lost (rows in ``readings`` == published, no open sequence gap,
Mosquitto's dropped counter 0) and extrapolates linearly to 131k meters,
labelled as an extrapolation.  Results go to
``bench/results/headend_ingest_backlog.json``.

Both runs also measure CPU time per message of every process (publisher,
broker, subscriber or worker, PostgreSQL backends), which a loaded machine
disturbs less than the rates; ``cpu ratio estimate`` is bare CPU over
ingest CPU per message: the ratio the two runs would show if both were
CPU-bound on the same cores.  It explains the measured ratio; it does not
replace it.

Run length: 1,000 meters x 240 readings by default (240,000; ~5 s of ingest
here).  The rate is taken from the first message received to the last
commit, so a run ends with one batch window (``--batch-ms``, 50 ms) and one
commit that the bare run does not have; at 60 readings per meter (1.5 s)
that tail alone is ~7 % of the window, and the rate measures the edges more
than the steady state.  ``--per-meter 60`` still runs the short case.
On a shared machine the rates swing by several percent from run to run:
``--repeat N`` runs the pair N times and reports the median, min and max.

Targets (issue 6), broker + load generator + database on the same 2 cores:
>= 30000 readings/s committed with dedupe, ratio >= 0.7.

    python bench/headend_ingest.py [--meters 1000] [--per-meter 240] [--db sqlite|postgresql|URL]
    python bench/headend_ingest.py --repeat 5           # 5 bare + ingest pairs: median, min, max
    python bench/headend_ingest.py --workers 2          # two ingest processes, one group
    python bench/headend_ingest.py --backlog 5000       # 5000 meters x 96 readings
    python bench/headend_ingest.py --bare-only          # client choice only
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402
import gmqtt  # noqa: E402
from gmqtt.mqtt.constants import MQTTv311, MQTTv50  # noqa: E402

from headend import fastscan  # noqa: E402
from headend.ingest import MOSQUITTO_INGEST_CONF  # noqa: E402

T0 = 1795737600
IV = 900
POSTGRES_URL = os.environ.get("URJA_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULT = ROOT / "bench" / "results" / "headend_ingest.json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="urja-bench-mqtt-")
        self.port = free_port()
        conf = pathlib.Path(self.dir, "mosquitto.conf")
        conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\nlog_type error\n%s"
                        % (self.port, MOSQUITTO_INGEST_CONF))
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- load generator (a subprocess) -------------------------------------------

def _fleet_order(meters, per_meter):
    """Live fleet: interval i of every meter, then i+1."""
    for i in range(per_meter):
        for k in range(meters):
            yield i, k


def _backlog_order(meters, per_meter, connections):
    """Reconnect storm: each meter drains its outbox in sequence; the connections interleave."""
    for first in range(0, meters, connections):
        for i in range(per_meter):
            for k in range(first, min(meters, first + connections)):
                yield i, k


async def _publish(port, meters, per_meter, connections, run_id, backlog=False):
    """Publish every reading once, QoS 1, over ``connections`` client connections."""
    clients = []
    for c in range(connections):
        cl = gmqtt.Client("gen-%s-%d" % (run_id, c))
        await cl.connect("127.0.0.1", port, version=MQTTv311)
        clients.append(cl)
    ids = ["BM-%06d" % k for k in range(meters)]
    order = (_backlog_order(meters, per_meter, connections) if backlog
             else _fleet_order(meters, per_meter))
    n = 0
    for i, k in order:
        mid = ids[k]
        body = {"v": 1, "m": mid, "s": i + 1, "t": int(time.time()),
                "bt": int(time.time() * 1e6), "iv": IV, "u": "Wh", "cum": 10 * (i + 1),
                "r": [[T0 + i * IV, 10, 230000, 1000, 0, IV]]}
        clients[k % connections].publish("urja/v1/%s/up/reading" % mid,
                                         cbor2.dumps(body, canonical=True), qos=1)
        n += 1
        if n % 500 == 0:
            await asyncio.sleep(0)  # let PUBACKs in; keeps the socket buffers bounded
    await asyncio.sleep(2.0)
    for cl in clients:
        await cl.disconnect()
    t = os.times()
    print(json.dumps({"publisher_cpu_s": round(t.user + t.system, 3)}), flush=True)


def run_publisher(port, meters, per_meter, connections, backlog=False):
    return subprocess.Popen([sys.executable, __file__, "--publisher", "--port", str(port),
                             "--meters", str(meters), "--per-meter", str(per_meter),
                             "--connections", str(connections)]
                            + (["--backlog", str(meters)] if backlog else []),
                            stdout=subprocess.PIPE, text=True)


def proc_cpu_s(pid):
    """CPU seconds (user + system) a live process has used, from /proc; None if it is gone."""
    try:
        fields = pathlib.Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publisher_cpu_s(proc):
    for line in proc.stdout.read().splitlines():
        try:
            return json.loads(line)["publisher_cpu_s"]
        except (ValueError, KeyError):
            continue
    return None


BROKER_PID = {"pid": None}


# --- bare subscribers ----------------------------------------------------------

async def bare_gmqtt(port, total, start_load):
    got = {"n": 0, "first": None, "last": None}
    done = asyncio.Event()

    def on_message(client, topic, payload, qos, properties):
        got["n"] += 1
        now = time.perf_counter()
        got["first"] = got["first"] or now
        got["last"] = now
        if got["n"] >= total:
            done.set()
        return 0

    cl = gmqtt.Client("bare-%s" % uuid.uuid4().hex[:6], receive_maximum=65535)
    cl.on_message = on_message
    await cl.connect("127.0.0.1", port, version=MQTTv50)
    cl.subscribe("$share/bare/urja/v1/+/up/#", qos=1)
    await asyncio.sleep(0.3)
    proc = start_load()
    await asyncio.wait_for(done.wait(), 600)
    proc.wait()
    await cl.disconnect()
    return got["n"] / (got["last"] - got["first"])


async def bare_fast(port, total, start_load):
    """headend.mqtt_fast subscriber that discards: PUBACKs every chunk at once, as it reads."""
    from headend.mqtt_fast import FastSubscriber
    got = {"n": 0, "first": None, "last": None}
    done = asyncio.Event()
    subscribed = asyncio.Event()
    sub = None

    def on_messages(conn, pubs):
        now = time.perf_counter()
        got["first"] = got["first"] or now
        got["last"] = now
        got["n"] += len(pubs)
        sub.ack_all(conn, [p.packet_id for p in pubs if p.qos])
        if got["n"] >= total:
            done.set()

    sub = FastSubscriber("127.0.0.1", port, "bare-%s" % uuid.uuid4().hex[:6],
                         [("$share/bare/urja/v1/+/up/#", 1)], on_messages, subscribed.set,
                         session_expiry_s=0)
    await sub.start()
    await subscribed.wait()
    cpu0, broker0 = time.process_time(), proc_cpu_s(BROKER_PID["pid"])
    proc = start_load()
    await asyncio.wait_for(done.wait(), 600)
    sub_cpu = time.process_time() - cpu0
    broker_cpu = proc_cpu_s(BROKER_PID["pid"]) - broker0
    proc.wait()
    pub_cpu = publisher_cpu_s(proc)
    await sub.stop()
    us = lambda cpu: None if cpu is None else round(cpu / total * 1e6, 1)  # noqa: E731
    cpu = {"subscriber": us(sub_cpu), "broker": us(broker_cpu), "publisher": us(pub_cpu)}
    cpu["sum"] = round(sum(v for v in cpu.values() if v is not None), 1)
    return got["n"] / (got["last"] - got["first"]), cpu


def bare_paho(port, total, start_load):
    import paho.mqtt.client as paho
    got = {"n": 0, "first": None, "last": None}

    def on_message(client, userdata, msg):
        got["n"] += 1
        now = time.perf_counter()
        got["first"] = got["first"] or now
        got["last"] = now

    cl = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bare-paho",
                     protocol=paho.MQTTv5)
    cl.on_message = on_message
    props = paho.Properties(paho.PacketTypes.CONNECT)
    props.ReceiveMaximum = 65535
    cl.connect("127.0.0.1", port, properties=props)
    cl.subscribe("$share/bare/urja/v1/+/up/#", qos=1)
    cl.loop_start()
    time.sleep(0.3)
    proc = start_load()
    deadline = time.monotonic() + 600
    while got["n"] < total and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.wait()
    cl.loop_stop()
    cl.disconnect()
    return got["n"] / (got["last"] - got["first"])


# --- ingest ----------------------------------------------------------------------

def fresh_database(db):
    from sqlalchemy import create_engine, text
    from headend import migrations
    if db == "sqlite":
        path = pathlib.Path(tempfile.mkdtemp(prefix="urja-bench-db-")) / "urja.db"
        url, cleanup = "sqlite:///%s" % path, lambda: shutil.rmtree(path.parent, True)
    else:
        base = POSTGRES_URL if db == "postgresql" else db
        schema = "urja_bench_%s" % uuid.uuid4().hex[:8]
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text('CREATE SCHEMA "%s"' % schema))

        def cleanup():
            with admin.connect() as conn:
                conn.execute(text('DROP SCHEMA "%s" CASCADE' % schema))
        url = "%s%soptions=-csearch_path%%3D%s" % (base, "&" if "?" in base else "?", schema)
    migrations.upgrade(url)
    return url, cleanup


def register_meters(url, meters):
    from sqlalchemy.orm import Session
    from headend import models as M
    from headend.db import make_engine
    engine = make_engine(url)
    with Session(engine) as s:
        s.add(M.Tenant(id=1, code="B", name="bench"))
        s.flush()
        s.add_all([M.Meter(id="BM-%06d" % k, tenant_id=1) for k in range(meters)])
        s.commit()
    engine.dispose()


def stored_counts(url):
    """(rows in readings, open sequence gaps) as the database sees them after the run.

    First one more gap scan of the meters with open gaps, as the next scan of
    any running worker would do: with several workers a gap opened by one
    while another's batch holding the missing uplink was still uncommitted
    closes at the next scan, and the bench stops the workers right away.
    """
    import time as _time
    from sqlalchemy import text
    from headend.db import make_engine
    from headend.store import open_gaps, scan_gaps
    engine = make_engine(url)
    meters = sorted({m for m, _f, _l in open_gaps(engine)})
    if meters:
        scan_gaps(engine, meters, int(_time.time()))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT COUNT(*) FROM readings")).scalar()
        gaps = conn.execute(text("SELECT COUNT(*) FROM seq_gaps WHERE closed_at IS NULL")).scalar()
    engine.dispose()
    return rows, gaps


async def ingest_run(port, url, total, start_load, batch_max, batch_ms, client="fast",
                     tune_gc=True, scanner="auto"):
    """One in-process worker; precise marks (first receive, each commit) and lags from ``bt``.

    ``tune_gc``: the garbage-collector settings ``python -m headend.ingest`` uses
    (``headend.ingest.settle_gc``); off with ``--default-gc``.
    """
    from sqlalchemy import text
    from headend.db import make_engine
    from headend.ingest import IngestWorker, settle_gc
    tag = "urja-bench-%s" % uuid.uuid4().hex[:6]
    pg = url.startswith("postgresql")
    engine = make_engine(url + ("&" if "?" in url else "?") + "application_name=" + tag
                         if pg else url)
    lags = []
    marks = {"first": None, "last": None}

    def after_commit(result, bodies, committed):
        marks["last"] = time.perf_counter()
        for b in bodies:
            lags.append(committed - b["bt"] / 1e6)

    worker = IngestWorker(engine, "127.0.0.1", port, "ingest-bench", batch_max=batch_max,
                          batch_ms=batch_ms, gap_scan_s=5.0, after_commit=after_commit,
                          client=client, scanner=scanner)
    worker.connected = asyncio.Event()
    if tune_gc:
        settle_gc()
    if client == "fast":
        orig_fast = worker._on_messages

        def on_messages(*args):
            if marks["first"] is None:
                marks["first"] = time.perf_counter()
            return orig_fast(*args)
        worker._on_messages = on_messages
    else:
        orig = worker._on_message

        async def on_message(*args):
            if marks["first"] is None:
                marks["first"] = time.perf_counter()
            return await orig(*args)
        worker._on_message = on_message
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.run(stop))
    await worker.connected.wait()
    cpu0, broker0 = time.process_time(), proc_cpu_s(BROKER_PID["pid"])
    proc = start_load()
    while worker.counters.readings + worker.counters.duplicates < total:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    worker_cpu = time.process_time() - cpu0
    broker_cpu = proc_cpu_s(BROKER_PID["pid"]) - broker0
    db_cpu = None
    if pg:  # the database backends that served this worker (they live as long as the pool)
        with engine.connect() as conn:
            pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name "
                                     "= :tag"), {"tag": tag}).scalars().all()
        db_cpu = sum(proc_cpu_s(pid) or 0 for pid in pids)
    proc.wait()
    pub_cpu = publisher_cpu_s(proc)
    stop.set()
    await task
    engine.dispose()
    lags.sort()
    c = worker.counters
    us = lambda cpu: None if cpu is None else round(cpu / total * 1e6, 1)  # noqa: E731
    cpu = {"worker": us(worker_cpu), "database_backends": us(db_cpu),
           "broker": us(broker_cpu), "publisher": us(pub_cpu)}
    known = [v for v in cpu.values() if v is not None]
    cpu["sum"] = round(sum(known), 1)
    cpu["note"] = ("CPU microseconds per reading, from /proc and os.times (load-independent, "
                   "unlike the rates); database_backends excludes PostgreSQL's WAL writer "
                   "and checkpointer; 2 cores / sum = what these processes could do alone")
    cpu["two_core_ceiling_per_s"] = round(2e6 / cpu["sum"]) if cpu["sum"] else None
    return {"cpu_us_per_reading": cpu, "readings_committed": c.readings,
            "readings_committed_per_s": round(c.readings / (marks["last"] - marks["first"])),
            "drain_s": round(marks["last"] - marks["first"], 2),
            "duplicates": c.duplicates, "batches": c.batches,
            "mean_batch": round(c.received / max(1, c.batches)),
            "broker_dropped": c.broker_dropped,
            "lag_p50_ms": round(lags[len(lags) // 2] * 1000, 1),
            "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1),
            "lag_source": "bt (publisher clock, microseconds)"}


def ingest_run_workers(port, url, total, start_load, workers, batch_max, batch_ms,
                       client="fast", scanner="auto"):
    """N ``python -m headend.ingest`` processes in one shared group; counters from their JSON lines."""
    import threading
    procs, latest, first_seen = [], {}, {"t": None}
    lock = threading.Lock()
    subscribed = threading.Semaphore(0)

    def reader(i, proc):
        for line in proc.stdout:
            try:
                snap = json.loads(line)
            except ValueError:
                continue
            if "subscribed" in snap:
                subscribed.release()
                continue
            with lock:
                latest[i] = snap
                if first_seen["t"] is None and snap.get("received"):
                    first_seen["t"] = time.perf_counter()

    for i in range(workers):
        p = subprocess.Popen([sys.executable, "-m", "headend.ingest", "--port", str(port),
                              "--client-id", "ingest-bench-%d" % i, "--db", url,
                              "--batch-max", str(batch_max), "--batch-ms", str(batch_ms),
                              "--stats-s", "0.1", "--client", client,
                              "--scanner", scanner],
                             cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
        procs.append(p)
        threading.Thread(target=reader, args=(i, p), daemon=True).start()
    for _ in range(workers):
        if not subscribed.acquire(timeout=60):
            raise SystemExit("an ingest worker did not subscribe")
    load = start_load()
    done_at = None
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        time.sleep(0.02)
        with lock:
            n = sum(s["readings"] + s["duplicates"] for s in latest.values())
        if n >= total:
            done_at = time.perf_counter()
            break
    load.wait()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(60)
    time.sleep(0.2)
    snaps = list(latest.values())
    readings = sum(s["readings"] for s in snaps)
    received = sum(s["received"] for s in snaps)
    batches = sum(s["batches"] for s in snaps)
    drain = done_at - first_seen["t"]
    return {"readings_committed": readings,
            "readings_committed_per_s": round(readings / drain),
            "drain_s": round(drain, 2),
            "per_worker_received": [s["received"] for s in snaps],
            "duplicates": sum(s["duplicates"] for s in snaps), "batches": batches,
            "mean_batch": round(received / max(1, batches)),
            "broker_dropped": max(s["broker_dropped"] for s in snaps),
            "lag_p50_ms": max(s["lag_p50_ms"] or 0 for s in snaps),
            "lag_p99_ms": max(s["lag_p99_ms"] or 0 for s in snaps),
            "lag_source": "t (whole seconds; worst worker), timing +-0.1 s"}


def measure_ingest(args, port, meters, total, load):
    url, cleanup = fresh_database(args.db)
    try:
        register_meters(url, meters)
        if args.workers == 1:
            out = asyncio.run(ingest_run(port, url, total, load, args.batch_max, args.batch_ms,
                                         args.client, not args.default_gc, args.scanner))
        else:
            out = ingest_run_workers(port, url, total, load, args.workers, args.batch_max,
                                     args.batch_ms, args.client, args.scanner)
        out["rows_in_db"], out["open_gaps"] = stored_counts(url)
    finally:
        cleanup()
    return out


BACKLOG_FLEET = 131000
DAY_READINGS = 96
STEADY_PER_METER = 240  # readings per meter of the steady case: see the module doc (run length)


def measure_once(args, broker, meters, per_meter, total):
    """One bare + ingest pair on a fresh ``broker``: that run's numbers (printed as they come)."""
    run = {}
    load = lambda: run_publisher(broker.port, meters, per_meter,  # noqa: E731
                                 args.connections, bool(args.backlog))
    clients = [c for c in args.bare_clients.split(",") if c]
    if "fast" in clients:
        rate, cpu = asyncio.run(bare_fast(broker.port, total, load))
        run["bare_fast_msgs_per_s"] = round(rate)
        run["bare_fast_cpu_us_per_msg"] = cpu
        print("bare fast:  %d msgs/s; CPU us per message: subscriber %s, broker %s, "
              "publisher %s; sum %s" % (run["bare_fast_msgs_per_s"], cpu["subscriber"],
                                        cpu["broker"], cpu["publisher"], cpu["sum"]),
              flush=True)
    if "gmqtt" in clients:
        run["bare_gmqtt_msgs_per_s"] = round(asyncio.run(bare_gmqtt(broker.port, total, load)))
        print("bare gmqtt: %d msgs/s" % run["bare_gmqtt_msgs_per_s"], flush=True)
    if "paho" in clients:
        run["bare_paho_msgs_per_s"] = round(bare_paho(broker.port, total, load))
        print("bare paho:  %d msgs/s" % run["bare_paho_msgs_per_s"], flush=True)
    if not args.bare_only:
        run.update(measure_ingest(args, broker.port, meters, total, load))
        run["lost"] = total - run["rows_in_db"]
        print("ingest (%d worker%s, %s): %d readings/s committed, drain %.1f s, lag p50 "
              "%s ms p99 %s ms, rows %d of %d published, lost %d, open gaps %d, broker "
              "dropped %d, mean batch %d"
              % (args.workers, "s" if args.workers > 1 else "", args.db.split(":")[0],
                 run["readings_committed_per_s"], run["drain_s"], run["lag_p50_ms"],
                 run["lag_p99_ms"], run["rows_in_db"], total, run["lost"],
                 run["open_gaps"], run["broker_dropped"], run["mean_batch"]), flush=True)
        cpu = run.get("cpu_us_per_reading")
        if cpu:
            print("CPU us per reading: worker %s, database backends %s, broker %s, "
                  "publisher %s; sum %s -> 2-core ceiling %s readings/s"
                  % (cpu["worker"], cpu["database_backends"], cpu["broker"],
                     cpu["publisher"], cpu["sum"], cpu["two_core_ceiling_per_s"]))
        bares = {c: run["bare_%s_msgs_per_s" % c] for c in ("fast", "gmqtt", "paho")
                 if "bare_%s_msgs_per_s" % c in run}
        if bares:
            # fairness: the bare side is the fastest subscriber measured in this run
            best = max(bares, key=bares.get)
            run["ratio_bare_client"] = best
            run["ratio"] = round(run["readings_committed_per_s"] / bares[best], 3)
            print("ratio=%.3f (over bare %s %d msgs/s)" % (run["ratio"], best, bares[best]))
        bare_cpu = run.get("bare_fast_cpu_us_per_msg")
        if cpu and bare_cpu and cpu["sum"]:
            # load-independent view of the same ratio: if both runs were CPU-bound on the
            # same cores, rates would go as 1 / (CPU per message) -- an estimate, not the
            # measured ratio above
            run["cpu_ratio_estimate"] = round(bare_cpu["sum"] / cpu["sum"], 3)
            print("cpu ratio estimate=%.3f (bare %s us / ingest %s us per message; "
                  "the target is on the measured ratio)"
                  % (run["cpu_ratio_estimate"], bare_cpu["sum"], cpu["sum"]))
        if args.backlog and meters * per_meter < BACKLOG_FLEET * DAY_READINGS:
            full = BACKLOG_FLEET * DAY_READINGS
            est = full / run["readings_committed_per_s"]
            run["extrapolation_131k"] = {
                "note": "EXTRAPOLATION, not measured: %d meters x %d readings = %d at the "
                        "drain rate measured above" % (BACKLOG_FLEET, DAY_READINGS, full),
                "readings": full, "drain_s": round(est), "drain_min": round(est / 60, 1)}
            print("extrapolation (not measured) to %d meters x %d = %d readings: %.0f s "
                  "(%.1f min) at %d readings/s" % (BACKLOG_FLEET, DAY_READINGS, full, est,
                                                   est / 60, run["readings_committed_per_s"]))
    return run


def summarise(runs):
    """One run: its numbers.  Several: the run with the median ratio, every run's headline
    figures, and the ratio's and rate's median, min and max (a shared machine's noise shows)."""
    if len(runs) == 1:
        return runs[0]
    with_ratio = sorted((r for r in runs if "ratio" in r), key=lambda r: r["ratio"])
    median = dict(with_ratio[len(with_ratio) // 2] if with_ratio else runs[0])
    keys = ("ratio", "readings_committed_per_s", "cpu_ratio_estimate", "lag_p99_ms", "lost")
    median["runs"] = [{k: r.get(k) for k in keys} for r in runs]
    for key in ("ratio", "readings_committed_per_s"):
        values = sorted(r[key] for r in runs if key in r)
        if values:
            median[key + "_median"] = values[len(values) // 2]
            median[key + "_min"], median[key + "_max"] = values[0], values[-1]
    if "ratio_median" in median:
        print("over %d runs: ratio median %.3f (min %.3f, max %.3f); readings/s median %d "
              "(min %d, max %d); lost %s" % (
                  len(runs), median["ratio_median"], median["ratio_min"], median["ratio_max"],
                  median["readings_committed_per_s_median"],
                  median["readings_committed_per_s_min"],
                  median["readings_committed_per_s_max"],
                  sum(r.get("lost", 0) for r in runs)))
    return median


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--per-meter", type=int, default=None,
                   help="readings per meter (default %d; 96 with --backlog)" % STEADY_PER_METER)
    p.add_argument("--connections", type=int, default=4, help="publisher connections")
    p.add_argument("--db", default="postgresql", help="sqlite, postgresql or a URL")
    p.add_argument("--workers", type=int, default=1, help="ingest processes (one shared group)")
    p.add_argument("--backlog", type=int, metavar="METERS", default=0,
                   help="reconnect storm: METERS meters flush --per-meter readings each")
    p.add_argument("--batch-max", type=int, default=5000)
    p.add_argument("--batch-ms", type=int, default=50)
    p.add_argument("--bare-clients", default="fast,gmqtt",
                   help="bare subscribers to measure (fast, gmqtt, paho); the ratio uses the "
                        "fastest of them")
    p.add_argument("--client", default="fast", choices=("fast", "gmqtt"),
                   help="the ingest worker's MQTT client")
    p.add_argument("--scanner", default="auto", choices=("auto", "c", "python"),
                   help="the fast client's reader: c (reading uplinks decoded in C), python "
                        "(the reference path), auto (c when built)")
    p.add_argument("--default-gc", action="store_true",
                   help="1 worker: keep Python's GC defaults instead of headend.ingest.settle_gc")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the bare + ingest pair N times (a fresh broker each); the JSON "
                        "keeps the run with the median ratio and every run's ratio and rate")
    p.add_argument("--bare-only", action="store_true")
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    per_meter = args.per_meter or (DAY_READINGS if args.backlog else STEADY_PER_METER)
    meters = args.backlog or args.meters
    if args.publisher:
        asyncio.run(_publish(args.port, meters, per_meter, args.connections,
                             uuid.uuid4().hex[:6], backlog=bool(args.backlog)))
        return
    total = meters * per_meter
    out = {"meters": meters, "per_meter": per_meter, "messages": total,
           "connections": args.connections, "cpus": os.cpu_count(), "db": args.db.split(":")[0],
           "workers": args.workers, "batch_max": args.batch_max, "batch_ms": args.batch_ms,
           "decoder": ("headend.fastdecode (cbor2, reference fallback)"
                       if args.scanner == "python" or args.client != "fast"
                       or not fastscan.available() else
                       "headend.fastscan (C scanner, then fastdecode, reference fallback)"),
           "ingest_client": args.client,
           "gc": ("python defaults" if args.default_gc and args.workers == 1
                  else "headend.ingest.settle_gc"),
           "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    if args.backlog:
        out["case"] = "backlog: %d meters x %d readings after a day offline" % (meters, per_meter)
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print("--- run %d of %d" % (i + 1, args.repeat), flush=True)
        # a fresh broker per run: the ingest worker's persistent session would otherwise
        # collect the next run's bare-phase messages and replay them into its ingest phase
        broker = Mosquitto()
        BROKER_PID["pid"] = broker.proc.pid
        try:
            runs.append(measure_once(args, broker, meters, per_meter, total))
        finally:
            broker.stop()
    out.update(summarise(runs))
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_json:
        result = RESULT.with_name("headend_ingest_backlog.json") if args.backlog else RESULT
        result.parent.mkdir(exist_ok=True)
        result.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
