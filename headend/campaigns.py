"""Campaigns: one tariff, configuration or firmware change rolled out over many meters in stages.

A campaign covers a tenant's active meters (or a list of them) and splits
them into stages by cumulative share, e.g. ``[1, 10, 100]``: a pilot of 1 %,
then up to 10 %, then everyone.  The order is a hash of the meter id, so the
pilot is a spread of the fleet, not its lowest ids, and the same on every
run.  ``advance`` (a periodic job, ``headend.jobs.CampaignJob``) looks at the
current stage:

- failed targets * 100 > ``failure_pct`` * stage size: the campaign is
  HALTED and a tenant alert (``campaign_halted``) raised; nothing new starts;
- done targets * 100 >= ``success_pct`` * stage size: the next stage starts
  (or the campaign is COMPLETED after the last one).

A target is done when its command reached APPLIED (tariff, config), or, for
firmware, when its OTA job (``headend.ota``) is CONFIRMED: the meter's
heartbeat reports the new ``fw`` after the reboot.  A firmware campaign needs
a second approver (another operator or admin of the tenant), like a mass
disconnect in ``headend.guardrails``; the others start at once.

Campaign lifecycle (``TRANSITIONS``; anything else is GuardrailError
"illegal_transition")::

    PENDING_APPROVAL --approve--> RUNNING --complete--> COMPLETED
           |  --reject--> REJECTED     |  --halt--> HALTED
           +---------- cancel ---------+------------+--cancel--> CANCELLED

Every create, decision, stage, halt and completion is an ``audit_log`` row
(``headend.guardrails.audit``) in the same transaction.  Roles reuse
``headend.auth.PERMISSIONS``: creating needs ``commands.tariff`` (admin,
operator), approving ``commands.approve``, reading ``commands.read``.

>>> c = create(session, op, tenant_id=1, kind="config", meter_ids=None,       # doctest: +SKIP
...            args=["heartbeat_s", "600"], now=T0, rules=StageRules([1, 10, 100], 95, 5))
>>> c.state, [s["size"] for s in stage_summary(session, c)]                   # doctest: +SKIP
('RUNNING', [1, 1, 18])
"""
import hashlib
import json

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core import tariff as fw_tariff
from headend import auth as A
from headend import commands as C
from headend import guardrails as G
from headend import models as M
from headend import ota
from headend.db import Base

PENDING_APPROVAL, RUNNING, HALTED, COMPLETED, REJECTED, CANCELLED = (
    "PENDING_APPROVAL", "RUNNING", "HALTED", "COMPLETED", "REJECTED", "CANCELLED")
STATES = (PENDING_APPROVAL, RUNNING, HALTED, COMPLETED, REJECTED, CANCELLED)
TRANSITIONS = {
    (PENDING_APPROVAL, "approve"): RUNNING,
    (PENDING_APPROVAL, "reject"): REJECTED,
    (PENDING_APPROVAL, "cancel"): CANCELLED,
    (RUNNING, "halt"): HALTED,
    (RUNNING, "complete"): COMPLETED,
    (RUNNING, "cancel"): CANCELLED,
    (HALTED, "cancel"): CANCELLED,
}
KINDS = ("tariff", "config", "firmware")
NEEDS_APPROVAL = ("firmware",)
# target states: WAITING (its stage has not started), ACTIVE, DONE, FAILED, SKIPPED (cancelled)
WAITING, ACTIVE, DONE, TARGET_FAILED, SKIPPED = "WAITING", "ACTIVE", "DONE", "FAILED", "SKIPPED"
PERMISSION = {"create": "commands.tariff", "approve": "commands.approve", "read": "commands.read"}
HALT_ALERT = "campaign_halted"  # headend.alerts.CAMPAIGN_HALTED


class StageRules:
    """Stage shares (cumulative percent, strictly rising, ending at 100) and the
    advance / halt thresholds (percent of a stage's targets).

    >>> StageRules([1, 10, 100], 95, 5).sizes(250)
    [3, 22, 225]
    """

    def __init__(self, stages, success_pct, failure_pct):
        if not isinstance(stages, (list, tuple)) or not stages or \
                any(type(p) is not int for p in stages) or stages[-1] != 100 or \
                stages[0] < 1 or any(b <= a for a, b in zip(stages, stages[1:])):
            raise G.GuardrailError("bad_request", "stages must be rising whole percentages "
                                   "ending at 100, e.g. [1, 10, 100]; got %r" % (stages,))
        if type(success_pct) is not int or not 1 <= success_pct <= 100:
            raise G.GuardrailError("bad_request", "success_pct must be 1..100")
        if type(failure_pct) is not int or not 0 <= failure_pct <= 100:
            raise G.GuardrailError("bad_request", "failure_pct must be 0..100")
        self.stages = list(stages)
        self.success_pct, self.failure_pct = success_pct, failure_pct

    def sizes(self, n):
        """Meters per stage for ``n`` targets: ceil(n * pct / 100) cumulative, integers only."""
        cum = [-(-n * p // 100) for p in self.stages]
        return [b - a for a, b in zip([0] + cum, cum)]

    @classmethod
    def from_settings(cls, settings, stages=None, success_pct=None, failure_pct=None):
        default = [int(p) for p in settings.campaign_stages.split(",")]
        return cls(default if stages is None else stages,
                   settings.campaign_success_pct if success_pct is None else success_pct,
                   settings.campaign_failure_pct if failure_pct is None else failure_pct)


class Campaign(Base):
    """A staged roll-out of one change over a tenant's meters."""
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    args: Mapped[str] = mapped_column(Text)          # JSON: the command fields after the id
    stages: Mapped[str] = mapped_column(String(200))  # JSON: cumulative percentages
    success_pct: Mapped[int] = mapped_column(Integer)
    failure_pct: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), index=True)
    stage: Mapped[int] = mapped_column(Integer, default=0)  # current stage, 0-based
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    decided_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    def as_dict(self):
        return {"id": self.id, "tenant_id": self.tenant_id, "kind": self.kind,
                "args": json.loads(self.args), "stages": json.loads(self.stages),
                "success_pct": self.success_pct, "failure_pct": self.failure_pct,
                "state": self.state, "stage": self.stage, "created_by": self.created_by,
                "created_at": self.created_at, "decided_by": self.decided_by,
                "decided_at": self.decided_at, "updated_at": self.updated_at,
                "reason": self.reason}


class CampaignTarget(Base):
    """One meter of a campaign: its stage and what came of it."""
    __tablename__ = "campaign_targets"
    __table_args__ = (Index("ix_campaign_targets_stage", "campaign_id", "stage"),)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12), default=WAITING)
    command_id: Mapped[str | None] = mapped_column(String(C.ID_MAX), default=None)
    ota_job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    started_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)


def _check_args(session, kind, args):
    if kind not in KINDS:
        raise G.GuardrailError("bad_request", "kind must be one of %s" % ", ".join(KINDS))
    if kind == "tariff":
        if len(args) != 1 or not isinstance(args[0], str):
            raise G.GuardrailError("bad_request", "tariff campaign needs [tariff JSON text]")
        try:
            fw_tariff.Tariff.from_dict(json.loads(args[0]))
        except (ValueError, TypeError, AttributeError, fw_tariff.TariffError) as err:
            raise G.GuardrailError("bad_request", "tariff: %s" % err)
        return list(args)
    if kind == "config":
        try:
            return C._check_config(list(args))
        except C.CommandError as err:
            raise G.GuardrailError("bad_request", str(err))
    if len(args) != 1 or not isinstance(args[0], str) or \
            session.get(M.FirmwareImage, args[0]) is None:
        raise G.GuardrailError("bad_request", "firmware campaign needs [version] of a stored "
                               "firmware image; got %r" % (args,))
    return list(args)


def _order(meter_id):
    return hashlib.sha256(meter_id.encode()).hexdigest(), meter_id


def create(session, principal, tenant_id, kind, meter_ids, args, now, rules):
    """Record a campaign over ``meter_ids`` (already checked visible to ``principal`` and of
    ``tenant_id``) or, when None, every active meter of the tenant; returns it.

    RUNNING with its first stage queued, or PENDING_APPROVAL for a firmware campaign.
    """
    args = _check_args(session, kind, list(args))
    if meter_ids is None:
        meter_ids = list(session.scalars(select(M.Meter.id).where(
            M.Meter.tenant_id == tenant_id, M.Meter.active.is_(True))))
    meter_ids = sorted(set(meter_ids), key=_order)
    if not meter_ids:
        raise G.GuardrailError("bad_request", "no meters for the campaign")
    state = PENDING_APPROVAL if kind in NEEDS_APPROVAL else RUNNING
    campaign = Campaign(tenant_id=tenant_id, kind=kind, args=json.dumps(args),
                        stages=json.dumps(rules.stages), success_pct=rules.success_pct,
                        failure_pct=rules.failure_pct, state=state, stage=0,
                        created_by=principal.username, created_at=now, updated_at=now)
    session.add(campaign)
    session.flush()
    i = 0
    for stage, size in enumerate(rules.sizes(len(meter_ids))):
        for mid in meter_ids[i:i + size]:
            session.add(CampaignTarget(campaign_id=campaign.id, meter_id=mid, stage=stage,
                                       state=WAITING))
        i += size
    session.flush()
    G.audit(session, principal, "campaign.create", state.lower(), now, tenant_id=tenant_id,
            campaign_id=campaign.id, kind=kind, args=args, meters=len(meter_ids),
            stages=rules.stages, success_pct=rules.success_pct, failure_pct=rules.failure_pct)
    if state == RUNNING:
        _start_stage(session, campaign, now)
    return campaign


def _move(session, principal, campaign, verdict, now, reason=None, **detail):
    new = TRANSITIONS.get((campaign.state, verdict))
    if new is None:
        G.audit(session, principal, "campaign." + verdict, "denied", now,
                tenant_id=campaign.tenant_id, campaign_id=campaign.id,
                reason="campaign is %s" % campaign.state)
        raise G.GuardrailError("illegal_transition", "cannot %s a campaign that is %s"
                               % (verdict, campaign.state))
    campaign.state, campaign.updated_at = new, now
    if reason is not None:
        campaign.reason = reason
    G.audit(session, principal, "campaign." + verdict, new.lower(), now,
            tenant_id=campaign.tenant_id, campaign_id=campaign.id, reason=reason, **detail)


def decide(session, principal, campaign, verdict, now, reason=None):
    """approve / reject a pending campaign (the approver must not be its creator), or cancel."""
    if verdict == "approve" and principal.username == campaign.created_by \
            and campaign.state == PENDING_APPROVAL:
        G.audit(session, principal, "campaign.approve", "denied", now,
                tenant_id=campaign.tenant_id, campaign_id=campaign.id,
                reason="second approver must be another person")
        raise G.GuardrailError("same_approver", "a second approver must be someone other than "
                               "the creator %s" % campaign.created_by)
    _move(session, principal, campaign, verdict, now, reason)
    if verdict in ("approve", "reject"):
        campaign.decided_by, campaign.decided_at = principal.username, now
    if campaign.state == RUNNING:
        _start_stage(session, campaign, now)
    if campaign.state == CANCELLED:
        for t in _targets(session, campaign, states=(WAITING,)):
            t.state, t.finished_at, t.reason = SKIPPED, now, "campaign cancelled"
    return campaign


def _targets(session, campaign, stage=None, states=None):
    q = select(CampaignTarget).where(CampaignTarget.campaign_id == campaign.id)
    if stage is not None:
        q = q.where(CampaignTarget.stage == stage)
    if states is not None:
        q = q.where(CampaignTarget.state.in_(states))
    return list(session.scalars(q.order_by(CampaignTarget.meter_id)))


def _start_stage(session, campaign, now):
    args = json.loads(campaign.args)
    for t in _targets(session, campaign, stage=campaign.stage, states=(WAITING,)):
        t.started_at = now
        try:
            if campaign.kind == "firmware":
                t.ota_job_id = ota.start(session, t.meter_id, args[0], now,
                                         campaign_id=campaign.id).id
            else:
                t.command_id = C.enqueue(session, t.meter_id, campaign.kind, args, now,
                                         command_id="CP-%d-%s" % (campaign.id, t.meter_id)
                                         if len(t.meter_id) <= 48 else None).id
            t.state = ACTIVE
        except (C.CommandError, ota.OtaError) as err:
            t.state, t.finished_at, t.reason = TARGET_FAILED, now, str(err)
    session.flush()


def _refresh(session, campaign, now):
    """Move ACTIVE targets to DONE / FAILED from their command or OTA job."""
    for t in _targets(session, campaign, states=(ACTIVE,)):
        if t.ota_job_id is not None:
            job = session.get(ota.OtaJob, t.ota_job_id)
            done, failed, why = (job.state == ota.CONFIRMED, job.state == ota.FAILED,
                                 job.reason)
        else:
            cmd = session.get(C.Command, t.command_id)
            done, failed = cmd.state == C.APPLIED, cmd.state in (C.FAILED, C.EXPIRED, C.CANCELLED)
            why = "%s %s" % (cmd.state, cmd.reason or "")
        if done or failed:
            t.state, t.finished_at, t.reason = (DONE if done else TARGET_FAILED), now, why


def stage_summary(session, campaign):
    """Per stage: size and how many targets are waiting, active, done, failed, skipped."""
    rows = session.execute(select(CampaignTarget.stage, CampaignTarget.state, func.count())
                           .where(CampaignTarget.campaign_id == campaign.id)
                           .group_by(CampaignTarget.stage, CampaignTarget.state)).all()
    out = [{"stage": i, "share_pct": p, "size": 0, WAITING: 0, ACTIVE: 0, DONE: 0,
            TARGET_FAILED: 0, SKIPPED: 0} for i, p in enumerate(json.loads(campaign.stages))]
    for stage, state, n in rows:
        out[stage][state] += n
        out[stage]["size"] += n
    return out


def _raise_halt_alert(session, campaign, now, detail):
    from headend import alerts  # the tenant's alert list (dashboard, /alerts)
    session.add(alerts.Alert(tenant_id=campaign.tenant_id, meter_id=None, kind=HALT_ALERT,
                             severity=alerts.SEVERITY[HALT_ALERT], detail=detail, opened_at=now,
                             last_seen_at=now, count=1, storm=False))


SYSTEM = A.Principal(0, "system:campaigns", A.ADMIN)  # the periodic job, in the audit log


def advance(session, now, campaign_ids=None):
    """One round over RUNNING campaigns: refresh targets, then halt, advance or complete.
    Returns [(campaign id, what happened)] for the campaigns that moved."""
    ota.check_confirmations(session, now)
    q = select(Campaign).where(Campaign.state == RUNNING)
    if campaign_ids is not None:
        q = q.where(Campaign.id.in_(campaign_ids))
    moved = []
    for campaign in list(session.scalars(q.order_by(Campaign.id))):
        _refresh(session, campaign, now)
        session.flush()
        stages = json.loads(campaign.stages)
        while True:
            s = stage_summary(session, campaign)[campaign.stage]
            size, done, failed = s["size"], s[DONE], s[TARGET_FAILED]
            if failed * 100 > campaign.failure_pct * size:
                why = "stage %d (%d %%): %d of %d failed, limit %d %%" % (
                    campaign.stage, stages[campaign.stage], failed, size, campaign.failure_pct)
                _move(session, SYSTEM, campaign, "halt", now, reason=why)
                _raise_halt_alert(session, campaign, now, "campaign %d (%s) halted: %s" % (
                    campaign.id, campaign.kind, why))
                moved.append((campaign.id, "halted"))
                break
            if done * 100 < campaign.success_pct * size:
                break
            if campaign.stage + 1 >= len(stages):
                _move(session, SYSTEM, campaign, "complete", now,
                      reason="last stage: %d of %d done" % (done, size))
                moved.append((campaign.id, "completed"))
                break
            campaign.stage += 1
            campaign.updated_at = now
            G.audit(session, SYSTEM, "campaign.stage", "started", now,
                    tenant_id=campaign.tenant_id, campaign_id=campaign.id, stage=campaign.stage,
                    share_pct=stages[campaign.stage], previous_done=done, previous_size=size)
            _start_stage(session, campaign, now)
            moved.append((campaign.id, "stage %d" % campaign.stage))
    return moved

