"""Benchmark: many real firmware DUTs (``micropython`` on the unix board) on one Mosquitto.

Boots ``--count`` meter processes (``hil_tests.dut.UnixDut``, meter time 300x
wall) against a private Mosquitto.  Each DUT's load is a simulated consumer:
a seeded random load (0.3..3 kW) turned into pulses on its control socket
once a tick (every DUT, then 0.5 s rest; a tick is 150 s of meter time) (1000 imp/kWh, so 1 pulse = 1 Wh).  Halfway through, every meter
gets a signed top-up command over MQTT.  Then the load stops and the run
checks, per DUT, on the wire (one paho subscriber decoding every uplink with
``firmware.protocol.messages``) and on its CLI:

- every Wh injected arrives in the interval readings, once (sum of interval
  energies == pulses injected), uplink sequence numbers without gap or
  duplicate;
- the top-up is acked OK and the balance is 2000 opening + top-up - energy
  (flat 1 paise/Wh) to the paisa;
- peak resident memory of its process (``VmHWM``/``VmRSS`` in /proc/<pid>/status).

Prints wall times and per-DUT results; writes ``bench/results/hil_scale.json``.

    python bench/hil_scale.py [--count 50] [--seconds 20]
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.core import auth  # noqa: E402
from firmware.protocol import messages  # noqa: E402
from tools.mosquitto import Broker  # noqa: E402
from hil_tests import dut as dut_mod  # noqa: E402

OPENING = 2000
TOPUP = 50000
TICK_S = 0.5


class Wire:
    """One paho client on ``urja/v1/+/up/#``: every uplink decoded, per meter."""

    def __init__(self, host, port):
        import paho.mqtt.client as mqtt

        self.by_meter = {}
        self.errors = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-scale",
                                  clean_session=False)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("the wire subscriber could not connect")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe("urja/v1/+/up/#", qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        meter = msg.topic.split("/")[2]
        try:
            body = messages.decode_uplink(msg.topic, msg.payload)
        except Exception as e:  # a body that breaks docs/protocol.md counts as a failure
            with self.lock:
                self.errors.append("%s: %s" % (msg.topic, e))
            return
        with self.lock:
            self.by_meter.setdefault(meter, []).append(body)

    def of(self, meter, kind=None):
        with self.lock:
            return [b for b in self.by_meter.get(meter, []) if kind is None or b["kind"] == kind]

    def publish(self, topic, payload):
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def vm_kib(pid, field):
    """``VmRSS``/``VmHWM`` of a process in KiB, from /proc/<pid>/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _wait(pred, timeout_s, step_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


def run(count=50, seconds=20.0, log_dir=None, seed=1):
    """Run the fleet; returns the result dict (``ok`` true when every DUT passed)."""
    t_total = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="urja-scale-")
    log_dir = log_dir or os.path.join(workdir, "logs")
    broker = Broker(os.path.join(workdir, "mosq"))
    broker.start()
    wire = Wire(*broker)
    rng = random.Random(seed)
    ids = ["UJ-SCALE-%04d" % i for i in range(1, count + 1)]
    duts = [dut_mod.UnixDut(
        m, log_dir, time_factor=300,
        settings=dut_mod.factory_settings(m, tuple(broker), pulse_constant=1000,
                                          energy_source="pulses", heartbeat_s=3600,
                                          opening_credit_paise=OPENING)) for m in ids]
    watts = {m: rng.randrange(300, 3001) for m in ids}  # the simulated consumers
    injected = dict.fromkeys(ids, 0)
    carry = dict.fromkeys(ids, 0)  # sub-Wh remainder, in milli-Wh
    try:
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as ex:
            list(ex.map(lambda d: d.start(), duts))
        boot_s = time.monotonic() - t0
        _wait(lambda: all(d.console.text.count("mqtt connected") for d in duts), 60)
        rss_boot = {d.name: vm_kib(d.proc.pid, "VmRSS") for d in duts}

        # the load: meter-time energy per tick = W x (TICK_S x 300) s / 3600 -> mWh
        t_load = time.monotonic()
        topped = False
        def load_tick(d):  # one DUT's control-socket round trip
            mwh = watts[d.name] * int(TICK_S * 300) * 1000 // 3600 + carry[d.name]
            wh, carry[d.name] = divmod(mwh, 1000)
            if wh and d.control("pulses %d" % wh).startswith("ok"):
                injected[d.name] += wh

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
        ticks = 0
        while time.monotonic() - t_load < seconds:
            list(pool.map(load_tick, duts))
            ticks += 1
            if not topped and time.monotonic() - t_load >= seconds / 2:
                for i, m in enumerate(ids):
                    cmd = auth.make_topup(bytes.fromhex(dut_mod.KEY_HEX), m, 1,
                                          dut_mod.START_T + 30 * 86400, "T-%d" % i, TOPUP)
                    wire.publish(messages.command_topic(m), messages.encode_command(cmd))
                topped = True
            time.sleep(TICK_S)
        load_s = time.monotonic() - t_load
        pool.shutdown()

        def delivered(m):
            return sum(r[1] for b in wire.of(m, "reading") for r in b["r"])

        t_drain = time.monotonic()
        _wait(lambda: all(delivered(m) >= injected[m] for m in ids), 60)
        drain_s = time.monotonic() - t_drain
        results = []
        for d in duts:
            m = d.name
            seqs = sorted(b["s"] for b in wire.of(m))
            acks = [b for b in wire.of(m, "ack") if b["r"] == 0]
            bal = int(d.command("balance")["balance_paise"])
            expect_bal = OPENING + TOPUP - injected[m]  # 1 paise per Wh
            res = {"meter": m, "load_w": watts[m], "injected_wh": injected[m],
                   "delivered_wh": delivered(m), "uplinks": len(seqs),
                   "seq_ok": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False,
                   "topup_acked": len(acks) == 1, "balance_paise": bal,
                   "expected_balance_paise": expect_bal,
                   "rss_boot_kib": rss_boot[m], "rss_kib": vm_kib(d.proc.pid, "VmRSS"),
                   "hwm_kib": vm_kib(d.proc.pid, "VmHWM"), "alive": d.alive}
            res["ok"] = (res["delivered_wh"] == res["injected_wh"] and res["seq_ok"]
                         and res["topup_acked"] and bal == expect_bal and d.alive)
            results.append(res)
        rss = [r["rss_kib"] for r in results]
        summary = {"count": count, "load_seconds": round(load_s, 2), "load_ticks": ticks, "boot_s": round(boot_s, 2),
                   "drain_s": round(drain_s, 2), "wall_s": round(time.monotonic() - t_total, 2),
                   "time_factor": 300, "rss_kib_mean": sum(rss) // len(rss),
                   "rss_kib_max": max(rss), "hwm_kib_max": max(r["hwm_kib"] for r in results),
                   "passed": sum(r["ok"] for r in results), "decode_errors": len(wire.errors),
                   "ok": all(r["ok"] for r in results) and not wire.errors,
                   "cpu_count": os.cpu_count(), "duts": results}
        return summary
    finally:
        for d in duts:
            d.close()
        wire.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hil_scale.json"))
    args = ap.parse_args()
    res = run(args.count, args.seconds)
    print("%-14s %6s %9s %9s %5s %6s %8s %8s %s" % (
        "meter", "load_w", "inj_wh", "deliv_wh", "seqok", "acked", "bal", "rss_kib", "ok"))
    for r in res["duts"]:
        print("%-14s %6d %9d %9d %5s %6s %8d %8d %s" % (
            r["meter"], r["load_w"], r["injected_wh"], r["delivered_wh"], r["seq_ok"],
            r["topup_acked"], r["balance_paise"], r["rss_kib"], "ok" if r["ok"] else "FAIL"))
    print("%d DUTs: boot %.1f s, load %.1f s (%d ticks), drain %.1f s, wall %.1f s; RSS mean %d KiB, "
          "max %d KiB (peak %d KiB); %d/%d passed, %d decode errors"
          % (res["count"], res["boot_s"], res["load_seconds"], res["load_ticks"], res["drain_s"], res["wall_s"],
             res["rss_kib_mean"], res["rss_kib_max"], res["hwm_kib_max"], res["passed"],
             res["count"], res["decode_errors"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
