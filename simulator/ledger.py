"""The in-process head-end's view of one meter: shadow ledger, reads, analytics.

Fast mode has no MQTT: what the meter's ``step`` returns (interval, daily
and monthly records) and its event log are handed to ``AccountLedger`` as
the uplink would deliver them, possibly late (store and forward while the
meter's link is down).  The ledger never looks inside the meter's credit
state; it only ever compares at reconciliation.

Shadow charging (the meter's charging rule, see ``firmware/core/meter.py``):
each interval record's energy is charged at the record's start with the
firmware's own ``tariff.Biller``, and each local day in which the meter took
a sample gets the day's fixed charge.  Consecutive records of one local day
with the same ToD percentage are charged as one quantity: the tariff's exact
charge is additive over consecutive slab positions and ``ExactCharge`` debits
``floor(exact total)``, so the total debited is identical to one call per
record, for 20x fewer calls.  Then::

    ledger balance = opening balance + applied top-ups - debited   (== meter's balance)

Analytics on the same data: daily read on time, interval records lost or
duplicated (the records must tile time), tamper events (MAGNET, COVER_OPEN),
a consumption-drop rule for bypass theft, and night flow for water leaks.

>>> from firmware.core.meter import EXAMPLE_CONFIG
>>> from firmware.core import tariff
>>> t = tariff.Tariff.from_dict(EXAMPLE_CONFIG["tariff"])
>>> led = AccountLedger(t, tod_slots(t, 900), opening_paise=10000, start_t=1795717800)
>>> led.interval((1795717800, 900, 1000, None, None, 1, 0), now=1795718700)
>>> led.balance(last_step_t=1795718700)    # 10000 - floor((350 + 500) * 1.05) = 10000 - 892
9108
"""
from firmware.core import events, tariff
from firmware.core.metering import SNAP_DAILY

DAY_S = 86400
NIGHT_START_S = 3600  # 01:00-04:00 local: a household draws no water then, a leak does
NIGHT_END_S = 4 * 3600
_DISRUPTIVE = (events.POWER_FAIL, events.POWER_RESTORE, events.RELAY_OPENED,
               events.RELAY_CLOSED, events.EVENTS_LOST)


def tod_slots(tf, interval_s):
    """ToD percent of each interval of a local day, from the firmware tariff itself."""
    per_day = DAY_S // interval_s
    midnight = 1795717800  # any local midnight (IST): 2026-11-27 00:00 +05:30
    return [tf.tod_pct(midnight + i * interval_s) for i in range(per_day)]


class AccountLedger:
    """Head-end state for one meter (see module docstring)."""

    __slots__ = ("biller", "tod", "ivl", "off", "per_day", "opening", "topups", "gkey", "gt",
                 "gqty", "fday", "next_start", "lost", "dup", "prev_cum", "baseline",
                 "bypass_flag", "tamper_seen", "disrupted", "reads_on_time", "reads", "on_time_days",
                 "events_lost", "night_ok", "night_day", "leak_flag", "drop_pct", "water")

    def __init__(self, tf, tod, opening_paise, start_t, drop_pct=35, water=False):
        self.biller = tariff.Biller(tf)
        self.tod = tod
        self.ivl = DAY_S // len(tod)
        self.off = tf.utc_offset_s
        self.per_day = len(tod)
        self.opening = opening_paise
        self.topups = 0
        self.gkey = -1  # (local day, ToD) group being summed
        self.gt = 0
        self.gqty = 0
        self.fday = -1
        self.next_start = start_t  # where the next interval record must start
        self.lost = 0
        self.dup = 0
        self.prev_cum = 0
        self.baseline = [0, 0]  # best clean-day energy: [Mon-Sat, Sun]
        self.bypass_flag = 0  # time the bypass rule fired (0: never)
        self.tamper_seen: list = []  # (code, t) of tamper events read
        self.disrupted: list = []  # local days with power or relay events
        self.reads_on_time = 0
        self.on_time_days: list = []  # local day numbers whose daily read arrived in time
        self.reads = 0
        self.events_lost = 0
        self.night_ok = 0
        self.night_day = -1
        self.leak_flag = 0
        self.drop_pct = drop_pct
        self.water = water

    # -- uplink --------------------------------------------------------
    def deliver(self, records, now, meter):
        """Records from ``Meter.step`` arriving at the head-end at ``now``."""
        for kind, rec in records:
            if kind == "interval":
                self.interval(rec, now)
            elif kind == "daily" or kind == SNAP_DAILY:  # older cores passed the int code
                self.read_events(meter)
                self.daily(rec, now)

    def interval(self, rec, now):
        start = rec[0]
        if start != self.next_start:
            if start < self.next_start:
                self.dup += 1
                return
            self.lost += (start - self.next_start) // self.ivl
        self.next_start = start + rec[1]
        i = (start + self.off) // self.ivl
        day = i // self.per_day
        if rec[5] and day != self.fday:  # the meter stepped on this local day
            self.fday = day
            self.biller.charge_day(start)
        wh = rec[2]
        if self.water:
            self._night(day, (i % self.per_day) * self.ivl, wh, rec[1])
        if wh:
            key = day * 1000 + self.tod[i % self.per_day]
            if key != self.gkey or not self.gqty:
                if self.gqty:
                    self.biller.charge_usage(self.gt, self.gqty)
                self.gkey = key
                self.gt = start
                self.gqty = wh
            else:
                self.gqty += wh

    def _night(self, day, sod, wh, span):
        if span != self.ivl or not NIGHT_START_S <= sod < NIGHT_END_S:
            return
        if day != self.night_day:
            self.night_day = day
            self.night_ok = 0
        if wh > 0:
            self.night_ok += 1
            if self.night_ok * self.ivl == NIGHT_END_S - NIGHT_START_S and not self.leak_flag:
                self.leak_flag = day

    def read_events(self, meter):
        """Fetch and acknowledge the meter's pending events (daily read)."""
        log = meter.log
        while True:
            evs = log.pending(limit=64)
            if not evs:
                return
            for seq, t, code, value in evs:
                if code in _DISRUPTIVE:
                    d = (t + self.off) // DAY_S
                    if d not in self.disrupted:
                        self.disrupted.append(d)
                    if code == events.EVENTS_LOST:
                        self.events_lost += value
                elif code == events.MAGNET or code == events.COVER_OPEN:
                    self.tamper_seen.append((code, t))
            log.ack(evs[-1][0])

    def daily(self, rec, now):
        """A daily snapshot: read success, and the bypass rule on clean days."""
        midnight, cum = rec[2], rec[3]
        self.reads += 1
        day = (midnight + self.off) // DAY_S - 1  # the local day that ended
        if now <= midnight + DAY_S:
            self.reads_on_time += 1
            self.on_time_days.append(day)
        energy = cum - self.prev_cum
        self.prev_cum = cum
        if rec[6] or day in self.disrupted:
            return  # stale snapshot, or power/relay trouble: not a fair day to compare
        sunday = 1 if (day + 3) % 7 == 6 else 0  # 1970-01-01 was a Thursday (weekday 3)
        base = self.baseline[sunday]
        if base and energy * 100 < base * (100 - self.drop_pct):
            if not self.bypass_flag:
                self.bypass_flag = midnight
        elif energy > base:
            self.baseline[sunday] = energy

    # -- reconciliation ------------------------------------------------
    def topup_applied(self, amount_paise):
        self.topups += amount_paise

    def balance(self, last_step_t):
        """Ledger balance after every delivered record; ``last_step_t`` from the meter's status."""
        if self.gqty:
            self.biller.charge_usage(self.gt, self.gqty)
            self.gqty = 0
        self.biller.charge_day(last_step_t)
        return self.opening + self.topups - self.biller.acc.debited

    @property
    def debited(self):
        return self.biller.acc.debited
