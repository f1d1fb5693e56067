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
    GET  /ui/meters/{id}           load profile, balance history, events, commands
    GET  /ui/commands, POST /ui/commands      top-up / connect / disconnect form
    POST /ui/requests/{id}/approve|reject     the second approver
    POST /ui/alerts/{id}/ack, POST /ui/tenant

>>> rupees_to_paise("200.5"), format_paise(-12345)
(20050, '-₹123.45')
"""
import hashlib
import inspect
import os
import re
from typing import Annotated
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from firmware.core.localtime import IST_OFFSET_S, local_date, local_day
from headend import auth as A
from headend import guardrails as G
from headend import models as M

COOKIE, TENANT_COOKIE = "urja_session", "urja_tenant"
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


def balance_bucket(balance_paise):
    """Index into BALANCE_LABELS for one balance."""
    i = 0
    while i < len(BALANCE_EDGES_PAISE) and balance_paise >= BALANCE_EDGES_PAISE[i]:
        i += 1
    return i


def bar_chart(values, width=480, height=160, pad=4):
    """Integer geometry of a bar chart: [{x, y, w, h, value}], tallest bar = ``height``.

    >>> [(b["x"], b["h"]) for b in bar_chart([1, 2], width=100, height=50, pad=0)]
    [(0, 25), (50, 50)]
    """
    n = len(values)
    if n == 0:
        return []
    top = max(max(values), 1)
    slot = width // n
    out = []
    for i, v in enumerate(values):
        h = max(v, 0) * height // top
        out.append({"x": i * slot + pad // 2, "y": height - h, "w": max(slot - pad, 1), "h": h,
                    "value": v})
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

    def render(name, status=200, **ctx):
        return HTMLResponse(_templates.get_template(name).render(
            format_paise=format_paise, format_time=format_time, **ctx), status_code=status)

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
                    return render("error.html", 403, title="Not allowed", message=str(err))
                except A.NotVisible as err:
                    return render("error.html", 404, title="Not found", message=str(err))
        page.__name__ = handler.__name__
        P = inspect.Parameter
        page.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [P("request", P.POSITIONAL_OR_KEYWORD, annotation=Request)]
            + [P(n, P.KEYWORD_ONLY, annotation=t) for n, t in path_params.items()])
        return page

    # --- login ------------------------------------------------------------------

    @router.get("/login")
    def login_page(next: str = "/ui/"):  # noqa: A002 - the usual name of the parameter
        return render("login.html", error=None, next=_safe_next(next))

    @router.post("/login")
    async def login_submit(request: Request):
        form = await form_of(request)
        nxt = _safe_next(form.get("next", "/ui/"))
        with sessions() as session:
            try:
                token, expires_at = A.login(session, form.get("username", ""),
                                            form.get("password", ""), now(), settings.token_ttl_s)
            except A.AuthError as err:
                return render("login.html", 401, error=str(err), next=nxt)
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
        attention = [b for b in balances if b.state in ATTENTION_STATES]

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

        since = t - settings.comm_loss_after_s
        last_heard = dict(session.execute(
            select(M.UplinkSeen.meter_id, func.max(M.UplinkSeen.received_at))
            .where(M.UplinkSeen.meter_id.in_(meter_ids)).group_by(M.UplinkSeen.meter_id)).all())
        comm_loss = [{"id": m.id, "last": last_heard.get(m.id)}
                     for m in session.scalars(mq.order_by(M.Meter.id))
                     if (last_heard.get(m.id) or 0) <= since]

        alerts = _open_alerts(session, v)
        return render("fleet.html", v=v, active=active, by_state=by_state, attention=attention,
                      balance_bars=bar_chart(buckets), balance_labels=BALANCE_LABELS,
                      read_success=read_success,
                      read_bars=bar_chart([r["pct"] for r in read_success]),
                      revenue=revenue, revenue_bars=bar_chart([r["paise"] for r in revenue]),
                      comm_loss=comm_loss, comm_loss_after_s=settings.comm_loss_after_s,
                      alerts=alerts)

    router.get("/", response_class=HTMLResponse)(guarded(fleet))

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
        commands = _commands_with_lifecycle(session, meter.id)
        return render("meter.html", v=v, meter=meter, balance=balance, readings=readings,
                      load_bars=bar_chart([r.energy for r in readings], width=640),
                      statuses=statuses,
                      history_bars=bar_chart([max(s.balance_paise, 0) for s in statuses[::-1]],
                                             width=640, height=100),
                      events=events, commands=commands)

    router.get("/meters/{meter_id}", response_class=HTMLResponse)(
        guarded(meter_page, meter_id=MeterIdPath))

    # --- commands through the guardrail ---------------------------------------------------------

    def requests_of(session, v):
        q = select(G.CommandRequest)
        if v["tenant_id"] is not None:
            q = q.where(G.CommandRequest.tenant_id == v["tenant_id"])
        elif not v["scope"].all_tenants:
            q = q.where(G.CommandRequest.tenant_id == v["scope"].tenant_id)
        return list(session.scalars(q.order_by(G.CommandRequest.id.desc()).limit(50)))

    async def commands_page(request, session, result=None, error=None, status=200, form=None):
        v = view(session, request)
        v["principal"].require("commands.read")
        return render("commands.html", status, v=v, requests=requests_of(session, v),
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

def _safe_next(nxt):
    """Only redirect inside the dashboard after login (no open redirect)."""
    return nxt if nxt.startswith("/ui/") and not nxt.startswith("//") else "/ui/"


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


def _open_alerts(session, v):
    try:
        from headend import alerts as AL
    except ModuleNotFoundError:
        return []
    q = select(AL.Alert).where(AL.Alert.acknowledged_at.is_(None), AL.Alert.storm_id.is_(None))
    if v["tenant_id"] is not None:
        q = q.where(AL.Alert.tenant_id == v["tenant_id"])
    elif not v["scope"].all_tenants:
        q = q.where(AL.Alert.tenant_id == v["scope"].tenant_id)
    return list(session.scalars(q.order_by(AL.Alert.id.desc()).limit(100)))


def _commands_with_lifecycle(session, meter_id):
    """The meter's downlinks, newest first, each with its transitions (QUEUED -> SENT -> ...)."""
    try:
        from headend import commands as C
    except ModuleNotFoundError:
        return []
    cmds = list(session.scalars(select(C.Command).where(C.Command.meter_id == meter_id)
                                .order_by(C.Command.created_at.desc(), C.Command.id).limit(50)))
    steps = {}
    if cmds:
        for tr in session.scalars(select(C.CommandTransition)
                                  .where(C.CommandTransition.command_id.in_([c.id for c in cmds]))
                                  .order_by(C.CommandTransition.id)):
            steps.setdefault(tr.command_id, []).append(tr)
    return [{"cmd": c, "steps": steps.get(c.id, [])} for c in cmds]
