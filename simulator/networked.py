"""Networked mode: the fleet speaks MQTT/CBOR to a real Mosquitto and the real head-end.

What is real and what is simulated:

- every meter is the real firmware ``Meter`` (same consumers, load
  profiles, payment habits, theft and feeder outages as fast mode: this is
  ``fleet.FeederRun`` with the in-process ledger swapped for the network);
- every meter's uplinks go through the real ``firmware.app.uplink.Uplink``
  into its own real ``Outbox`` (flash in RAM, rebuilt from those bytes after
  a power cut) and out on the real topics as the real CBOR bodies;
- connections: ONE MQTT 3.1.1 connection per feeder (``net_link``), e.g.
  2 connections for 100 meters in 2 feeders, plus the head-end's 2 (gmqtt
  ingest worker, paho dispatcher).  Meters are multiplexed, not one socket
  each: see ``net_link`` for what that leaves out;
- the head-end is the real ``headend.ingest.IngestWorker`` and
  ``headend.dispatcher.Dispatcher`` on a real database (SQLite or
  PostgreSQL); payments enter through the real signed webhook; top-ups reach
  the meters as signed commands over MQTT and their acks come back;
- time is accelerated: a ``simpy.rt.RealtimeEnvironment`` runs
  ``acceleration`` simulated seconds per wall second, and the head-end's
  threads read the same clock.  ``strict`` is off: when the machine cannot
  keep up, simulated time stretches instead of failing.

Faults (scenario ``[networked]`` table, times in hours after the start):
feeder power cuts (fast mode's ``faults.outages``: meters journal, lose
their link, reboot from flash), ``partitions`` (a feeder's connection is cut
and no reconnect is allowed for the period), ``broker_outages`` (Mosquitto
stopped with SIGTERM and started again on the same port),
``headend_restarts`` (ingest and dispatcher stopped, started again with the
same client ids) and ``ingest_losses`` (the ingest stopped and its broker
session discarded: what meters publish meanwhile is PUBACKed and reaches
nobody, as when a broker restart forgets a shared subscription).

Sequence gaps such losses leave are closed the way the product closes them:
the ingest queues a ``backfill`` downlink for a gap still open
``backfill_grace_s`` (simulated s, default the ingest's 300; -1: never) after
it saw it, and each simulated meter answers with the firmware app's own code
(``net_link``: the app's ``uplink.queue_backfill`` over the outbox's history).  A gap older than
the meter's outbox still holds ends unrecoverable (``data_lost`` alert).

Memory per meter: the outbox flash in RAM, ``outbox_segments`` x
``outbox_segment_bytes`` (default 8 x 4096 = 32 KiB, the firmware's ESP32
outbox partition), which is also all the history a meter can backfill from
(released records stay until the ring reuses their segment); a smaller shape
saves RAM for big fleets and shortens that window.  The answer itself keeps
at most ``MAX_BACKFILLS`` small ranges per meter.

KPIs come from the head-end's database, checked against the meters' ground
truth: interval readings lost / duplicated / altered, uplinks lost, sequence
gaps (open, closed by backfill, unrecoverable), reconciliation with
``headend/reconcile.py`` (0 paise), wrongful disconnections from the
RELAY_OPENED events stored (0), top-ups applied.

>>> sc, plan = load("simulator/scenarios/partition_net.toml", meters=20)   # doctest: +SKIP
>>> result = run(sc, plan, make_engine(url), broker)                      # doctest: +SKIP
>>> result["readings"]["lost"], result["reconciliation"]["abs_difference_paise"]   # doctest: +SKIP
(0, 0)
"""
import queue
import time

import simpy.rt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firmware.app.uplink import Uplink, records_end_cum
from firmware.core import auth, events
from firmware.core.meter import RESULT_NAMES, backfill_range
from firmware.core.outbox import Outbox, RamSegments, RamSlots
from firmware.protocol import messages
from headend import commands as C
from headend import models as M
from headend import reconcile as R
from headend.ingest import DEFAULT_BACKFILL_GRACE_S
from simulator import fleet, kpis, payments, scenario
from simulator.net_headend import HeadEnd
from simulator.net_link import FeederLink, MeterPort, drain
from simulator.scenario import ScenarioError

# The simulated board's outbox flash: 8 sectors of 4 KiB (the ESP32 partition the
# firmware uses is the same shape), at most 1024 messages (firmware default).
OUTBOX_SEGMENTS = 8
OUTBOX_SEGMENT_BYTES = 4096
OUTBOX_MAX_MESSAGES = 1024


# --- scenario: the [networked] table -------------------------------------------------------

class NetPlan:
    """The ``[networked]`` table of a scenario: acceleration, pump period, network faults."""

    FIELDS = ("acceleration", "tick_s", "drain_timeout_s", "ingest_shared", "partitions",
              "broker_outages", "headend_restarts", "ingest_losses", "duts", "backfill_grace_s",
              "outbox_segments", "outbox_segment_bytes")

    def __init__(self, d, sc):
        scenario._table(d, "networked", self.FIELDS)
        self.acceleration = scenario._int(d, "acceleration", "networked", 8640, 1, 10 ** 6)
        self.tick_s = scenario._int(d, "tick_s", "networked", 60, 1, sc.interval_s)
        self.drain_timeout_s = scenario._int(d, "drain_timeout_s", "networked", 60, 1, 3600)
        # real micropython meters beside the simulated ones (simulator/dut_meters.py)
        self.duts = scenario._int(d, "duts", "networked", 0, 0, 1000)
        grace = scenario._int(d, "backfill_grace_s", "networked", DEFAULT_BACKFILL_GRACE_S, -1,
                              30 * 86400)
        self.backfill_grace_s = None if grace < 0 else grace  # -1: never ask (gaps stay open)
        # the meters' outbox flash (and so their backfill history); see the module docstring
        self.outbox_segments = scenario._int(d, "outbox_segments", "networked", OUTBOX_SEGMENTS,
                                             2, 64)
        self.outbox_segment_bytes = scenario._int(d, "outbox_segment_bytes", "networked",
                                                  OUTBOX_SEGMENT_BYTES, 512, 65536)
        self.ingest_shared = d.get("ingest_shared", True)
        if not isinstance(self.ingest_shared, bool):
            scenario._fail("networked.ingest_shared", "must be true or false")
        self.partitions = [(p["feeder"], s, m) for p, s, m in
                           self._windows(d, "partitions", sc, ("feeder",))]
        for i, (f, _s, _m) in enumerate(self.partitions):
            if f >= sc.feeders:
                scenario._fail("networked.partitions[%d].feeder" % i,
                               "feeder %d does not exist (the fleet has %d)" % (f, sc.feeders))
        self.broker_outages = [(s, m) for _p, s, m in self._windows(d, "broker_outages", sc, ())]
        self.headend_restarts = [(s, m) for _p, s, m in
                                 self._windows(d, "headend_restarts", sc, ())]
        self.ingest_losses = [(s, m) for _p, s, m in self._windows(d, "ingest_losses", sc, ())]
        self.hours = None  # run only the first N hours (benchmarks); None: the whole scenario

    def fit(self, sc):
        """After ``--meters`` / ``--days``: drop faults on feeders or hours that no longer exist."""
        end = sc.days * 86400
        self.partitions = [p for p in self.partitions if p[0] < sc.feeders and p[1] + p[2] < end]
        self.broker_outages = [w for w in self.broker_outages if w[0] + w[1] < end]
        self.headend_restarts = [w for w in self.headend_restarts if w[0] + w[1] < end]
        self.ingest_losses = [w for w in self.ingest_losses if w[0] + w[1] < end]

    @staticmethod
    def _windows(d, key, sc, extra):
        out = []
        for w, where, start_s, duration_s in scenario._windows(d, key, "networked", extra):
            if start_s + duration_s >= sc.days * 86400:
                scenario._fail(where, "must end before the run ends (day %d)" % sc.days)
            if "feeder" in extra:
                scenario._int(w, "feeder", where, None, 0)
            out.append((w, start_s, duration_s))
        return out


def load(path, meters=None, days=None, seed=None):
    """A scenario file plus its ``[networked]`` table: ``(Scenario, NetPlan)``."""
    data, name = scenario.read(path)
    net = data.pop("networked", {})
    try:
        sc = scenario.Scenario(data, name)
        plan = NetPlan(net, sc)
        sc.override(meters, days, seed)
        plan.fit(sc)
    except ScenarioError as err:
        raise ScenarioError("%s: %s" % (path, err))
    return sc, plan


# --- one meter's uplink side (replaces fast mode's in-process ledger) ------------------

class NetUplink:
    """A meter's flash outbox and ``Uplink``, fed the way the firmware shell feeds them.

    Mirrors ``firmware/app/main.py``: after every step, the interval records
    in one reading message (``Uplink.readings``), every snapshot, then the
    pending events and a status (``App._report``).  Keeps the ground truth
    (every interval record the meter produced) for the loss check.
    """

    __slots__ = ("meter_id", "unit", "segments", "slots", "outbox", "uplink", "port", "link",
                 "produced", "interval_s")

    def __init__(self, meter_id, unit, interval_s, segments=OUTBOX_SEGMENTS,
                 segment_bytes=OUTBOX_SEGMENT_BYTES):
        self.meter_id = meter_id
        self.unit = unit
        self.interval_s = interval_s
        self.segments = RamSegments(segments, segment_bytes)
        self.slots = RamSlots()
        self.link = None
        self.port = None
        self.produced = {}  # interval start -> (energy, span_s, flags)
        self.boot()

    def boot(self):
        """(Re)build the outbox from its flash, as the firmware does at boot."""
        self.outbox = Outbox(self.segments, self.slots, max_messages=OUTBOX_MAX_MESSAGES)
        self.uplink = Uplink(self.outbox, self.meter_id, self.unit)
        if self.port is not None:
            self.port.outbox = self.outbox
            self.port.reset(reboot=True)

    def deliver(self, records, now, meter):
        """``Meter.step`` output -> reading / snapshot messages, then events and a status."""
        rows = [r for kind, r in records if kind == "interval"]
        for r in rows:
            self.produced[r[0]] = (r[2], r[1], r[6])
        if rows:
            self.uplink.readings(now, self.interval_s, records_end_cum(meter), rows)
        for kind, snap in records:
            if kind != "interval":
                self.uplink.snapshot(now, snap)
        self.report(now, meter, status=True)

    def report(self, now, meter, status):
        while self.uplink.events(now, meter.log):
            pass
        if status:
            self.uplink.status(now, meter)
        if self.link is not None:
            self.link.mark(self.meter_id)

    def read_events(self, meter):  # fast mode's finish() hook; events go out with each report
        pass


# --- the feeder: fast mode's FeederRun, wired to the network ---------------------------------

class NetFeederRun(fleet.FeederRun):
    """A feeder of real meters whose head-end is across MQTT (see module docstring)."""

    def __init__(self, sc, feeder, env, tally, configs, net):
        self.feeder = feeder
        self.net = net
        super().__init__(sc, feeder, env, tally, configs)
        ports = {}
        for c in self.cons:
            unit = "Wh" if c.cfg.service == "electricity" else "L"
            up = NetUplink(c.cfg.meter_id, unit, sc.interval_s, net.plan.outbox_segments,
                           net.plan.outbox_segment_bytes)
            up.port = ports[c.cfg.meter_id] = MeterPort(c.cfg.meter_id, up.outbox)
            net.register(c, up, feeder, c.ledger.opening)
            c.ledger = up
            up.report(self.t0, c.meter, status=True)  # App.start_meter: events and a status
        self.link = FeederLink(feeder, net.host, net.port, ports, net.inbox)
        for c in self.cons:
            c.ledger.link = self.link
        self.powered = True
        self.partitioned = False

    def pay(self, c, delay):
        """The consumer pays through the UPI webhook; the top-up travels as a signed command."""
        yield self.env.timeout(delay)
        pay_t = self.env.now
        amount = self.new_payment(c, pay_t)
        self.net.headend.pay(c.cfg.meter_id, amount, payments.topup_id(c.cfg.meter_id, c.counter),
                             pay_t)

    def on_command(self, c, payload, now):
        """``App.handle_command``: decode, authenticate and apply, ack, report."""
        m = c.meter
        if m is None:
            return  # the downlink was in RAM when the power went: the head-end re-sends
        up = c.ledger
        try:
            cmd = messages.decode_command(payload)
        except messages.MessageError as e:
            up.uplink.ack(now, "?", 0, auth.MALFORMED, "MALFORMED", str(e)[:60])
            up.report(now, m, status=False)
            return
        now = self.meter_now(c, now)  # the meter's own clock
        result, detail = m.apply_command(cmd, now)
        n = lo = None
        if result == auth.OK and cmd["kind"] == C.BACKFILL:  # the app's answer (net_link)
            n, lo = self.link.backfill(c.cfg.meter_id, *backfill_range(cmd["fields"]))
        up.uplink.ack(now, cmd["id"], cmd["counter"], result,
                      RESULT_NAMES.get(result, str(result)), detail[:60], n, lo)
        up.report(now, m, status=result == auth.OK)
        if cmd["kind"] == auth.TOPUP:
            if result == auth.OK:
                _, amount = auth.read_topup(cmd)
                self.tally.topups_applied += 1
                self.tally.topups_applied_paise += amount
                c.in_flight -= 1
                c.pay_pending = False
            elif result != auth.REPLAYED:
                self.tally.topups_rejected += 1
        if m.account.relay_closed != c.was_closed:
            self._relay_changed(c, m, self.true_time(c, now))

    def can_sync(self, c):
        return self.may_connect() and self.link.state == "up" and super().can_sync(c)

    def outage(self, a, b):
        """Fast mode's feeder outage, plus: the meters' modems lose power with them."""
        yield self.env.timeout(a)
        self.powered = False
        self.link.drop()
        yield from super().outage(0, b - a)

    def _restore(self, t, step=True):
        for c in self.cons:
            c.ledger.boot()  # the outbox comes back from its flash
        super()._restore(t, step)
        self.powered = True

    def may_connect(self):
        return self.powered and not self.partitioned

    def cut(self):
        """Partition: the feeder's connection is cut and may not reconnect until ``heal``."""
        self.partitioned = True
        self.link.drop()

    def heal(self):
        self.partitioned = False


# --- the network: links, head-end, broker, faults -------------------------------------

class Network:
    """Everything between the meters and the database, driven from one SimPy process."""

    def __init__(self, sc, plan, engine, broker, env):
        self.sc, self.plan, self.engine, self.broker, self.env = sc, plan, engine, broker, env
        self.host, self.port = broker.host, broker.port
        self.inbox = queue.Queue()
        self.consumers = {}  # meter id -> (feeder run index, Consumer)
        self.accounts = []  # (meter id, service, key, opening paise, tariff dict)
        self.runs = []
        self.end_t = sc.start_t + (plan.hours * 3600 if plan.hours else sc.days * 86400)
        self.headend = HeadEnd(engine, self.host, self.port, self.clock, sc.interval_s,
                               ingest_shared=plan.ingest_shared,
                               backfill_grace_s=plan.backfill_grace_s)
        self.fault_log = []  # (sim t, what)
        self.members = []  # fleet members simulated elsewhere (simulator/dut_meters.py)

    def clock(self):
        env = self.env
        return env.env_start + (time.monotonic() - env.real_start) / env.factor

    def register(self, c, up, feeder, opening):
        self.consumers[c.cfg.meter_id] = (feeder, c)
        self.accounts.append((c.cfg.meter_id, c.cfg.service, c.cfg.key, opening,
                              self.sc.tariffs[c.cfg.service]))

    def meter_now(self):
        return min(int(self.env.now), self.end_t)  # after the run the meters' clocks stop

    def _on_command(self, feeder, topic, payload):
        meter_id = topic[len(messages.PREFIX):].split("/")[0]
        entry = self.consumers.get(meter_id)
        if entry is not None:
            self.runs[entry[0]].on_command(entry[1], payload, self.meter_now())

    def service(self):
        """Apply network events, reconnect links that may connect, pump outboxes."""
        drain(self.inbox, [r.link for r in self.runs], self.meter_now(), self._on_command)
        for r in self.runs:
            link = r.link
            if link.state == "down" and r.may_connect():  # refused while the broker is down
                link.connect()
            link.pump()

    def ticker(self):
        env = self.env
        while True:
            self.service()
            if self.clock() > env.now + self.plan.tick_s:
                # the machine cannot keep up: stretch simulated time instead of letting
                # the head-end's clock run ahead of the meters' (that would fake lag)
                env.env_start, env.real_start = env.now, time.monotonic()  # re-anchor
            yield env.timeout(self.plan.tick_s)

    def fault(self, a, dur, what, begin, end):
        """A fault window: ``begin()`` ``a`` s after the start, ``end()`` ``dur`` s later."""
        yield self.env.timeout(a)
        self.fault_log.append((self.env.now, "%s for %d s" % (what, dur)))
        begin()
        yield self.env.timeout(dur)
        end()

    def faults(self, plan):
        """The SimPy processes of the plan's network faults."""
        he = self.headend

        def headend_down():
            he.stop()
            he.restarts += 1

        out = [self.fault(a, dur, "partition feeder %d" % f, self.runs[f].cut, self.runs[f].heal)
               for f, a, dur in plan.partitions]
        out += [self.fault(a, dur, "broker down", self.broker.stop, self.broker.start)
                for a, dur in plan.broker_outages]
        out += [self.fault(a, dur, "head-end down", headend_down, he.start)
                for a, dur in plan.headend_restarts]
        out += [self.fault(a, dur, "ingest session lost", he.lose_ingest_session, he.start_ingest)
                for a, dur in plan.ingest_losses]
        return out

    def connect_all(self, timeout_s=15.0):
        for r in self.runs:
            if not r.link.connect():
                raise RuntimeError("feeder %d cannot connect to %s:%d" % (r.feeder, self.host,
                                                                         self.port))
        deadline = time.monotonic() + timeout_s
        while any(r.link.state != "up" for r in self.runs):
            if time.monotonic() > deadline:
                raise RuntimeError("feeder links not up within %ss" % timeout_s)
            drain(self.inbox, [r.link for r in self.runs], self.sc.start_t, self._on_command)
            time.sleep(0.01)

    def settled(self):
        """Every outbox empty, no backfill or command open, every uplink stored or in a
        gap the head-end marked unrecoverable (the meter no longer holds it)."""
        for r in self.runs:
            for c in r.cons:
                box = c.ledger.outbox
                if box.released < box.next_seq - 1 or c.ledger.port.backfills:
                    return False
        if self.headend.open_commands():
            return False
        if not all(m.settled() for m in self.members):
            return False
        return stored_uplinks(self.engine) + gap_kpis(self.engine)["unrecoverable_uplinks"] >= sum(
            c.ledger.outbox.next_seq - 1 for r in self.runs for c in r.cons) + sum(
            m.uplinks_queued() for m in self.members)

    def close(self):
        for r in self.runs:
            r.link.drop()
        self.headend.stop()


def stored_uplinks(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(M.UplinkSeen)).scalar()


def gap_kpis(engine):
    """Sequence gaps from the head-end's ``seq_gaps``, backfill commands and alerts.

    ``open``: missing and neither filled nor marked unrecoverable (silently
    open, or a backfill still under way); ``unrecoverable``: the meter said it
    no longer holds them (``data_lost`` alerts); ``closed``: filled after all
    (backfilled, or late).
    """
    g = M.SeqGap
    size = g.last_seq - g.first_seq + 1
    with Session(engine) as s:
        opened, closed = s.execute(select(func.count(), func.count(g.closed_at))).one()
        open_ = s.execute(select(func.count()).where(
            g.closed_at.is_(None), g.unrecoverable_at.is_(None))).scalar()
        lost, lost_uplinks = s.execute(select(func.count(), func.coalesce(func.sum(size), 0)).where(
            g.closed_at.is_(None), g.unrecoverable_at.is_not(None))).one()
        by_state = dict(s.execute(select(C.Command.state, func.count()).where(
            C.Command.kind == C.BACKFILL).group_by(C.Command.state)).all())
        alerts = s.execute(select(func.count()).select_from(C.CommandAlert).where(
            C.CommandAlert.kind == "data_lost")).scalar()
    return {"detected": opened, "closed": closed, "open": open_, "unrecoverable": lost,
            "unrecoverable_uplinks": int(lost_uplinks), "data_lost_alerts": alerts,
            "backfill_commands": sum(by_state.values()),
            "backfill_commands_applied": by_state.get(C.APPLIED, 0)}


# --- run -------------------------------------------------------------------------------

def run(sc, plan, engine, broker, progress=None, before_kpis=None, members=()):
    """Run scenario ``sc`` over the network; returns the KPI document (see ``network_kpis``).

    ``members``: fleet members that are not simulated here, e.g. real firmware
    processes (``simulator.dut_meters.DutFleet``; ``[networked] duts = N`` adds
    one); each gets ``attach(net)``, ``start()``, ``settled()``, ``stop()``,
    ``uplinks_queued()``, ``kpis(engine)`` (merged into the result), ``close()``.

    ``engine``: a migrated head-end database (empty); ``broker``: an object with
    ``host``, ``port``, ``running``, ``stop()`` and ``start()`` (the test
    fixture's ``Broker``).  ``progress(sim_t)`` is called every simulated hour;
    ``before_kpis(engine)`` after the head-end stopped (tests tamper with rows there).
    """
    sc.comm_down_pct = 0.0  # link loss is real here: partitions and broker outages
    env = simpy.rt.RealtimeEnvironment(initial_time=sc.start_t, factor=1.0 / plan.acceleration,
                                       strict=False)
    tally = kpis.Tally(sc.intervals, sc.days)
    net = Network(sc, plan, engine, broker, env)
    configs = fleet.base_configs(sc)
    net.runs = [NetFeederRun(sc, f, env, tally, configs, net) for f in range(sc.feeders)]
    net.members = list(members)
    if plan.duts:
        from simulator.dut_meters import DutFleet
        net.members.append(DutFleet(plan.duts))
    for m in net.members:
        m.attach(net)
    net.headend.provision(net.accounts, sc.start_t)
    wall0 = time.monotonic()
    try:
        net.headend.start()
        net.connect_all()
        for m in net.members:
            m.start()
        env.process(net.ticker())
        for proc in net.faults(plan):
            env.process(proc)
        env.sync()
        end = net.end_t
        hour = sc.start_t
        while hour < end:
            hour = min(end, hour + 3600)
            env.run(until=hour + (1 if hour == end else 0))
            if progress is not None:
                progress(hour)
        for r in net.runs:
            if r.off:  # still dark at the end: read the meters from their journals
                r._restore(end, step=False)
        sim_wall = time.monotonic() - wall0
        deadline = time.monotonic() + plan.drain_timeout_s
        while True:  # the meters stop; the network and head-end catch up
            net.service()
            if net.settled() or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for m in net.members:
            m.stop()
        total_wall = time.monotonic() - wall0
        net.headend.stop()  # commit what is pending before counting
        if before_kpis is not None:
            before_kpis(engine)
        kp = network_kpis(net, tally, sim_wall, total_wall)
        for m in net.members:
            kp.update(m.kpis(engine))
    finally:
        for m in net.members:
            m.close()
        net.close()
    return kp


def _pct(values, p):
    return kpis.percentile(sorted(values), p)


def network_kpis(net, tally, sim_wall_s, total_wall_s):
    """KPIs from the head-end's database, against the meters' ground truth."""
    sc, engine = net.sc, net.engine
    lost = dup = altered = 0
    uplinks_expected = 0
    final_balance_off = 0
    examples = []
    relay_opens_db = 0
    uplinks_expected += sum(m.uplinks_queued() for m in net.members)
    wrongful_db = []
    with Session(engine) as s:
        for r in net.runs:
            for c in r.cons:
                mid = c.cfg.meter_id
                up = c.ledger
                uplinks_expected += up.outbox.next_seq - 1
                rows = s.execute(select(M.Reading.start_t, M.Reading.energy, M.Reading.span_s,
                                        M.Reading.flags).where(M.Reading.meter_id == mid)).all()
                seen = {}
                for start, energy, span, flags in rows:
                    if start in seen:
                        dup += 1
                    seen[start] = (energy, span, flags)
                for start, truth in up.produced.items():
                    got = seen.get(start)
                    if got is None:
                        lost += 1
                        if len(examples) < 10:
                            examples.append({"meter_id": mid, "missing_start_t": start})
                    elif got != truth:
                        altered += 1
                dup += sum(1 for start in seen if start not in up.produced)
                bal = s.execute(select(M.StatusRecord.balance_paise).where(
                    M.StatusRecord.meter_id == mid).order_by(M.StatusRecord.seq.desc()).limit(1)
                ).scalar()
                if bal != c.meter.account.balance_paise:
                    final_balance_off += 1
        for t, value, mid in s.execute(select(M.EventRecord.t, M.EventRecord.value,
                                              M.EventRecord.meter_id).where(
                M.EventRecord.code == events.RELAY_OPENED)):
            relay_opens_db += 1
            if kpis.friendly_independent(sc.credit, t, sc.start_t):
                wrongful_db.append({"meter_id": mid, "t": t, "why": ["friendly time"]})
        results = R.reconcile_all(s, net.end_t)
        s.commit()
        recon_abs = sum(abs(x.difference_paise) for x in results)
        not_agreeing = [(x.meter_id, x.explanation, x.difference_paise, x.detail)
                        for x in results if x.explanation != R.AGREES]
        applied_db = s.execute(select(func.count()).select_from(M.EventRecord).where(
            M.EventRecord.code == events.TOPUP_APPLIED)).scalar()
        clock_sets_db = s.execute(select(func.count()).select_from(M.EventRecord).where(
            M.EventRecord.code == events.CLOCK_SET)).scalar()
        readings_db = s.execute(select(func.count()).select_from(M.Reading)).scalar()
    stored = stored_uplinks(engine)
    gaps = gap_kpis(engine)
    gaps["republished_by_meters"] = sum(r.link.republished for r in net.runs)
    if sc.drifting:
        for r in net.runs:
            for c in r.cons:
                r._observe_clock(c, net.end_t)
    clock = kpis.clock_kpis(tally, sc)
    clock["clock_set_events_stored"] = clock_sets_db
    he = net.headend
    lags = he.lags_s
    acc = net.plan.acceleration
    p99 = _pct(lags, 99)
    counters = he.counters()
    return {
        "mode": "networked", "scenario": sc.name, "seed": sc.seed, "meters": tally.meters,
        "days": sc.days, "feeders": sc.feeders, "acceleration": acc,
        "connections": {"feeder_links": len(net.runs), "headend": 2,
                        "note": "one MQTT connection per feeder multiplexes its meters"},
        "wall_s": {"simulated_run": round(sim_wall_s, 2), "with_drain": round(total_wall_s, 2)},
        "readings": {"produced": sum(len(c.ledger.produced) for r in net.runs for c in r.cons),
                     "stored": readings_db, "lost": lost, "duplicated": dup, "altered": altered,
                     "lost_examples": examples},
        "uplinks": {"queued": uplinks_expected, "stored": stored,
                    "lost": max(0, uplinks_expected - stored), "open_seq_gaps": gaps["open"],
                    "unrecoverable_seq_gaps": gaps["unrecoverable"],
                    "published": sum(r.link.published for r in net.runs),
                    "ingest_received": counters["received"],
                    "ingest_duplicates": counters["duplicates"],
                    "dead_lettered": counters["dead_lettered"],
                    "outbox_dropped": sum(c.ledger.outbox.dropped_total
                                          for r in net.runs for c in r.cons)},
        "seq_gaps": gaps,
        "reconciliation": {"meters": len(results), "abs_difference_paise": recon_abs,
                           "not_agreeing": len(not_agreeing), "examples": not_agreeing[:10],
                           "final_status_differs_from_meter": final_balance_off},
        "wrongful_disconnections": tally.wrongful_disconnections + len(wrongful_db),
        "wrongful_examples": (tally.wrongful + wrongful_db)[:20],
        "relay_opens": {"meters": tally.relay_opens, "database": relay_opens_db},
        "money": {"payments": tally.payments, "paid_paise": tally.paid_paise,
                  "topups_applied": tally.topups_applied,
                  "topups_applied_paise": tally.topups_applied_paise,
                  "topup_events_stored": applied_db, "commands_open": he.open_commands()},
        "reconnect_latency_s": {"samples": len(tally.latency_s),
                                "p50": _pct(tally.latency_s, 50), "p99": _pct(tally.latency_s, 99)},
        "ingest": {"readings_per_s_wall": round(readings_db / total_wall_s, 1) if total_wall_s else None,
                   "uplinks_per_s_wall": round(stored / total_wall_s, 1) if total_wall_s else None,
                   "lag_p50_sim_s": _pct(lags, 50), "lag_p99_sim_s": p99,
                   "lag_p99_wall_ms": None if p99 is None else round(p99 * 1000.0 / acc, 1)},
        "clock": clock,
        "faults": {"feeder_outages": tally.outages, "meter_power_cuts": tally.meter_power_cuts,
                   "headend_restarts": he.restarts, "ingest_sessions_lost": he.sessions_lost,
                   "link_connects": sum(r.link.connects for r in net.runs),
                   "link_connect_failures": sum(r.link.connect_failures for r in net.runs),
                   "log": [{"t": t, "what": w} for t, w in net.fault_log]},
    }


def guardrails_hold(k):
    """The acceptance KPIs of a networked run."""
    return (k["readings"]["lost"] == 0 and k["readings"]["duplicated"] == 0
            and k["readings"]["altered"] == 0 and k["uplinks"]["open_seq_gaps"] == 0
            and k["uplinks"]["stored"] == k["uplinks"]["queued"]
            and k["reconciliation"]["abs_difference_paise"] == 0
            and k["reconciliation"]["not_agreeing"] == 0
            and k["reconciliation"]["final_status_differs_from_meter"] == 0
            and k["wrongful_disconnections"] == 0)
