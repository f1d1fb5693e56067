"""Benchmark: top-up latency, payment webhook -> command APPLIED, for online meters.

One private Mosquitto on loopback, a fresh database (PostgreSQL by default),
the real ``headend.dispatcher.Dispatcher`` running its loop (``run``, the
production ``--interval-s`` 0.2 unless told) in a thread, and METERS meter
peers: each a real ``firmware.core.meter.Meter`` behind a paho MQTT 3.1.1
client that behaves like the meter's shell (persistent session, QoS 1
``urja/v1/<meter>/cmd``; ``apply_command``, then an ``ack`` uplink).

Each top-up is a signed gateway callback handed to
``payments.handle_payment_webhook`` (the function ``POST /payments/webhook``
mounts; HTTP parsing is not in the measurement) at a steady rate spread over
the meters.  Marks per top-up:

- ``applied_on_meter``: the peer's ``apply_command`` returned OK;
- ``applied``: the command row is APPLIED in the database (a watcher polls
  every 10 ms, so this mark is late by 0-10 ms).

Also checks that every meter's credit rose by exactly the paise paid to it.
Target (issue 6): p99 webhook -> APPLIED <= 5 s for an online meter.

    python bench/topup_latency.py [--topups 200] [--meters 20] [--rate 10] [--db sqlite]
"""
import argparse
import hashlib
import json
import os
import pathlib
import random
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import paho.mqtt.client as paho  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig  # noqa: E402
from firmware.protocol import messages  # noqa: E402
from headend import commands as C  # noqa: E402
from headend import ledger as L  # noqa: E402
from headend import models as M  # noqa: E402
from headend import payments as P  # noqa: E402
from headend import tokens  # noqa: E402,F401 - registers its tables
from headend.db import Base, make_engine  # noqa: E402
from headend.dispatcher import Dispatcher  # noqa: E402
from headend_ingest import Mosquitto, fresh_database  # noqa: E402

RESULT = ROOT / "bench" / "results" / "topup_latency.json"
MASTER = bytes(range(100, 132))
SECRETS = {"upi-gw": b"bench-secret"}
OPENING_PAISE = 10000
TARGET_P99_S = 5.0


def meter_key(meter_id):
    return hashlib.sha256(b"bench-key:" + meter_id.encode()).digest()


class MeterPeer:
    """A firmware Meter reachable over MQTT the way the device is (real clock)."""

    def __init__(self, port, meter_id, on_applied):
        cfg = dict(EXAMPLE_CONFIG, meter_id=meter_id, key_hex=meter_key(meter_id).hex())
        self.meter = Meter(MeterConfig.from_dict(cfg), now=int(time.time()),
                           opening_credit_paise=OPENING_PAISE)
        self.meter_id, self.port, self.on_applied = meter_id, port, on_applied
        self.seq = 0
        self.results = []
        self.lock = threading.Lock()
        self.client = None

    def _on_message(self, client, userdata, msg):
        cmd = messages.decode_command(msg.payload)
        now = int(time.time())
        with self.lock:
            result, detail = self.meter.apply_command(cmd, now)
            name = C.RESULT_NAMES[result]
            self.results.append((cmd["id"], name))
            self.seq += 1
            body = messages.encode_uplink("ack", self.meter_id, self.seq, now,
                                          {"id": cmd["id"], "c": cmd["counter"], "r": result,
                                           "rn": name, "d": detail})
        self.on_applied(cmd["id"], name, time.perf_counter())
        client.publish(messages.topic(self.meter_id, "ack"), body, qos=1)

    def connect(self):
        subscribed = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.meter_id,
                        clean_session=False, protocol=paho.MQTTv311)
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe(messages.command_topic(self.meter_id), qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", self.port, keepalive=60)
        c.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("meter peer %s not subscribed" % self.meter_id)
        self.client = c

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def credit_paise(self):
        with self.lock:
            return self.meter.status()["credit_paise"]


def pay(engine, meter_id, amount, txn):
    raw = json.dumps({"amount_paise": amount, "payer_vpa": "bench@upi", "txn_ref": txn,
                      "meter_id": meter_id, "gateway": "upi-gw", "delivery": "mqtt"}).encode()
    with Session(engine) as s:
        status, out = P.handle_payment_webhook(
            s, raw, {P.SIGNATURE_HEADER: P.sign_body(SECRETS["upi-gw"], raw)},
            secrets=SECRETS, master_key=MASTER)
    if status != 201:
        raise SystemExit("webhook answered %d: %s" % (status, out))
    return out["receipt"]["topup"]["command_id"]


def percentile_s(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


def run(args):
    url, cleanup = fresh_database(args.db)
    broker = Mosquitto()
    engine = make_engine(url)
    peers, stop = [], threading.Event()
    try:
        Base.metadata.create_all(engine)  # tables not yet in a migration, if any
        ids = ["TL-%04d" % k for k in range(args.meters)]
        with Session(engine) as s:
            tenant = M.Tenant(code="TL", name="bench")
            s.add(tenant)
            s.flush()
            s.add_all([M.Meter(id=m, tenant_id=tenant.id) for m in ids])
            s.flush()
            s.add_all([M.MeterKey.seal(MASTER, m, meter_key(m)) for m in ids])
            s.commit()
        marks = {}   # command id -> {"webhook": t, "meter": t, "applied": t}
        marks_lock = threading.Lock()

        def on_applied(command_id, name, t):
            with marks_lock:
                if name == "OK" and command_id in marks:
                    marks[command_id].setdefault("meter", t)

        for m in ids:
            peer = MeterPeer(broker.port, m, on_applied)
            peer.connect()
            peers.append(peer)
        dispatcher = Dispatcher(engine, "127.0.0.1", broker.port, MASTER,
                                client_id="bench-dispatcher").start()
        loop = threading.Thread(target=dispatcher.run, args=(stop, args.interval_s), daemon=True)
        loop.start()

        def watcher():
            while not stop.is_set():
                with marks_lock:
                    open_ids = [c for c, mk in marks.items() if "applied" not in mk]
                if open_ids:
                    with Session(engine) as s:
                        done = s.scalars(select(C.Command.id).where(
                            C.Command.id.in_(open_ids), C.Command.state == C.APPLIED)).all()
                    t = time.perf_counter()
                    with marks_lock:
                        for c in done:
                            marks[c]["applied"] = t
                time.sleep(0.01)
        watch = threading.Thread(target=watcher, daemon=True)
        watch.start()

        rnd = random.Random(6)
        paid = {m: 0 for m in ids}
        start = time.perf_counter()
        for n in range(args.topups):
            due = start + n / args.rate
            time.sleep(max(0.0, due - time.perf_counter()))
            meter_id = ids[n % len(ids)]
            amount = rnd.randrange(1000, 100001)  # Rs 10 .. Rs 1000, in paise
            t = time.perf_counter()
            command_id = pay(engine, meter_id, amount, "BENCH-%d" % n)
            with marks_lock:
                marks[command_id] = dict(marks.get(command_id, {}), webhook=t)
            paid[meter_id] += amount
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with marks_lock:
                if all("applied" in mk for mk in marks.values()):
                    break
            time.sleep(0.05)
        stop.set()
        loop.join(10)
        watch.join(2)
        dispatcher.stop()
        with marks_lock:
            applied = [mk["applied"] - mk["webhook"] for mk in marks.values() if "applied" in mk]
            on_meter = [mk["meter"] - mk["webhook"] for mk in marks.values() if "meter" in mk]
        credit_ok = all(p.credit_paise() == OPENING_PAISE + paid[p.meter_id] for p in peers)
        not_ok = sum(1 for p in peers for _, name in p.results if name != "OK")
        with Session(engine) as s:
            states = dict(s.execute(select(C.Command.state, func.count())
                                    .group_by(C.Command.state)).all())
        return {
            "topups": args.topups, "meters": args.meters, "rate_per_s": args.rate,
            "dispatcher_interval_s": args.interval_s, "db": args.db.split(":")[0],
            "cpus": os.cpu_count(),
            "applied": len(applied), "applied_on_meter": len(on_meter),
            "non_ok_results_on_meters": not_ok,
            "credit_matches_payments_on_every_meter": credit_ok,
            "webhook_to_meter_applied_p50_ms": round(percentile_s(on_meter, 50) * 1000, 1),
            "webhook_to_meter_applied_p99_ms": round(percentile_s(on_meter, 99) * 1000, 1),
            "webhook_to_APPLIED_p50_ms": round(percentile_s(applied, 50) * 1000, 1),
            "webhook_to_APPLIED_p99_ms": round(percentile_s(applied, 99) * 1000, 1),
            "webhook_to_APPLIED_max_ms": round(max(applied) * 1000, 1),
            "APPLIED_mark_resolution_ms": 10,
            "target_p99_ms": int(TARGET_P99_S * 1000),
            "states": states,
        }
    finally:
        stop.set()
        for p in peers:
            try:
                p.stop()
            except Exception:
                pass
        engine.dispose()
        broker.stop()
        cleanup()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topups", type=int, default=200)
    p.add_argument("--meters", type=int, default=20)
    p.add_argument("--rate", type=float, default=10.0, help="webhooks per second")
    p.add_argument("--interval-s", type=float, default=0.2, help="dispatcher loop interval")
    p.add_argument("--db", default="postgresql", help="sqlite, postgresql or a URL")
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args()
    out = run(args)
    print("top-ups: %(applied)d of %(topups)d APPLIED (%(meters)d meters, %(rate_per_s)s/s, "
          "%(db)s); credit matches payments: %(credit_matches_payments_on_every_meter)s" % out)
    print("webhook -> meter applied: p50 %(webhook_to_meter_applied_p50_ms)s ms, "
          "p99 %(webhook_to_meter_applied_p99_ms)s ms" % out)
    print("webhook -> APPLIED:       p50 %(webhook_to_APPLIED_p50_ms)s ms, "
          "p99 %(webhook_to_APPLIED_p99_ms)s ms, max %(webhook_to_APPLIED_max_ms)s ms "
          "(target p99 <= %(target_p99_ms)d ms)" % out)
    if not args.no_json:
        RESULT.parent.mkdir(exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
