"""Money records: payments, the top-up each one becomes, receipts, and a ledger per meter.

- ``Payment``: one row per (gateway, txn_ref), the idempotency key: a
  gateway retrying or duplicating a callback collides with the first row.
- ``TopUp``: exactly one per payment (unique ``payment_id``), pointing at the
  downlink command that carries the credit to the meter.
- ``Receipt``: exactly one per payment, numbered ``<tenant code>-R<payment id,
  8 digits>`` (unique, never reused because payment ids are not), rendered as
  JSON and HTML.
- ``LedgerEntry``: what happened to a meter's money, append-only, one row per
  (kind, payment) so replays cannot double it:
  PAYMENT_RECEIVED (+amount, money held for the meter), TOPUP_APPLIED
  (+amount, the meter acked the credit), TOPUP_UNDELIVERED (+amount, the
  command FAILED or EXPIRED: the money is held but not on the meter; an
  operator re-issues or refunds).  ``undelivered_paise`` is received minus
  applied; reconciliation (headend/reconcile.py) compares applied top-ups
  with the meter's own ``tt``.

>>> receipt_number("PMC", 42)
'PMC-R00000042'
"""
import html

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from headend import commands as C
from headend import models as M
from headend.db import Base

PAYMENT_RECEIVED, TOPUP_APPLIED, TOPUP_UNDELIVERED = (
    "PAYMENT_RECEIVED", "TOPUP_APPLIED", "TOPUP_UNDELIVERED")


class Payment(Base):
    """A payment as the gateway reported it; (gateway, txn_ref) is the idempotency key."""
    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("gateway", "txn_ref", name="uq_payments_gateway_txn"),)
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(32))
    txn_ref: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    payer_vpa: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[int] = mapped_column(BigInteger)
    body_sha256: Mapped[str] = mapped_column(String(64))  # the signed body, for disputes


class TopUp(Base):
    """The credit a payment buys, carried to the meter by one downlink command."""
    __tablename__ = "topups"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), unique=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    command_id: Mapped[str] = mapped_column(ForeignKey("commands.id"), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Receipt(Base):
    """The consumer's receipt for one payment."""
    __tablename__ = "receipts"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(48), unique=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), unique=True)
    issued_at: Mapped[int] = mapped_column(BigInteger)


class LedgerEntry(Base):
    """One movement of a meter's money (paise); unique per (kind, payment)."""
    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("kind", "payment_id", name="uq_ledger_kind_payment"),)
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(24))
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), default=None)
    command_id: Mapped[str | None] = mapped_column(String(C.ID_MAX), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)


def receipt_number(tenant_code, payment_id):
    return "%s-R%08d" % (tenant_code, payment_id)


def topup_command_id(payment_id):
    """The top-up's command id (fields[0] on the wire): stable, so the meter dedupes it."""
    return "TU-%d" % payment_id


def rupees(paise):
    """``12345`` -> ``"123.45"`` (integer arithmetic, no floats)."""
    sign = "-" if paise < 0 else ""
    return "%s%d.%02d" % (sign, abs(paise) // 100, abs(paise) % 100)


def _on_command_outcome(session, cmd, event, old_state, now):
    """Ledger side of a top-up command reaching APPLIED, FAILED or EXPIRED."""
    if cmd.kind != "topup" or cmd.state == C.CANCELLED:
        return  # CANCELLED: the payment went by STS token instead (headend/tokens.py)
    topup = session.scalars(select(TopUp).where(TopUp.command_id == cmd.id)).first()
    if topup is None:
        return  # a top-up queued by an operator, not bought by a payment
    kind = TOPUP_APPLIED if cmd.state == C.APPLIED else TOPUP_UNDELIVERED
    exists = session.scalars(select(LedgerEntry.id).where(
        LedgerEntry.kind == kind, LedgerEntry.payment_id == topup.payment_id)).first()
    if exists is None:
        session.add(LedgerEntry(meter_id=topup.meter_id, at=now, kind=kind,
                                amount_paise=topup.amount_paise, payment_id=topup.payment_id,
                                command_id=cmd.id, note="%s: %s" % (cmd.state, cmd.reason or "")))


C.OUTCOME_LISTENERS.append(_on_command_outcome)


def entries(session, meter_id):
    """The meter's ledger, oldest first."""
    return list(session.scalars(select(LedgerEntry).where(LedgerEntry.meter_id == meter_id)
                                .order_by(LedgerEntry.id)))


def total_paise(session, meter_id, kind):
    return session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_paise), 0))
                          .where(LedgerEntry.meter_id == meter_id, LedgerEntry.kind == kind))


def undelivered_paise(session, meter_id):
    """Paid for but not (yet) acked by the meter."""
    return (total_paise(session, meter_id, PAYMENT_RECEIVED)
            - total_paise(session, meter_id, TOPUP_APPLIED))


# extras(session, payment) -> dict merged into the receipt (e.g. headend/tokens.py: "sts_token")
RECEIPT_EXTRAS = []


def receipt_json(session, receipt):
    """The receipt as plain data (what ``/receipts/<number>`` returns)."""
    payment = session.get(Payment, receipt.payment_id)
    topup = session.scalars(select(TopUp).where(TopUp.payment_id == payment.id)).one()
    command = session.get(C.Command, topup.command_id)
    tenant = session.get(M.Tenant, payment.tenant_id)
    data = {"number": receipt.number, "issued_at": receipt.issued_at,
            "tenant": {"code": tenant.code, "name": tenant.name},
            "meter_id": payment.meter_id, "amount_paise": payment.amount_paise,
            "amount_rupees": rupees(payment.amount_paise), "payer_vpa": payment.payer_vpa,
            "gateway": payment.gateway, "txn_ref": payment.txn_ref,
            "topup": {"command_id": command.id, "state": command.state}}
    for extra in RECEIPT_EXTRAS:
        data.update(extra(session, payment))
    return data


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Receipt {number}</title></head>
<body>
<h1>{tenant}</h1>
<h2>Payment receipt / &#x92d;&#x941;&#x917;&#x924;&#x93e;&#x928; &#x930;&#x938;&#x940;&#x926;</h2>
<table>
<tr><th>Receipt no.</th><td>{number}</td></tr>
<tr><th>Issued (UTC s)</th><td>{issued_at}</td></tr>
<tr><th>Meter</th><td>{meter_id}</td></tr>
<tr><th>Amount</th><td>&#x20b9; {amount}</td></tr>
<tr><th>Paid by</th><td>{payer}</td></tr>
<tr><th>Gateway reference</th><td>{gateway} {txn_ref}</td></tr>
<tr><th>Top-up</th><td>{command_id} ({state})</td></tr>
{token_rows}</table>
</body></html>
"""


def receipt_html(data):
    """A printable HTML page from ``receipt_json`` output; every value is escaped."""
    e = lambda v: html.escape(str(v))  # noqa: E731
    return _HTML.format(number=e(data["number"]), tenant=e(data["tenant"]["name"]),
                        issued_at=e(data["issued_at"]), meter_id=e(data["meter_id"]),
                        amount=e(data["amount_rupees"]), payer=e(data["payer_vpa"]),
                        gateway=e(data["gateway"]), txn_ref=e(data["txn_ref"]),
                        command_id=e(data["topup"]["command_id"]),
                        state=e(data["topup"]["state"]), token_rows=_token_rows(data, e))


def _token_rows(data, e):
    """Offline delivery: the 20 digits to type on the meter (headend/tokens.py)."""
    tok = data.get("sts_token")
    if not tok:
        return ""
    return ("<tr><th>STS token / &#x91f;&#x94b;&#x915;&#x928;</th>"
            "<td><strong>{digits}</strong></td></tr>\n"
            "<tr><th>Energy</th><td>{energy}</td></tr>\n"
            "<tr><th>Credit on the meter</th><td>&#x20b9; {credited}</td></tr>\n"
            "<tr><th>Held for your next recharge</th><td>&#x20b9; {held}</td></tr>\n").format(
        digits=e(tok["digits_grouped"]), energy=e(tok["quantity"]),
        credited=e(rupees(tok["credited_paise"])), held=e(rupees(tok["remainder_paise"])))


def receipt_view(session, number):
    """``{"meter_id", "json", "html"}`` of receipt ``number``, or None (for the API)."""
    receipt = session.scalars(select(Receipt).where(Receipt.number == number)).first()
    if receipt is None:
        return None
    data = receipt_json(session, receipt)
    return {"meter_id": data["meter_id"], "json": data, "html": receipt_html(data)}
