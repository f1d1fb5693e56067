"""Operations guardrails: the two-person rule for mass disconnects, and the audit log.

In 2020 a utility wrongly disconnected ~1.6 lakh prepaid consumers at once
(docs: /work/shared/DOMAIN.md).  So every command an operator asks for goes
through ``request_commands``: a relay *disconnect* that would bring the
number of a tenant's meters disconnected within ``window_s`` above
``share_pct`` percent of its active meters is held as PENDING_APPROVAL until
a *different* operator or admin of the same tenant approves it.  Everything
else is queued at once.  Every request, approval, rejection and denial is a
row in ``audit_log``, in the same transaction as the change it records.

Counting is by distinct meters, over requests that are pending or queued
(a pending request may yet be approved, so it counts), inside the window
(now - window_s, now].  The check runs under a lock on the tenant's row
(PostgreSQL ``SELECT ... FOR UPDATE``; SQLite has one writer anyway), so two
operators cannot each slip a batch just under the limit at the same moment.

Integer arithmetic only: a batch needs approval when
``affected * 100 > share_pct * active_meters``.

>>> policy = DisconnectPolicy(share_pct=5, window_s=3600)
>>> policy.needs_approval(affected=5, active_meters=100), policy.needs_approval(6, 100)
(False, True)
"""
import json

from sqlalchemy import BigInteger, ForeignKey, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from headend import models as M
from headend.db import Base

PENDING_APPROVAL, QUEUED, REJECTED = "PENDING_APPROVAL", "QUEUED", "REJECTED"
# request lifecycle: one table; anything not listed is an illegal move
TRANSITIONS = {
    (PENDING_APPROVAL, "approve"): QUEUED,
    (PENDING_APPROVAL, "reject"): REJECTED,
}
KINDS = ("topup", "relay", "tariff", "reset_lockout")
RELAY_ACTIONS = ("connect", "disconnect")


class GuardrailError(ValueError):
    """A request that cannot proceed, with a ``code`` the API maps to a status."""

    def __init__(self, code, message):
        self.code = code  # "illegal_transition" | "same_approver" | "bad_request"
        super().__init__(message)


class AuditLog(Base):
    """Who did what to which meter, when, and what came of it; append-only."""
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(24))
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    action: Mapped[str] = mapped_column(String(48))
    outcome: Mapped[str] = mapped_column(String(32))
    meter_id: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    detail: Mapped[str] = mapped_column(Text, default="{}")


class CommandRequest(Base):
    """An operator's request for one kind of command on one or more meters of a tenant."""
    __tablename__ = "command_requests"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str | None] = mapped_column(String(16), default=None)  # relay: connect|disconnect
    args: Mapped[str] = mapped_column(Text, default="[]")  # JSON list: the fields after the id
    state: Mapped[str] = mapped_column(String(20), index=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[int] = mapped_column(BigInteger, index=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    decided_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    targets = relationship("CommandTarget", order_by="CommandTarget.meter_id", lazy="selectin")

    @property
    def meter_ids(self):
        return [t.meter_id for t in self.targets]

    def as_dict(self):
        return {"id": self.id, "tenant_id": self.tenant_id, "kind": self.kind,
                "action": self.action, "args": json.loads(self.args), "state": self.state,
                "requested_by": self.requested_by, "requested_at": self.requested_at,
                "decided_by": self.decided_by, "decided_at": self.decided_at,
                "reason": self.reason,
                "targets": [{"meter_id": t.meter_id, "command_id": t.command_id}
                            for t in self.targets]}


class CommandTarget(Base):
    """One meter of a request, and the queued command's id once it is queued."""
    __tablename__ = "command_targets"
    request_id: Mapped[int] = mapped_column(ForeignKey("command_requests.id"), primary_key=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    command_id: Mapped[str | None] = mapped_column(String(64), default=None)


class DisconnectPolicy:
    """The two-person rule's numbers: share of active meters (percent) within a window.

    >>> DisconnectPolicy(0, 3600).needs_approval(1, 1000)
    True
    """

    def __init__(self, share_pct, window_s):
        if not 0 <= share_pct <= 100 or window_s <= 0:
            raise ValueError("share_pct must be 0..100 and window_s > 0")
        self.share_pct = share_pct
        self.window_s = window_s

    def needs_approval(self, affected, active_meters):
        return affected * 100 > self.share_pct * active_meters

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.disconnect_approval_pct, settings.disconnect_window_s)


def audit(session, principal, action, outcome, now, tenant_id=None, meter_id=None,
          request_id=None, **detail):
    """Append one audit row (flushed with the caller's transaction)."""
    session.add(AuditLog(at=now, actor=principal.username, actor_role=principal.role,
                         tenant_id=tenant_id, action=action, outcome=outcome, meter_id=meter_id,
                         request_id=request_id, detail=json.dumps(detail, sort_keys=True)))


def disconnects_in_window(session, tenant_id, now, window_s):
    """Distinct meters of the tenant with a pending or queued disconnect in (now - window, now]."""
    q = (select(CommandTarget.meter_id).join(CommandRequest)
         .where(CommandRequest.tenant_id == tenant_id, CommandRequest.kind == "relay",
                CommandRequest.action == "disconnect",
                CommandRequest.state.in_((PENDING_APPROVAL, QUEUED)),
                CommandRequest.requested_at > now - window_s,
                CommandRequest.requested_at <= now))
    return set(session.scalars(q))


def _active_meters(session, tenant_id):
    return session.scalar(select(func.count()).select_from(M.Meter)
                          .where(M.Meter.tenant_id == tenant_id, M.Meter.active.is_(True)))


def _check_args(kind, args):
    """The kind's fields after the command id (docs/protocol.md, "Downlink commands")."""
    if kind not in KINDS:
        raise GuardrailError("bad_request", "kind must be one of %s" % ", ".join(KINDS))
    if kind == "topup" and not (len(args) == 1 and type(args[0]) is int and args[0] > 0):
        raise GuardrailError("bad_request", "topup needs [amount_paise > 0]")
    if kind == "relay" and not (len(args) == 1 and args[0] in RELAY_ACTIONS):
        raise GuardrailError("bad_request", "relay needs [\"connect\"] or [\"disconnect\"]")
    if kind == "tariff" and not (len(args) == 1 and isinstance(args[0], str) and args[0]):
        raise GuardrailError("bad_request", "tariff needs [tariff JSON text]")
    if kind == "reset_lockout" and args:
        raise GuardrailError("bad_request", "reset_lockout takes no fields")


def _enqueue_all(session, request, enqueue, now):
    args = json.loads(request.args)
    for target in request.targets:
        target.command_id = enqueue(session, target.meter_id, request.kind, args, now)


def request_commands(session, principal, tenant_id, kind, meter_ids, args, now, policy, enqueue):
    """Record a command request and queue it, or hold it for a second approver.

    ``meter_ids`` must already be checked visible to ``principal`` (Scope) and
    belong to ``tenant_id``.  ``enqueue(session, meter_id, kind, args, now)``
    queues one downlink and returns its command id.  Returns the CommandRequest.
    """
    _check_args(kind, args)
    meter_ids = sorted(set(meter_ids))
    if not meter_ids:
        raise GuardrailError("bad_request", "no meters given")
    # serialise guardrail decisions per tenant
    session.execute(select(M.Tenant.id).where(M.Tenant.id == tenant_id).with_for_update())
    action = args[0] if kind == "relay" else None
    state = QUEUED
    detail = {}
    if action == "disconnect":
        already = disconnects_in_window(session, tenant_id, now, policy.window_s)
        affected = len(already | set(meter_ids))
        total = _active_meters(session, tenant_id)
        detail = {"affected": affected, "active_meters": total, "share_pct": policy.share_pct}
        if policy.needs_approval(affected, total):
            state = PENDING_APPROVAL
    request = CommandRequest(tenant_id=tenant_id, kind=kind, action=action, args=json.dumps(args),
                             state=state, requested_by=principal.username, requested_at=now)
    session.add(request)
    session.flush()
    for mid in meter_ids:
        session.add(CommandTarget(request_id=request.id, meter_id=mid))
    session.flush()
    session.refresh(request, ["targets"])
    if state == QUEUED:
        _enqueue_all(session, request, enqueue, now)
    audit(session, principal, "command.request", state.lower(), now, tenant_id=tenant_id,
          meter_id=meter_ids[0] if len(meter_ids) == 1 else None, request_id=request.id,
          kind=kind, args=args, meters=len(meter_ids), **detail)
    return request


def decide(session, principal, request, verdict, now, enqueue, reason=None):
    """Approve (queue every target) or reject a pending request; the approver must differ.

    Raises GuardrailError("illegal_transition") when the request is not pending
    and GuardrailError("same_approver") when the requester tries to approve.
    """
    new_state = TRANSITIONS.get((request.state, verdict))
    if new_state is None:
        audit(session, principal, "command." + verdict, "denied", now, tenant_id=request.tenant_id,
              request_id=request.id, reason="request is %s" % request.state)
        raise GuardrailError("illegal_transition", "cannot %s a request that is %s"
                             % (verdict, request.state))
    if verdict == "approve" and principal.username == request.requested_by:
        audit(session, principal, "command.approve", "denied", now, tenant_id=request.tenant_id,
              request_id=request.id, reason="second approver must be another person")
        raise GuardrailError("same_approver", "a second approver must be someone other than "
                             "the requester %s" % request.requested_by)
    request.state = new_state
    request.decided_by = principal.username
    request.decided_at = now
    request.reason = reason
    if new_state == QUEUED:
        _enqueue_all(session, request, enqueue, now)
    audit(session, principal, "command." + verdict, new_state.lower(), now,
          tenant_id=request.tenant_id, request_id=request.id, meters=len(request.targets),
          reason=reason)
    return request

