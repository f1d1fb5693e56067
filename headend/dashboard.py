"""The operator dashboard: server-rendered HTML pages under ``/ui`` (issue 9, item 1).

Why server-rendered (Jinja2 + inline SVG) and not a built front end: the head-end
already holds every rule that matters (``auth.Scope`` for tenant isolation,
``guardrails`` for the two-person rule), so each page is one query through them
and one template; there is no second client-side copy of those rules to drift,
no JavaScript build, no CDN (utility control rooms are often offline), and
charts are plain SVG computed in integer pixels here, so a test can read them.
JavaScript is limited to nothing essential: every action is an HTML form POST.

Login exchanges username/password for the API's own bearer token
(``auth.login``), kept in an HttpOnly, SameSite=Strict cookie; each form also
carries a CSRF field derived from that token.  Only staff roles (admin,
operator, technician) get pages; what they may *do* is still
``auth.PERMISSIONS``.  A platform admin picks a tenant with the switcher
(cookie ``urja_tenant``), which only narrows what Scope already allows.

    GET  /ui/login, POST /ui/login, POST /ui/logout
    GET  /ui/                      fleet overview (states, read success, comm loss,
                                   revenue per day, balance distribution, alerts)
                                   top-up latency p50/p99 per day
    GET  /ui/meters                all meters (state, balance, last heard), paged
    GET  /ui/meters/{id}           load profile, balance history, events, commands,
                                   reconciliation status, days of credit left
    GET  /ui/commands, POST /ui/commands      top-up / connect / disconnect form
    POST /ui/requests/{id}/approve|reject     the second approver
    POST /ui/alerts/{id}/ack, POST /ui/tenant
    GET  /ui/lang/{en|hi}?next=...  page language (cookie), English or Hindi

Long lists (meters, comm loss, alerts, command requests, a meter's commands)
are paged: ``settings.ui_page_size`` rows, page links ``?<list>_page=N``.
Words on the pages come from the message catalogue ``templates/ui/<lang>.txt``
(the same "one file per language" approach as the channel's texts); data
(meter ids, amounts, times) is shown as is.

>>> rupees_to_paise("200.5"), format_paise(-12345)
(20050, '-₹123.45')
"""
import hashlib
import inspect
import os
import re
import string
from typing import Annotated
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from firmware.core.localtime import IST_OFFSET_S, local_date, local_day
from headend import auth as A
from headend import guardrails as G
from headend import models as M

COOKIE, TENANT_COOKIE, LANG_COOKIE = "urja_session", "urja_tenant", "urja_lang"
LANGUAGES = ("en", "hi")
CATALOGUES = os.path.join(os.path.dirname(__file__), "templates", "ui")
DAY_S = 86400
STAFF = (A.ADMIN, A.OPERATOR, A.TECHNICIAN)
CREDIT_STATES = ("OK", "LOW", "EMERGENCY", "DISCONNECT_PENDING", "DISCONNECTED")
ATTENTION_STATES = ("LOW", "EMERGENCY", "DISCONNECT_PENDING", "DISCONNECTED")
# balance histogram edges in paise: <0, 0-100 Rs, 100-500 Rs, 500-1000 Rs, >=1000 Rs
BALANCE_EDGES_PAISE = (0, 10000, 50000, 100000)
BALANCE_LABELS = ("< ₹0", "₹0–100", "₹100–500", "₹500–1000", "≥ ₹1000")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MeterIdPath = Annotated[str, Path(pattern=ID_RE.pattern)]
IntPath = Annotated[int, Path(ge=1, le=2 ** 62)]
_RUPEES_RE = re.compile(r"^\s*(\d{1,9})(?:\.(\d{1,2}))?\s*$")

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates",
                                                "dashboard")),
    autoescape=True, undefined=jinja2.StrictUndefined)


class LoginRequired(Exception):
    """No valid session cookie: the page redirects to /ui/login."""


# --- small pure helpers -------------------------------------------------------

def rupees_to_paise(text):
    """Integer paise from a rupee amount typed in a form ("200", "200.5", "200.50").

    No floats: the paise part is padded to two digits.  ValueError on anything else.

    >>> rupees_to_paise("1.05")
    105
    """
    m = _RUPEES_RE.match(text or "")
    if m is None:
        raise ValueError("amount must be rupees with up to 2 decimals, e.g. 200 or 199.50")
    paise = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if paise <= 0:
        raise ValueError("amount must be more than ₹0")
    return paise


def format_paise(paise):
    """'₹1,234.50'-style text (Indian grouping is left out: plain thousands commas).

    >>> format_paise(123450)
    '₹1,234.50'
    """
    if paise is None:
        return "–"
    sign = "-" if paise < 0 else ""
    rupees, p = divmod(abs(paise), 100)
    return "%s₹%s.%02d" % (sign, "{:,}".format(rupees), p)


def format_time(t):
    """UTC seconds as IST 'YYYY-MM-DD HH:MM' (what operators in India read)."""
    if t is None:
        return "–"
    y, mo, d = local_date(t, IST_OFFSET_S)
    s = (t + IST_OFFSET_S) % DAY_S
    return "%04d-%02d-%02d %02d:%02d" % (y, mo, d, s // 3600, s % 3600 // 60)


_templates.filters["ist"] = format_time
_templates.filters["ist_clock"] = lambda t: format_time(t)[-5:]  # HH:MM, for chart axes
_templates.filters["rupees"] = format_paise


# --- the message catalogue (English / Hindi) ------------------------------------

_catalogues = {}


def catalogue(lang):
    """``{key: text}`` of ``templates/ui/<lang>.txt`` (read once); unknown language -> English."""
    lang = lang if lang in LANGUAGES else "en"
    if lang not in _catalogues:
        out = {}
        with open(os.path.join(CATALOGUES, lang + ".txt"), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key, sep, text = line.partition(" = ")
                if not sep:
                    raise ValueError("%s.txt line %d: expected 'key = text'" % (lang, n))
                out[key.strip()] = text
        _catalogues[lang] = out
    return _catalogues[lang]


def translator(lang):
    """``t(key, **fields)`` in ``lang``; a key missing in Hindi falls back to English.

    >>> translator("hi")("fleet.alerts", n=3)
    'खुली चेतावनियाँ: 3'
    """
    words, english = catalogue(lang), catalogue("en")

    def t(key, _default=None, **fields):
        text = words.get(key)
        if text is None:
            text = english.get(key, _default)
        if text is None:
            raise KeyError("no text %r in the web message catalogue" % key)  # a template bug
        return string.Template(text).substitute(fields) if fields else text
    return t


def language_of(request):
    """The page language: ``urja_lang`` cookie, else the browser's Accept-Language, else English."""
    lang = request.cookies.get(LANG_COOKIE, "")
    if lang in LANGUAGES:
        return lang
    accept = request.headers.get("accept-language", "").lower()
    return "hi" if accept.startswith("hi") else "en"


# --- paging ----------------------------------------------------------------------

def page_number(request, param):
    """The 1-based page asked for in ``?<param>=N`` (anything else: 1)."""
    text = request.query_params.get(param, "1")
    return int(text) if text.isdigit() and 0 < len(text) <= 6 and int(text) > 0 else 1


def paginate(total, number, size, base_url="", param="page", params=None):
    """One page of a list of ``total`` rows: offset, limit and the links to every page.

    ``number`` past the end shows the last page.  ``params`` are the other query
    parameters to keep in the links.

    >>> p = paginate(45, 2, 20, "/ui/meters")
    >>> (p["offset"], p["limit"], p["first"], p["last"], p["pages"])
    (20, 20, 21, 40, 3)
    >>> [x["url"] for x in p["links"]][:2]
    ['/ui/meters?page=1', '/ui/meters?page=2']
    """
    pages = max((total + size - 1) // size, 1)
    number = min(max(number, 1), pages)
    offset = (number - 1) * size
    keep = {k: v for k, v in (params or {}).items() if k != param}

    def url(n):
        return base_url + "?" + urlencode(dict(keep, **{param: n}))
    return {"number": number, "pages": pages, "size": size, "total": total, "offset": offset,
            "limit": size, "first": offset + 1 if total else 0,
            "last": min(offset + size, total), "param": param,
            "links": [{"n": n, "url": url(n), "current": n == number}
                      for n in range(1, pages + 1)],
            "prev": url(number - 1) if number > 1 else None,
            "next": url(number + 1) if number < pages else None}


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list of integers (no interpolation, no floats).

    >>> percentile(list(range(1, 101)), 99), percentile([3, 7], 50), percentile([], 50)
    (99, 3, None)
    """
    if not sorted_values:
        return None
    rank = (pct * len(sorted_values) + 99) // 100      # ceil(pct/100 * n)
    return sorted_values[max(rank, 1) - 1]


def balance_bucket(balance_paise):
    """Index into BALANCE_LABELS for one balance."""
    i = 0
    while i < len(BALANCE_EDGES_PAISE) and balance_paise >= BALANCE_EDGES_PAISE[i]:
        i += 1
    return i


def bar_chart(values, width=480, height=160, pad=4, top=None):
    """Integer geometry of a bar chart: [{x, y, w, h, value}], tallest bar = ``height``
    (or the value ``top``, when several series share one scale).

    >>> [(b["x"], b["h"]) for b in bar_chart([1, 2], width=100, height=50, pad=0)]
    [(0, 25), (50, 50)]
    """
    n = len(values)
    if n == 0:
        return []
    top = max(top if top is not None else max(values), 1)
    slot = width // n
    out = []
    for i, v in enumerate(values):
        h = max(v, 0) * height // top
        out.append({"x": i * slot + pad // 2, "y": height - h, "w": max(slot - pad, 1), "h": h,
                    "value": v})
    return out


def paired_bar_chart(first, second, width=480, height=160, pad=4):
    """Two series on one scale, side by side in each slot: [{x, y, w, h, value, series}].

    >>> [(b["x"], b["w"], b["h"], b["series"]) for b in paired_bar_chart([1], [2], 100, 50, 0)]
    [(0, 50, 25, 0), (50, 50, 50, 1)]
    """
    n = len(first)
    if n == 0:
        return []
    top = max([v or 0 for v in first] + [v or 0 for v in second] + [1])
    slot = width // n
    half = max((slot - pad) // 2, 1)
    out = []
    for i in range(n):
        for k, v in enumerate((first[i], second[i])):
            h = max(v or 0, 0) * height // top
            out.append({"x": i * slot + pad // 2 + k * half, "y": height - h, "w": half, "h": h,
                        "value": v if v is not None else "–", "series": k})
    return out


def csrf_token(session_token):
    """Form field that a cross-site page cannot know (it never sees the HttpOnly cookie)."""
    return hashlib.sha256(("urja-csrf:" + session_token).encode()).hexdigest()[:32]


def parse_meter_ids(text):
    """Meter ids typed into a form, separated by commas, spaces or new lines (sorted, unique)."""
    ids = sorted(set(x for x in re.split(r"[\s,;]+", text or "") if x))
    bad = [x for x in ids if not ID_RE.match(x)]
    if bad:
        raise ValueError("not a meter id: %s" % ", ".join(bad[:3]))
    if not ids:
        raise ValueError("give at least one meter id")
    return ids


# --- the router -----------------------------------------------------------------

def make_router(sessions, settings, policy, enqueue, now):
    """The dashboard routes; ``create_app`` mounts them with its own session factory,
    guardrail policy, command queue and clock, so pages and API act identically.

    >>> app.include_router(make_router(sessions, settings, policy, enqueue, now))  # doctest: +SKIP
    """
    router = APIRouter(prefix="/ui", include_in_schema=False)

    page_size = getattr(settings, "ui_page_size", 50)

    def render(request, name, status=200, **ctx):
        lang = language_of(request)
        return HTMLResponse(_templates.get_template(name).render(
            format_paise=format_paise, format_time=format_time, lang=lang, t=translator(lang),
            here=request.url.path + ("?" + request.url.query if request.url.query else ""),
            **ctx), status_code=status)

    def pager(request, total, param):
        return paginate(total, page_number(request, param), page_size, request.url.path, param,
                        dict(request.query_params))

    async def form_of(request):
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def caller(session, request):
        token = request.cookies.get(COOKIE)
        try:
            principal = A.principal_for_token(session, token, now())
        except A.AuthError:
            raise LoginRequired()
        if principal.role not in STAFF:
            raise A.Forbidden("the dashboard is for utility staff; role %s" % principal.role)
        return principal, token

    def view(session, request):
        """Everything a page needs to know about who is looking and at which tenant."""
        principal, token = caller(session, request)
        scope = A.Scope(principal)
        tenants = []
        tenant_id = principal.tenant_id
        if scope.all_tenants:
            tenants = list(session.scalars(select(M.Tenant).order_by(M.Tenant.code)))
            wanted = request.cookies.get(TENANT_COOKIE, "")
            tenant_id = int(wanted) if wanted.isdigit() else None
            if tenant_id not in {t.id for t in tenants}:
                tenant_id = None
        tenant = session.get(M.Tenant, tenant_id) if tenant_id else None
        return {"principal": principal, "scope": scope, "tenant_id": tenant_id,
                "tenant": tenant, "tenants": tenants, "csrf": csrf_token(token)}

    def meters_q(v):
        q = v["scope"].meters_query()
        if v["scope"].all_tenants and v["tenant_id"] is not None:
            q = q.where(M.Meter.tenant_id == v["tenant_id"])
        return q

    def check_csrf(v, form):
        if form.get("csrf") != v["csrf"]:
            raise A.Forbidden("form expired or sent from another site; reload the page")

    def guarded(handler, **path_params):
        """Map the API's errors to pages: login redirect, 403 and 404 pages.

        ``path_params`` (name -> annotation) are what FastAPI should parse from the
        path; the handler's other arguments stay out of the public signature.
        """
        async def page(request, **kw):
            with sessions() as session:
                try:
                    return await handler(request, session, **kw)
                except LoginRequired:
                    return RedirectResponse("/ui/login?next=" + quote(request.url.path), 303)
                except A.Forbidden as err:
                    return render(request, "error.html", 403, title_key="error.not_allowed",
                                  message=str(err))
                except A.NotVisible as err:
                    return render(request, "error.html", 404, title_key="error.not_found",
                                  message=str(err))
        page.__name__ = handler.__name__
        P = inspect.Parameter
        page.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [P("request", P.POSITIONAL_OR_KEYWORD, annotation=Request)]
            + [P(n, P.KEYWORD_ONLY, annotation=t) for n, t in path_params.items()])
        return page

    # --- login ------------------------------------------------------------------

    @router.get("/login")
    def login_page(request: Request, next: str = "/ui/"):  # noqa: A002 - the usual name
        return render(request, "login.html", error=None, next=_safe_next(next))

    @router.get("/lang/{lang}")
    def switch_language(lang: Annotated[str, Path(pattern="^(en|hi)$")], next: str = "/ui/"):  # noqa: A002
        """Remember the page language (a preference, not a secret: no CSRF needed)."""
        r = RedirectResponse(_safe_next(next, allow_login=True), 303)
        r.set_cookie(LANG_COOKIE, lang, max_age=365 * DAY_S, samesite="lax", path="/ui")
        return r

    @router.post("/login")
    async def login_submit(request: Request):
        form = await form_of(request)
        nxt = _safe_next(form.get("next", "/ui/"))
        with sessions() as session:
            try:
                token, expires_at = A.login(session, form.get("username", ""),
                                            form.get("password", ""), now(), settings.token_ttl_s)
            except A.AuthError as err:
                return render(request, "login.html", 401, error=str(err), next=nxt)
            session.commit()
        r = RedirectResponse(nxt, 303)
        r.set_cookie(COOKIE, token, max_age=expires_at - now(), httponly=True,
                     samesite="strict", path="/ui")
        return r

    @router.post("/logout")
    async def logout(request: Request):
        token = request.cookies.get(COOKIE)
        form = await form_of(request)
        if token and form.get("csrf") == csrf_token(token):  # no forced logout from elsewhere
            with sessions() as session:
                A.revoke(session, token)
                session.commit()
        r = RedirectResponse("/ui/login", 303)
        r.delete_cookie(COOKIE, path="/ui")
        return r

    # --- fleet overview ----------------------------------------------------------------

    async def fleet(request, session):
        v = view(session, request)
        t = now()
        mq = meters_q(v).where(M.Meter.active.is_(True))
        meter_ids = mq.with_only_columns(M.Meter.id).scalar_subquery()
        active = session.scalar(select(func.count()).select_from(mq.subquery()))
        balances = list(session.scalars(
            select(M.MeterBalance)
            .where(M.MeterBalance.meter_id.in_(meter_ids)).order_by(M.MeterBalance.meter_id)))
        by_state = {s: 0 for s in CREDIT_STATES}
        for b in balances:
            by_state[b.state] = by_state.get(b.state, 0) + 1
        by_state["NO DATA"] = active - len(balances)
        attention_all = [b for b in balances if b.state in ATTENTION_STATES]
        attn_page = pager(request, len(attention_all), "attn_page")
        attention = attention_all[attn_page["offset"]:attn_page["offset"] + attn_page["limit"]]

        buckets = [0] * len(BALANCE_LABELS)
        for b in balances:
            buckets[balance_bucket(b.balance_paise)] += 1

        today = local_day(t, IST_OFFSET_S)
        days = list(range(today - 6, today + 1))
        read_success = []
        for d in days:
            start = d * DAY_S - IST_OFFSET_S
            n = session.scalar(select(func.count(func.distinct(M.Reading.meter_id)))
                               .where(M.Reading.meter_id.in_(meter_ids),
                                      M.Reading.start_t >= start,
                                      M.Reading.start_t < start + DAY_S))
            read_success.append({"day": _day_label(d), "meters": n,
                                 "pct": n * 100 // active if active else 0})

        revenue = _revenue_per_day(session, meter_ids, days)

        latency = _topup_latency(session, meter_ids, days)

        # silent: no uplink received after ``since`` (counted and paged in SQL: a city
        # has 100k meters)
        since = t - settings.comm_loss_after_s
        heard = select(M.UplinkSeen.meter_id).where(M.UplinkSeen.received_at > since)
        lost_q = mq.where(M.Meter.id.not_in(heard))
        lost_total = session.scalar(select(func.count()).select_from(lost_q.subquery()))
        comm_page = pager(request, lost_total, "comm_page")
        lost_ids = list(session.scalars(lost_q.with_only_columns(M.Meter.id)
                                        .order_by(M.Meter.id)
                                        .offset(comm_page["offset"]).limit(comm_page["limit"])))
        last_heard = _last_heard(session, lost_ids)
        comm_loss = [{"id": mid, "last": last_heard.get(mid)} for mid in lost_ids]

        alert_total = _open_alerts(session, v, count=True)
        alert_page = pager(request, alert_total, "alert_page")
        alerts = _open_alerts(session, v, offset=alert_page["offset"], limit=alert_page["limit"])
        return render(request, "fleet.html", v=v, active=active, by_state=by_state,
                      attention=attention, attn_page=attn_page,
                      balance_bars=bar_chart(buckets), balance_labels=BALANCE_LABELS,
                      read_success=read_success,
                      read_bars=bar_chart([r["pct"] for r in read_success]),
                      revenue=revenue, revenue_bars=bar_chart([r["paise"] for r in revenue]),
                      latency=latency,
                      latency_bars=paired_bar_chart([r["p50_s"] for r in latency["days"]],
                                                    [r["p99_s"] for r in latency["days"]]),
                      comm_loss=comm_loss, comm_loss_total=lost_total, comm_page=comm_page,
                      comm_loss_after_s=settings.comm_loss_after_s,
                      alerts=alerts, alert_total=alert_total, alert_page=alert_page)

    router.get("/", response_class=HTMLResponse)(guarded(fleet))

    # --- meters list ---------------------------------------------------------------------

    async def meters_page(request, session):
        v = view(session, request)
        q = meters_q(v)
        total = session.scalar(select(func.count()).select_from(q.subquery()))
        page = pager(request, total, "page")
        meters = list(session.scalars(q.order_by(M.Meter.id).offset(page["offset"])
                                      .limit(page["limit"])))
        ids = [m.id for m in meters]
        balances = {b.meter_id: b for b in session.scalars(
            select(M.MeterBalance).where(M.MeterBalance.meter_id.in_(ids)))} if ids else {}
        heard = _last_heard(session, ids)
        rows = [{"meter": m, "balance": balances.get(m.id), "last": heard.get(m.id)}
                for m in meters]
        return render(request, "meters.html", v=v, rows=rows, page=page)

    router.get("/meters", response_class=HTMLResponse)(guarded(meters_page))

    # --- one meter --------------------------------------------------------------------

    async def meter_page(request, session, meter_id):
        v = view(session, request)
        meter = v["scope"].meter(session, meter_id)
        readings = list(session.scalars(
            select(M.Reading).where(M.Reading.meter_id == meter.id)
            .order_by(M.Reading.start_t.desc()).limit(96)))[::-1]
        statuses = list(session.scalars(
            select(M.StatusRecord).where(M.StatusRecord.meter_id == meter.id)
            .order_by(M.StatusRecord.t.desc()).limit(50)))
        balance = session.get(M.MeterBalance, meter.id)
        events = list(session.scalars(
            select(M.EventRecord).where(M.EventRecord.meter_id == meter.id)
            .order_by(M.EventRecord.event_seq.desc()).limit(50)))
        cmd_page = pager(request, _command_count(session, meter.id), "cmd_page")
        commands = _commands_with_lifecycle(session, meter.id, offset=cmd_page["offset"],
                                            limit=cmd_page["limit"])
        reconciliation = _reconciliation(session, meter.id, now())
        forecast = _forecast(session, meter.id, now())
        return render(request, "meter.html", v=v, meter=meter, balance=balance,
                      readings=readings,
                      load_bars=bar_chart([r.energy for r in readings], width=640),
                      statuses=statuses,
                      history_bars=bar_chart([max(s.balance_paise, 0) for s in statuses[::-1]],
                                             width=640, height=100),
                      events=events, commands=commands, cmd_page=cmd_page,
                      reconciliation=reconciliation, forecast=forecast)

    router.get("/meters/{meter_id}", response_class=HTMLResponse)(
        guarded(meter_page, meter_id=MeterIdPath))

    # --- commands through the guardrail ---------------------------------------------------------

    def requests_of(session, v, request):
        q = select(G.CommandRequest)
        if v["tenant_id"] is not None:
            q = q.where(G.CommandRequest.tenant_id == v["tenant_id"])
        elif not v["scope"].all_tenants:
            q = q.where(G.CommandRequest.tenant_id == v["scope"].tenant_id)
        total = session.scalar(select(func.count()).select_from(q.subquery()))
        page = pager(request, total, "page")
        rows = list(session.scalars(q.order_by(G.CommandRequest.id.desc())
                                    .offset(page["offset"]).limit(page["limit"])))
        return rows, page

    async def commands_page(request, session, result=None, error=None, status=200, form=None):
        v = view(session, request)
        v["principal"].require("commands.read")
        requests, page = requests_of(session, v, request)
        return render(request, "commands.html", status, v=v, requests=requests, page=page,
                      result=result, error=error,
                      form=form or {"meter_ids": request.query_params.get("meter", ""),
                                    "action": "topup", "amount": ""})

    async def submit_command(request, session):
        form = await form_of(request)
        v = view(session, request)
        check_csrf(v, form)
        principal = v["principal"]
        action = form.get("action", "")
        try:
            meter_ids = parse_meter_ids(form.get("meter_ids", ""))
            if action == "topup":
                kind, args = "topup", [rupees_to_paise(form.get("amount", ""))]
            elif action in G.RELAY_ACTIONS:
                kind, args = "relay", [action]
            else:
                raise ValueError("choose top-up, connect or disconnect")
        except ValueError as err:
            return await commands_page(request, session, error=str(err), status=422, form=form)
        principal.require("commands." + kind)
        meters = [v["scope"].meter(session, mid) for mid in meter_ids]
        tenants = {m.tenant_id for m in meters}
        if len(tenants) != 1:
            return await commands_page(request, session, status=422, form=form,
                                       error="all meters of one request must be of one tenant")
        try:
            req = G.request_commands(session, principal, tenants.pop(), kind,
                                     [m.id for m in meters], args, now(), policy, enqueue)
        except G.GuardrailError as err:
            return await commands_page(request, session, error=str(err), status=422, form=form)
        session.commit()
        status = 202 if req.state == G.PENDING_APPROVAL else 201
        return await commands_page(request, session, result=req.as_dict(), status=status)

    async def decide(request, session, request_id, verdict):
        form = await form_of(request)
        v = view(session, request)
        check_csrf(v, form)
        v["principal"].require("commands.approve")
        req = session.get(G.CommandRequest, request_id)
        if req is None or not v["scope"].sees_tenant(req.tenant_id):
            raise A.NotVisible("no command request %r" % request_id)
        try:
            G.decide(session, v["principal"], req, verdict, now(), enqueue,
                     reason=form.get("reason") or None)
        except G.GuardrailError as err:
            session.commit()  # keep the audit row of the refusal
            return await commands_page(request, session, error=str(err), status=409)
        session.commit()
        return RedirectResponse("/ui/commands", 303)

    async def approve(request, session, request_id: int):
        return await decide(request, session, request_id, "approve")

    async def reject(request, session, request_id: int):
        return await decide(request, session, request_id, "reject")

    router.get("/commands", response_class=HTMLResponse)(guarded(commands_page))
    router.post("/commands", response_class=HTMLResponse)(guarded(submit_command))
    router.post("/requests/{request_id}/approve")(guarded(approve, request_id=IntPath))
    router.post("/requests/{request_id}/reject")(guarded(reject, request_id=IntPath))

    # --- alerts and tenant switcher -----------------------------------------------------

    async def ack(request, session, alert_id: int):
        form = await form_of(request)
        v = view(session, request)
        check_csrf(v, form)
        v["principal"].require("alerts.ack")
        from headend import alerts as AL
        alert = session.get(AL.Alert, alert_id)
        if alert is None or not v["scope"].sees_tenant(alert.tenant_id):
            raise A.NotVisible("no alert %r" % alert_id)
        AL.acknowledge(session, alert_id, v["principal"].username, now())
        G.audit(session, v["principal"], "alert.ack", "ok", now(), tenant_id=alert.tenant_id,
                meter_id=alert.meter_id, alert_id=alert_id)
        session.commit()
        return RedirectResponse("/ui/", 303)

    async def switch_tenant(request, session):
        form = await form_of(request)
        v = view(session, request)
        check_csrf(v, form)
        r = RedirectResponse("/ui/", 303)
        if v["scope"].all_tenants and form.get("tenant", "").isdigit():
            r.set_cookie(TENANT_COOKIE, form["tenant"], httponly=True, samesite="strict",
                         path="/ui")
        else:
            r.delete_cookie(TENANT_COOKIE, path="/ui")
        return r

    router.post("/alerts/{alert_id}/ack")(guarded(ack, alert_id=IntPath))
    router.post("/tenant")(guarded(switch_tenant))
    return router


# --- queries kept out of the router for reading ease -------------------------------------------

def _safe_next(nxt, allow_login=False):
    """Only redirect inside the dashboard after login (no open redirect)."""
    ok = nxt.startswith("/ui/") and not nxt.startswith("//") and "\\" not in nxt
    if ok and not allow_login and nxt.startswith("/ui/login"):
        ok = False
    return nxt if ok else "/ui/"


def _last_heard(session, meter_ids):
    """``{meter id: UTC s of the last uplink received}`` for ``meter_ids`` (never heard: absent)."""
    if not meter_ids:
        return {}
    return dict(session.execute(
        select(M.UplinkSeen.meter_id, func.max(M.UplinkSeen.received_at))
        .where(M.UplinkSeen.meter_id.in_(list(meter_ids)))
        .group_by(M.UplinkSeen.meter_id)).all())


def _day_label(day):
    _y, m, d = local_date(day * DAY_S, 0)
    return "%02d-%02d" % (d, m)


def _revenue_per_day(session, meter_ids, days):
    """Paid-in top-ups per IST day (ledger payments), [{day, paise, count}]."""
    try:
        from headend import ledger
    except ModuleNotFoundError:
        return [{"day": _day_label(d), "paise": 0, "count": 0} for d in days]
    start = days[0] * DAY_S - IST_OFFSET_S
    rows = session.execute(select(ledger.Payment.received_at, ledger.Payment.amount_paise)
                           .where(ledger.Payment.meter_id.in_(meter_ids),
                                  ledger.Payment.received_at >= start))
    out = {d: {"day": _day_label(d), "paise": 0, "count": 0} for d in days}
    for at, paise in rows:
        d = local_day(at, IST_OFFSET_S)
        if d in out:
            out[d]["paise"] += paise
            out[d]["count"] += 1
    return [out[d] for d in days]


def _open_alerts(session, v, offset=0, limit=100, count=False):
    """Open alerts of the viewed tenant(s), newest first (``count``: how many there are)."""
    try:
        from headend import alerts as AL
    except ModuleNotFoundError:
        return 0 if count else []
    q = select(AL.Alert).where(AL.Alert.acknowledged_at.is_(None), AL.Alert.storm_id.is_(None))
    if v["tenant_id"] is not None:
        q = q.where(AL.Alert.tenant_id == v["tenant_id"])
    elif not v["scope"].all_tenants:
        q = q.where(AL.Alert.tenant_id == v["scope"].tenant_id)
    if count:
        return session.scalar(select(func.count()).select_from(q.subquery()))
    return list(session.scalars(q.order_by(AL.Alert.id.desc()).offset(offset).limit(limit)))


def _topup_latency(session, meter_ids, days):
    """Payment received -> top-up APPLIED on the meter, per IST day of the payment.

    ``{"days": [{day, n, p50_s, p99_s}], "applied": n, "pending": n}``; latency in whole
    seconds (the stored times are UTC seconds); p50/p99 nearest-rank, None on a day
    without applied top-ups.  "pending": paid in the window, its command still open.
    Token-delivered payments (command CANCELLED for an STS token) are not counted.
    """
    empty = {"days": [{"day": _day_label(d), "n": 0, "p50_s": None, "p99_s": None}
                      for d in days], "applied": 0, "pending": 0}
    try:
        from headend import commands as C
        from headend import ledger
    except ModuleNotFoundError:
        return empty
    start = days[0] * DAY_S - IST_OFFSET_S
    rows = session.execute(
        select(ledger.Payment.received_at, C.Command.state, C.Command.finished_at)
        .join(ledger.TopUp, ledger.TopUp.payment_id == ledger.Payment.id)
        .join(C.Command, C.Command.id == ledger.TopUp.command_id)
        .where(ledger.Payment.meter_id.in_(meter_ids), ledger.Payment.received_at >= start))
    per_day = {d: [] for d in days}
    pending = 0
    for received_at, state, finished_at in rows:
        if state == C.APPLIED and finished_at is not None:
            d = local_day(received_at, IST_OFFSET_S)
            if d in per_day:
                per_day[d].append(max(finished_at - received_at, 0))
        elif state in C.OPEN_STATES:
            pending += 1
    out = []
    for d in days:
        lat = sorted(per_day[d])
        out.append({"day": _day_label(d), "n": len(lat), "p50_s": percentile(lat, 50),
                    "p99_s": percentile(lat, 99)})
    return {"days": out, "applied": sum(r["n"] for r in out), "pending": pending}


def _reconciliation(session, meter_id, now):
    """The meter's reconciliation for the page (headend/reconcile.py).

    Shows the newest stored ``ReconciliationResult``; when the meter has sent a newer
    status than the newest result, runs ``reconcile_meter`` first (the same call a
    batch run makes: one stored row per status, a mismatch alert deduplicated by the
    alert window) and commits it, so a page never shows a stale comparison.
    """
    try:
        from headend import reconcile as R
    except ModuleNotFoundError:
        return {"state": "none"}
    if session.get(R.ShadowAccount, meter_id) is None:
        return {"state": "none"}
    newest_seq = session.scalar(select(func.max(M.StatusRecord.seq))
                                .where(M.StatusRecord.meter_id == meter_id))
    res = session.scalars(select(R.ReconciliationResult)
                          .where(R.ReconciliationResult.meter_id == meter_id)
                          .order_by(R.ReconciliationResult.status_seq.desc()).limit(1)).first()
    if newest_seq is not None and (res is None or res.status_seq < newest_seq):
        try:
            res = R.reconcile_meter(session, meter_id, now)
            session.commit()
        except R.ReconcileError as err:
            session.rollback()
            return {"state": "error", "why": str(err)}
    if res is None:
        return {"state": "error", "why": "meter %s has sent no status yet" % meter_id}
    return {"state": "done", "result": res, "explained": res.explanation in R.EXPLAINED}


def _forecast(session, meter_id, now):
    """Days of credit left (headend/forecast.py) or why there is no forecast."""
    from headend import forecast as F
    try:
        f = F.forecast_meter(session, meter_id, now)
    except F.ForecastError as err:
        return {"state": "none", "why": str(err)}
    return {"state": "done", "forecast": f, "horizon_days": F.HORIZON_DAYS}


def _command_count(session, meter_id):
    try:
        from headend import commands as C
    except ModuleNotFoundError:
        return 0
    return session.scalar(select(func.count()).select_from(C.Command)
                          .where(C.Command.meter_id == meter_id))


def _commands_with_lifecycle(session, meter_id, offset=0, limit=50):
    """One page of the meter's downlinks, newest first, each with its transitions."""
    try:
        from headend import commands as C
    except ModuleNotFoundError:
        return []
    cmds = list(session.scalars(select(C.Command).where(C.Command.meter_id == meter_id)
                                .order_by(C.Command.created_at.desc(), C.Command.id)
                                .offset(offset).limit(limit)))
    steps = {}
    if cmds:
        for tr in session.scalars(select(C.CommandTransition)
                                  .where(C.CommandTransition.command_id.in_([c.id for c in cmds]))
                                  .order_by(C.CommandTransition.id)):
            steps.setdefault(tr.command_id, []).append(tr)
    return [{"cmd": c, "steps": steps.get(c.id, [])} for c in cmds]
