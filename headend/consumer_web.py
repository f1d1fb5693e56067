"""The consumer's mobile web page: the conversation's functions (balance, usage, recharge with a
UPI link and QR code, receipts, help) as small HTML pages under ``/my``, Hindi and English.

No framework and no JavaScript: server-rendered HTML with a viewport meta tag, one
column, big touch targets; a recharge answers a ``upi://pay`` link (tapping it on
the phone opens the UPI app) and the QR image the channel serves
(``/channel/qr/<ref>.png``).  The texts are the channel's own templates
(``templates/channel/<lang>/``), so the page and the SMS say the same thing;
the page's own words are in the web catalogue (``templates/ui/<lang>.txt``).

Login: phone number + one-time code.

1. ``POST /my/login`` with the number.  A 6-digit code is derived from the
   server secret, the number, a random challenge and its expiry (HMAC-SHA256),
   and sent through the consumer notifier (``headend/notify.py``: SMS gateway,
   WhatsApp or the log, from the environment).  Only a number linked to a
   meter gets a message; the page answers the same either way, so it does not
   reveal which numbers are registered.  Nothing secret is stored: the page
   carries the challenge, the code only travels to the phone.  The code is sent
   even to a number that sent STOP: its owner asked for it on this page (a
   transactional reply, like the channel's answer to START).
2. ``POST /my/verify`` with the code.  A right code within ``CODE_TTL_S``, for
   a challenge not used before, sets an HttpOnly cookie ``phone|expiry|HMAC``
   valid for ``SESSION_TTL_S``.
3. Every page recomputes the number's meters (``channel.consumer_meters``), so
   a consumer only ever sees the meters linked to their number, and a meter
   moved to another consumer disappears at once.

Abuse limits per number (the records are rows of the channel's message log,
``channel_messages``, so they also count in the channel's per-number rate
limit): ``MAX_CODES`` code requests and ``MAX_FAILS`` wrong codes per
``LIMIT_WINDOW_S``; a used challenge is logged and refused the second time.
The HMAC secret is ``URJA_WEB_SECRET`` (hex); without it a random key per
process is used (codes and sessions then end with the process, and several
API worker processes would not share them: set the variable in production).

    GET  /my/                 own meters: balance (+ days left), usage, recharge form
    GET  /my/login            POST /my/login (number)   POST /my/verify (code)
    POST /my/recharge         meter + rupees -> UPI link + QR image
    GET  /my/receipts         GET /my/help   GET /my/lang/{en|hi}   POST /my/logout

>>> login_code(b"k", "+919800000001", "ab12", 1795737600)
'530272'
"""
import hashlib
import hmac
import logging
import os
import secrets
import time
from typing import Annotated
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from headend import channel as CH
from headend import dashboard as D
from headend import upi

log = logging.getLogger("urja.consumer_web")

SECRET_ENV = "URJA_WEB_SECRET"
COOKIE, LANG_COOKIE = "urja_consumer", "urja_lang"
CODE_TTL_S = 600              # a login code is good for 10 minutes
SESSION_TTL_S = 8 * 3600
LIMIT_WINDOW_S = 900
MAX_CODES = 3                 # code requests per number per window
MAX_FAILS = 5                 # wrong codes per number per window
CODE_CMD, FAIL_CMD, LOGIN_CMD = "web_code", "web_fail", "web_login"   # channel_messages.command

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates",
                                                "consumer")),
    autoescape=True, undefined=jinja2.StrictUndefined)


def web_secret(environ=None):
    """The HMAC key: ``URJA_WEB_SECRET`` (hex), else a random key for this process."""
    text = (os.environ if environ is None else environ).get(SECRET_ENV, "").strip()
    if text:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise CH.ChannelError("%s must be hex" % SECRET_ENV)
    log.warning("%s is not set: consumer login codes and sessions last only as long as this "
                "process", SECRET_ENV)
    return secrets.token_bytes(32)


def _mac(key, *parts):
    return hmac.new(key, "|".join(str(p) for p in parts).encode(), hashlib.sha256).hexdigest()


def login_code(key, phone, nonce, expires_at):
    """The 6-digit code for one challenge (``nonce``, ``expires_at``) of one number."""
    return "%06d" % (int(_mac(key, "code", phone, nonce, expires_at)[:12], 16) % 1000000)


def session_cookie(key, phone, expires_at):
    """``phone|expires_at|mac``: who is logged in until when, unforgeable without ``key``."""
    return "%s|%d|%s" % (phone, expires_at, _mac(key, "session", phone, expires_at))


def phone_of_cookie(key, value, now):
    """The logged-in number of a session cookie, or None (forged, malformed or expired)."""
    parts = (value or "").split("|")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    phone, expires_at, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_mac(key, "session", phone, expires_at), mac) or expires_at <= now:
        return None
    return phone


def _recent(session, phone, command, since):
    return session.scalar(select(func.count()).select_from(CH.InboundMessage).where(
        CH.InboundMessage.phone == phone, CH.InboundMessage.command == command,
        CH.InboundMessage.at > since))


def _log(session, phone, now, command, text, replied=False):
    session.add(CH.InboundMessage(phone=phone, at=now, text=text, command=command,
                                  replied=replied))


def make_router(sessions, policy=None, secret=None, notifier=None, clock=time.time):
    """The ``/my`` pages; ``sessions()`` gives a DB session, ``notifier`` sends login codes
    (default: ``notify.consumer_notifier_from_env()`` at send time).

    >>> app.include_router(make_router(app.state.sessions))          # doctest: +SKIP
    """
    from headend import notify
    policy = policy or CH.ChannelPolicy.from_env()
    key = secret if secret is not None else web_secret()
    router = APIRouter(prefix="/my", include_in_schema=False)

    def now():
        return int(clock())

    def language(request, session=None, phone=None):
        lang = request.cookies.get(LANG_COOKIE, "")
        if lang in CH.LANGUAGES:
            return lang
        if session is not None and phone:
            consumers, _ = CH.consumer_meters(session, phone)
            return CH.reply_language(session, phone, consumers)
        return "hi" if request.headers.get("accept-language", "").lower().startswith("hi") \
            else "en"

    def render(request, name, lang, status=200, **ctx):
        here = request.url.path + ("?" + request.url.query if request.url.query else "")
        ctx.setdefault("csrf", "")
        ctx["user"] = who(request) if name not in ("login.html", "code.html") else None
        return HTMLResponse(_templates.get_template(name).render(
            lang=lang, t=D.translator(lang), here=here, **ctx), status_code=status)

    async def form_of(request):
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def who(request):
        return phone_of_cookie(key, request.cookies.get(COOKIE), now())

    def csrf(request):
        return _mac(key, "csrf", request.cookies.get(COOKIE, ""))[:32]

    def to_login():
        return RedirectResponse("/my/login", 303)

    # --- login -------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return render(request, "login.html", language(request), error=None)

    @router.post("/login", response_class=HTMLResponse)
    async def send_code(request: Request):
        form = await form_of(request)
        lang = language(request)
        try:
            phone = CH.normalise_phone(form.get("phone", ""))
        except CH.ChannelError:
            return render(request, "login.html", lang, 422, error="consumer.bad_phone")
        t = now()
        with sessions() as session:
            if _recent(session, phone, CODE_CMD, t - LIMIT_WINDOW_S) >= MAX_CODES:
                return render(request, "login.html", lang, 429, error="consumer.locked",
                              minutes=LIMIT_WINDOW_S // 60)
            consumers, meters = CH.consumer_meters(session, phone)
            nonce, expires_at = secrets.token_hex(8), t + CODE_TTL_S
            sent = False
            if meters:   # only a linked number gets a message; the page says the same anyway
                code_lang = CH.reply_language(session, phone, consumers)
                msg = notify.Message(phone, code_lang, notify.render(
                    "login_code", code_lang, code=login_code(key, phone, nonce, expires_at),
                    minutes=CODE_TTL_S // 60), "login-%s" % nonce, "login_code")
                sent = (notifier or notify.consumer_notifier_from_env()).send(msg).ok
            _log(session, phone, t, CODE_CMD, "[web] login code requested", sent)
            session.commit()
        return render(request, "code.html", lang, phone=phone,
                      challenge="%s.%d" % (nonce, expires_at), error=None,
                      minutes=CODE_TTL_S // 60)

    @router.post("/verify", response_class=HTMLResponse)
    async def verify(request: Request):
        form = await form_of(request)
        lang = language(request)
        t = now()
        try:
            phone = CH.normalise_phone(form.get("phone", ""))
        except CH.ChannelError:
            return render(request, "login.html", lang, 422, error="consumer.bad_phone")
        nonce, _, exp_text = form.get("challenge", "").partition(".")
        code = form.get("code", "").strip()
        with sessions() as session:
            if _recent(session, phone, FAIL_CMD, t - LIMIT_WINDOW_S) >= MAX_FAILS:
                return render(request, "login.html", lang, 429, error="consumer.locked",
                              minutes=LIMIT_WINDOW_S // 60)
            used_text = "[web] login %s" % nonce[:32]
            ok = (exp_text.isdigit() and len(exp_text) <= 12 and int(exp_text) >= t
                  and len(nonce) == 16 and len(code) == 6
                  and hmac.compare_digest(login_code(key, phone, nonce, int(exp_text)), code)
                  and not session.scalar(select(func.count()).select_from(CH.InboundMessage)
                                         .where(CH.InboundMessage.phone == phone,
                                                CH.InboundMessage.command == LOGIN_CMD,
                                                CH.InboundMessage.text == used_text)))
            if not ok:
                _log(session, phone, t, FAIL_CMD, "[web] wrong or expired login code")
                session.commit()
                return render(request, "code.html", lang, 401, phone=phone,
                              challenge=form.get("challenge", "")[:40],
                              error="consumer.bad_code", minutes=CODE_TTL_S // 60)
            _log(session, phone, t, LOGIN_CMD, used_text, True)
            session.commit()
        r = RedirectResponse("/my/", 303)
        r.set_cookie(COOKIE, session_cookie(key, phone, t + SESSION_TTL_S),
                     max_age=SESSION_TTL_S, httponly=True, samesite="strict", path="/my")
        return r

    @router.post("/logout")
    async def logout(request: Request):
        form = await form_of(request)
        r = RedirectResponse("/my/login", 303)
        if form.get("csrf") == csrf(request):   # no forced logout from another site
            r.delete_cookie(COOKIE, path="/my")
        return r

    @router.get("/lang/{lang}")
    def switch_language(lang: Annotated[str, Path(pattern="^(en|hi)$")], next: str = "/my/"):  # noqa: A002
        nxt = next if next.startswith("/my/") and "\\" not in next else "/my/"
        r = RedirectResponse(nxt, 303)
        r.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", path="/my")
        return r

    # --- the pages --------------------------------------------------------------------------

    def home_context(session, request, phone, lang):
        t = now()
        _consumers, meters = CH.consumer_meters(session, phone)
        cards = [{"meter": m, "balance": CH.balance_text(session, m, t, lang, policy),
                  "usage": CH.usage_text(session, m, t, lang, policy)} for m in meters]
        return {"phone": phone, "cards": cards, "csrf": csrf(request),
                "min_rupees": upi.rupees_text(policy.min_recharge_paise),
                "max_rupees": upi.rupees_text(policy.max_recharge_paise)}

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request):
        phone = who(request)
        if phone is None:
            return to_login()
        with sessions() as session:
            lang = language(request, session, phone)
            return render(request, "home.html", lang, error=None,
                          **home_context(session, request, phone, lang))

    @router.post("/recharge", response_class=HTMLResponse)
    async def recharge(request: Request):
        phone = who(request)
        if phone is None:
            return to_login()
        form = await form_of(request)
        with sessions() as session:
            lang = language(request, session, phone)
            if form.get("csrf") != csrf(request):
                return render(request, "home.html", lang, 403,
                              error=D.translator(lang)("consumer.expired"),
                              **home_context(session, request, phone, lang))
            _consumers, meters = CH.consumer_meters(session, phone)
            own = {m.id: m for m in meters}
            meter = own.get(form.get("meter_id", ""))
            if meter is None:   # another consumer's meter and a missing one: the same answer
                return render(request, "home.html", lang, 404, error=CH.render(
                    "not_your_meter", lang, meter_id=form.get("meter_id", "")[:64],
                    meters=", ".join(own)), **home_context(session, request, phone, lang))
            paise = CH.parse_amount_paise(form.get("amount", "").strip())
            if paise is None or not policy.min_recharge_paise <= paise <= policy.max_recharge_paise:
                return render(request, "home.html", lang, 422, error=CH.render(
                    "recharge_amount", lang, min=upi.rupees_text(policy.min_recharge_paise),
                    max=upi.rupees_text(policy.max_recharge_paise)),
                    **home_context(session, request, phone, lang))
            req = CH.new_recharge(session, meter, paise, phone, now(), policy)
            _log(session, phone, now(), "recharge", "[web] recharge %s %s" % (
                upi.rupees_text(paise), meter.id), True)
            session.commit()
            return render(request, "recharge.html", lang, phone=phone, meter_id=meter.id,
                          amount=upi.rupees_text(paise), link=req.link,
                          qr_url="/channel/qr/%s.png" % quote(req.ref), csrf=csrf(request))

    @router.get("/receipts", response_class=HTMLResponse)
    def receipts(request: Request):
        phone = who(request)
        if phone is None:
            return to_login()
        from headend import ledger as L
        with sessions() as session:
            lang = language(request, session, phone)
            _consumers, meters = CH.consumer_meters(session, phone)
            rows = list(session.scalars(select(L.Receipt).join(
                L.Payment, L.Payment.id == L.Receipt.payment_id).where(
                L.Payment.meter_id.in_([m.id for m in meters])).order_by(L.Receipt.id.desc())
                .limit(20))) if meters else []
            lines = [CH.receipt_text(session, L.receipt_json(session, r), lang, policy)
                     for r in rows]
            empty = CH.render("receipt_none", lang)
            return render(request, "receipts.html", lang, phone=phone, lines=lines,
                          empty=empty, csrf=csrf(request))

    @router.get("/help", response_class=HTMLResponse)
    def help_page(request: Request):
        phone = who(request)
        lang = language(request)
        return render(request, "help.html", lang, phone=phone, sms_help=CH.render("help", lang),
                      csrf=csrf(request) if phone else "")

    return router
