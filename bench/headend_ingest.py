"""Benchmark: head-end ingest throughput and lag against the bare broker rate.

One run, one machine, one private Mosquitto on loopback:

1. bare: the publishers send every reading; a gmqtt subscriber (optimistic
   QoS 1 acks) discards them.  Also a paho-mqtt subscriber, to choose the
   client for the hot path (``--bare-clients``).
2. ingest: the same publishers, the same readings, into ``headend.ingest``
   (decode with firmware.protocol.messages, dedupe, batched commit, PUBACK
   after commit) on PostgreSQL (default) or SQLite.

Readings committed per second = stored readings / (last commit - first
receive); lag = commit time - the moment the publisher created the message
(an extra ``bt`` key in microseconds, ignored by the schema).  It prints
``ratio=`` (committed readings/s over the bare gmqtt rate) and writes
``bench/results/headend_ingest.json``.  Each reading uplink carries one
15-minute record, so readings/s = messages/s.

Targets (issue 6), broker + load generator + database on the same 2 cores:
>= 30000 readings/s committed with dedupe, ratio >= 0.7.

    python bench/headend_ingest.py [--meters 1000] [--per-meter 60] [--db sqlite|postgresql|URL]
    python bench/headend_ingest.py --bare-only          # client choice only
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
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

async def _publish(port, meters, per_meter, connections, run_id):
    """Round-robin over meters: interval i of every meter, then i+1 (as a fleet does)."""
    clients = []
    for c in range(connections):
        cl = gmqtt.Client("gen-%s-%d" % (run_id, c))
        await cl.connect("127.0.0.1", port, version=MQTTv311)
        clients.append(cl)
    ids = ["BM-%06d" % k for k in range(meters)]
    n = 0
    for i in range(per_meter):
        for k, mid in enumerate(ids):
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


def run_publisher(port, meters, per_meter, connections):
    return subprocess.Popen([sys.executable, __file__, "--publisher", "--port", str(port),
                             "--meters", str(meters), "--per-meter", str(per_meter),
                             "--connections", str(connections)])


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


async def ingest_run(port, url, meters, total, start_load, batch_max, batch_ms):
    from sqlalchemy.orm import Session
    from headend import models as M
    from headend.db import make_engine
    from headend.ingest import IngestWorker
    engine = make_engine(url)
    with Session(engine) as s:
        s.add(M.Tenant(id=1, code="B", name="bench"))
        s.flush()
        s.add_all([M.Meter(id="BM-%06d" % k, tenant_id=1) for k in range(meters)])
        s.commit()
    lags = []
    marks = {"first": None, "last": None}

    def after_commit(result, bodies, committed):
        marks["last"] = time.perf_counter()
        for b in bodies:
            lags.append(committed - b["bt"] / 1e6)

    worker = IngestWorker(engine, "127.0.0.1", port, "ingest-bench", batch_max=batch_max,
                          batch_ms=batch_ms, gap_scan_s=5.0, after_commit=after_commit)
    worker.connected = asyncio.Event()
    orig = worker._on_message

    async def on_message(*args):
        if marks["first"] is None:
            marks["first"] = time.perf_counter()
        return await orig(*args)
    worker._on_message = on_message
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.run(stop))
    await worker.connected.wait()
    proc = start_load()
    while worker.counters.readings + worker.counters.duplicates < total:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    proc.wait()
    stop.set()
    await task
    from sqlalchemy import text
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT COUNT(*) FROM readings")).scalar()
    engine.dispose()
    lags.sort()
    c = worker.counters
    return {"readings_committed_per_s": round(c.readings / (marks["last"] - marks["first"])),
            "rows_in_db": rows, "duplicates": c.duplicates, "batches": c.batches,
            "mean_batch": round(c.received / max(1, c.batches)),
            "lag_p50_ms": round(lags[len(lags) // 2] * 1000, 1),
            "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--per-meter", type=int, default=60, help="readings per meter")
    p.add_argument("--connections", type=int, default=4, help="publisher connections")
    p.add_argument("--db", default="postgresql", help="sqlite, postgresql or a URL")
    p.add_argument("--batch-max", type=int, default=5000)
    p.add_argument("--batch-ms", type=int, default=50)
    p.add_argument("--bare-clients", default="gmqtt,paho")
    p.add_argument("--bare-only", action="store_true")
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publisher:
        asyncio.run(_publish(args.port, args.meters, args.per_meter, args.connections,
                             uuid.uuid4().hex[:6]))
        return
    total = args.meters * args.per_meter
    out = {"meters": args.meters, "per_meter": args.per_meter, "messages": total,
           "connections": args.connections, "cpus": os.cpu_count(), "db": args.db.split(":")[0],
           "batch_max": args.batch_max, "batch_ms": args.batch_ms}
    broker = Mosquitto()
    try:
        load = lambda: run_publisher(broker.port, args.meters, args.per_meter,  # noqa: E731
                                     args.connections)
        clients = args.bare_clients.split(",")
        if "gmqtt" in clients:
            out["bare_gmqtt_msgs_per_s"] = round(asyncio.run(bare_gmqtt(broker.port, total, load)))
            print("bare gmqtt: %d msgs/s" % out["bare_gmqtt_msgs_per_s"], flush=True)
        if "paho" in clients:
            out["bare_paho_msgs_per_s"] = round(bare_paho(broker.port, total, load))
            print("bare paho:  %d msgs/s" % out["bare_paho_msgs_per_s"], flush=True)
        if not args.bare_only:
            url, cleanup = fresh_database(args.db)
            try:
                out.update(asyncio.run(ingest_run(broker.port, url, args.meters, total, load,
                                                  args.batch_max, args.batch_ms)))
            finally:
                cleanup()
            bare = out.get("bare_gmqtt_msgs_per_s") or out.get("bare_paho_msgs_per_s")
            out["ratio"] = round(out["readings_committed_per_s"] / bare, 3)
            print("ingest: %(readings_committed_per_s)d readings/s committed, lag p50 "
                  "%(lag_p50_ms)s ms p99 %(lag_p99_ms)s ms, rows %(rows_in_db)d, "
                  "mean batch %(mean_batch)d" % out)
            print("ratio=%.3f" % out["ratio"])
    finally:
        broker.stop()
    if not args.no_json:
        RESULT.parent.mkdir(exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
