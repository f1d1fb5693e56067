"""VEE: validation, gap detection with backfill requests, and estimation of interval data.

Validation rules (``validate``, pure, over one meter's records in time order):

=============  ==============================================================
SPIKE          energy > ``spike_multiple`` x the meter's typical interval
               energy (lower median of its positive intervals); an AFTER_GAP
               record may hold the whole gap's usage, so its allowance grows
               with the POWER_OFF span before it
NEGATIVE       energy < 0 (a register went back or a decoder bug)
ZERO_RUN       ``zero_run_intervals`` or more consecutive zero intervals while
               supplied (a stuck pulse input or a bypass); POWER_OFF is not zero use
OVERLAP        a record starts before the previous one ended
MISALIGNED     start not a multiple of the interval (clock or firmware error)
FUTURE         starts after ``now + future_tolerance_s`` (meter clock ahead)
FAR_PAST       starts more than ``max_age_s`` before ``now`` (clock reset to 1970/2000)
DUPLICATE      (``check_incoming``) a record re-sent with the same energy: harmless
CONFLICT       (``check_incoming``) a re-sent record with a DIFFERENT energy: the
               stored one is kept (first write wins) and the conflict flagged
=============  ==============================================================

Gaps (``find_gaps``): intervals no record covers.  A POWER_OFF record covers
its whole span, so an outage is not a gap.  Each gap is tracked as a
``BackfillRequest`` row (interval time range), closed when actual records
cover it.  Recovery itself goes by uplink sequence number, not by time: the
ingest's sequence-gap scanner sends the ``backfill [id, first_s, last_s]``
downlink (``store.request_backfills``, docs/protocol.md), and the re-sent
readings close these interval gaps when they land.

Estimation fills gaps in a separate table (``EstimatedReading``, flagged with
its method), never in ``readings``: an actual record always wins, also when
it arrives after the estimate.  Linear: interpolate between the intervals
either side of the gap.  Profile: the mean of the same interval on previous days.

>>> find_gaps([(0, 5, 0, 900), (2700, 7, 0, 900)], 900)
[(900, 2700)]
>>> estimate_linear(10, 20, 4)          # 10 + 10*i//5 for i = 1..4
[12, 14, 16, 18]
"""
from sqlalchemy import (BigInteger, Boolean, ForeignKey, Integer, String, Text,
                        UniqueConstraint, select)
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core.metering import PROFILE_AFTER_GAP, PROFILE_POWER_OFF
from headend import models as M
from headend.db import Base
from headend.models import BigId

SPIKE = "SPIKE"
NEGATIVE = "NEGATIVE"
ZERO_RUN = "ZERO_RUN"
OVERLAP = "OVERLAP"
MISALIGNED = "MISALIGNED"
FUTURE = "FUTURE"
FAR_PAST = "FAR_PAST"
DUPLICATE = "DUPLICATE"
CONFLICT = "CONFLICT"

LINEAR = "linear"
PROFILE = "profile"

OPEN = "OPEN"
SATISFIED = "SATISFIED"


class VeeError(ValueError):
    """Bad VEE configuration or an estimation that cannot be made."""


class VeeConfig:
    """Validation thresholds, all data (per service: water is often zero at night).

    >>> VeeConfig(spike_multiple=8).spike_multiple
    8
    """

    def __init__(self, spike_multiple=10, min_typical=1, zero_run_intervals=8,
                 future_tolerance_s=300, max_age_s=400 * 86400, lookback_s=7 * 86400,
                 report_delay_intervals=2, profile_days=7):
        for name, v in (("spike_multiple", spike_multiple), ("min_typical", min_typical),
                        ("zero_run_intervals", zero_run_intervals),
                        ("future_tolerance_s", future_tolerance_s), ("max_age_s", max_age_s),
                        ("lookback_s", lookback_s),
                        ("report_delay_intervals", report_delay_intervals),
                        ("profile_days", profile_days)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise VeeError("%s: must be an integer >= 0, got %r" % (name, v))
        if spike_multiple < 1:
            raise VeeError("spike_multiple: must be >= 1")
        self.spike_multiple = spike_multiple
        self.min_typical = min_typical  # below this typical use, spikes are not judged
        self.zero_run_intervals = zero_run_intervals  # 0 disables (e.g. water)
        self.future_tolerance_s = future_tolerance_s
        self.max_age_s = max_age_s
        self.lookback_s = lookback_s
        self.report_delay_intervals = report_delay_intervals  # closed but not yet sent: no gap
        self.profile_days = profile_days


class Finding:
    """One validation result: interval start, rule, human detail."""
    __slots__ = ("start_t", "rule", "detail")

    def __init__(self, start_t, rule, detail=""):
        self.start_t = start_t
        self.rule = rule
        self.detail = detail

    def __repr__(self):
        return "Finding(%d, %s, %r)" % (self.start_t, self.rule, self.detail)

    def key(self):
        return (self.start_t, self.rule)


# --- tables ------------------------------------------------------------------

class VeeFlag(Base):
    """A validation finding on one stored interval (the reading itself is never edited)."""
    __tablename__ = "vee_flags"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    start_t: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rule: Mapped[str] = mapped_column(String(16), primary_key=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    detected_at: Mapped[int] = mapped_column(BigInteger)


class BackfillRequest(Base):
    """Ask the meter to re-send its records in [from_t, to_t); SATISFIED once covered."""
    __tablename__ = "backfill_requests"
    __table_args__ = (UniqueConstraint("meter_id", "from_t", "to_t"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    from_t: Mapped[int] = mapped_column(BigInteger)
    to_t: Mapped[int] = mapped_column(BigInteger)
    requested_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12), default=OPEN)
    satisfied_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    command_id: Mapped[str | None] = mapped_column(String(64), default=None)


class EstimatedReading(Base):
    """An estimated interval, kept apart from actual readings and flagged with its method."""
    __tablename__ = "estimated_readings"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    start_t: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    energy: Mapped[int] = mapped_column(BigInteger)
    span_s: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)


TABLES = (VeeFlag.__table__, BackfillRequest.__table__, EstimatedReading.__table__)


def create_tables(engine):
    """Create this module's tables (until they are in an Alembic migration)."""
    Base.metadata.create_all(engine, tables=list(TABLES))


# --- pure rules ----------------------------------------------------------------

def typical_energy(records):
    """Lower median of the positive energies of supplied, ordinary intervals (0 if none)."""
    vals = sorted(r[1] for r in records if r[1] > 0 and not r[2] & (PROFILE_POWER_OFF |
                                                                      PROFILE_AFTER_GAP))
    if not vals:
        return 0
    return vals[(len(vals) - 1) // 2]


def validate(records, now, interval_s, config=None, typical=None):
    """Findings for ``records`` ((start_t, energy, flags, span_s), time order) at ``now``.

    >>> [f.rule for f in validate([(0, 10, 0, 900), (900, 500, 0, 900)], 1800, 900,
    ...                           VeeConfig(spike_multiple=10), typical=10)]
    ['SPIKE']
    """
    cfg = config or VeeConfig()
    typical = typical_energy(records) if typical is None else typical
    out = []
    prev_end = None
    prev_off = 0  # span of the POWER_OFF record just before, for AFTER_GAP allowance
    zeros = []
    for start, energy, flags, span in records:
        if start % interval_s:
            out.append(Finding(start, MISALIGNED, "start %d not a multiple of %d" % (start,
                                                                                   interval_s)))
        if start > now + cfg.future_tolerance_s:
            out.append(Finding(start, FUTURE, "%d s after now" % (start - now)))
        elif start < now - cfg.max_age_s:
            out.append(Finding(start, FAR_PAST, "%d s before now" % (now - start)))
        if prev_end is not None and start < prev_end:
            out.append(Finding(start, OVERLAP, "previous record ends at %d" % prev_end))
        prev_end = start + span if prev_end is None or start + span > prev_end else prev_end
        if flags & PROFILE_POWER_OFF:
            prev_off = span
            _close_zero_run(zeros, cfg, out)
            continue
        if energy < 0:
            out.append(Finding(start, NEGATIVE, "energy %d" % energy))
        elif energy == 0:
            zeros.append(start)
        else:
            _close_zero_run(zeros, cfg, out)
        if typical >= cfg.min_typical and typical > 0:
            intervals = 1 + (prev_off // interval_s if flags & PROFILE_AFTER_GAP else 0)
            limit = cfg.spike_multiple * typical * intervals
            if energy > limit:
                out.append(Finding(start, SPIKE, "%d > %d x typical %d x %d interval(s)" % (
                    energy, cfg.spike_multiple, typical, intervals)))
        prev_off = 0
    _close_zero_run(zeros, cfg, out)
    return out


def _close_zero_run(zeros, cfg, out):
    if cfg.zero_run_intervals and len(zeros) >= cfg.zero_run_intervals:
        for t in zeros:
            out.append(Finding(t, ZERO_RUN, "%d zero intervals from %d" % (len(zeros), zeros[0])))
    del zeros[:]


def check_incoming(stored, records):
    """DUPLICATE / CONFLICT findings for incoming ``records`` against ``stored`` {start_t: energy}."""
    out = []
    for start, energy, _flags, _span in records:
        if start in stored:
            if stored[start] == energy:
                out.append(Finding(start, DUPLICATE, "re-sent, same energy %d" % energy))
            else:
                out.append(Finding(start, CONFLICT, "stored %d, re-sent %d" % (stored[start],
                                                                               energy)))
    return out


def flag_incoming(session, meter_id, records, now):
    """Store DUPLICATE / CONFLICT flags for records about to be written; returns the findings.

    Call before ``UplinkStore.write`` (which keeps the first copy silently).
    """
    starts = [r[0] for r in records]
    stored = dict(session.execute(select(M.Reading.start_t, M.Reading.energy).where(
        M.Reading.meter_id == meter_id, M.Reading.start_t.in_(starts))).all()) if starts else {}
    found = check_incoming(stored, records)
    for f in found:
        if session.get(VeeFlag, (meter_id, f.start_t, f.rule)) is None:
            session.add(VeeFlag(meter_id=meter_id, start_t=f.start_t, rule=f.rule,
                                detail=f.detail, detected_at=now))
    session.flush()
    return found


def find_gaps(records, interval_s, from_t=None, until_t=None):
    """Uncovered ranges [(from, to)) between ``from_t`` (default: first record) and ``until_t``
    (default: end of the last record).  POWER_OFF records cover their span."""
    if not records and (from_t is None or until_t is None):
        return []
    pos = records[0][0] if from_t is None else from_t
    end = max(r[0] + r[3] for r in records) if until_t is None else until_t
    gaps = []
    for start, _e, _f, span in sorted(records):
        if start >= end:
            break
        if start > pos:
            gaps.append((pos, start))
        if start + span > pos:
            pos = start + span
    if pos < end:
        gaps.append((pos, end))
    return gaps


def estimate_linear(before, after, n):
    """``n`` interval energies interpolated between the energies either side of the gap."""
    if n < 1:
        raise VeeError("n: need at least one interval to estimate")
    return [before + (after - before) * i // (n + 1) for i in range(1, n + 1)]


def estimate_profile(history, start_t, days, day_s=86400):
    """Mean (floor) of ``history`` {start_t: energy} at the same time on the previous ``days``
    days; None when none of them is known."""
    vals = [history[start_t - k * day_s] for k in range(1, days + 1)
            if start_t - k * day_s in history]
    if not vals:
        return None
    return sum(vals) // len(vals)


# --- with the database ------------------------------------------------------------

def _records(session, meter_id, lo, hi):
    rows = session.execute(select(M.Reading.start_t, M.Reading.energy, M.Reading.flags,
                                  M.Reading.span_s).where(
        M.Reading.meter_id == meter_id, M.Reading.start_t + M.Reading.span_s > lo,
        M.Reading.start_t < hi, M.Reading.estimated.is_(False)).order_by(M.Reading.start_t))
    return [tuple(r) for r in rows]


class VeeReport:
    """What ``run_vee`` found: findings, gaps, new backfill requests, requests satisfied."""
    __slots__ = ("findings", "gaps", "requested", "satisfied")

    def __init__(self, findings, gaps, requested, satisfied):
        self.findings = findings
        self.gaps = gaps
        self.requested = requested
        self.satisfied = satisfied


def run_vee(session, meter_id, now, interval_s=900, config=None, since_t=None):
    """Validate a meter's recent records, store flags, detect gaps and request backfill.

    Looks at [since_t (default now - lookback), now - report delay).  The caller commits.
    """
    cfg = config or VeeConfig()
    lo = now - cfg.lookback_s if since_t is None else since_t
    until = (now // interval_s - cfg.report_delay_intervals) * interval_s
    records = _records(session, meter_id, lo, now + cfg.max_age_s)
    findings = validate(records, now, interval_s, cfg)
    known = {(f.start_t, f.rule) for f in session.execute(
        select(VeeFlag).where(VeeFlag.meter_id == meter_id)).scalars()}
    for f in findings:
        if f.key() not in known:
            session.add(VeeFlag(meter_id=meter_id, start_t=f.start_t, rule=f.rule,
                                detail=f.detail, detected_at=now))
            known.add(f.key())
    in_range = [r for r in records if r[0] < until]
    start = in_range[0][0] if in_range else None
    gaps = find_gaps(in_range, interval_s, start, until) if start is not None else []
    requested = []
    for a, b in gaps:
        exists = session.execute(select(BackfillRequest.id).where(
            BackfillRequest.meter_id == meter_id, BackfillRequest.from_t == a,
            BackfillRequest.to_t == b)).first()
        if exists is None:
            req = BackfillRequest(meter_id=meter_id, from_t=a, to_t=b, requested_at=now,
                                  status=OPEN)
            session.add(req)
            requested.append(req)
    satisfied = settle_backfills(session, meter_id, now, interval_s)
    session.flush()
    return VeeReport(findings, gaps, requested, satisfied)


def settle_backfills(session, meter_id, now, interval_s=900):
    """Mark open requests whose range is now covered by actual records SATISFIED; returns them."""
    done = []
    for req in session.execute(select(BackfillRequest).where(
            BackfillRequest.meter_id == meter_id, BackfillRequest.status == OPEN)).scalars():
        recs = _records(session, meter_id, req.from_t, req.to_t)
        if not find_gaps(recs, interval_s, req.from_t, req.to_t):
            req.status = SATISFIED
            req.satisfied_at = now
            done.append(req)
    if done:
        session.execute(EstimatedReading.__table__.update().where(
            EstimatedReading.meter_id == meter_id).values(superseded=True).where(
            EstimatedReading.start_t.in_(
                select(M.Reading.start_t).where(M.Reading.meter_id == meter_id))))
    return done


def estimate_gaps(session, meter_id, gaps, now, method=LINEAR, interval_s=900, config=None):
    """Write EstimatedReading rows for every uncovered interval in ``gaps``; returns them.

    Never touches an interval that has an actual reading.  Linear needs an
    actual interval either side; profile needs the same interval on at least
    one of the previous ``profile_days`` days.  Intervals that cannot be
    estimated are left out (the caller sees fewer rows than intervals).
    """
    if method not in (LINEAR, PROFILE):
        raise VeeError("method: linear or profile, got %r" % (method,))
    cfg = config or VeeConfig()
    made = []
    for a, b in gaps:
        starts = list(range(a, b, interval_s))
        actual = {r[0] for r in _records(session, meter_id, a, b)}
        if method == LINEAR:
            before = session.execute(select(M.Reading.energy).where(
                M.Reading.meter_id == meter_id, M.Reading.start_t == a - interval_s,
                M.Reading.estimated.is_(False))).scalar()
            after = session.execute(select(M.Reading.energy).where(
                M.Reading.meter_id == meter_id, M.Reading.start_t == b,
                M.Reading.estimated.is_(False))).scalar()
            if before is None or after is None:
                continue
            values = dict(zip(starts, estimate_linear(before, after, len(starts))))
        else:
            hist = {r[0]: r[1] for r in _records(session, meter_id,
                                                 a - cfg.profile_days * 86400, a)
                    if not r[2] & (PROFILE_POWER_OFF | PROFILE_AFTER_GAP)}
            values = {s: estimate_profile(hist, s, cfg.profile_days) for s in starts}
        for s in starts:
            v = values.get(s)
            if v is None or s in actual or session.get(EstimatedReading, (meter_id, s)):
                continue
            row = EstimatedReading(meter_id=meter_id, start_t=s, energy=v, span_s=interval_s,
                                   method=method, created_at=now, superseded=False)
            session.add(row)
            made.append(row)
    session.flush()
    return made


def merged_profile(session, meter_id, from_t, to_t):
    """[(start_t, energy, estimated_method or None)] over [from_t, to_t): actual wins."""
    actual = {r[0]: r[1] for r in _records(session, meter_id, from_t, to_t)
              if not r[2] & PROFILE_POWER_OFF}
    out = [(t, e, None) for t, e in actual.items()]
    for row in session.execute(select(EstimatedReading).where(
            EstimatedReading.meter_id == meter_id, EstimatedReading.start_t >= from_t,
            EstimatedReading.start_t < to_t)).scalars():
        if row.start_t not in actual:
            out.append((row.start_t, row.energy, row.method))
    return sorted(out)
