"""Shadow ledger per meter, reconciled to the paisa with the balance the meter reports.

The head-end recomputes what the meter must have debited, with the SAME
tariff code the meter runs (``firmware.core.tariff.Biller``), from what the
meter sent:

    shadow balance = opening balance + top-ups applied - charges
    charges        = Biller over the interval records (time order; the meter
                     charges a step's energy to the interval holding its last
                     second, which is exactly how the profile books it)
                   + the fixed charge of every local day the meter stepped in
                     (a day with a non-POWER_OFF record, and the status's day)

Energy counted before the meter's first profile sample (pulses between
commissioning and the first ``step``) is charged but lies in no interval
record; the cumulative register of the first reading message reveals it
(``cum - opening register - records``) and the shadow books it to the first
record's interval, where the meter charged it.

All of it *as of the status time* ``t``: only records that closed by then
(``start_t + span_s <= t``), only top-ups logged by then.  So a status older
than the newest readings compares with the ledger of its own moment.

The difference ``meter balance - shadow balance`` is then 0 (AGREES) or
explained, or it raises a ``reconciliation_mismatch`` alert:

=================  ==========================================================
OPEN_INTERVAL      the status was taken inside an interval: its energy is
                   charged but the record is not closed.  0 < charge diff <=
                   the charge of that whole interval (once its record arrived)
READINGS_PENDING   intervals before the status time are missing (backfill)
TOPUPS_PENDING     the meter counts more top-ups than the TOPUP_APPLIED events
                   received so far and its event log has unreceived entries
MISMATCH           anything else (tampered or lost data, wrong opening
                   balance or tariff, a meter bug): alerted
=================  ==========================================================

Top-ups come from TOPUP_APPLIED events until the command ledger
(headend/ledger.py, headend/commands.py) exists; ``reconcile_meter`` takes
any ``topups(session, meter_id, since_t, until_t) -> [(t, paise)]``.

>>> open_account(session, "UJ-1", opening_balance_paise=20000, opened_at=t0,
...              tariffs=[EXAMPLE_CONFIG["tariff"]])                       # doctest: +SKIP
>>> reconcile_meter(session, "UJ-1", now).difference_paise                 # doctest: +SKIP
0
"""
import json

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core import events as ev
from firmware.core import tariff
from firmware.core.metering import PROFILE_POWER_OFF
from headend import alerts
from headend import models as M
from headend.db import Base
from headend.models import BigId

AGREES = "AGREES"
OPEN_INTERVAL = "OPEN_INTERVAL"
READINGS_PENDING = "READINGS_PENDING"
TOPUPS_PENDING = "TOPUPS_PENDING"
MISMATCH = "MISMATCH"
EXPLAINED = (AGREES, OPEN_INTERVAL, READINGS_PENDING, TOPUPS_PENDING)


class ReconcileError(ValueError):
    """No shadow account, no status yet, or unusable tariff data."""


class ShadowAccount(Base):
    """What the head-end knows about a meter's money at commissioning.

    ``tariffs_json``: JSON list of tariff dicts, the first in force at
    ``opened_at``, each later one taking over from the first interval that
    starts at or after its ``activates_at`` (as ``TariffSchedule`` does).
    """
    __tablename__ = "shadow_accounts"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    opening_balance_paise: Mapped[int] = mapped_column(BigInteger)
    opened_at: Mapped[int] = mapped_column(BigInteger)
    opening_register: Mapped[int] = mapped_column(BigInteger, default=0)  # Wh/L at opening
    tariffs_json: Mapped[str] = mapped_column(Text)


class ReconciliationResult(Base):
    """One comparison of the shadow ledger with one status uplink (re-run updates it)."""
    __tablename__ = "reconciliation_results"
    __table_args__ = (UniqueConstraint("meter_id", "status_seq"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    status_seq: Mapped[int] = mapped_column(BigInteger)
    status_t: Mapped[int] = mapped_column(BigInteger)
    checked_at: Mapped[int] = mapped_column(BigInteger)
    opening_balance_paise: Mapped[int] = mapped_column(BigInteger)
    shadow_topups_paise: Mapped[int] = mapped_column(BigInteger)
    shadow_charges_paise: Mapped[int] = mapped_column(BigInteger)
    shadow_balance_paise: Mapped[int] = mapped_column(BigInteger)
    meter_balance_paise: Mapped[int] = mapped_column(BigInteger)
    meter_topups_paise: Mapped[int] = mapped_column(BigInteger)
    meter_charges_paise: Mapped[int] = mapped_column(BigInteger)
    difference_paise: Mapped[int] = mapped_column(BigInteger)  # meter - shadow
    explanation: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(Text, default="")


TABLES = (ShadowAccount.__table__, ReconciliationResult.__table__)


def create_tables(engine):
    """Create this module's tables (until they are in an Alembic migration)."""
    Base.metadata.create_all(engine, tables=list(TABLES))


def open_account(session, meter_id, opening_balance_paise, opened_at, tariffs,
                 opening_register=0):
    """Create (or replace) the shadow account of a meter; ``tariffs`` are tariff dicts."""
    checked = [tariff.Tariff.from_dict(d).to_dict() for d in tariffs]  # TariffError if bad
    if not checked:
        raise ReconcileError("tariffs: at least the tariff in force at opening")
    acc = session.get(ShadowAccount, meter_id)
    if acc is None:
        acc = ShadowAccount(meter_id=meter_id)
        session.add(acc)
    acc.opening_balance_paise = opening_balance_paise
    acc.opened_at = opened_at
    acc.opening_register = opening_register
    acc.tariffs_json = json.dumps(checked)
    return acc


class Charges:
    """Result of ``shadow_charges``: total paise, local days charged, intervals charged."""
    __slots__ = ("paise", "days", "intervals")

    def __init__(self, paise, days, intervals):
        self.paise = paise
        self.days = days  # sorted local day numbers that got a fixed charge
        self.intervals = intervals


def shadow_charges(tariffs, records, status_t, pre_energy=0):
    """Paise the meter must have debited by ``status_t`` for ``records``.

    ``tariffs``: tariff dicts (schedule as in ShadowAccount); ``records``:
    (start_t, energy, flags, span_s) in time order, all closed by ``status_t``;
    ``pre_energy``: energy charged with the first record but counted before it.

    >>> shadow_charges([{"id": "F", "version": 1, "service": "electricity", "unit_size": 1000,
    ...     "slabs": [[None, 400]], "fixed_paise_per_day": 100}],
    ...     [(1795737600, 1500, 0, 900)], 1795738500).paise       # 1.5 kWh * 400 + 100
    700
    """
    ts = [tariff.Tariff.from_dict(d) for d in tariffs]
    sched = tariff.TariffSchedule(ts[0])
    staged = ts[1:]
    biller = tariff.Biller(ts[0])
    intervals = 0
    days = []

    def charge_day(t):
        before = biller.fixed_day
        biller.charge_day(t)
        if biller.fixed_day != before:
            days.append(biller.fixed_day)

    def advance(t):
        while True:
            if sched.passive is None and staged:
                sched.set_passive(staged.pop(0))
            if not sched.apply_due(t):
                return
            biller.use_tariff(sched.active)

    for start, energy, flags, _span in records:
        if flags & PROFILE_POWER_OFF:
            continue  # no step happened in a POWER_OFF span: no usage, no fixed charge
        if energy < 0:
            raise ReconcileError("record at %d: negative energy %d" % (start, energy))
        advance(start)
        if pre_energy:
            energy += pre_energy
            pre_energy = 0
        if energy > 0:
            biller.charge_usage(start, energy)
            intervals += 1
        charge_day(start)
    advance(status_t - 1)
    charge_day(status_t)  # the step that produced the status charged its own day
    return Charges(biller.acc.debited, days, intervals)


def topups_from_events(session, meter_id, since_t, until_t):
    """[(t, paise)] of TOPUP_APPLIED events logged in [since_t, until_t]."""
    rows = session.execute(select(M.EventRecord.t, M.EventRecord.value).where(
        M.EventRecord.meter_id == meter_id, M.EventRecord.code == ev.TOPUP_APPLIED,
        M.EventRecord.t >= since_t, M.EventRecord.t <= until_t)
        .order_by(M.EventRecord.event_seq)).all()
    return [(t, v) for t, v in rows]


def _events_incomplete(session, meter_id):
    """True when the stored event log has holes (event_seq gaps) or the meter reported losses."""
    lo, hi, n, lost = session.execute(select(
        func.min(M.EventRecord.event_seq), func.max(M.EventRecord.event_seq),
        func.count(), func.max(M.EventRecord.lost_total)).where(
        M.EventRecord.meter_id == meter_id)).one()
    if n == 0:
        return True
    return (hi - lo + 1) != n or lo > 1 or bool(lost)


def _latest_status(session, meter_id):
    return session.execute(select(M.StatusRecord).where(M.StatusRecord.meter_id == meter_id)
                           .order_by(M.StatusRecord.seq.desc()).limit(1)).scalar_one_or_none()


def reconcile_meter(session, meter_id, now, status=None, topups=topups_from_events,
                    interval_s=None, policy=None):
    """Compare the shadow ledger with ``status`` (default: the newest status row).

    Stores and returns a ``ReconciliationResult``; raises a
    ``reconciliation_mismatch`` alert when the difference is not explained.
    The caller commits.
    """
    acc = session.get(ShadowAccount, meter_id)
    if acc is None:
        raise ReconcileError("meter %s has no shadow account (open_account first)" % meter_id)
    status = status or _latest_status(session, meter_id)
    if status is None:
        raise ReconcileError("meter %s has sent no status yet" % meter_id)
    tariffs = json.loads(acc.tariffs_json)
    t = status.t
    rows = session.execute(select(M.Reading.start_t, M.Reading.energy, M.Reading.flags,
                                  M.Reading.span_s).where(
        M.Reading.meter_id == meter_id, M.Reading.estimated.is_(False),
        M.Reading.start_t + M.Reading.span_s > acc.opened_at - 3600,
        M.Reading.start_t + M.Reading.span_s <= t).order_by(M.Reading.start_t)).all()
    records = [tuple(r) for r in rows]
    iv = interval_s or _interval_of(session, meter_id, records)
    pre = _energy_before_first_record(session, meter_id, acc)
    charges = shadow_charges(tariffs, records, t, pre)
    topup_paise = sum(p for _, p in topups(session, meter_id, acc.opened_at, t))
    shadow = acc.opening_balance_paise + topup_paise - charges.paise
    diff = status.balance_paise - shadow
    charge_diff = status.charges_total_paise - charges.paise
    topup_diff = status.topups_total_paise - topup_paise
    explanation, detail = _explain(session, meter_id, acc, status, tariffs, records, iv,
                                   charges.paise, diff, charge_diff, topup_diff)
    res = session.execute(select(ReconciliationResult).where(
        ReconciliationResult.meter_id == meter_id,
        ReconciliationResult.status_seq == status.seq)).scalar_one_or_none()
    if res is None:
        res = ReconciliationResult(meter_id=meter_id, status_seq=status.seq)
        session.add(res)
    res.status_t = t
    res.checked_at = now
    res.opening_balance_paise = acc.opening_balance_paise
    res.shadow_topups_paise = topup_paise
    res.shadow_charges_paise = charges.paise
    res.shadow_balance_paise = shadow
    res.meter_balance_paise = status.balance_paise
    res.meter_topups_paise = status.topups_total_paise
    res.meter_charges_paise = status.charges_total_paise
    res.difference_paise = diff
    res.explanation = explanation
    res.detail = detail
    if explanation == MISMATCH:
        alerts.raise_alert(session, meter_id, alerts.RECONCILIATION, now,
                           "balance differs by %d paise: %s" % (diff, detail), policy)
    return res


def _energy_before_first_record(session, meter_id, acc):
    """Energy the meter counted before its first record: first message's ``cum`` minus records.

    0 unless the earliest reading message we hold also carries the earliest
    record (if the first message was lost, the difference means nothing).
    """
    seen = M.UplinkSeen
    first = session.execute(select(seen).where(
        seen.meter_id == meter_id, seen.kind == "reading").order_by(seen.seq).limit(1)
    ).scalar_one_or_none()
    if first is None:
        return 0
    earliest = session.execute(select(M.Reading.seq).where(
        M.Reading.meter_id == meter_id, M.Reading.estimated.is_(False))
        .order_by(M.Reading.start_t).limit(1)).scalar()
    if earliest != first.seq:
        return 0
    recorded = session.execute(select(func.coalesce(func.sum(M.Reading.energy), 0)).where(
        M.Reading.meter_id == meter_id, M.Reading.estimated.is_(False),
        M.Reading.seq <= first.seq)).scalar()
    pre = first.cum - acc.opening_register - int(recorded)  # SUM(bigint) is NUMERIC on PostgreSQL
    return pre if pre > 0 else 0


def _interval_of(session, meter_id, records):
    for _start, _e, flags, span in reversed(records):
        if not flags & PROFILE_POWER_OFF:
            return span
    iv = session.execute(select(M.UplinkSeen.interval_s).where(
        M.UplinkSeen.meter_id == meter_id, M.UplinkSeen.kind == "reading").limit(1)).scalar()
    return iv or 900


def _covered_until(records, iv):
    """End of the contiguous run of records from the first one (POWER_OFF spans count)."""
    if not records:
        return None
    end = records[0][0]
    for start, _e, _f, span in records:
        if start > end:
            break
        end = max(end, start + span)
    return end


def _explain(session, meter_id, acc, status, tariffs, records, iv, shadow_charges_paise, diff,
             charge_diff, topup_diff):
    t = status.t
    conservation = acc.opening_balance_paise + status.topups_total_paise - status.charges_total_paise
    if status.balance_paise != conservation:
        return MISMATCH, ("meter's own totals do not add up: opening %d + tt %d - tc %d = %d, "
                          "bal %d (wrong opening balance?)" % (
                              acc.opening_balance_paise, status.topups_total_paise,
                              status.charges_total_paise, conservation, status.balance_paise))
    if diff == 0 and charge_diff == 0 and topup_diff == 0:
        return AGREES, "as of status t=%d, %d records" % (t, len(records))
    reasons = []
    if topup_diff != 0:
        if topup_diff > 0 and _events_incomplete(session, meter_id):
            reasons.append((TOPUPS_PENDING, "%d paise of top-ups not yet seen as events"
                            % topup_diff))
        else:
            return MISMATCH, "top-ups differ: meter %d, shadow %d paise" % (
                status.topups_total_paise, status.topups_total_paise - topup_diff)
    if charge_diff != 0:
        why = _explain_charges(session, meter_id, acc, t, tariffs, records, iv,
                               shadow_charges_paise, charge_diff)
        if why is None:
            return MISMATCH, "charges differ: meter %d, shadow %d paise" % (
                status.charges_total_paise, shadow_charges_paise)
        reasons.append(why)
    return reasons[-1][0], "; ".join(r[1] for r in reasons)


def _explain_charges(session, meter_id, acc, t, tariffs, records, iv, shadow_paise, charge_diff):
    if charge_diff < 0:
        return None  # the meter charged LESS than its own records cost: never benign
    open_start = t - t % iv
    covered = _covered_until(records, iv)
    if covered is not None and covered < open_start:
        return (READINGS_PENDING, "records end at %d, %d s before the open interval; "
                "%d paise charged for them" % (covered, open_start - covered, charge_diff))
    if open_start == t:
        return None  # status on a boundary: every charged interval has closed
    later = session.execute(select(M.Reading.start_t, M.Reading.energy, M.Reading.flags,
                                   M.Reading.span_s).where(
        M.Reading.meter_id == meter_id, M.Reading.start_t == open_start,
        M.Reading.estimated.is_(False))).first()
    if later is None:
        return (OPEN_INTERVAL, "interval %d still open at status t=%d; %d paise charged, "
                "record not received yet" % (open_start, t, charge_diff))
    # the partial interval's charge is at most the whole interval's charge
    pre = _energy_before_first_record(session, meter_id, acc)
    bound = shadow_charges(tariffs, records + [tuple(later)], t, pre).paise - shadow_paise
    if charge_diff <= bound:
        return (OPEN_INTERVAL, "interval %d open at status t=%d: %d paise <= %d for the whole "
                "interval" % (open_start, t, charge_diff, bound))
    return None


def reconcile_all(session, now, policy=None):
    """Reconcile every meter with a shadow account and a status; returns the results."""
    ids = session.execute(select(ShadowAccount.meter_id).order_by(ShadowAccount.meter_id)).scalars()
    out = []
    for meter_id in list(ids):
        if _latest_status(session, meter_id) is not None:
            out.append(reconcile_meter(session, meter_id, now, policy=policy))
    return out

