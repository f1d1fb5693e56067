"""Consumer channel: the conversation endpoint SMS and WhatsApp gateways call (webhook in, reply out).

Commands (first word, English or Hindi; an optional meter id names one of
several meters; Devanagari digits work as amounts)::

    BALANCE [meter]          बैलेंस / शेष
    USAGE [meter]            खपत / उपयोग
    RECHARGE 200 [meter]     रिचार्ज 200   -> UPI link (headend/upi.py) + QR image URL
    RECEIPT [meter]          रसीद          -> the latest payment receipt
    HELP                     मदद / सहायता
    HINDI | ENGLISH          हिंदी | अंग्रेज़ी  -> saved reply language
    STOP | START             बंद | चालू      -> opt out / back in

Who sees what: the sender's number maps to Consumer records (the number
as stored, with or without +91/0); the reply only ever names meters of
those consumers.  Another consumer's meter id gets the same refusal as a
meter that does not exist, so ids do not leak.

Language: a saved choice (HINDI/ENGLISH) wins; else the message itself
(Devanagari, or a Hindi keyword) -> Hindi, an English keyword -> English;
else the consumer record's language.

Rate limit: ``rate_limit`` messages per ``rate_window_s`` per number; the
first message over it gets one polite refusal, later ones get no reply
(each SMS costs money, and a loop between two bots must die out).

Opt-out: after STOP the number gets the confirmation and then silence until
START (``opted_out(session, phone)`` lets the alert sender honour it too).

Payment matching: the ``tr`` of a recharge link names its ``RechargeRequest``.
When the payment webhook later arrives with that ``tr`` (headend/payments.py),
``check_payment_reference`` refuses it if the request was for another meter,
and ``send_payment_receipt`` sends the receipt to the number that asked for the
link, in its language (unless it sent STOP), through the consumer notifier
(headend/notify.py); ``recharge_of_payment`` reads the match back.

Webhook (``make_router``): ``POST /channel/webhook`` with a JSON body
``{"from": "+919800000001", "text": "balance", "channel": "sms"}`` signed
like payments (HMAC-SHA256 hex of the raw body in ``X-Urja-Signature``,
secret from ``URJA_CHANNEL_SECRET`` as hex); answers ``{"to", "text",
"language", "media_url", "command"}`` (``text`` null: send nothing).
``GET /channel/qr/<ref>.png`` serves the recharge QR (the gateway passes
the URL to WhatsApp as an image).

>>> parse("रिचार्ज २०० UJ-1")
('recharge', ['२००', 'UJ-1'])
>>> detect_language("बैलेंस"), detect_language("balance"), detect_language("UJ-1")
('hi', 'en', None)
"""
import json
import os
import secrets
import string
import time
import unicodedata

from sqlalchemy import BigInteger, Boolean, ForeignKey, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from firmware.core import localtime as LT
from headend import forecast as F
from headend import models as M
from headend import upi
from headend.db import Base
from headend.models import BigId

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "channel")
LANGUAGES = ("hi", "en")
SECRET_ENV = "URJA_CHANNEL_SECRET"

# first word -> command; (word, language it proves or None)
KEYWORDS = {}
for _cmd, _en, _hi in (
        ("balance", ("balance", "bal"), ("बैलेंस", "बैलेन्स", "शेष", "bakaya", "baki")),
        ("usage", ("usage", "use"), ("खपत", "उपयोग", "khapat", "kharch")),
        ("recharge", ("recharge", "pay", "topup"), ("रिचार्ज", "भुगतान")),
        ("receipt", ("receipt",), ("रसीद", "rasid", "raseed")),
        ("help", ("help", "?", "menu"), ("मदद", "सहायता", "madad")),
        ("stop", ("stop", "unsubscribe"), ("बंद", "रोकें")),
        ("start", ("start", "subscribe"), ("चालू", "शुरू")),
        ("hindi", (), ("hindi", "हिंदी", "हिन्दी")),
        ("english", ("english",), ("अंग्रेज़ी", "अंग्रेजी"))):
    for _w in _en:
        KEYWORDS[_w] = (_cmd, "en")
    for _w in _hi:
        KEYWORDS[unicodedata.normalize("NFC", _w)] = (_cmd, "hi")


class ChannelError(ValueError):
    """A webhook call we cannot act on (bad number, bad body); the gateway gets a 4xx."""


class Subscriber(Base):
    """A number's channel settings: saved reply language and opt-out."""
    __tablename__ = "channel_subscribers"
    phone: Mapped[str] = mapped_column(String(20), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class InboundMessage(Base):
    """Every message received (the rate limit counts these; support reads them)."""
    __tablename__ = "channel_messages"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    phone: Mapped[str] = mapped_column(String(20), index=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    text: Mapped[str] = mapped_column(Text)
    command: Mapped[str | None] = mapped_column(String(16), default=None)
    replied: Mapped[bool] = mapped_column(Boolean, default=False)


class RechargeRequest(Base):
    """A UPI link handed out by ``recharge``; ``ref`` is its ``tr`` and names its QR image."""
    __tablename__ = "channel_recharges"
    ref: Mapped[str] = mapped_column(String(35), primary_key=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    phone: Mapped[str] = mapped_column(String(20))
    link: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


TABLES = (Subscriber.__table__, InboundMessage.__table__, RechargeRequest.__table__)


def create_tables(engine):
    """Create this module's tables (until they are in an Alembic migration)."""
    Base.metadata.create_all(engine, tables=list(TABLES))


class ChannelPolicy:
    """Settings of the channel, all data.

    ``payees``: tenant code -> (VPA, payee name) the tenant collects on;
    others use (``vpa``, ``payee_name``).  ``public_url``: where phones reach
    ``/channel/qr/...``.

    >>> ChannelPolicy(rate_limit=3).rate_limit
    3
    """

    def __init__(self, vpa="urja.collect@okbank", payee_name="Urja Prepaid", payees=None,
                 public_url="http://127.0.0.1:8080", rate_limit=5, rate_window_s=60,
                 min_recharge_paise=1000, max_recharge_paise=1000000,
                 offset_s=LT.IST_OFFSET_S, season=None):
        for name, v in (("rate_limit", rate_limit), ("rate_window_s", rate_window_s),
                        ("min_recharge_paise", min_recharge_paise)):
            if not isinstance(v, int) or v < 1:
                raise ChannelError("%s: must be an integer >= 1, got %r" % (name, v))
        self.vpa, self.payee_name, self.payees = vpa, payee_name, dict(payees or {})
        self.public_url = public_url.rstrip("/")
        self.rate_limit, self.rate_window_s = rate_limit, rate_window_s
        self.min_recharge_paise, self.max_recharge_paise = min_recharge_paise, max_recharge_paise
        self.offset_s = offset_s
        self.season = season

    @classmethod
    def from_env(cls, environ=None):
        """From ``URJA_CHANNEL_VPA``, ``URJA_CHANNEL_PAYEE``, ``URJA_PUBLIC_URL``, ``URJA_CHANNEL_RATE``."""
        env = os.environ if environ is None else environ
        kw = {}
        for key, name in (("URJA_CHANNEL_VPA", "vpa"), ("URJA_CHANNEL_PAYEE", "payee_name"),
                          ("URJA_PUBLIC_URL", "public_url")):
            if env.get(key):
                kw[name] = env[key]
        if env.get("URJA_CHANNEL_RATE"):
            kw["rate_limit"] = int(env["URJA_CHANNEL_RATE"])
        return cls(**kw)


class Reply:
    """What to send back: ``text`` None means send nothing."""
    __slots__ = ("to", "text", "language", "media_url", "command")

    def __init__(self, to, text, language, command, media_url=None):
        self.to, self.text, self.language = to, text, language
        self.command, self.media_url = command, media_url

    def to_dict(self):
        return {"to": self.to, "text": self.text, "language": self.language,
                "media_url": self.media_url, "command": self.command}


# --- text -------------------------------------------------------------------------------

def render(name, language, **fields):
    """Template ``templates/channel/<language>/<name>.txt`` filled with ``fields``."""
    lang = language if language in LANGUAGES else "en"
    with open(os.path.join(TEMPLATES, lang, name + ".txt"), encoding="utf-8") as f:
        return string.Template(f.read().strip()).substitute(fields)


def normalise_phone(text):
    """``+91 98000-00001``, ``919800000001``, ``09800000001`` -> ``+919800000001``.

    >>> normalise_phone("098000 00001")
    '+919800000001'
    """
    digits = "".join(c for c in str(text) if c.isdigit() and c.isascii())
    if len(digits) == 11 and digits[0] == "0":
        digits = digits[1:]
    if len(digits) == 10:
        digits = "91" + digits
    if not 11 <= len(digits) <= 15:
        raise ChannelError("not a phone number: %r" % (text,))
    return "+" + digits


def _phone_forms(phone):
    """The ways a number may be stored on a Consumer record (registration takes free text)."""
    d = phone[1:]
    forms = {phone, d}
    if d.startswith("91") and len(d) == 12:
        n = d[2:]
        forms |= {n, "0" + n, "+91 " + n, "+91-" + n, "+91 %s %s" % (n[:5], n[5:]),
                  "%s %s" % (n[:5], n[5:])}
    return sorted(forms)


def parse(text):
    """``(command, args)``; command is a KEYWORDS value or ``"unknown"``."""
    words = unicodedata.normalize("NFC", text).split()
    if not words:
        return "unknown", []
    hit = KEYWORDS.get(words[0].lower())
    return (hit[0] if hit else "unknown"), words[1:]


def detect_language(text):
    """``"hi"`` for Devanagari or a Hindi keyword, ``"en"`` for an English keyword, else None."""
    if any("\u0900" <= c <= "\u097f" for c in text):
        return "hi"
    words = unicodedata.normalize("NFC", text).split()
    hit = KEYWORDS.get(words[0].lower()) if words else None
    return hit[1] if hit else None


def parse_amount_paise(word):
    """Rupees as typed (``200``, ``200.50``, ``२००``) -> integer paise, or None."""
    whole, _, frac = word.partition(".")
    if not whole.isdecimal() or (frac and not (frac.isdecimal() and len(frac) <= 2)):
        return None
    return int(whole) * 100 + (int(frac.ljust(2, "0")) if frac else 0)


def _numeric(word):
    """An amount attempt (``200``, ``1.234``, ``२००``), as opposed to a meter id."""
    return all(c.isdecimal() or c in ".," for c in word)


def _when(t, offset_s):
    y, mo, d = LT.local_date(t, offset_s)
    s = LT.second_of_day(t, offset_s)
    return "%02d-%02d-%04d %02d:%02d" % (d, mo, y, s // 3600, s // 60 % 60)


def _quantity(amount, unit):
    """Wh -> ``12.3 kWh`` (integer arithmetic), litres as they are."""
    if unit == "Wh":
        tenths = amount // 100
        return "%d.%d kWh" % (tenths // 10, tenths % 10)
    return "%d L" % amount


# --- state -------------------------------------------------------------------------------

def opted_out(session, phone):
    """True when ``phone`` sent STOP (and no START since): send it nothing proactive."""
    sub = session.get(Subscriber, normalise_phone(phone))
    return bool(sub and sub.opted_out)


def _subscriber(session, phone, now):
    sub = session.get(Subscriber, phone)
    if sub is None:
        sub = Subscriber(phone=phone, language=None, opted_out=False, updated_at=now)
        session.add(sub)
    return sub


def consumer_meters(session, phone):
    """(consumers, meters) linked to ``phone``; meters active, ordered by id."""
    consumers = list(session.scalars(select(M.Consumer).where(
        M.Consumer.phone.in_(_phone_forms(phone))).order_by(M.Consumer.id)))
    if not consumers:
        return [], []
    meters = list(session.scalars(select(M.Meter).where(
        M.Meter.consumer_id.in_([c.id for c in consumers]), M.Meter.active.is_(True))
        .order_by(M.Meter.id)))
    return consumers, meters


# --- the conversation --------------------------------------------------------------------

def handle_message(session, phone, text, now, policy=None):
    """The reply to ``text`` from ``phone`` at ``now``; the caller commits.

    >>> handle_message(session, "+919800000001", "balance", now).text   # doctest: +SKIP
    'Meter UJ-1: balance Rs 412.50 (OK) as of 27-11-2026 05:30. ...'
    """
    policy = policy or ChannelPolicy()
    phone = normalise_phone(phone)
    text = (text or "").strip()[:500]
    command, args = parse(text)
    msg = InboundMessage(phone=phone, at=now, text=text, command=command)
    session.add(msg)
    session.flush()
    out = _converse(session, phone, text, command, args, now, policy)
    msg.replied = out.text is not None
    return out


def _converse(session, phone, text, command, args, now, policy):
    seen = session.scalar(select(func.count()).select_from(InboundMessage).where(
        InboundMessage.phone == phone, InboundMessage.at > now - policy.rate_window_s))
    sub = session.get(Subscriber, phone)
    consumers, meters = consumer_meters(session, phone)
    lang = ((sub.language if sub else None) or detect_language(text)
            or (consumers[0].language if consumers else None) or "en")

    def reply(name, media_url=None, **fields):
        return Reply(phone, render(name, lang, **fields), lang, command, media_url)

    if seen > policy.rate_limit:
        if seen == policy.rate_limit + 1:
            return reply("rate_limited")
        return Reply(phone, None, lang, command)
    if command == "stop":
        sub = _subscriber(session, phone, now)
        sub.opted_out, sub.updated_at = True, now
        return reply("stopped")
    if command == "start":
        sub = _subscriber(session, phone, now)
        sub.opted_out, sub.updated_at = False, now
        return reply("started")
    if sub is not None and sub.opted_out:
        return Reply(phone, None, lang, command)
    if command in ("hindi", "english"):
        sub = _subscriber(session, phone, now)
        sub.language = lang = "hi" if command == "hindi" else "en"
        sub.updated_at = now
        return reply("language_set")
    if not meters:
        return reply("not_registered")
    if command == "help":
        return reply("help")
    if command == "unknown":
        return reply("unknown", text=text[:40])

    # an argument that is not an amount names a meter; only the sender's own meters count
    own = {m.id.lower(): m for m in meters}
    named = [a for a in args if not _numeric(a)]
    ids = ", ".join(m.id for m in meters)
    chosen = meters
    if named:
        m = own.get(named[0].lower())
        if m is None:
            return reply("not_your_meter", meter_id=named[0][:64], meters=ids)
        chosen = [m]
    if command == "balance":
        return Reply(phone, "\n".join(_balance_text(session, m, now, lang, policy)
                                      for m in chosen), lang, command)
    if command == "usage":
        return Reply(phone, "\n".join(_usage_text(session, m, now, lang, policy)
                                      for m in chosen), lang, command)
    if command == "receipt":
        return _receipt_reply(session, chosen, phone, lang, policy)
    # recharge
    if len(chosen) > 1:
        return reply("which_meter", meters=ids, example="RECHARGE 200 %s" % chosen[0].id)
    amounts = [a for a in args if _numeric(a)]
    paise = parse_amount_paise(amounts[0]) if amounts else None
    if paise is None or not policy.min_recharge_paise <= paise <= policy.max_recharge_paise:
        return reply("recharge_amount", min=upi.rupees_text(policy.min_recharge_paise),
                     max=upi.rupees_text(policy.max_recharge_paise))
    req = new_recharge(session, chosen[0], paise, phone, now, policy)
    qr_url = "%s/channel/qr/%s.png" % (policy.public_url, req.ref)
    return reply("recharge", media_url=qr_url, amount=upi.rupees_text(paise),
                 meter_id=chosen[0].id, link=req.link, qr_url=qr_url)


def _balance_text(session, meter, now, lang, policy):
    bal = session.get(M.MeterBalance, meter.id)
    if bal is None:
        return render("balance_unknown", lang, meter_id=meter.id)
    days = ""
    try:
        f = F.forecast_meter(session, meter.id, now, season=policy.season,
                             offset_s=policy.offset_s)
        if f.days_left is not None:
            days = " " + render("days_left", lang, days=f.days_left)
    except F.ForecastError:
        pass
    return render("balance", lang, meter_id=meter.id, balance=upi.rupees_text(bal.balance_paise)
                  if bal.balance_paise >= 0 else "-" + upi.rupees_text(-bal.balance_paise),
                  state=bal.state, when=_when(bal.t, policy.offset_s), days=days)


def _usage_text(session, meter, now, lang, policy):
    today = LT.local_day(now, policy.offset_s)
    week_start = LT.local_midnight_utc(today - 7, policy.offset_s)
    midnight = LT.local_midnight_utc(today, policy.offset_s)
    rows = session.execute(select(M.Reading.start_t, M.Reading.energy).where(
        M.Reading.meter_id == meter.id, M.Reading.start_t >= week_start,
        M.Reading.start_t < now)).all()
    week = sum(e for t, e in rows if t < midnight)
    so_far = sum(e for t, e in rows if t >= midnight)
    return render("usage", lang, meter_id=meter.id, week=_quantity(week, meter.unit),
                  avg=_quantity(week // 7, meter.unit), today=_quantity(so_far, meter.unit))


def _receipt_reply(session, meters, phone, lang, policy):
    from headend import ledger as L  # payments are optional in a build; import when asked
    row = session.execute(select(L.Receipt, L.Payment).join(
        L.Payment, L.Payment.id == L.Receipt.payment_id).where(
        L.Payment.meter_id.in_([m.id for m in meters])).order_by(L.Receipt.id.desc())
        .limit(1)).first()
    if row is None:
        return Reply(phone, render("receipt_none", lang), lang, "receipt")
    text = receipt_text(session, L.receipt_json(session, row[0]), lang, policy)
    return Reply(phone, text, lang, "receipt")


def new_recharge(session, meter, amount_paise, phone, now, policy):
    """Store and return a RechargeRequest with a fresh unguessable ``ref`` and its UPI link."""
    tenant = session.get(M.Tenant, meter.tenant_id)
    vpa, name = policy.payees.get(tenant.code, (policy.vpa, policy.payee_name))
    ref = "UR" + secrets.token_hex(10).upper()      # 22 alphanumerics, also the QR's URL
    link = upi.payment_link(vpa, name, amount_paise, "Recharge %s" % meter.id[:40], ref)
    req = RechargeRequest(ref=ref, meter_id=meter.id, amount_paise=amount_paise, phone=phone,
                          link=link, created_at=now)
    session.add(req)
    return req


def balance_text(session, meter, now, lang, policy=None):
    """The ``balance`` reply's line for one meter (also used by the consumer web page)."""
    return _balance_text(session, meter, now, lang, policy or ChannelPolicy())


def usage_text(session, meter, now, lang, policy=None):
    """The ``usage`` reply's line for one meter (also used by the consumer web page)."""
    return _usage_text(session, meter, now, lang, policy or ChannelPolicy())


def receipt_text(session, receipt_data, lang, policy=None):
    """The ``receipt`` reply for one receipt (``ledger.receipt_json``)."""
    policy = policy or ChannelPolicy()
    return render("receipt", lang, number=receipt_data["number"],
                  amount=receipt_data["amount_rupees"], meter_id=receipt_data["meter_id"],
                  when=_when(receipt_data["issued_at"], policy.offset_s),
                  txn_ref=receipt_data["txn_ref"], state=receipt_data["topup"]["state"])


def reply_language(session, phone, consumers):
    """A number's saved choice (HINDI/ENGLISH), else its consumer's language, else English."""
    sub = session.get(Subscriber, phone)
    return ((sub.language if sub else None)
            or (consumers[0].language if consumers else None) or "en")


# --- payments that carry a recharge link's reference ------------------------------------------

def check_payment_reference(session, payload, meter):
    """``payments.REFERENCE_CHECKS`` hook: a ``tr`` of ours must be paid for its own meter."""
    ref = payload.get("tr")
    req = session.get(RechargeRequest, ref) if ref else None
    if req is not None and req.meter_id != meter.id:
        return "tr %s was issued for another meter, not %s" % (ref, meter.id)
    return None


# the consumer notifier for receipts; None: headend.notify.consumer_notifier_from_env()
RECEIPT_NOTIFIER = None


def send_payment_receipt(session, payload, receipt, now, notifier=None):
    """``payments.PAID_LISTENERS`` hook: the receipt goes to the number that asked for the link.

    Returns the (Message, Delivery) sent, or None (no ``tr`` of ours, or the number opted out).
    """
    from headend import notify  # notify imports this module
    ref = payload.get("tr")
    req = session.get(RechargeRequest, ref) if ref else None
    if req is None or opted_out(session, req.phone):
        return None
    consumers, _meters = consumer_meters(session, req.phone)
    lang = reply_language(session, req.phone, consumers)
    text = receipt_text(session, receipt, lang)
    msg = notify.Message(req.phone, lang, text, "receipt-%s" % receipt["number"], "receipt",
                         req.meter_id)
    via = notifier or RECEIPT_NOTIFIER or notify.consumer_notifier_from_env()
    return msg, via.send(msg)


def recharge_of_payment(session, payment_id):
    """The ``RechargeRequest`` a payment was matched to (its ledger note), or None."""
    from headend import ledger as L
    note = session.scalars(select(L.LedgerEntry.note).where(
        L.LedgerEntry.payment_id == payment_id, L.LedgerEntry.kind == L.PAYMENT_RECEIVED)).first()
    if not note or not note.startswith("tr="):
        return None
    ref = note[3:].split(";", 1)[0]
    return session.get(RechargeRequest, ref) if upi.REF_RE.match(ref) else None


def _register_payment_hooks():
    from headend import payments as P
    if check_payment_reference not in P.REFERENCE_CHECKS:
        P.REFERENCE_CHECKS.append(check_payment_reference)
    if send_payment_receipt not in P.PAID_LISTENERS:
        P.PAID_LISTENERS.append(send_payment_receipt)


def recharge_qr(session, ref):
    """PNG bytes of the QR for recharge ``ref``, or None."""
    if not upi.REF_RE.match(ref):
        return None
    req = session.get(RechargeRequest, ref)
    return upi.qr_png(req.link) if req is not None else None


# --- HTTP ----------------------------------------------------------------------------------

def channel_secret(environ=None):
    """The gateway's shared secret (bytes) from ``URJA_CHANNEL_SECRET`` (hex), or None."""
    text = (os.environ if environ is None else environ).get(SECRET_ENV, "").strip()
    try:
        return bytes.fromhex(text) if text else None
    except ValueError:
        raise ChannelError("%s must be hex" % SECRET_ENV)


def make_router(sessions, policy=None, secret=None, clock=time.time,
                signature_header="X-Urja-Signature"):
    """An APIRouter with the webhook and the QR images; ``sessions()`` gives a DB session.

    >>> app.include_router(make_router(app.state.sessions))          # doctest: +SKIP
    """
    import hashlib
    import hmac

    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, Response

    policy = policy or ChannelPolicy.from_env()
    router = APIRouter(tags=["consumer channel"])

    @router.post("/channel/webhook", responses={
        200: {"description": "what to send back (text null: nothing)"},
        401: {"description": "bad signature, or no channel secret configured"},
        413: {"description": "body too large"}, 422: {"description": "bad message"}})
    async def webhook(request: Request):
        """An inbound SMS/WhatsApp message (signed JSON); the body says what to send back."""
        key = secret if secret is not None else channel_secret()
        if key is None:
            # no shared secret: no gateway can be authenticated (a 401, not a server error)
            return JSONResponse({"detail": "channel not configured: %s is unset" % SECRET_ENV},
                                status_code=401)
        raw = await request.body()
        if len(raw) > 4096:
            return JSONResponse({"detail": "body too large"}, status_code=413)
        sig = request.headers.get(signature_header, "")
        if not hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).hexdigest(), sig.lower()):
            return JSONResponse({"detail": "bad signature"}, status_code=401)
        try:
            body = json.loads(raw)
            phone, text = body["from"], body["text"]
            if not isinstance(phone, str) or not isinstance(text, str):
                raise ValueError("from and text must be strings")
            with sessions() as session:
                out = handle_message(session, phone, text, int(clock()), policy)
                session.commit()
        except (ValueError, KeyError, TypeError) as err:
            return JSONResponse({"detail": "bad message: %s" % err}, status_code=422)
        return out.to_dict()

    @router.get("/channel/qr/{ref}.png", response_class=Response,
                responses={200: {"content": {"image/png": {}}}, 404: {}})
    def qr(ref: str):
        """The QR image of a recharge link handed out by the webhook."""
        with sessions() as session:
            png = recharge_qr(session, ref)
        if png is None:
            return JSONResponse({"detail": "no such recharge"}, status_code=404)
        return Response(png, media_type="image/png")

    return router


_register_payment_hooks()
