"""Fast mode: a SimPy city of meters, each one the real firmware ``Meter``.

Design (measured first, see bench/simulator.py): a ``Meter`` costs ~3.3 KB
and ~11 us per interval step in CPython, so

- one SimPy process per feeder steps all its meters in a tight loop at every
  interval boundary (not one process per meter, not every minute);
  payments, top-up deliveries, outages and tamper injections are their own
  (rare) SimPy processes with the clock injected as ``now``;
- feeders do not interact in fast mode (the head-end is per-meter ledgers in
  process), so feeders run in batches, each batch its own SimPy environment
  over the whole run, in worker processes; tallies merge in feeder order, and
  every feeder draws from its own seeded stream, so results do not depend on
  batching or worker count; memory is one batch per worker, not the fleet;
- a meter runs without journal commits between power events: the commit is
  a pure function of ``to_state()`` and changes nothing computed.  When a
  feeder fails, every meter's board calls ``Meter.power_fail`` into a real
  ``Journal`` on RAM slots, and on restore the meter is rebuilt from those
  bytes (``Meter(config, now, journal)``) and steps at once, as the shell does
  at boot;
- meter clocks drift (scenario ``[clock]``): a meter is stepped at its own
  clock's interval boundaries, events reach it at its own time, and its
  disconnections are scored at the head-end's time (see ``meter_now``).

Where the time goes (cProfile and timed runs on 10k meters): ~80 % of a
meter-interval is the firmware's own ``Meter.step`` (CPython ~12 us on a
quiet machine; PyPy 5-8x less), the rest the load model, ``add_pulses`` and
the shadow ledger (~1 us each); so PyPy (bench/simulator.py ``--python
pypy3``), not this loop, is the big lever.  PyPy simulates the same city:
the KPIs are identical byte for byte.

>>> from simulator import scenario
>>> sc = scenario.load("simulator/scenarios/quick.toml", meters=8, days=1)
>>> tally = run_batch(sc, [0])
>>> tally.meters, tally.recon_abs_diff_paise
(8, 0)
"""
import hashlib
import random

import simpy

from firmware.core import auth, events
from firmware.core.journal import Journal
from firmware.core.meter import Meter, MeterConfig
from firmware.core.outbox import RamSlots  # two flash slots in RAM: the simulated board's NVS
from simulator import consumers, faults, kpis, payments
from simulator.ledger import AccountLedger, tod_slots
from simulator.scenario import SERVICE_OF

PULSES_PER_UNIT = {"electricity": 3200, "water": 1, "gas": 1}
RETRY_S = 300  # the head-end retries an undelivered command every 5 minutes
TWO_HOURS_S = 7200  # a state rule compensates reconnection later than this
IST_OFFSET_S = 19800  # scenarios start at IST midnight; load profiles are in IST


class Consumer:
    """One premises: the meter, the consumer's habits, the head-end ledger, ground truth."""

    __slots__ = ("gid", "kind", "cfg", "meter", "scale", "f", "tab", "leak", "share", "theft",
                 "habit", "pay_pending", "open_pay_t", "was_closed", "counter", "ledger",
                 "comm_up", "buffer", "journal", "is_elec", "trig", "in_flight",
                 "ppb", "clk0", "err0", "over_tol")


def base_configs(sc):
    """One validated ``MeterConfig`` per service; meters get shallow copies (shared tariff).

    The credit rules carry the clock guard band (``Scenario.meter_credit``)."""
    out = {}
    credit = sc.meter_credit()
    for service, td in sorted(sc.tariffs.items()):
        out[service] = MeterConfig.from_dict({
            "meter_id": "UJ-TEMPLATE", "service": service,
            "pulses_per_unit": PULSES_PER_UNIT[service], "litres_per_pulses": consumers.LITRES_PER_PULSE,
            "interval_s": sc.interval_s, "key_hex": "00" * 32, "tariff": td, "credit": credit,
        })
    return out


def _clone(cfg):
    """A shallow copy of a ``MeterConfig`` (what ``copy.copy`` does, at a third of its cost
    under PyPy): the tariff and credit rules stay shared, the meter's id and key are set next."""
    c = MeterConfig.__new__(MeterConfig)
    c.__dict__.update(cfg.__dict__)
    return c


def _kind_of(rnd, mix):
    x = rnd.randrange(100)
    acc = 0
    for kind in consumers.KINDS:
        acc += mix[kind]
        if x < acc:
            return kind
    return "residential"


class FeederRun:
    """One feeder's meters, consumers and faults inside one SimPy environment."""

    def __init__(self, sc, feeder, env, tally, configs):
        self.sc = sc
        self.env = env
        self.tally = tally
        self.ivl = sc.interval_s
        self.per_day = 86400 // self.ivl
        self.t0 = sc.start_t
        self.end_t = sc.start_t + sc.days * 86400
        self.rnd = random.Random("urja-sim:%d:%d" % (sc.seed, feeder))
        self.off = False
        self.frac_next = 1.0  # share of the next interval the feeder had power
        self.last_step_t = self.t0
        self.restored_at = -1
        self.day0 = (self.t0 + IST_OFFSET_S) // 86400
        rnd = self.rnd
        first = feeder * sc.meters_per_feeder
        n = min(sc.meters_per_feeder, sc.meters - first)
        tods = {s: tod_slots(c.tariff, self.ivl) for s, c in configs.items()}
        # Clock drift draws from its own stream: a scenario without drift consumes
        # exactly the random numbers it did before drift existed.
        self.drift = sc.drifting
        crnd = random.Random("urja-sim-clock:%d:%d" % (sc.seed, feeder)) if self.drift else None
        self.cons = []
        for gid in range(first, first + n):
            c = Consumer()
            c.gid = gid
            c.kind = _kind_of(rnd, sc.mix)
            service = SERVICE_OF[c.kind]
            cfg = _clone(configs[service])
            cfg.meter_id = "UJ-%07d" % gid
            cfg.key = hashlib.sha256(b"urja-sim-key|%d|%s" % (sc.seed, cfg.meter_id.encode())).digest()
            c.cfg = cfg
            opening = rnd.randint(*sc.opening_credit)
            debt = rnd.randint(*sc.opening_debt) if rnd.random() * 100 < sc.debt_share_pct else 0
            c.meter = Meter(cfg, now=self.t0, opening_credit_paise=opening, opening_debt_paise=debt)
            c.meter.step(self.t0)  # opens the first interval, charges the first day
            c.scale = consumers.draw_scale(rnd, c.kind)
            c.f = c.scale
            c.tab = None
            c.leak = faults.leak_pulses(rnd, service, sc.water_leak_pct)
            c.share = 1.0
            c.theft = faults.theft_plan(rnd, service, self.t0, sc.days * 86400,
                                        sc.bypass_pct, sc.magnet_pct, sc.cover_open_pct)
            c.habit = payments.HABITS[payments.choose_habit(rnd, sc.habits)]
            c.trig = c.habit.trigger_state
            c.pay_pending = False
            c.in_flight = 0
            c.open_pay_t = None
            c.was_closed = c.meter.relay_closed
            c.counter = 0
            c.ledger = AccountLedger(cfg.tariff, tods[service], opening - debt, self.t0,
                                     sc.bypass_drop_pct, water=service == "water")
            c.comm_up = True
            c.buffer = []
            c.journal = None
            c.is_elec = 1 if service == "electricity" else 0
            c.ppb = crnd.randint(*sc.drift_ppb) if crnd is not None else 0
            c.clk0 = self.t0  # commissioned with the head-end's time
            c.err0 = 0
            c.over_tol = False
            if c.theft is not None:
                env.process(self.tamper(c))
            self.cons.append(c)
        tally.meters += n
        for a, b in faults.outage_plan(rnd, feeder, sc.outages, sc.outage_rate,
                                       sc.outage_minutes, sc.days * 86400):
            env.process(self.outage(a, b))
        if self.drift and sc.sync_hours:
            env.process(self.clock_sync(sc.sync_hours * 3600))
        env.process(self.run())

    # -- meter clocks ----------------------------------------------------
    # A meter's RTC runs ``ppb`` parts per billion fast (negative: slow) since it was
    # last set at true time ``clk0`` to an error of ``err0`` seconds.  The shell steps
    # the meter when its OWN clock reaches an interval boundary; the feeder loop does
    # those steps together at the true boundary (same pulses, same records: only when
    # they happen in true time differs, by the clock error).  Everything that happens
    # at a true time (a top-up, a power cut, a tamper) reaches the meter at its own
    # time, and what the meter does at its own time (a disconnection) happened at
    # true time = own time - error.
    @staticmethod
    def clock_error(c, t):
        """Seconds the meter's clock is ahead of the head-end's at true time ``t``."""
        return c.err0 + c.ppb * (t - c.clk0) // 1000000000

    def meter_now(self, c, t):
        """The meter's own clock at true time ``t`` (``t`` when clocks do not drift).

        Kept inside the meter's current interval: after its last step, before the
        boundary the feeder loop steps it at next (a command a fast clock would see
        just past that boundary is applied just before it instead: at most the
        clock error early, and never out of order with the meter's steps).
        """
        if not self.drift:
            return t
        mt = t + self.clock_error(c, t)
        nb = t - (t - self.t0) % self.ivl + self.ivl
        if c.meter is not None and mt < c.meter.last_step_t:
            mt = c.meter.last_step_t
        return mt if mt < nb else nb - 1

    def true_time(self, c, mt):
        """The head-end's time at which the meter's own clock read ``mt``."""
        return mt - self.clock_error(c, mt) if self.drift else mt

    def can_sync(self, c):
        """The time-sync downlink reaches this meter now (powered, link up)."""
        return not self.off and c.comm_up and c.meter is not None

    def clock_sync(self, period_s):
        """The head-end's time sync: every ``period_s`` each reachable meter's RTC is set
        to the head-end's time (the board clock, as the unix board's ``clock T``); the
        shell logs CLOCK_SET with the seconds the clock moved.  Modelled here: there is
        no time-sync downlink message in docs/protocol.md yet."""
        env = self.env
        tally = self.tally
        while True:
            yield env.timeout(period_s)
            t = env.now
            for c in self.cons:
                err = self._observe_clock(c, t)
                if not self.can_sync(c):
                    continue
                c.err0 = 0
                c.clk0 = t
                tally.clock_syncs += 1
                if err:
                    c.meter.log.append(t, events.CLOCK_SET, -err)

    def _observe_clock(self, c, t):
        """Clock error at ``t`` into the KPIs (worst case: just before a sync, at the end)."""
        err = self.clock_error(c, t)
        e = err if err >= 0 else -err
        tally = self.tally
        if e > tally.clock_max_abs_error_s:
            tally.clock_max_abs_error_s = e
        if e > self.sc.clock_tolerance_s and not c.over_tol:
            c.over_tol = True
            tally.clock_over_tolerance_meters += 1
        return err

    # -- the hot loop ----------------------------------------------------
    def run(self):
        env = self.env
        ivl = self.ivl
        per_day = self.per_day
        tally = self.tally
        load = tally.load_pulses
        rnd = self.rnd.random
        cons = self.cons
        day = -1
        self._new_comm_day(0)
        for k in range(1, self.sc.intervals + 1):
            yield env.timeout(ivl)
            now = env.now
            if self.off:
                continue
            if now == self.restored_at:  # the boot step after power came back was at ``now``
                tally.meter_intervals += len(cons)
                continue
            slot = (k - 1) % per_day
            if (k - 1) // per_day != day:
                day = (k - 1) // per_day
                self._new_day(now - ivl)
            if k % per_day == 0:
                self._new_comm_day(k // per_day)
            g = self.frac_next
            self.frac_next = 1.0
            elec = 0
            unmetered = 0
            for c in cons:
                m = c.meter
                if c.was_closed:
                    p = int(c.tab[slot] * c.f * g * (0.6 + 0.8 * rnd()) + 0.5) + c.leak
                    if p:
                        elec += p * c.is_elec
                        if c.share != 1.0:
                            mp = int(p * c.share)
                            unmetered += p - mp
                            p = mp
                        m.add_pulses(p, now)
                # own-clock boundary; a drifting meter may have taken a command just past it
                recs = m.step(now if m.last_step_t <= now else m.last_step_t)
                if recs:
                    if c.comm_up:
                        c.ledger.deliver(recs, now, m)
                    else:
                        c.buffer.extend(recs)
                acc = m.account
                if acc.relay_closed != c.was_closed:
                    self._relay_changed(c, m, self.true_time(c, m.last_step_t))
                if not c.pay_pending and acc.state >= c.trig:
                    self._pay_later(c)
            load[k] += elec
            tally.unmetered_wh += unmetered * 1000 // 3200
            tally.meter_intervals += len(cons)
            self.last_step_t = now

    def _new_day(self, t):
        """Day tables and each consumer's day factor for the local day holding ``t``."""
        days = (t + IST_OFFSET_S) // 86400
        weekday = (days + 3) % 7
        month = int(_month_of_days(days))
        rnd = self.rnd.random
        tabs = {k: consumers.base_table(k, weekday, month, self.ivl) for k in consumers.KINDS}
        for c in self.cons:
            c.tab = tabs[c.kind]
            c.f = c.scale * (0.9 + 0.2 * rnd())

    def _new_comm_day(self, day):
        """Draw which meters cannot talk to the head-end today; flush the others' backlog."""
        rnd = self.rnd.random
        p = self.sc.comm_down_pct / 100.0
        for c in self.cons:
            c.comm_up = rnd() >= p
            if c.comm_up and c.buffer and c.meter is not None:
                recs, c.buffer = c.buffer, []
                c.ledger.deliver(recs, self.env.now, c.meter)

    def _relay_changed(self, c, m, now):
        """The relay moved at true time ``now``: score disconnections, time reconnections."""
        closed = m.account.relay_closed
        c.was_closed = closed
        if not closed:
            self.tally.relay_opens += 1
            rules = self.sc.credit
            why = []
            if kpis.friendly_independent(rules, now, self.t0):
                why.append("friendly time")
            if m.account.available_paise > 0:
                why.append("credit left")
            if why:
                self.tally.wrongful_disconnections += 1
                if len(self.tally.wrongful) < 20:
                    self.tally.wrongful.append({"meter_id": c.cfg.meter_id, "t": now, "why": why})
        elif c.open_pay_t is not None:
            lat = now - c.open_pay_t
            self.tally.add_latency(lat)
            if lat > TWO_HOURS_S:
                self.tally.reconnects_over_2h += 1
            c.open_pay_t = None

    # -- rare processes --------------------------------------------------
    def _pay_later(self, c):
        c.pay_pending = True
        self.env.process(self.pay(c, c.habit.reaction_delay(self.rnd)))

    def new_payment(self, c, pay_t):
        """The consumer pays at ``pay_t``: the amount (with what the meter says is owed),
        payment counters and the reconnect-latency clock.  Returns the amount (paise);
        the top-up is ``c.counter``, in flight until applied."""
        m = c.meter
        acc = m.account if m is not None else None
        owed = acc.emergency_used_paise + acc.debt_paise if acc is not None else 0
        amount = payments.topup_amount(self.rnd, self.sc.amounts, owed)
        if not c.was_closed and c.open_pay_t is None:
            c.open_pay_t = pay_t
        c.counter += 1
        self.tally.payments += 1
        self.tally.paid_paise += amount
        c.in_flight += 1
        return amount

    def pay(self, c, delay):
        """Pay after ``delay``; the signed top-up reaches the meter after the network delay
        (retried while it is unreachable)."""
        env = self.env
        yield env.timeout(delay)
        pay_t = env.now
        amount = self.new_payment(c, pay_t)
        cmd = auth.make_topup(c.cfg.key, c.cfg.meter_id, c.counter, pay_t + payments.EXPIRY_S,
                              payments.topup_id(c.cfg.meter_id, c.counter), amount)
        lo, hi = self.sc.network_delay
        yield env.timeout(self.rnd.randint(lo, hi))
        while self.off or not c.comm_up or c.meter is None:
            yield env.timeout(RETRY_S)
        c.in_flight -= 1
        m = c.meter
        result, _ = m.apply_command(cmd, self.meter_now(c, env.now))
        if result == auth.OK:
            c.ledger.topup_applied(amount)
            self.tally.topups_applied += 1
            self.tally.topups_applied_paise += amount
        else:
            self.tally.topups_rejected += 1
        c.pay_pending = False
        if m.account.relay_closed != c.was_closed:
            self._relay_changed(c, m, env.now)

    def tamper(self, c):
        """Inject the planned theft at its start (waiting for power if the feeder is down)."""
        env = self.env
        yield env.timeout(max(0, c.theft.start_t - env.now))
        while self.off:
            yield env.timeout(RETRY_S)
        kind = c.theft.kind
        if kind in ("bypass", "magnet"):
            c.share = c.theft.metered_share
        if kind == "magnet":
            c.meter.log.append(self.meter_now(c, env.now), events.MAGNET, 1)  # the board's hall sensor
        elif kind == "cover_open":
            c.meter.log.append(self.meter_now(c, env.now), events.COVER_OPEN, 1)  # the cover switch

    def outage(self, a, b):
        env = self.env
        yield env.timeout(a)
        t = env.now
        self.off = True
        self.tally.outages += 1
        g = (t - self.last_step_t) / self.ivl
        slot = ((self.last_step_t - self.t0) // self.ivl) % self.per_day
        for c in self.cons:
            m = c.meter
            if c.was_closed and c.tab is not None and g > 0:
                p = int(c.tab[slot] * c.f * g + 0.5) + c.leak
                m.add_pulses(int(p * c.share), t)
            m.journal = Journal(RamSlots())
            m.power_fail(self.meter_now(c, t))  # commit while the supply capacitor lasts
            c.journal = m.journal
            c.meter = None
            self.tally.meter_power_cuts += 1
        if t + (b - a) >= self.end_t:
            return  # still dark when the run ends; finish() reads the journals
        yield env.timeout(b - a)
        self._restore(env.now)

    def _restore(self, t, step=True):
        for c in self.cons:
            mt = self.meter_now(c, t)  # the RTC kept running on its battery
            m = Meter(c.cfg, now=mt, journal=c.journal)
            self.tally.journal_restores += 1
            m.journal = None
            c.journal = None
            c.meter = m
            if step:
                recs = m.step(mt)  # the shell's first step after boot
                if recs:
                    if c.comm_up:
                        c.ledger.deliver(recs, t, m)
                    else:
                        c.buffer.extend(recs)
            c.was_closed = m.account.relay_closed
        self.off = False
        self.restored_at = t
        # the next boundary step sees only the part of the interval after power came back
        self.frac_next = ((t - self.t0) % self.ivl and (self.ivl - (t - self.t0) % self.ivl)) / self.ivl

    # -- end of run ------------------------------------------------------
    def finish(self):
        """Final read of every meter: deliver backlogs, reconcile, score faults."""
        tally = self.tally
        end = self.env.now
        if self.off:
            self._restore(end, step=False)
        for c in self.cons:
            m = c.meter
            led = c.ledger
            if self.drift:
                self._observe_clock(c, end)
            if c.buffer:
                recs, c.buffer = c.buffer, []
                led.deliver(recs, end, m)
            led.read_events(m)
            st = m.status()
            ledger_balance = led.balance(st["t"])
            diff = ledger_balance - st["balance_paise"]
            if diff:
                tally.recon_abs_diff_paise += abs(diff)
                tally.recon_meters_off += 1
                if len(tally.recon_examples) < 20:
                    tally.recon_examples.append({"meter_id": c.cfg.meter_id, "ledger": ledger_balance,
                                                 "meter": st["balance_paise"]})
            tally.billed_paise += led.debited
            bal = st["balance_paise"]
            tally.balances.append(bal)
            if bal < 0:
                tally.negative_meters += 1
                tally.negative_paise += bal
            tally.debt_paise += m.account.debt_paise
            tally.reads_expected += self.sc.days
            tally.reads_on_time += led.reads_on_time
            by_day = tally.reads_by_day
            for i in range(self.sc.days):
                by_day[i][0] += 1
            for d in led.on_time_days:
                if 0 <= d - self.day0 < self.sc.days:
                    by_day[d - self.day0][1] += 1
            tally.reads_total += led.reads
            tally.intervals_lost += led.lost
            tally.intervals_duplicated += led.dup
            tally.events_lost += led.events_lost
            tally.intervals_lost += (m.profile.start_t - led.next_start) // self.ivl
            tally.topups_undelivered += c.in_flight
            self._score_theft(c)
            if c.leak:
                tally.leaks_injected += 1
                tally.leaks_detected += 1 if led.leak_flag else 0
            elif led.leak_flag:
                tally.leak_false_alarms += 1

    def _score_theft(self, c):
        led = c.ledger
        seen = set(code for code, _ in led.tamper_seen)
        flagged = {"bypass": bool(led.bypass_flag), "magnet": events.MAGNET in seen,
                   "cover_open": events.COVER_OPEN in seen}
        truth = c.theft.kind if c.theft is not None and c.theft.start_t < self.end_t else None
        for kind in kpis.THEFT_KINDS:
            if truth == kind:
                self.tally.theft[kind][0] += 1
                self.tally.theft[kind][1] += 1 if flagged[kind] else 0
            elif flagged[kind] and not (kind == "bypass" and truth == "magnet"):
                self.tally.theft_false[kind] += 1  # a magnet also drops consumption: not false
        if truth is not None:
            self.tally.theft_truth.append((c.cfg.meter_id, truth, c.theft.start_t, flagged[truth]))


def _month_of_days(days):
    """Civil month (1-12) of a day number since 1970-01-01 (Howard Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    return mp + 3 if mp < 10 else mp - 9


def run_batch(sc, feeders, progress=None):
    """Run ``feeders`` (indices) of scenario ``sc`` in one SimPy environment; return a ``Tally``."""
    env = simpy.Environment(initial_time=sc.start_t)
    tally = kpis.Tally(sc.intervals, sc.days)
    configs = base_configs(sc)
    runs = [FeederRun(sc, f, env, tally, configs) for f in feeders]
    end = sc.start_t + sc.days * 86400
    if progress is None:
        env.run(until=end + 1)
    else:
        for day in range(1, sc.days + 1):
            env.run(until=sc.start_t + day * 86400 + (1 if day == sc.days else 0))
            progress(sum(len(r.cons) for r in runs) * (86400 // sc.interval_s))
    for r in runs:
        r.finish()
    return tally



def feeder_batches(sc, batch_meters):
    """Feeder indices grouped so one batch holds at most ~``batch_meters`` meters."""
    per = max(1, batch_meters // sc.meters_per_feeder)
    return [list(range(i, min(i + per, sc.feeders))) for i in range(0, sc.feeders, per)]


def _worker(args):
    sc, feeders = args
    return run_batch(sc, feeders)


def run_fleet(sc, workers=1, batch_meters=5000, progress=None):
    """Run the whole fleet; return the merged ``Tally`` (same for any ``workers``).

    ``progress(n)`` is called with meter-intervals done as batches finish
    (in-process, also after each simulated day).
    """
    batches = feeder_batches(sc, batch_meters)
    total = kpis.Tally(sc.intervals, sc.days)
    if workers <= 1 or len(batches) == 1:
        for b in batches:
            total.merge(run_batch(sc, b, progress))
        return total
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for tally in pool.imap(_worker, [(sc, b) for b in batches]):
            total.merge(tally)
            if progress is not None:
                progress(tally.meters * sc.intervals)
    return total
