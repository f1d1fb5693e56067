"""The head-end HTTP API (FastAPI): meters, readings, balance, events, commands, payments,
receipts, alerts, health and metrics.  OpenAPI at ``/openapi.json``, docs at ``/docs``.

Every request but ``/health``, ``/metrics`` and ``/auth/token`` carries a
bearer token (``Authorization: Bearer <token>``).  Roles come from
``headend.auth.PERMISSIONS`` (403 when the role may not act); what a caller
may see comes from ``headend.auth.Scope`` only (404 for another tenant's or
another consumer's meter).  Commands go through ``headend.guardrails``
(two-person rule for mass disconnects, audit log).

    urja-headend serve                       # uvicorn on api_host:api_port
    curl -s -X POST localhost:8080/auth/token -H 'content-type: application/json' \\
         -d '{"username": "asha", "password": "..."}'
    curl -s localhost:8080/meters -H "Authorization: Bearer $TOKEN"

>>> app = create_app(Settings(database_url="sqlite://"))        # doctest: +SKIP
"""
import importlib
import json
import time
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from headend import auth as A
from headend import guardrails as G
from headend import metrics as MX
from headend import models as M
from headend.config import Settings
from headend.db import make_engine, make_sessionmaker

MAX_INT = 2 ** 62                  # fits BIGINT with room; bigger query values are a 422
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"   # printable: no NUL (PostgreSQL rejects it) or controls

MeterId = Annotated[str, Path(pattern=ID_PATTERN, description="meter id, as in its MQTT topics")]
TimeQ = Annotated[int | None, Query(ge=0, le=MAX_INT, description="UTC seconds")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def invalid(message, *loc):
    """A 422 shaped like FastAPI's own validation errors, so one schema describes every 422."""
    return HTTPException(422, [{"loc": list(loc) or ["body"], "msg": message, "type": "value_error"}])


def _in_window(query, column, start, end):
    """``query`` limited to start <= column < end (either bound may be None)."""
    if start is not None:
        query = query.where(column >= start)
    if end is not None:
        query = query.where(column < end)
    return query


def _optional(module):
    """A colleague's head-end module if this build has it, else None."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return None


# --- request/response bodies ----------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    username: str = Field(min_length=1, max_length=64, pattern=TEXT_PATTERN)
    password: str = Field(min_length=1, max_length=200)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: int


class ConsumerIn(Strict):
    account_no: str = Field(min_length=1, max_length=64, pattern=TEXT_PATTERN)
    name: str = Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)
    phone: str | None = Field(default=None, max_length=32, pattern=r"^\+?[0-9 -]{3,31}$")
    language: Literal["hi", "en"] = "hi"


class MeterIn(Strict):
    id: str = Field(pattern=ID_PATTERN)
    service: Literal["electricity", "water", "gas"] = "electricity"
    tenant_id: int | None = Field(default=None, ge=1, le=MAX_INT,
                                  description="only a platform admin names it; others use their own")
    consumer: ConsumerIn | None = None
    installed_at: int | None = Field(default=None, ge=0, le=MAX_INT)
    key_hex: str | None = Field(default=None, pattern=r"^([0-9a-fA-F]{2}){16,64}$",
                                description="downlink HMAC key; sealed with URJA_MASTER_KEY")


class MeterOut(BaseModel):
    id: str
    tenant_id: int
    consumer_id: int | None
    consumer_account_no: str | None = None
    service: str
    unit: str
    installed_at: int | None
    active: bool


class ReadingOut(BaseModel):
    start_t: int
    energy: int
    unit: str
    span_s: int
    flags: int
    avg_mv: int | None
    avg_ma: int | None
    estimated: bool


class BalanceOut(BaseModel):
    meter_id: str
    t: int | None
    balance_paise: int | None
    credit_paise: int | None
    emergency_paise: int | None
    debt_paise: int | None
    state: str | None
    relay_closed: bool | None
    tariff_version: int | None


class EventOut(BaseModel):
    event_seq: int
    t: int
    code: int
    value: int


class CommandIn(Strict):
    kind: Literal["topup", "relay", "tariff", "reset_lockout"]
    meter_ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(min_length=1, max_length=10000)
    args: list[Annotated[str, Field(max_length=20000, pattern=TEXT_PATTERN)]
               | Annotated[int, Field(ge=1, le=MAX_INT)]] = Field(
        default_factory=list, max_length=1,
        description='topup: [amount_paise]; relay: ["connect"|"disconnect"]; tariff: [JSON text]')


class DecisionIn(Strict):
    reason: str | None = Field(default=None, max_length=500, pattern=TEXT_PATTERN)


class TargetOut(BaseModel):
    meter_id: str
    command_id: str | None


class CommandRequestOut(BaseModel):
    id: int
    tenant_id: int
    kind: str
    action: str | None
    args: list
    state: str
    requested_by: str
    requested_at: int
    decided_by: str | None
    decided_at: int | None
    reason: str | None
    targets: list[TargetOut]


class CampaignIn(Strict):
    kind: Literal["tariff", "config", "firmware"]
    meter_ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=100000,
        description="default: every active meter of the tenant")
    tenant_id: int | None = Field(default=None, ge=1, le=MAX_INT,
                                  description="only a platform admin names it; others use their own")
    args: list[Annotated[str, Field(max_length=20000, pattern=TEXT_PATTERN)]] = Field(
        min_length=1, max_length=2,
        description='tariff: [tariff JSON]; config: [setting, value]; firmware: [version]')
    stages: list[Annotated[int, Field(ge=1, le=100)]] | None = Field(
        default=None, min_length=1, max_length=20,
        description="cumulative percent per stage, ending at 100 (default campaign_stages)")
    success_pct: int | None = Field(default=None, ge=1, le=100)
    failure_pct: int | None = Field(default=None, ge=0, le=100)


class StageOut(BaseModel):
    stage: int
    share_pct: int
    size: int
    WAITING: int
    ACTIVE: int
    DONE: int
    FAILED: int
    SKIPPED: int


class CampaignOut(BaseModel):
    id: int
    tenant_id: int
    kind: str
    args: list
    stages: list[int]
    success_pct: int
    failure_pct: int
    state: str
    stage: int
    created_by: str
    created_at: int
    decided_by: str | None
    decided_at: int | None
    updated_at: int
    reason: str | None
    progress: list[StageOut]


class ProblemOut(BaseModel):
    """An error answer: FastAPI's ``detail`` or the payment handler's ``error``."""
    detail: str | list | None = None
    error: str | None = None


class HealthOut(BaseModel):
    status: str
    database: str
    time: int


PAYMENT_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["amount_paise", "payer_vpa", "txn_ref", "meter_id", "gateway"],
    "properties": {"amount_paise": {"type": "integer", "minimum": 1},
                   "payer_vpa": {"type": "string", "example": "asha@upi"},
                   "txn_ref": {"type": "string", "maxLength": 64},
                   "meter_id": {"type": "string", "maxLength": 64},
                   "gateway": {"type": "string", "maxLength": 32},
                   "tr": {"type": "string", "pattern": "^[A-Za-z0-9]{1,35}$",
                          "description": "the UPI link's payee reference, when the payment "
                                         "came from a channel recharge link"}}}}}}}


# --- the app ----------------------------------------------------------------

def create_app(settings=None, engine=None, clock=time.time, enqueue=None):
    """The FastAPI app for ``settings`` (a headend.config.Settings); ``clock`` gives UTC seconds.

    ``enqueue(session, meter_id, kind, args, now) -> command id`` queues one
    downlink; the default puts it on headend.commands' durable queue.

    >>> app = create_app(Settings(database_url="sqlite://"), clock=lambda: 1795737600)  # doctest: +SKIP
    """
    settings = settings or Settings()
    engine = engine if engine is not None else make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    policy = G.DisconnectPolicy.from_settings(settings)
    registry = MX.build_registry(engine, settings, clock)
    bearer = HTTPBearer(auto_error=False, description="token from POST /auth/token or the CLI")

    app = FastAPI(title="Urja head-end", version="1",
                  description="Prepaid smart-meter head-end: meters, readings, balances, "
                              "commands with guardrails, payments and receipts.")
    app.state.settings, app.state.engine, app.state.sessions = settings, engine, sessions

    def now():
        return int(clock())

    def session_dep():
        with sessions() as session:
            yield session

    Session_ = Annotated[object, Depends(session_dep)]

    def principal_dep(session: Session_,
                      creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        try:
            return A.principal_for_token(session, creds.credentials if creds else None, now())
        except A.AuthError as err:
            raise HTTPException(401, str(err), headers={"WWW-Authenticate": "Bearer"})

    Caller = Annotated[A.Principal, Depends(principal_dep)]

    def allowed(action):
        def dep(principal: Caller):
            principal.require(action)
            return principal
        return Depends(dep)

    @app.exception_handler(A.Forbidden)
    async def _forbidden(_request, err):
        return JSONResponse({"detail": str(err)}, status_code=403)

    @app.exception_handler(A.NotVisible)
    async def _not_visible(_request, err):
        return JSONResponse({"detail": str(err.args[0])}, status_code=404)

    @app.exception_handler(G.GuardrailError)
    async def _guardrail(_request, err):
        if err.code == "bad_request":
            return JSONResponse({"detail": invalid(str(err), "body", "args").detail},
                                status_code=422)
        status = {"same_approver": 403, "illegal_transition": 409}[err.code]
        return JSONResponse({"detail": str(err), "code": err.code}, status_code=status)

    # --- health, metrics, login ---------------------------------------------

    @app.get("/health", response_model=HealthOut, tags=["operations"])
    def health(session: Session_):
        """Liveness and database reachability."""
        try:
            session.execute(select(1))
            db = "ok"
        except Exception as err:  # noqa: BLE001 - health reports, never raises
            db = "error: %s" % type(err).__name__
        body = {"status": "ok" if db == "ok" else "degraded", "database": db, "time": now()}
        return JSONResponse(body, status_code=200 if db == "ok" else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics():
        """Prometheus text format: ingest rate and lag, queue depth, comm health."""
        return Response(MX.render(registry), media_type=MX.CONTENT_TYPE)

    @app.post("/auth/token", response_model=TokenOut, tags=["auth"],
              responses={401: {"description": "wrong username or password"}})
    def issue_token(body: LoginIn, session: Session_):
        """Exchange username and password for a bearer token that expires after token_ttl_s."""
        try:
            token, expires_at = A.login(session, body.username, body.password, now(),
                                        settings.token_ttl_s)
        except A.AuthError as err:
            raise HTTPException(401, str(err), headers={"WWW-Authenticate": "Bearer"})
        session.commit()
        return {"access_token": token, "token_type": "bearer", "expires_at": expires_at}

    # --- meters ---------------------------------------------------------------

    def meter_out(session, meter):
        consumer = session.get(M.Consumer, meter.consumer_id) if meter.consumer_id else None
        return {"id": meter.id, "tenant_id": meter.tenant_id, "consumer_id": meter.consumer_id,
                "consumer_account_no": consumer.account_no if consumer else None,
                "service": meter.service, "unit": meter.unit,
                "installed_at": meter.installed_at, "active": meter.active}

    @app.get("/meters", response_model=list[MeterOut], tags=["meters"])
    def list_meters(session: Session_, principal: Annotated[A.Principal, allowed("meters.read")],
                    limit: Limit = 100, offset: Offset = 0):
        """The caller's meters (own tenant; a consumer: own meters), ordered by id."""
        q = A.Scope(principal).meters_query().order_by(M.Meter.id).limit(limit).offset(offset)
        return [meter_out(session, m) for m in session.scalars(q)]

    @app.get("/meters/{meter_id}", response_model=MeterOut, tags=["meters"],
             responses={404: {"description": "no such meter for this caller"}})
    def get_meter(meter_id: MeterId, session: Session_,
                  principal: Annotated[A.Principal, allowed("meters.read")]):
        return meter_out(session, A.Scope(principal).meter(session, meter_id))

    @app.post("/meters", response_model=MeterOut, status_code=201, tags=["meters"],
              responses={409: {"description": "meter id or consumer account already taken"}})
    def register_meter(body: MeterIn, session: Session_,
                       principal: Annotated[A.Principal, allowed("meters.register")]):
        """Register a meter in the caller's tenant, optionally with its consumer and key."""
        scope = A.Scope(principal)
        try:
            tenant_id = scope.tenant_for_write(body.tenant_id)
        except ValueError as err:
            raise invalid(str(err), "body", "tenant_id")
        if session.get(M.Tenant, tenant_id) is None:
            raise HTTPException(404, "no tenant %r" % tenant_id)
        if session.get(M.Meter, body.id) is not None:
            raise HTTPException(409, "meter %s is already registered" % body.id)
        consumer_id = None
        if body.consumer is not None:
            c = session.scalars(select(M.Consumer).where(
                M.Consumer.tenant_id == tenant_id,
                M.Consumer.account_no == body.consumer.account_no)).first()
            if c is None:
                c = M.Consumer(tenant_id=tenant_id, **body.consumer.model_dump())
                session.add(c)
                session.flush()
            consumer_id = c.id
        meter = M.Meter(id=body.id, tenant_id=tenant_id, consumer_id=consumer_id,
                        service=body.service, installed_at=body.installed_at, active=True)
        session.add(meter)
        if body.key_hex is not None:
            try:
                master = M.master_key_from_env()
            except M.MeterKeyError as err:
                raise HTTPException(503, "cannot store meter keys: %s" % err)
            session.flush()
            session.add(M.MeterKey.seal(master, body.id, bytes.fromhex(body.key_hex)))
        G.audit(session, principal, "meter.register", "ok", now(), tenant_id=tenant_id,
                meter_id=body.id, service=body.service, key=body.key_hex is not None)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise HTTPException(409, "meter %s is already registered" % body.id)
        return meter_out(session, meter)

    @app.get("/meters/{meter_id}/readings", response_model=list[ReadingOut], tags=["meters"])
    def readings(meter_id: MeterId, session: Session_,
                 principal: Annotated[A.Principal, allowed("readings.read")],
                 start: TimeQ = None, end: TimeQ = None, limit: Limit = 1000):
        """Interval readings with start <= start_t < end, oldest first (energy in Wh or L)."""
        meter = A.Scope(principal).meter(session, meter_id)
        q = _in_window(select(M.Reading).where(M.Reading.meter_id == meter.id),
                       M.Reading.start_t, start, end)
        rows = session.scalars(q.order_by(M.Reading.start_t).limit(limit))
        return [{"start_t": r.start_t, "energy": r.energy, "unit": meter.unit, "span_s": r.span_s,
                 "flags": r.flags, "avg_mv": r.avg_mv, "avg_ma": r.avg_ma,
                 "estimated": r.estimated} for r in rows]

    @app.get("/meters/{meter_id}/balance", response_model=BalanceOut, tags=["meters"])
    def balance(meter_id: MeterId, session: Session_,
                principal: Annotated[A.Principal, allowed("balance.read")]):
        """The newest balance and credit state the meter reported (nulls before its first status)."""
        meter = A.Scope(principal).meter(session, meter_id)
        b = session.get(M.MeterBalance, meter.id)
        out = {"meter_id": meter.id}
        for name in ("t", "balance_paise", "credit_paise", "emergency_paise", "debt_paise",
                     "state", "relay_closed", "tariff_version"):
            out[name] = getattr(b, name) if b is not None else None
        return out

    @app.get("/meters/{meter_id}/events", response_model=list[EventOut], tags=["meters"])
    def events(meter_id: MeterId, session: Session_,
               principal: Annotated[A.Principal, allowed("events.read")],
               start: TimeQ = None, end: TimeQ = None, limit: Limit = 500):
        """Meter events (codes in docs/protocol.md) with start <= t < end, oldest first."""
        meter = A.Scope(principal).meter(session, meter_id)
        q = _in_window(select(M.EventRecord).where(M.EventRecord.meter_id == meter.id),
                       M.EventRecord.t, start, end)
        rows = session.scalars(q.order_by(M.EventRecord.event_seq).limit(limit))
        return [{"event_seq": r.event_seq, "t": r.t, "code": r.code, "value": r.value}
                for r in rows]

    # --- commands ---------------------------------------------------------------

    commands_mod = _optional("headend.commands")

    def queue_downlink(session, meter_id, kind, args, at):
        if commands_mod is None:
            raise HTTPException(503, "the command queue (headend.commands) is not installed")
        return command_queue.enqueue(commands_mod, session, meter_id, kind, args, at,
                                     settings.command_ttl_s)

    enqueue = enqueue or queue_downlink

    @app.post("/commands", response_model=CommandRequestOut, status_code=201, tags=["commands"],
              responses={202: {"model": CommandRequestOut,
                               "description": "held for a second approver"},
                         404: {"description": "a meter is not the caller's"}})
    def queue_commands(body: CommandIn, session: Session_, principal: Caller):
        """Queue a top-up, relay or tariff command on one or more meters of one tenant.

        A disconnect reaching more than disconnect_approval_pct of the tenant's
        meters within disconnect_window_s is held (202) until another operator approves.
        """
        principal.require("commands.%s" % ("relay" if body.kind == "reset_lockout" else body.kind))
        scope = A.Scope(principal)
        meters = [scope.meter(session, mid) for mid in sorted(set(body.meter_ids))]
        tenants = {m.tenant_id for m in meters}
        if len(tenants) != 1:
            raise invalid("all meters of one request must belong to one tenant", "body", "meter_ids")
        request = G.request_commands(session, principal, tenants.pop(), body.kind,
                                     [m.id for m in meters], list(body.args), now(), policy,
                                     enqueue)
        session.commit()
        out = request.as_dict()
        return JSONResponse(out, status_code=202 if request.state == G.PENDING_APPROVAL else 201)

    def visible_request(session, principal, request_id):
        request = session.get(G.CommandRequest, request_id)
        if request is None or not A.Scope(principal).sees_tenant(request.tenant_id):
            raise A.NotVisible("no command request %r" % request_id)
        return request

    @app.get("/commands/requests", response_model=list[CommandRequestOut], tags=["commands"])
    def list_requests(session: Session_, principal: Annotated[A.Principal, allowed("commands.read")],
                      state: Literal["PENDING_APPROVAL", "QUEUED", "REJECTED"] | None = None,
                      limit: Limit = 100, offset: Offset = 0):
        """Command requests of the caller's tenant, newest first."""
        q = select(G.CommandRequest)
        scope = A.Scope(principal)
        if not scope.all_tenants:
            q = q.where(G.CommandRequest.tenant_id == scope.tenant_id)
        if state:
            q = q.where(G.CommandRequest.state == state)
        q = q.order_by(G.CommandRequest.id.desc()).limit(limit).offset(offset)
        return [r.as_dict() for r in session.scalars(q)]

    @app.get("/commands/requests/{request_id}", response_model=CommandRequestOut, tags=["commands"])
    def get_request(request_id: Annotated[int, Path(ge=1, le=MAX_INT)], session: Session_,
                    principal: Annotated[A.Principal, allowed("commands.read")]):
        return visible_request(session, principal, request_id).as_dict()

    def request_decision(verdict):
        # a closure, not a default argument: FastAPI would publish that as a query
        # parameter, and ``.../approve?verdict=reject`` would reject
        def decide(request_id: Annotated[int, Path(ge=1, le=MAX_INT)], session: Session_,
                   principal: Annotated[A.Principal, allowed("commands.approve")],
                   body: DecisionIn | None = None):
            request = visible_request(session, principal, request_id)
            try:
                G.decide(session, principal, request, verdict, now(), enqueue,
                         reason=body.reason if body else None)
            except G.GuardrailError:
                session.commit()  # keep the audit row of the refusal
                raise
            session.commit()
            return request.as_dict()
        return decide

    for verdict in ("approve", "reject"):
        app.post("/commands/requests/{request_id}/%s" % verdict,
                 response_model=CommandRequestOut, tags=["commands"],
                 summary="%s a held command request" % verdict.capitalize(),
                 responses={403: {"description": "requester may not approve own request"},
                            409: {"description": "request is not pending"}})(
            request_decision(verdict))

    @app.get("/commands", tags=["commands"])
    def list_commands(session: Session_, principal: Annotated[A.Principal, allowed("commands.read")],
                      meter_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
                      limit: Limit = 100, offset: Offset = 0) -> list[dict]:
        """Downlink commands of the caller's meters, newest first (lifecycle state, counter, ...)."""
        if commands_mod is None:
            return []
        scope = A.Scope(principal)
        if meter_id is not None:
            scope.meter(session, meter_id)
        return command_queue.list_commands(commands_mod, session, scope.meter_ids(), meter_id,
                                           limit, offset)

    # --- campaigns (headend/campaigns.py) ---------------------------------------------------

    from headend import campaigns as CP

    def campaign_out(session, campaign):
        return dict(campaign.as_dict(), progress=CP.stage_summary(session, campaign))

    def visible_campaign(session, principal, campaign_id):
        campaign = session.get(CP.Campaign, campaign_id)
        if campaign is None or not A.Scope(principal).sees_tenant(campaign.tenant_id):
            raise A.NotVisible("no campaign %r" % campaign_id)
        return campaign

    @app.post("/campaigns", response_model=CampaignOut, status_code=201, tags=["campaigns"],
              responses={202: {"model": CampaignOut, "description": "firmware: held for a "
                                                                     "second approver"},
                         404: {"description": "a meter or tenant is not the caller's"}})
    def create_campaign(body: CampaignIn, session: Session_,
                        principal: Annotated[A.Principal, allowed(CP.PERMISSION["create"])]):
        """Roll a tariff, configuration or firmware change out over the tenant's meters in
        stages (e.g. 1 % -> 10 % -> 100 %); a stage starts once the previous one reached
        success_pct, a failed share above failure_pct halts the campaign.  A firmware
        campaign waits (202) for another operator's approval."""
        scope = A.Scope(principal)
        if body.meter_ids is not None:
            meters = [scope.meter(session, mid) for mid in sorted(set(body.meter_ids))]
            tenants = {m.tenant_id for m in meters}
            if len(tenants) != 1 or (body.tenant_id is not None and body.tenant_id not in tenants):
                raise invalid("all meters of a campaign must belong to one tenant",
                              "body", "meter_ids")
            tenant_id, meter_ids = tenants.pop(), [m.id for m in meters]
        else:
            try:
                tenant_id = scope.tenant_for_write(body.tenant_id)
            except ValueError as err:
                raise invalid(str(err), "body", "tenant_id")
            if session.get(M.Tenant, tenant_id) is None:
                raise A.NotVisible("no tenant %r" % tenant_id)
            meter_ids = None
        rules = CP.StageRules.from_settings(settings, body.stages, body.success_pct,
                                            body.failure_pct)
        campaign = CP.create(session, principal, tenant_id, body.kind, meter_ids,
                             list(body.args), now(), rules)
        session.commit()
        return JSONResponse(campaign_out(session, campaign),
                            status_code=202 if campaign.state == CP.PENDING_APPROVAL else 201)

    @app.get("/campaigns", response_model=list[CampaignOut], tags=["campaigns"])
    def list_campaigns(session: Session_,
                       principal: Annotated[A.Principal, allowed(CP.PERMISSION["read"])],
                       state: Literal[CP.STATES] | None = None,
                       limit: Limit = 100, offset: Offset = 0):
        """Campaigns of the caller's tenant, newest first, with per-stage progress."""
        q = select(CP.Campaign)
        scope = A.Scope(principal)
        if not scope.all_tenants:
            q = q.where(CP.Campaign.tenant_id == scope.tenant_id)
        if state:
            q = q.where(CP.Campaign.state == state)
        q = q.order_by(CP.Campaign.id.desc()).limit(limit).offset(offset)
        return [campaign_out(session, c) for c in session.scalars(q)]

    @app.get("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"],
             responses={404: {"description": "no such campaign for this caller"}})
    def get_campaign(campaign_id: Annotated[int, Path(ge=1, le=MAX_INT)], session: Session_,
                     principal: Annotated[A.Principal, allowed(CP.PERMISSION["read"])]):
        return campaign_out(session, visible_campaign(session, principal, campaign_id))

    def campaign_decision(verdict, permission):
        # a closure, not default arguments: FastAPI would publish those as query parameters
        def decide_campaign(campaign_id: Annotated[int, Path(ge=1, le=MAX_INT)],
                            session: Session_, principal: Caller,
                            body: DecisionIn | None = None):
            principal.require(CP.PERMISSION[permission])
            campaign = visible_campaign(session, principal, campaign_id)
            try:
                CP.decide(session, principal, campaign, verdict, now(),
                          reason=body.reason if body else None)
            except G.GuardrailError:
                session.commit()  # keep the audit row of the refusal
                raise
            session.commit()
            return campaign_out(session, campaign)
        return decide_campaign

    for c_verdict, c_permission in (("approve", "approve"), ("reject", "approve"),
                                    ("cancel", "create")):
        app.post("/campaigns/{campaign_id}/%s" % c_verdict, response_model=CampaignOut,
                 tags=["campaigns"], summary="%s a campaign" % c_verdict.capitalize(),
                 responses={403: {"description": "the creator may not approve their own "
                                                 "campaign, or the role may not"},
                            404: {"description": "no such campaign for this caller"},
                            409: {"description": "not allowed in the campaign's state"}}
                 )(campaign_decision(c_verdict, c_permission))

    # --- payments, receipts, alerts, audit -------------------------------------------------

    payments_mod = _optional("headend.payments")

    async def raw_body(request: Request):
        return await request.body()

    @app.post("/payments/webhook", tags=["payments"], openapi_extra=PAYMENT_BODY_DOC,
              responses={200: {"description": "duplicate: the receipt of the first delivery"},
                         201: {"description": "new payment: its receipt"},
                         **{code: {"description": text, "model": ProblemOut} for code, text in (
                             (400, "body is not a JSON object"),
                             (401, "bad token or gateway signature"),
                             (404, "meter not in the gateway's tenant, or inactive"),
                             (409, "txn_ref reused with another meter or amount"),
                             (413, "body too large"),
                             (422, "bad fields"))}})
    def payment_webhook(raw: Annotated[bytes, Depends(raw_body)], request: Request,
                        session: Session_,
                        principal: Annotated[A.Principal, allowed("payments.post")]):
        """UPI-style payment callback (payment_gateway role only).

        The raw body is signed by the gateway (HMAC-SHA256, hex, in the
        payment_signature_header); the same (gateway, txn_ref) any number of
        times gives one top-up and the same receipt (headend/payments.py).
        """
        if payments_mod is None:
            raise HTTPException(503, "payments (headend.payments) are not installed")
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        meter = None
        mid = payload.get("meter_id") if isinstance(payload, dict) else None
        # only a well-formed id reaches the database (PostgreSQL refuses NUL in text);
        # the handler answers 422 for the rest
        if isinstance(mid, str) and 0 < len(mid) <= 64 and mid.isprintable():
            # a gateway may only credit meters of its own tenant (isolation stays in Scope)
            meter = A.Scope(principal).meter_for_payment(session, payload["meter_id"])
        # anything else is the handler's to refuse (400 not JSON, 401 signature, 422 fields)
        status, out = payment_gateway.handle(payments_mod, session, raw, request.headers, now(),
                                             settings)
        session.rollback()  # the handler committed or rolled back its own work
        G.audit(session, principal, "payment.webhook", str(status), now(),
                tenant_id=meter.tenant_id if meter else principal.tenant_id,
                meter_id=meter.id if meter else None)
        session.commit()
        return JSONResponse(out, status_code=status)

    def visible_receipt(session, principal, number):
        found = payment_gateway.receipt(session, number)
        if found is None:
            raise A.NotVisible("no receipt %r" % number)
        A.Scope(principal).meter(session, found["meter_id"])
        return found

    @app.get("/receipts/{number}", tags=["payments"],
             responses={404: {"description": "no such receipt for this caller"}})
    def get_receipt(number: Annotated[str, Path(pattern=ID_PATTERN)], session: Session_,
                    principal: Annotated[A.Principal, allowed("receipts.read")]) -> dict:
        """A payment receipt as JSON."""
        return visible_receipt(session, principal, number)["json"]

    @app.get("/receipts/{number}/html", tags=["payments"], response_class=HTMLResponse)
    def get_receipt_html(number: Annotated[str, Path(pattern=ID_PATTERN)], session: Session_,
                         principal: Annotated[A.Principal, allowed("receipts.read")]):
        """A payment receipt as a printable HTML page."""
        return HTMLResponse(visible_receipt(session, principal, number)["html"])

    alerts_mod = _optional("headend.alerts")

    @app.get("/alerts", tags=["alerts"])
    def list_alerts(session: Session_, principal: Annotated[A.Principal, allowed("alerts.read")],
                    open_only: bool = True, limit: Limit = 100, offset: Offset = 0) -> list[dict]:
        """Alerts on the caller's meters, newest first."""
        if alerts_mod is None:
            return []
        return alert_view.list_alerts(alerts_mod, session, A.Scope(principal), open_only,
                                      limit, offset)

    @app.post("/alerts/{alert_id}/ack", tags=["alerts"])
    def ack_alert(alert_id: Annotated[int, Path(ge=1, le=MAX_INT)], session: Session_,
                  principal: Annotated[A.Principal, allowed("alerts.ack")]) -> dict:
        """Acknowledge an alert on one of the caller's meters."""
        if alerts_mod is None:
            raise A.NotVisible("no alert %r" % alert_id)
        out = alert_view.ack(alerts_mod, session, A.Scope(principal), alert_id, principal, now())
        G.audit(session, principal, "alert.ack", "ok", now(), tenant_id=out["tenant_id"],
                meter_id=out["meter_id"], alert_id=alert_id)
        session.commit()
        return out

    @app.get("/audit", tags=["operations"])
    def audit_log(session: Session_, principal: Annotated[A.Principal, allowed("audit.read")],
                  limit: Limit = 100, offset: Offset = 0) -> list[dict]:
        """The audit log of the caller's tenant, newest first (admins only)."""
        q = select(G.AuditLog)
        scope = A.Scope(principal)
        if not scope.all_tenants:
            q = q.where(G.AuditLog.tenant_id == scope.tenant_id)
        rows = session.scalars(q.order_by(G.AuditLog.id.desc()).limit(limit).offset(offset))
        return [{"id": r.id, "at": r.at, "actor": r.actor, "actor_role": r.actor_role,
                 "tenant_id": r.tenant_id, "action": r.action, "outcome": r.outcome,
                 "meter_id": r.meter_id, "request_id": r.request_id,
                 "detail": json.loads(r.detail)} for r in rows]

    app.include_router(importlib.import_module("headend.dashboard").make_router(sessions, settings, policy, enqueue, now))  # noqa: E501 - operator pages (issue 9)
    app.include_router(importlib.import_module("headend.channel").make_router(sessions, clock=clock))  # noqa: E501 - consumer SMS/WhatsApp channel (issue 9)
    app.include_router(importlib.import_module("headend.consumer_web").make_router(sessions, clock=clock))  # noqa: E501 - consumer mobile web page (issue 9)
    return app


# --- adapters to the colleagues' modules (kept here so their APIs touch one spot) ---

class command_queue:  # noqa: N801 - headend/commands.py, the durable queue
    @staticmethod
    def enqueue(mod, session, meter_id, kind, args, now, ttl_s):
        try:
            cmd = mod.enqueue(session, meter_id, kind, args, now, ttl_s=ttl_s or None)
        except mod.CommandError as err:
            raise invalid(str(err), "body")
        return cmd.id

    @staticmethod
    def list_commands(mod, session, visible_meter_ids, meter_id, limit, offset):
        q = select(mod.Command).where(mod.Command.meter_id.in_(visible_meter_ids))
        if meter_id is not None:
            q = q.where(mod.Command.meter_id == meter_id)
        q = q.order_by(mod.Command.created_at.desc(), mod.Command.id).limit(limit).offset(offset)
        return [c.as_dict() for c in session.scalars(q)]


class payment_gateway:  # noqa: N801 - headend/payments.py (webhook) and headend/ledger.py (receipts)
    @staticmethod
    def handle(mod, session, raw, headers, now, settings):
        return mod.handle_payment_webhook(session, raw, dict(headers), now=now,
                                          signature_header=settings.payment_signature_header,
                                          ttl_s=settings.command_ttl_s or None)

    @staticmethod
    def receipt(session, number):
        ledger = _optional("headend.ledger")
        return ledger.receipt_view(session, number) if ledger is not None else None


class alert_view:  # noqa: N801 - headend/alerts.py (Alert rows carry tenant_id; storms have no meter)
    @staticmethod
    def _out(a):
        return {"id": a.id, "tenant_id": a.tenant_id, "meter_id": a.meter_id, "kind": a.kind,
                "severity": a.severity, "detail": a.detail, "opened_at": a.opened_at,
                "last_seen_at": a.last_seen_at, "count": a.count, "storm": a.storm,
                "acknowledged_at": a.acknowledged_at, "acknowledged_by": a.acknowledged_by}

    @staticmethod
    def list_alerts(mod, session, scope, open_only, limit, offset):
        q = select(mod.Alert)
        if not scope.all_tenants:
            q = q.where(mod.Alert.tenant_id == scope.tenant_id)
        if open_only:
            q = q.where(mod.Alert.acknowledged_at.is_(None), mod.Alert.storm_id.is_(None))
        q = q.order_by(mod.Alert.id.desc()).limit(limit).offset(offset)
        return [alert_view._out(a) for a in session.scalars(q)]

    @staticmethod
    def ack(mod, session, scope, alert_id, principal, now):
        alert = session.get(mod.Alert, alert_id)
        if alert is None or not scope.sees_tenant(alert.tenant_id):
            raise A.NotVisible("no alert %r" % alert_id)
        return alert_view._out(mod.acknowledge(session, alert_id, principal.username, now))
