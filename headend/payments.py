"""UPI-style payment webhook: verify the gateway's signature, then one payment -> one top-up.

The gateway POSTs a JSON body::

    {"amount_paise": 50000, "payer_vpa": "asha@upi", "txn_ref": "UPI-4242",
     "meter_id": "UJ-1", "gateway": "razorpay"}

and signs the *raw body bytes* with HMAC-SHA256 under the secret it shares
with us, hex in the ``X-Urja-Signature`` header (the scheme of Razorpay's
``X-Razorpay-Signature``; a signature cannot sit inside the bytes it signs,
so a ``signature`` key in the body is ignored).  The body is verified
before anything is stored; a forged or missing signature answers 401 and
writes nothing.

Idempotency: (gateway, txn_ref) is unique in ``payments``.  The handler
inserts with ON CONFLICT DO NOTHING and, only when it created the row,
adds in the same transaction the TopUp, its QUEUED ``topup`` command
(id ``TU-<payment id>``), the Receipt and the PAYMENT_RECEIVED ledger
entry.  A duplicate (retries, or the same callback N times at once) finds
the committed row -- PostgreSQL makes the second INSERT wait for the first
transaction; SQLite has one writer -- and answers 200 with the same receipt.
The same txn_ref with a different amount or meter answers 409.

Payee reference: a payment for a link the consumer channel handed out
(``upi://pay?...&tr=<ref>``) may carry that reference as ``"tr"``.  Each
function in ``REFERENCE_CHECKS`` may refuse it before anything is stored (the
channel refuses a ``tr`` issued for another meter: 409); the ledger's
PAYMENT_RECEIVED note starts ``tr=<ref>;`` so the match is kept; and after the
commit every ``PAID_LISTENERS`` function is called with ``(session, payload,
receipt, now)`` (the channel sends the receipt to the number that asked for
the link).  A failing listener is logged; the payment stands.

This is a plain function; ``headend/api.py`` mounts it at ``POST
/payments/webhook``.

>>> body = json.dumps({"amount_paise": 50000, "payer_vpa": "asha@upi", "txn_ref": "T1",
...                    "meter_id": "UJ-1", "gateway": "g"}).encode()
>>> sig = sign_body(b"secret", body)
>>> handle_payment_webhook(session, body, {"X-Urja-Signature": sig}, now=T0,
...                        secrets={"g": b"secret"})                       # doctest: +SKIP
(201, {'receipt': {...}, 'duplicate': False})
"""
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import time

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from headend import commands as C
from headend import ledger as L
from headend import models as M
from headend import tokens as TK

log = logging.getLogger("urja.payments")

SIGNATURE_HEADER = "X-Urja-Signature"
SECRETS_ENV = "URJA_PAYMENT_GATEWAY_SECRETS"   # "gateway1:hexsecret,gateway2:hexsecret"
MAX_BODY_BYTES = 8192
MAX_AMOUNT_PAISE = 10 ** 9   # Rs 1 crore: a bigger single recharge is a typo or an attack
RETRIES = 5                   # lock timeouts / serialisation failures under contention
TR_RE = re.compile(r"^[A-Za-z0-9]{1,35}$")   # the UPI link's payee reference (headend/upi.py)
REFERENCE_CHECKS = []         # f(session, payload, meter) -> problem text or None (409)
PAID_LISTENERS = []           # f(session, payload, receipt_json, now), after the commit


def sign_body(secret, raw_body):
    """Hex HMAC-SHA256 of the raw body: what the gateway puts in the signature header."""
    return hmac.new(secret, raw_body, hashlib.sha256).hexdigest()


def gateway_secrets(environ=None):
    """Gateway name -> secret bytes from ``URJA_PAYMENT_GATEWAY_SECRETS``.

    >>> gateway_secrets({"URJA_PAYMENT_GATEWAY_SECRETS": "upi1:6b6579"})
    {'upi1': b'key'}
    """
    text = (os.environ if environ is None else environ).get(SECRETS_ENV, "")
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, hexkey = item.partition(":")
        try:
            out[name.strip()] = binascii.unhexlify(hexkey.strip())
        except (binascii.Error, ValueError):
            raise ValueError("%s: secret of %r is not hex" % (SECRETS_ENV, name))
    return out


def _err(status, message):
    return status, {"error": message}


def _text(value, lo, hi):
    return isinstance(value, str) and lo <= len(value) <= hi and value.isprintable()


def _validate(p):
    """The problem with a verified payload, or None."""
    amount = p.get("amount_paise")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT_PAISE:
        return "amount_paise must be an integer 1..%d (paise, no floats)" % MAX_AMOUNT_PAISE
    if not _text(p.get("payer_vpa"), 3, 128) or "@" not in p["payer_vpa"]:
        return "payer_vpa must be a UPI address like name@bank"
    if not _text(p.get("txn_ref"), 1, 64):
        return "txn_ref must be 1..64 printable characters"
    if not _text(p.get("meter_id"), 1, 64):
        return "meter_id must be 1..64 printable characters"
    if "tr" in p and not (isinstance(p["tr"], str) and TR_RE.match(p["tr"])):
        return "tr must be the payment link's reference: 1..35 letters and digits"
    if p.get("delivery", TK.AUTO) not in TK.PREFERENCES:
        return "delivery must be one of %s" % ", ".join(TK.PREFERENCES)
    return None


def _insert_payment(session, row):
    """The new payment's id, or None when (gateway, txn_ref) exists already."""
    table = L.Payment.__table__
    ins = (postgresql.insert(table) if session.get_bind().dialect.name == "postgresql"
           else sqlite.insert(table))
    return session.execute(ins.values(**row).on_conflict_do_nothing(
        index_elements=["gateway", "txn_ref"]).returning(table.c.id)).scalar()


def _receipt_of(session, payment_id):
    receipt = session.scalars(select(L.Receipt).where(L.Receipt.payment_id == payment_id)).one()
    return L.receipt_json(session, receipt)


def _record(session, payload, meter, raw_body, now, ttl_s, master_key=None):
    """One attempt in one transaction: (status, json).  Commits."""
    row = {"gateway": payload["gateway"], "txn_ref": payload["txn_ref"],
           "tenant_id": meter.tenant_id, "meter_id": meter.id,
           "amount_paise": payload["amount_paise"], "payer_vpa": payload["payer_vpa"],
           "received_at": now, "body_sha256": hashlib.sha256(raw_body).hexdigest()}
    payment_id = _insert_payment(session, row)
    if payment_id is None:
        session.rollback()
        existing = session.scalars(select(L.Payment).where(
            L.Payment.gateway == row["gateway"], L.Payment.txn_ref == row["txn_ref"])).one()
        if (existing.meter_id, existing.amount_paise) != (row["meter_id"], row["amount_paise"]):
            return _err(409, "txn_ref %s of %s was already used for another meter or amount"
                        % (row["txn_ref"], row["gateway"]))
        return 200, {"receipt": _receipt_of(session, existing.id), "duplicate": True}
    cmd = C.enqueue(session, meter.id, "topup", [row["amount_paise"]], now, ttl_s=ttl_s,
                    command_id=L.topup_command_id(payment_id))
    session.add(L.TopUp(payment_id=payment_id, meter_id=meter.id,
                        amount_paise=row["amount_paise"], command_id=cmd.id, created_at=now))
    tenant = session.get(M.Tenant, meter.tenant_id)
    session.add(L.Receipt(number=L.receipt_number(tenant.code, payment_id),
                          payment_id=payment_id, issued_at=now))
    session.add(L.LedgerEntry(meter_id=meter.id, at=now, kind=L.PAYMENT_RECEIVED,
                              amount_paise=row["amount_paise"], payment_id=payment_id,
                              note=("tr=%s; " % payload["tr"] if payload.get("tr") else "")
                              + "%s %s" % (row["gateway"], row["txn_ref"])))
    session.flush()
    # exactly one delivery path, chosen now: the MQTT command above, or an STS token
    # (which cancels the never-sent command in this transaction; headend/tokens.py)
    TK.deliver_payment(session, payment_id, payload.get("delivery", TK.AUTO), now, master_key)
    out = {"receipt": _receipt_of(session, payment_id), "duplicate": False}
    session.commit()
    return 201, out


def _tell_listeners(session, payload, receipt, now):
    for listener in PAID_LISTENERS:
        try:
            listener(session, payload, receipt, now)
            session.commit()
        except Exception:  # noqa: BLE001 - the payment is committed; a listener must not undo it
            session.rollback()
            log.exception("payment listener %s failed for %s", getattr(listener, "__name__", "?"),
                          receipt.get("number"))


def handle_payment_webhook(session, raw_body, headers, now=None, secrets=None,
                           signature_header=SIGNATURE_HEADER, ttl_s=None, master_key=None):
    """Verify and record one gateway callback; returns ``(http_status, json_dict)``.

    201 new payment (receipt), 200 duplicate (same receipt), 400 not JSON,
    401 unknown gateway or bad signature, 404 unknown or inactive meter,
    409 txn_ref reused with other data (or a ``tr`` issued for another meter),
    413 body too large, 422 bad fields.
    Only 200/201 store anything; the session is committed (201) or rolled
    back.  ``secrets`` defaults to ``gateway_secrets()``; ``ttl_s`` is the
    top-up command's lifetime (default ``commands.DEFAULT_TTL_S``).  An optional
    ``"delivery": "auto"|"mqtt"|"token"`` in the body picks the path (``headend/
    tokens.py``); ``master_key`` opens the STS vending keys (default URJA_MASTER_KEY).
    """
    now = int(time.time()) if now is None else now
    if len(raw_body) > MAX_BODY_BYTES:
        return _err(413, "body larger than %d bytes" % MAX_BODY_BYTES)
    try:
        payload = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        return _err(400, "body is not JSON")
    if not isinstance(payload, dict):
        return _err(400, "body must be a JSON object")
    secrets = gateway_secrets() if secrets is None else secrets
    secret = secrets.get(payload.get("gateway")) if isinstance(payload.get("gateway"), str) else None
    lowered = {k.lower(): v for k, v in headers.items()}
    given = lowered.get(signature_header.lower(), "")
    # same answer for an unknown gateway and a wrong signature: no oracle for gateway names
    if secret is None or not hmac.compare_digest(sign_body(secret, raw_body),
                                                 given.strip().lower()):
        log.warning("payment webhook with a bad signature (gateway %r)", payload.get("gateway"))
        return _err(401, "gateway signature does not verify")
    problem = _validate(payload)
    if problem:
        return _err(422, problem)
    for attempt in range(RETRIES):
        try:
            meter = session.get(M.Meter, payload["meter_id"])
            if meter is None or not meter.active:
                session.rollback()
                return _err(404, "no active meter %r" % payload["meter_id"])
            for check in REFERENCE_CHECKS:
                problem = check(session, payload, meter)
                if problem:
                    session.rollback()
                    return _err(409, problem)
            status, out = _record(session, payload, meter, raw_body, now, ttl_s, master_key)
            if status == 201:
                _tell_listeners(session, payload, out["receipt"], now)
            return status, out
        except C.CommandError as err:  # a registry meter id the wire format cannot carry
            session.rollback()
            return _err(422, str(err))
        except (OperationalError, IntegrityError) as err:
            # lock timeout, serialisation failure, or a racing insert of the same ids
            session.rollback()
            if attempt == RETRIES - 1:
                raise
            log.info("payment webhook retry %d after %s", attempt + 1, type(err).__name__)
            time.sleep(0.05 * (attempt + 1))
    return _err(503, "database busy")  # not reached: the last attempt re-raises
