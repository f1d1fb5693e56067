"""Offline delivery of a payment as a 20-digit STS token, without ever crediting twice.

Rule: **a payment is delivered by exactly one path, chosen when it is
paid.**  ``payments`` always queues the ``topup`` command ``TU-<payment>``;
``deliver_payment`` then decides in the same transaction:

- ``delivery == "token"`` (the payer asked, e.g. a counter or a chatbot), or
  ``"auto"`` and the meter looks offline (no uplink received for
  ``OFFLINE_AFTER_S``), and the meter has STS parameters: the command is
  CANCELLED (it was never sent, so no copy can reach the meter) and a token
  is vended and shown on the receipt;
- otherwise the command stays QUEUED and the dispatcher delivers it.

Switch later (a queued command for a meter that stays offline):
``switch_to_token`` locks the command row and switches only if the command
is still QUEUED and was never sent (``sent_at`` is None): a command that
was published may sit in the broker or the meter already and could be
applied, so it must run to APPLIED / FAILED / EXPIRED instead (then refund
or re-sell).  A token is never turned back into a command: it cannot be
recalled from the consumer, so losing it means re-showing the receipt.

Energy and money, with the meter's own rounding (``firmware.core.meter.
sts_credit_paise``: paise = floor(Wh * price / 1000), Wh = tenths * 100):
vend ``tenths = floor(available * 10 / price)`` (lowered to a value the
token's amount field carries exactly), so the meter credits
``credited = floor(tenths * price / 10) <= available``.  ``available`` is
the payment plus any remainder held from earlier token payments; the new
remainder ``available - credited`` is held on the ledger (STS_REMAINDER)
and carried into the meter's next token, never lost.  Ledger rows per
token payment (one per kind and payment: replays cannot double them):
TOKEN_ISSUED (+credited), STS_REMAINDER (+held now), STS_REMAINDER_USED
(+carried in), and TOPUP_APPLIED (+credited) once the meter shows it.

TIDs: minutes since the key's base date (``firmware.sts.tid``, the rule the
meter's FUTURE guard uses), bumped to one more than the meter's last TID
when two tokens fall in one minute; (meter, TID) is unique.

Keys: ``StsVendingKey`` holds each supply group's vending key AES-256-GCM
sealed under the master key (like ``models.MeterKey``); the decoder key is
derived per token with DKGA02 (``headend.sts.dkga02``) from the meter's
``StsMeterParams`` (PAN, SGC, tariff index, KRN, key type) and never stored.

>>> vend_amount(1000, 850)      # 1000 * 10 // 850 = 11 tenths; 11 * 850 // 10 = 935 paise
(11, 935)
"""
import os

from Crypto.Cipher import AES
from sqlalchemy import (BigInteger, ForeignKey, Integer, LargeBinary, String, UniqueConstraint,
                        func, inspect, select)
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core.meter import sts_credit_paise
from firmware.sts import codec
from firmware.sts import tid as sts_tid
from headend import commands as C
from headend import ledger as L
from headend import models as M
from headend.db import Base
from headend.sts import dkga02, vending

AUTO, MQTT, TOKEN = "auto", "mqtt", "token"
PREFERENCES = (AUTO, MQTT, TOKEN)
OFFLINE_AFTER_S = 3600          # no uplink for an hour (4 default heartbeats): offline
TOKEN_ISSUED, STS_REMAINDER, STS_REMAINDER_USED = (
    "TOKEN_ISSUED", "STS_REMAINDER", "STS_REMAINDER_USED")
ISSUED, APPLIED = "ISSUED", "APPLIED"
UNIT_NAME = {"electricity": "kWh", "water": "kL", "gas": "SCM"}


class TokenError(ValueError):
    """A token cannot be vended or a delivery cannot be switched (the message says why)."""


class StsVendingKey(Base):
    """A supply group's vending key (DKGA02 input), sealed under the master key."""
    __tablename__ = "sts_vending_keys"
    sgc: Mapped[int] = mapped_column(Integer, primary_key=True)
    krn: Mapped[int] = mapped_column(Integer, primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary(8))
    tag: Mapped[bytes] = mapped_column(LargeBinary(16))

    @staticmethod
    def _aad(sgc, krn):
        return ("urja-sts-vending-key|%d|%d" % (sgc, krn)).encode()

    @classmethod
    def seal(cls, master, sgc, krn, key):
        """A new row holding the 8-byte vending ``key`` encrypted (fresh random nonce)."""
        if len(master) != 32 or len(key) != 8:
            raise TokenError("master key is 32 bytes, vending key 8 bytes")
        nonce = os.urandom(12)
        cipher = AES.new(master, AES.MODE_GCM, nonce=nonce)
        cipher.update(cls._aad(sgc, krn))
        ct, tag = cipher.encrypt_and_digest(key)
        return cls(sgc=sgc, krn=krn, nonce=nonce, ciphertext=ct, tag=tag)

    def open(self, master):
        cipher = AES.new(master, AES.MODE_GCM, nonce=self.nonce)
        cipher.update(self._aad(self.sgc, self.krn))
        try:
            return cipher.decrypt_and_verify(self.ciphertext, self.tag)
        except ValueError:
            raise TokenError("vending key of SGC %d KRN %d does not open: wrong master key "
                             "or altered row" % (self.sgc, self.krn))


class StsMeterParams(Base):
    """A meter's STS identity (as commissioned on it) and the price it credits tokens at."""
    __tablename__ = "sts_meter_params"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    pan: Mapped[str] = mapped_column(String(18))
    sgc: Mapped[int] = mapped_column(Integer)
    tariff_index: Mapped[int] = mapped_column(Integer, default=1)
    krn: Mapped[int] = mapped_column(Integer, default=1)
    key_type: Mapped[int] = mapped_column(Integer, default=2)
    base_year: Mapped[int] = mapped_column(Integer, default=2014)
    paise_per_unit: Mapped[int] = mapped_column(BigInteger)  # = the meter's sts_paise_per_unit


class StsToken(Base):
    """One vended token: the only delivery of its payment."""
    __tablename__ = "sts_tokens"
    __table_args__ = (UniqueConstraint("meter_id", "tid", name="uq_sts_tokens_meter_tid"),)
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), unique=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    tid: Mapped[int] = mapped_column(BigInteger)
    tenths: Mapped[int] = mapped_column(BigInteger)
    digits: Mapped[str] = mapped_column(String(20))
    credited_paise: Mapped[int] = mapped_column(BigInteger)
    remainder_paise: Mapped[int] = mapped_column(BigInteger)
    carried_in_paise: Mapped[int] = mapped_column(BigInteger)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default=ISSUED)
    applied_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    applied_event_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)


TABLES = (StsVendingKey.__table__, StsMeterParams.__table__, StsToken.__table__)


def create_tables(engine):
    """Create this module's tables (until they are in an Alembic migration)."""
    Base.metadata.create_all(engine, tables=list(TABLES))


# --- pure arithmetic ---------------------------------------------------------------------------

def _exact_tenths_at_most(tenths):
    """The largest amount <= ``tenths`` that the 16-bit amount field carries exactly."""
    field = codec.encode_amount(tenths)  # rounds up
    if codec.decode_amount(field) > tenths:
        field -= 1  # field values grow with the amount, across exponents too
    return codec.decode_amount(field)


def vend_amount(available_paise, paise_per_unit):
    """(tenths to vend, paise the meter will credit) for ``available_paise``; credited <= available.

    >>> vend_amount(100000, 1000)   # Rs 1000 at Rs 10/kWh: 100.0 kWh, all of it
    (1000, 100000)
    """
    if available_paise < 0 or paise_per_unit <= 0:
        raise TokenError("amount >= 0 and price > 0")
    tenths = min(available_paise * 10 // paise_per_unit, codec.AMOUNT_MAX_UNITS)
    tenths = _exact_tenths_at_most(tenths)
    # the meter's own function: tenths of a kWh -> Wh (x100) -> paise, floored
    return tenths, sts_credit_paise(tenths * 100, paise_per_unit)


def group_digits(digits):
    """'12345678901234567890' -> '1234 5678 9012 3456 7890' (how receipts print tokens)."""
    return " ".join(digits[i:i + 4] for i in range(0, 20, 4))


# --- registry ---------------------------------------------------------------------------------

def tables_ready(session):
    """False on a database without this module's tables: offline tokens are then off."""
    return inspect(session.connection()).has_table(StsToken.__tablename__)


def last_contact(session, meter_id):
    """When the head-end last received any uplink from the meter (UTC s), or None."""
    return session.scalar(select(func.max(M.UplinkSeen.received_at))
                          .where(M.UplinkSeen.meter_id == meter_id))


def is_offline(session, meter_id, now, after_s=OFFLINE_AFTER_S):
    seen = last_contact(session, meter_id)
    return seen is None or now - seen > after_s


def decoder_key(session, params, master_key):
    """The meter's DKGA02 decoder key (int) from its SGC's sealed vending key."""
    row = session.get(StsVendingKey, (params.sgc, params.krn))
    if row is None:
        raise TokenError("no vending key for SGC %d KRN %d" % (params.sgc, params.krn))
    return dkga02.derive_key(row.open(master_key), params.sgc, params.tariff_index, params.krn,
                             params.pan, params.key_type)


def held_remainder_paise(session, meter_id):
    """Paise held for the meter from earlier token payments (carried into its next token)."""
    # int(): PostgreSQL's SUM of BIGINT is NUMERIC (Decimal)
    return int(L.total_paise(session, meter_id, STS_REMAINDER)
               - L.total_paise(session, meter_id, STS_REMAINDER_USED))


def _next_tid(session, meter_id, now, base_utc):
    last = session.scalar(select(func.max(StsToken.tid)).where(StsToken.meter_id == meter_id))
    tid = sts_tid.tid_from_utc(now, base_utc)
    return tid if last is None or tid > last else last + 1


# --- delivery ---------------------------------------------------------------------------------

def deliver_payment(session, payment_id, preference, now, master_key=None):
    """Pick the payment's one delivery path (see the module doc); returns MQTT or TOKEN.

    Called by ``payments`` in the payment's transaction, right after it queued
    ``TU-<payment_id>``.  A token is chosen only when it can be vended; otherwise
    the command carries the credit.
    """
    if preference == MQTT or not tables_ready(session):
        return MQTT
    payment = session.get(L.Payment, payment_id)
    params = session.get(StsMeterParams, payment.meter_id)
    if params is None:
        return MQTT
    if preference == AUTO and not is_offline(session, payment.meter_id, now):
        return MQTT
    if master_key is None:
        master_key = M.master_key_from_env()
    issue_token(session, payment_id, now, master_key, reason="offline at payment"
                if preference == AUTO else "payer asked for a token")
    return TOKEN


def switch_to_token(session, payment_id, now, master_key):
    """Deliver a paid top-up by token instead of its command, if the command never left.

    Locks the command row (PostgreSQL ``FOR UPDATE``: the dispatcher's ``due``
    skips locked rows, and a dispatcher holding it makes us wait and then see
    SENT).  TokenError when the command was sent or is finished.  Commits.
    """
    topup = session.scalars(select(L.TopUp).where(L.TopUp.payment_id == payment_id)).one()
    cmd = session.scalars(select(C.Command).where(C.Command.id == topup.command_id)
                          .with_for_update()).one()
    if cmd.state != C.QUEUED or cmd.sent_at is not None:
        session.rollback()
        raise TokenError("command %s is %s%s: it may reach the meter, so the payment stays on "
                         "it (refund or re-sell after it FAILED or EXPIRED)"
                         % (cmd.id, cmd.state, "" if cmd.sent_at is None else " (was sent)"))
    tok = issue_token(session, payment_id, now, master_key, reason="switched by operator")
    session.commit()
    return tok


def issue_token(session, payment_id, now, master_key, reason=""):
    """Cancel the payment's never-sent command and vend its token (caller commits)."""
    payment = session.get(L.Payment, payment_id)
    topup = session.scalars(select(L.TopUp).where(L.TopUp.payment_id == payment_id)).one()
    cmd = session.get(C.Command, topup.command_id)
    if cmd.state != C.QUEUED or cmd.sent_at is not None:
        raise TokenError("command %s already left the head-end" % cmd.id)
    params = session.get(StsMeterParams, payment.meter_id)
    if params is None:
        raise TokenError("meter %s has no STS parameters" % payment.meter_id)
    meter = session.get(M.Meter, payment.meter_id)
    carried = held_remainder_paise(session, payment.meter_id)
    tenths, credited = vend_amount(payment.amount_paise + carried, params.paise_per_unit)
    if tenths <= 0:
        raise TokenError("%d paise buys less than 0.1 %s" % (
            payment.amount_paise + carried, UNIT_NAME[meter.service]))
    base_utc = sts_tid.BASES[params.base_year]
    tid = _next_tid(session, payment.meter_id, now, base_utc)
    key = decoder_key(session, params, master_key)
    digits = vending.vend_credit(key, meter.service, tenths, vending.utc_from_tid(tid, base_utc),
                                 base_utc)
    remainder = payment.amount_paise + carried - credited
    cmd.reason = "delivered by STS token TID %d (%s)" % (tid, reason)
    C.transition(session, cmd, C.CANCEL, now, detail=cmd.reason)
    tok = StsToken(payment_id=payment_id, meter_id=payment.meter_id, tid=tid, tenths=tenths,
                   digits=digits, credited_paise=credited, remainder_paise=remainder,
                   carried_in_paise=carried, issued_at=now, state=ISSUED)
    session.add(tok)
    note = "TID %d, %d tenths" % (tid, tenths)
    for kind, amount in ((TOKEN_ISSUED, credited), (STS_REMAINDER, remainder),
                         (STS_REMAINDER_USED, carried)):
        if amount or kind == TOKEN_ISSUED:
            session.add(L.LedgerEntry(meter_id=payment.meter_id, at=now, kind=kind,
                                      amount_paise=amount, payment_id=payment_id, note=note))
    session.flush()
    return tok


# --- the meter shows it applied the token -----------------------------------------------------

def mark_applied(session, token, now, event_seq=None):
    """Book TOPUP_APPLIED (+credited) for ``token`` once; later calls change nothing."""
    if token.state == APPLIED:
        return False
    token.state, token.applied_at, token.applied_event_seq = APPLIED, now, event_seq
    exists = session.scalars(select(L.LedgerEntry.id).where(
        L.LedgerEntry.kind == L.TOPUP_APPLIED,
        L.LedgerEntry.payment_id == token.payment_id)).first()
    if exists is None:
        session.add(L.LedgerEntry(meter_id=token.meter_id, at=now, kind=L.TOPUP_APPLIED,
                                  amount_paise=token.credited_paise, payment_id=token.payment_id,
                                  note="STS token TID %d applied" % token.tid))
    session.flush()
    return True


def match_meter_events(session, meter_id, now):
    """Mark ISSUED tokens applied from the meter's TOPUP_APPLIED events; returns how many.

    A token's event is the oldest unclaimed TOPUP_APPLIED (code 10) whose
    value is the token's credited paise, at or after the token was issued.
    The event does not carry the TID, so two same-value top-ups by command and
    by token in one window can swap their booking times (never the totals).
    """
    from firmware.core import events as E
    claimed = set(session.scalars(select(StsToken.applied_event_seq).where(
        StsToken.meter_id == meter_id, StsToken.applied_event_seq.is_not(None))))
    evs = list(session.scalars(select(M.EventRecord).where(
        M.EventRecord.meter_id == meter_id, M.EventRecord.code == E.TOPUP_APPLIED)
        .order_by(M.EventRecord.event_seq)))
    done = 0
    for tok in session.scalars(select(StsToken).where(
            StsToken.meter_id == meter_id, StsToken.state == ISSUED).order_by(StsToken.id)):
        for ev in evs:
            if (ev.event_seq not in claimed and ev.value == tok.credited_paise
                    and ev.t >= tok.issued_at):
                claimed.add(ev.event_seq)
                done += mark_applied(session, tok, now, ev.event_seq)
                break
    return done


def receipt_extra(session, payment):
    """The token on the receipt (``ledger.RECEIPT_EXTRAS``)."""
    if not tables_ready(session):
        return {}
    tok = session.scalars(select(StsToken).where(StsToken.payment_id == payment.id)).first()
    if tok is None:
        return {"delivery": MQTT}
    meter = session.get(M.Meter, payment.meter_id)
    return {"delivery": TOKEN, "sts_token": {
        "digits": tok.digits, "digits_grouped": group_digits(tok.digits), "tid": tok.tid,
        "tenths": tok.tenths, "quantity": "%d.%d %s" % (tok.tenths // 10, tok.tenths % 10,
                                                        UNIT_NAME[meter.service]),
        "credited_paise": tok.credited_paise, "carried_in_paise": tok.carried_in_paise,
        "remainder_paise": tok.remainder_paise, "state": tok.state}}


L.RECEIPT_EXTRAS.append(receipt_extra)
