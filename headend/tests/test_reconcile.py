"""Reconciliation: the head-end's shadow ledger agrees with a REAL firmware Meter to the paisa.

The meter side is ``firmware.core.meter.Meter`` (the code an ESP32 runs),
driven minute by minute for days; its interval records, events and status
go through the real wire format (``messages.encode_uplink`` ->
``decode_uplink``) into the real store (``UplinkStore``), and the head-end
recomputes every debit from the stored records.  The oracle for "0 paise" is
the meter's own ``total_charges`` / ``balance_paise``, not head-end code.
"""
import random

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from firmware.core import auth, localtime
from firmware.core.meter import EXAMPLE_CONFIG, Meter, MeterConfig
from firmware.protocol import messages
from headend import alerts, reconcile
from headend import models as M
from headend.store import UplinkStore
from headend.tests.conftest import register_meters

IST = localtime.IST_OFFSET_S
IV = 900
# local midnight of 2026-01-30 IST: days_from_civil(2026, 1, 30) = 20483 -> 20483*86400 - 19800
JAN30 = 20483 * 86400 - 19800
MID = "UJ-REC-1"
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])

SIMPLE = {"id": "S", "version": 1, "service": "electricity", "unit_size": 1000,
          "slabs": [[100, 350], [300, 450], [None, 650]], "fixed_paise_per_day": 500,
          "duty_bp": 500}


def make_tables(engine):
    alerts.create_tables(engine)
    reconcile.create_tables(engine)


class Rig:
    """A real Meter plus the uplinks it would send (bodies, in meter sequence order)."""

    def __init__(self, start, opening_paise=20000, seed=6):
        cfg = dict(EXAMPLE_CONFIG, meter_id=MID)
        self.meter = Meter(MeterConfig.from_dict(cfg), now=start, opening_credit_paise=opening_paise)
        self.rng = random.Random(seed)
        self.start = start
        self.now = start
        self.seq = 0
        self.bodies = []
        self.records = []

    def _send(self, kind, t, fields):
        self.seq += 1
        raw = messages.encode_uplink(kind, MID, self.seq, t, fields)
        self.bodies.append(messages.decode_uplink(messages.topic(MID, kind), raw))

    def run_until(self, end, powered=True):
        """Step every 60 s up to ``end`` (a power cut: jump without stepping)."""
        if not powered:
            self.now = end
            return
        while self.now < end:
            self.now += 60
            self.meter.add_pulses(self.rng.randrange(0, 400), self.now)
            for kind, rec in self.meter.step(self.now, voltage_mv=230000, current_ma=5000):
                if kind == "interval":
                    start_t, span, energy, mv, ma, _count, flags = rec
                    self.records.append([start_t, energy, mv, ma, flags, span])
            if self.now % 3600 == 0:
                self.flush()

    def flush(self):
        if self.records:
            self._send("reading", self.now, {"iv": IV, "u": "Wh", "cum": self.meter.energy_units,
                                             "r": self.records})
            self.records = []
        pending = self.meter.log.pending(64)
        if pending:
            self._send("event", self.now, {"e": [list(e) for e in pending]})
            self.meter.log.ack(pending[-1][0])

    def topup(self, counter, amount):
        cmd = auth.make_topup(KEY, MID, counter, self.now + 3600, "T-%d" % counter, amount)
        result, _ = self.meter.apply_command(cmd, self.now)
        assert result == auth.OK

    def status(self):
        a = self.meter.account
        self._send("status", self.now, {
            "bal": a.balance_paise, "cr": a.credit_paise, "em": a.emergency_used_paise,
            "dt": a.debt_paise, "st": self.meter.status()["state"], "rl": a.relay_closed,
            "ld": self.meter.status()["load_state"], "tv": self.meter.schedule.version,
            "tt": a.total_topups, "tc": a.total_charges})


def four_days():
    """06:00 Jan 30 -> 20:00 Jan 31, power cut over all of Feb 1, back 02:00 Feb 2 -> 12:00.

    Crosses a month (slab reset), ToD windows, a top-up, and a whole local day
    without supply (no step on Feb 1, so the meter charges no fixed charge for it).
    """
    rig = Rig(JAN30 + 6 * 3600)
    rig.run_until(JAN30 + 34 * 3600)          # Jan 31 10:00
    rig.topup(1, 50000)
    rig.run_until(JAN30 + 44 * 3600)          # Jan 31 20:00
    rig.flush()
    rig.run_until(JAN30 + 74 * 3600, powered=False)   # Feb 2 02:00
    rig.run_until(JAN30 + 84 * 3600)          # Feb 2 12:00, an interval boundary
    rig.flush()
    return rig


def load(engine, bodies, now):
    UplinkStore(engine).write(bodies, now=now)


def setup_meter(engine, rig, opening=20000, tariffs=None):
    register_meters(engine, [MID])
    make_tables(engine)
    with Session(engine) as s:
        reconcile.open_account(s, MID, opening, rig.start,
                               tariffs or [EXAMPLE_CONFIG["tariff"]])
        s.commit()


def test_shadow_charges_hand_computed_slabs_fixed_days_and_duty():
    day1 = JAN30 + 10 * 3600  # 10:00 IST, outside every ToD window
    records = [(day1, 60000, 0, IV), (day1 + 3600, 60000, 0, IV),
               (day1 + 14 * 3600, 0, 1, 86400),           # POWER_OFF over all of Jan 31
               (day1 + 2 * 86400, 1000, 2, IV)]            # Feb 1 10:00, AFTER_GAP
    got = reconcile.shadow_charges([SIMPLE], records, day1 + 2 * 86400 + IV)
    # Jan 30: 60 kWh * 350 = 21000; then 40 * 350 + 20 * 450 = 23000; fixed 500
    # Feb 1 (new month: slab back to 1): 1 kWh * 350 = 350; fixed 500; Jan 31: no fixed charge
    # (21000 + 23000 + 500 + 350 + 500) * 1.05 = 45350 * 1.05 = 47617.5 -> floor 47617
    assert got.paise == 47617
    assert got.days == [localtime.local_day(day1, IST), localtime.local_day(day1, IST) + 2]


def test_shadow_charges_apply_tod_surcharge_in_the_evening_window():
    t = JAN30 + 19 * 3600  # 19:00 IST, inside [18:00, 22:00) +20 %
    tar = dict(SIMPLE, fixed_paise_per_day=0, duty_bp=0, tod=[[64800, 79200, 20]])
    # 2 kWh * 350 * 1.20 = 840
    assert reconcile.shadow_charges([tar], [(t, 2000, 0, IV)], t + IV).paise == 840


def test_real_meter_for_four_days_reconciles_to_exactly_zero_paise(engine):
    rig = four_days()
    rig.status()
    setup_meter(engine, rig)
    load(engine, rig.bodies, rig.now)
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        s.commit()
        assert rig.meter.account.total_charges > 50000  # enough usage to cross the first slab
        assert res.difference_paise == 0, res.detail
        assert res.shadow_charges_paise == rig.meter.account.total_charges
        assert res.shadow_topups_paise == 50000
        assert res.shadow_balance_paise == rig.meter.account.balance_paise
        assert res.explanation == reconcile.AGREES
        assert s.execute(select(alerts.Alert)).first() is None


def test_tampered_reading_gives_a_nonzero_difference_and_an_alert(engine):
    rig = four_days()
    rig.status()
    setup_meter(engine, rig)
    load(engine, rig.bodies, rig.now)
    with engine.begin() as conn:  # someone edits one stored interval: +1 kWh
        conn.execute(update(M.Reading).where(M.Reading.meter_id == MID,
                                             M.Reading.start_t == JAN30 + 12 * 3600)
                     .values(energy=M.Reading.energy + 1000))
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        s.commit()
        # the shadow now charges more than the meter did, so the meter's balance is higher
        assert res.difference_paise > 0
        assert res.explanation == reconcile.MISMATCH
        found = s.execute(select(alerts.Alert).where(
            alerts.Alert.kind == alerts.RECONCILIATION)).scalars().all()
        assert [a.meter_id for a in found] == [MID]


def test_status_inside_an_open_interval_is_explained_and_bounded_by_its_record(engine):
    rig = four_days()
    rig.run_until(rig.now + 600)   # 12:10: the 12:00 interval is open
    rig.status()
    status_t = rig.now
    rig.run_until(rig.now + 300)   # 12:15 closes it; its record goes out later
    before_record = list(rig.bodies)
    setup_meter(engine, rig)
    load(engine, before_record, rig.now)
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        assert res.status_t == status_t
        assert res.difference_paise < 0  # the meter already charged 10 minutes more
        assert res.explanation == reconcile.OPEN_INTERVAL
        assert "not received" in res.detail
    rig.flush()  # now the 12:00 record arrives
    load(engine, rig.bodies[len(before_record):], rig.now)
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        s.commit()
        assert res.explanation == reconcile.OPEN_INTERVAL
        assert "for the whole interval" in res.detail
        assert s.execute(select(alerts.Alert)).first() is None


def test_missing_readings_before_the_status_are_readings_pending_not_an_alert(engine):
    rig = four_days()
    rig.status()
    last_reading = max(i for i, b in enumerate(rig.bodies) if b["kind"] == "reading")
    kept = rig.bodies[:last_reading] + rig.bodies[last_reading + 1:]
    setup_meter(engine, rig)
    load(engine, kept, rig.now)
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        s.commit()
        assert res.difference_paise < 0
        assert res.explanation == reconcile.READINGS_PENDING
        assert s.execute(select(alerts.Alert)).first() is None


def test_status_older_than_the_newest_readings_still_agrees(engine):
    rig = four_days()
    rig.status()
    first_status = rig.bodies[-1]
    rig.run_until(rig.now + 2 * 3600)  # two more hours of readings after that status
    rig.flush()
    setup_meter(engine, rig)
    load(engine, rig.bodies, rig.now)
    with Session(engine) as s:
        st = s.get(M.StatusRecord, (MID, first_status["s"]))
        res = reconcile.reconcile_meter(s, MID, rig.now, status=st)
        assert res.difference_paise == 0
        assert res.explanation == reconcile.AGREES


def test_wrong_opening_balance_is_a_mismatch(engine):
    rig = four_days()
    rig.status()
    setup_meter(engine, rig, opening=19000)  # the meter was commissioned with 20000
    load(engine, rig.bodies, rig.now)
    with Session(engine) as s:
        res = reconcile.reconcile_meter(s, MID, rig.now)
        assert res.difference_paise == 1000  # 20000 - 19000
        assert res.explanation == reconcile.MISMATCH
