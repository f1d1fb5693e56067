"""Operational alerts: raise with storm suppression, detect from stored uplinks, acknowledge.

Kinds (``KINDS``): low credit, disconnected, tamper (cover open, magnet,
reverse current, neutral missing), water leak (flow through every night
interval for N nights), communication loss (no heartbeat for N intervals),
reconciliation mismatch, command expired, data gap, low credit forecast
(``headend/forecast.py``: credit expected to run out within a few days),
campaign halted (a tenant alert with no meter, ``headend/campaigns.py``).

Suppression, so a feeder outage pages once instead of 40 000 times:

* one alert per (meter, kind) per ``window_s``: a repeat inside the window
  only bumps ``count`` and ``last_seen_at`` of the open alert;
* storm mode per (tenant, kind): when more than ``storm_pct`` % of the
  tenant's active meters (and at least ``storm_min_meters``) raised the kind
  inside the window, ONE tenant alert (``meter_id`` NULL, ``storm`` true)
  summarises them; later meters are attached to it (``storm_id``) and are
  not notified.

Only an outcome with ``notify`` true should reach a person (``headend.notify``).

>>> out = raise_alert(session, "UJ-1", COMM_LOSS, now, "no heartbeat for 1 h")  # doctest: +SKIP
>>> out.notify, out.alert.kind                                                # doctest: +SKIP
(True, 'comm_loss')
"""
from sqlalchemy import (BigInteger, Boolean, ForeignKey, Integer, String, Text, func, select,
                        update)
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core import events as ev
from firmware.core import localtime
from firmware.core.metering import PROFILE_POWER_OFF
from headend import models as M
from headend.db import Base
from headend.models import BigId

LOW_CREDIT = "low_credit"
DISCONNECTED = "disconnected"
TAMPER = "tamper"
LEAK = "leak"
COMM_LOSS = "comm_loss"
RECONCILIATION = "reconciliation_mismatch"
COMMAND_EXPIRED = "command_expired"
DATA_GAP = "data_gap"
LOW_CREDIT_FORECAST = "low_credit_forecast"
CAMPAIGN_HALTED = "campaign_halted"  # a tenant alert (no meter): headend/campaigns.py
KINDS = (LOW_CREDIT, DISCONNECTED, TAMPER, LEAK, COMM_LOSS, RECONCILIATION, COMMAND_EXPIRED,
         DATA_GAP, LOW_CREDIT_FORECAST, CAMPAIGN_HALTED)
# who is told: the consumer (SMS/WhatsApp in their language) or the utility's operators
CONSUMER_KINDS = (LOW_CREDIT, DISCONNECTED, LEAK)
SEVERITY = {LOW_CREDIT: "info", DISCONNECTED: "warning", TAMPER: "critical", LEAK: "warning",
            COMM_LOSS: "warning", RECONCILIATION: "critical", COMMAND_EXPIRED: "warning",
            DATA_GAP: "info", LOW_CREDIT_FORECAST: "info", CAMPAIGN_HALTED: "critical"}

TAMPER_CODES = (ev.COVER_OPEN, ev.MAGNET, ev.REVERSE_CURRENT, ev.NEUTRAL_MISSING)


class AlertError(ValueError):
    """An unknown alert kind, an unknown alert id, or a bad policy value."""


class Alert(Base):
    """One alert: per meter, or a tenant-level storm summary (``meter_id`` NULL, ``storm`` true)."""
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    meter_id: Mapped[str | None] = mapped_column(ForeignKey("meters.id"), default=None, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[int] = mapped_column(BigInteger, index=True)
    last_seen_at: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer, default=1)  # occurrences folded into this alert
    storm: Mapped[bool] = mapped_column(Boolean, default=False)
    storm_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"), default=None)
    notified: Mapped[bool] = mapped_column(Boolean, default=False)
    acknowledged_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), default=None)


class AlertCursor(Base):
    """How far a detector has read a meter's event log (highest event_seq seen)."""
    __tablename__ = "alert_cursors"
    detector: Mapped[str] = mapped_column(String(32), primary_key=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    mark: Mapped[int] = mapped_column(BigInteger)


TABLES = (Alert.__table__, AlertCursor.__table__)


def create_tables(engine):
    """Create this module's tables (until they are in an Alembic migration)."""
    Base.metadata.create_all(engine, tables=list(TABLES))


class AlertPolicy:
    """Thresholds, all data.  Times in seconds, energy in the meter's unit (Wh or litres).

    >>> AlertPolicy(storm_pct=30).storm_pct
    30
    """

    def __init__(self, window_s=6 * 3600, storm_pct=20, storm_min_meters=5,
                 interval_s=900, comm_loss_intervals=4, low_credit_paise=None,
                 leak_litres_per_interval=1, leak_nights=3, night_start_s=3600,
                 night_end_s=5 * 3600, utc_offset_s=localtime.IST_OFFSET_S):
        for name, v in (("window_s", window_s), ("storm_pct", storm_pct),
                        ("storm_min_meters", storm_min_meters), ("interval_s", interval_s),
                        ("comm_loss_intervals", comm_loss_intervals),
                        ("leak_litres_per_interval", leak_litres_per_interval),
                        ("leak_nights", leak_nights)):
            if not isinstance(v, int) or v < 1:
                raise AlertError("%s: must be an integer >= 1, got %r" % (name, v))
        if storm_pct > 100:
            raise AlertError("storm_pct: must be <= 100")
        self.window_s = window_s
        self.storm_pct = storm_pct
        self.storm_min_meters = storm_min_meters
        self.interval_s = interval_s
        self.comm_loss_intervals = comm_loss_intervals
        self.low_credit_paise = low_credit_paise  # None: trust the meter's LOW state
        self.leak_litres_per_interval = leak_litres_per_interval
        self.leak_nights = leak_nights
        self.night_start_s = night_start_s  # local second of day, night window [start, end)
        self.night_end_s = night_end_s
        self.utc_offset_s = utc_offset_s


class Outcome:
    """What ``raise_alert`` did: ``alert`` (the row a person should see), ``notify``, ``suppressed``."""
    __slots__ = ("alert", "notify", "suppressed")

    def __init__(self, alert, notify, suppressed):
        self.alert = alert
        self.notify = notify
        self.suppressed = suppressed

    def __repr__(self):
        return "Outcome(kind=%s, meter=%s, storm=%s, notify=%s, suppressed=%s)" % (
            self.alert.kind, self.alert.meter_id, self.alert.storm, self.notify, self.suppressed)


def raise_alert(session, meter_id, kind, now, detail="", policy=None):
    """Record that ``meter_id`` shows ``kind`` at ``now``; suppression as in the module docstring.

    The caller commits.  Returns an ``Outcome``; notify only when ``outcome.notify``.
    """
    if kind not in KINDS:
        raise AlertError("kind: unknown alert kind %r" % (kind,))
    policy = policy or AlertPolicy()
    since = now - policy.window_s
    meter = session.get(M.Meter, meter_id)
    if meter is None:
        raise AlertError("meter %r is not registered" % (meter_id,))
    same = session.execute(
        select(Alert).where(Alert.meter_id == meter_id, Alert.kind == kind,
                            Alert.opened_at > since).order_by(Alert.opened_at.desc())
        .limit(1)).scalar_one_or_none()
    if same is not None:
        same.count += 1
        same.last_seen_at = now
        return Outcome(same, False, True)
    storm = _open_storm(session, meter.tenant_id, kind, since)
    alert = Alert(tenant_id=meter.tenant_id, meter_id=meter_id, kind=kind,
                  severity=SEVERITY[kind], detail=detail, opened_at=now, last_seen_at=now,
                  count=1, storm=False)
    session.add(alert)
    if storm is not None:
        alert.storm_id = storm.id
        storm.count += 1
        storm.last_seen_at = now
        return Outcome(storm, False, True)
    session.flush()
    storm = _maybe_start_storm(session, meter.tenant_id, kind, now, since, policy)
    if storm is not None:
        return Outcome(storm, True, True)
    return Outcome(alert, True, False)


def _open_storm(session, tenant_id, kind, since):
    return session.execute(
        select(Alert).where(Alert.tenant_id == tenant_id, Alert.kind == kind,
                            Alert.storm.is_(True), Alert.opened_at > since)
        .order_by(Alert.opened_at.desc()).limit(1)).scalar_one_or_none()


def _maybe_start_storm(session, tenant_id, kind, now, since, policy):
    affected = session.execute(
        select(func.count(func.distinct(Alert.meter_id))).where(
            Alert.tenant_id == tenant_id, Alert.kind == kind, Alert.meter_id.is_not(None),
            Alert.opened_at > since)).scalar()
    fleet = session.execute(select(func.count()).select_from(M.Meter).where(
        M.Meter.tenant_id == tenant_id, M.Meter.active.is_(True))).scalar()
    # integer form of affected / fleet > storm_pct %
    if affected < policy.storm_min_meters or affected * 100 <= policy.storm_pct * fleet:
        return None
    storm = Alert(tenant_id=tenant_id, meter_id=None, kind=kind, severity="critical",
                  detail="%d of %d meters raised %s within %d s" % (
                      affected, fleet, kind, policy.window_s),
                  opened_at=now, last_seen_at=now, count=affected, storm=True)
    session.add(storm)
    session.flush()
    session.execute(update(Alert).where(
        Alert.tenant_id == tenant_id, Alert.kind == kind, Alert.meter_id.is_not(None),
        Alert.opened_at > since, Alert.storm_id.is_(None)).values(storm_id=storm.id))
    return storm


def acknowledge(session, alert_id, user, now):
    """Mark an alert acknowledged (idempotent: the first acknowledgement is kept).

    Acknowledging a storm acknowledges the meter alerts folded into it.
    """
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise AlertError("alert %r does not exist" % (alert_id,))
    if alert.acknowledged_at is None:
        alert.acknowledged_at = now
        alert.acknowledged_by = user
        if alert.storm:
            session.execute(update(Alert).where(Alert.storm_id == alert.id,
                                                Alert.acknowledged_at.is_(None))
                            .values(acknowledged_at=now, acknowledged_by=user))
    return alert


def open_alerts(session, tenant_id=None, kind=None):
    """Unacknowledged alerts a person should look at (storm members hidden behind their storm)."""
    q = select(Alert).where(Alert.acknowledged_at.is_(None), Alert.storm_id.is_(None))
    if tenant_id is not None:
        q = q.where(Alert.tenant_id == tenant_id)
    if kind is not None:
        q = q.where(Alert.kind == kind)
    return list(session.execute(q.order_by(Alert.opened_at, Alert.id)).scalars())


# --- detectors ---------------------------------------------------------------
# Each reads stored uplinks and returns the list of Outcomes of the alerts it raised.

def check_credit(session, now, policy=None):
    """LOW_CREDIT and DISCONNECTED from each meter's latest status (``meter_balances``)."""
    policy = policy or AlertPolicy()
    out = []
    for bal in session.execute(select(M.MeterBalance)).scalars():
        if bal.state == "DISCONNECTED" or not bal.relay_closed and bal.state != "OK":
            out.append(raise_alert(session, bal.meter_id, DISCONNECTED, now,
                                   "supply disconnected, balance %d paise" % bal.balance_paise,
                                   policy))
        elif bal.state in ("LOW", "EMERGENCY", "DISCONNECT_PENDING") or (
                policy.low_credit_paise is not None and bal.balance_paise < policy.low_credit_paise):
            out.append(raise_alert(session, bal.meter_id, LOW_CREDIT, now,
                                   "balance %d paise (%s)" % (bal.balance_paise, bal.state), policy))
    return out


def _advance_cursor(session, detector, meter_id, mark):
    cur = session.get(AlertCursor, (detector, meter_id))
    if cur is None:
        session.add(AlertCursor(detector=detector, meter_id=meter_id, mark=mark))
    elif mark > cur.mark:
        cur.mark = mark


def check_tamper(session, now, policy=None):
    """TAMPER for cover-open, magnet, reverse-current and neutral-missing events not yet seen.

    Reads each meter's events above its cursor, so a late-delivered event
    (meter offline for a day) still alerts, and a re-run does not re-alert.
    """
    policy = policy or AlertPolicy()
    marks = dict(session.execute(select(AlertCursor.meter_id, AlertCursor.mark)
                                 .where(AlertCursor.detector == TAMPER)).all())
    rows = session.execute(select(M.EventRecord).order_by(M.EventRecord.meter_id,
                                                          M.EventRecord.event_seq)).scalars()
    out = []
    top = {}
    for e in rows:
        if e.event_seq <= marks.get(e.meter_id, -1):
            continue
        top[e.meter_id] = e.event_seq
        if e.code in TAMPER_CODES:
            out.append(raise_alert(session, e.meter_id, TAMPER, now,
                                   "%s at %d" % (ev.NAMES.get(e.code, e.code), e.t), policy))
    for meter_id, mark in top.items():
        _advance_cursor(session, TAMPER, meter_id, mark)
    return out


def check_comm_loss(session, now, policy=None):
    """COMM_LOSS for active meters whose last heartbeat arrived more than N intervals ago.

    Uses the head-end's receive time (``uplinks_seen.received_at``), not the
    meter's clock, which may be the very thing that is broken.  A meter never
    heard from counts from its ``installed_at``; without that it is skipped.
    """
    policy = policy or AlertPolicy()
    limit = policy.comm_loss_intervals * policy.interval_s
    last = dict(session.execute(
        select(M.UplinkSeen.meter_id, func.max(M.UplinkSeen.received_at))
        .where(M.UplinkSeen.kind == "heartbeat").group_by(M.UplinkSeen.meter_id)).all())
    out = []
    for meter in session.execute(select(M.Meter).where(M.Meter.active.is_(True))
                                 .order_by(M.Meter.id)).scalars():
        seen = last.get(meter.id, meter.installed_at)
        if seen is not None and now - seen > limit:
            out.append(raise_alert(session, meter.id, COMM_LOSS, now,
                                   "no heartbeat for %d s" % (now - seen), policy))
    return out


def night_windows(now, policy):
    """The last ``leak_nights`` complete night windows before ``now``: [(start_utc, end_utc)]."""
    off = policy.utc_offset_s
    day = localtime.local_day(now, off)
    wins = []
    while len(wins) < policy.leak_nights:
        mid = localtime.local_midnight_utc(day, off)
        start = mid + policy.night_start_s
        end = mid + policy.night_end_s
        if policy.night_end_s <= policy.night_start_s:  # window crosses midnight
            start -= localtime.DAY_S
        if end <= now:
            wins.append((start, end))
        day -= 1
    return wins


def check_leak(session, now, policy=None):
    """LEAK for water meters that showed flow in EVERY night interval of the last N nights.

    A household's taps stop at night; a running toilet or burst pipe does
    not.  Each night window must be fully covered by actual readings (a
    missing or POWER_OFF interval proves nothing) with each interval at or
    above ``leak_litres_per_interval``.
    """
    policy = policy or AlertPolicy()
    iv = policy.interval_s
    wins = night_windows(now, policy)
    lo = min(s for s, _ in wins)
    hi = max(e for _, e in wins)
    out = []
    meters = session.execute(select(M.Meter.id).where(M.Meter.active.is_(True),
                                                      M.Meter.service == "water")).scalars()
    for meter_id in meters:
        rows = session.execute(select(M.Reading.start_t, M.Reading.energy, M.Reading.flags)
                               .where(M.Reading.meter_id == meter_id, M.Reading.start_t >= lo,
                                      M.Reading.start_t < hi,
                                      M.Reading.estimated.is_(False))).all()
        flow = {t: e for t, e, f in rows if not f & PROFILE_POWER_OFF}
        leaking = True
        least = None
        for start, end in wins:
            for t in range(start, end, iv):
                litres = flow.get(t)
                if litres is None or litres < policy.leak_litres_per_interval:
                    leaking = False
                    break
                least = litres if least is None or litres < least else least
            if not leaking:
                break
        if leaking:
            out.append(raise_alert(session, meter_id, LEAK, now,
                                   "flow in every night interval for %d nights (min %d L)"
                                   % (len(wins), least), policy))
    return out


def run_checks(session, now, policy=None):
    """All detectors once; returns the outcomes (the caller commits and notifies)."""
    policy = policy or AlertPolicy()
    out = []
    for check in (check_credit, check_tamper, check_comm_loss, check_leak):
        out.extend(check(session, now, policy))
    return out
