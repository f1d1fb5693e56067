"""A small two-tenant world for the API tests: tenants A and B, meters, consumers,
one user per role, bearer tokens, and a few stored readings/events/balances.

Tenant A has 20 active meters so the disconnect guardrail's arithmetic is easy:
with disconnect_approval_pct = 5, 5 % of 20 = 1 meter may be disconnected in a
window without a second approver; 2 meters need one (2 * 100 > 5 * 20).
"""
import dataclasses
import importlib

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from headend import auth as A
from headend import guardrails as G
from headend import models as M
from headend.api import create_app
from headend.config import Settings
from headend.db import Base

NOW = 1795737600          # 2026-11-27 00:00:00 UTC (fixed clock for every test)


def ensure_tables(engine):
    """Create the tables the migration history does not have yet (this work stream's, and
    the command queue's and alerts' while they have no revision); existing ones are kept."""
    for name in ("headend.commands", "headend.alerts", "headend.ledger", "headend.payments"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    Base.metadata.create_all(engine, checkfirst=True)


class FakeQueue:
    """Records what the API asked to queue; returns command ids C-1, C-2, ..."""

    def __init__(self):
        self.calls = []

    def __call__(self, session, meter_id, kind, args, now):
        self.calls.append((meter_id, kind, list(args), now))
        return "C-%d" % len(self.calls)


@dataclasses.dataclass
class World:
    engine: object
    client: TestClient
    tokens: dict
    tenant: dict
    consumer: dict
    queue: FakeQueue
    clock: list

    def as_(self, user):
        return {"Authorization": "Bearer " + self.tokens[user]}

    def get(self, user, url, **kw):
        return self.client.get(url, headers=self.as_(user), **kw)

    def post(self, user, url, **kw):
        return self.client.post(url, headers=self.as_(user), **kw)


def seed(engine):
    """Tenants, consumers, meters, users and tokens; returns (tokens, tenant ids, consumer ids)."""
    ensure_tables(engine)
    with Session(engine) as s:
        ta, tb = M.Tenant(code="A", name="Agra Nagar Nigam"), M.Tenant(code="B", name="Bhopal MC")
        s.add_all([ta, tb])
        s.flush()
        ravi = M.Consumer(tenant_id=ta.id, account_no="A-ACC-1", name="Ravi", language="hi")
        sita = M.Consumer(tenant_id=ta.id, account_no="A-ACC-2", name="Sita", language="en")
        bina = M.Consumer(tenant_id=tb.id, account_no="B-ACC-1", name="Bina")
        s.add_all([ravi, sita, bina])
        s.flush()
        s.add(M.Meter(id="A-01", tenant_id=ta.id, consumer_id=ravi.id, service="electricity"))
        s.add(M.Meter(id="A-02", tenant_id=ta.id, consumer_id=ravi.id, service="water"))
        s.add(M.Meter(id="A-03", tenant_id=ta.id, consumer_id=sita.id))
        for i in range(4, 21):
            s.add(M.Meter(id="A-%02d" % i, tenant_id=ta.id))
        s.add(M.Meter(id="B-01", tenant_id=tb.id, consumer_id=bina.id))
        s.add(M.Meter(id="B-02", tenant_id=tb.id))
        s.flush()
        users = {
            "admin": A.create_user(s, "admin", A.ADMIN),
            "admin_a": A.create_user(s, "admin-a", A.ADMIN, tenant_id=ta.id),
            "op_a": A.create_user(s, "op-a", A.OPERATOR, tenant_id=ta.id),
            "op_a2": A.create_user(s, "op-a2", A.OPERATOR, tenant_id=ta.id),
            "tech_a": A.create_user(s, "tech-a", A.TECHNICIAN, tenant_id=ta.id),
            "ravi": A.create_user(s, "ravi", A.CONSUMER, tenant_id=ta.id, consumer_id=ravi.id),
            "sita": A.create_user(s, "sita", A.CONSUMER, tenant_id=ta.id, consumer_id=sita.id),
            "gw_a": A.create_user(s, "gw-a", A.PAYMENT_GATEWAY, tenant_id=ta.id),
            "op_b": A.create_user(s, "op-b", A.OPERATOR, tenant_id=tb.id),
            "bina": A.create_user(s, "bina", A.CONSUMER, tenant_id=tb.id, consumer_id=bina.id),
            "gw_b": A.create_user(s, "gw-b", A.PAYMENT_GATEWAY, tenant_id=tb.id),
        }
        tokens = {name: A.issue_api_token(s, u, NOW - 10) for name, u in users.items()}
        # a little stored data on A-01 and B-01 (15-minute intervals)
        for mid in ("A-01", "B-01"):
            for k in range(4):
                s.add(M.Reading(meter_id=mid, start_t=NOW - 3600 + 900 * k, energy=100 + k,
                                span_s=900, flags=0, received_at=NOW - 60))
            s.add(M.EventRecord(meter_id=mid, event_seq=1, t=NOW - 1800, code=3, value=0, seq=7))
            s.add(M.MeterBalance(meter_id=mid, seq=9, t=NOW - 120, balance_paise=12345,
                                 credit_paise=12345, emergency_paise=0, debt_paise=0, state="OK",
                                 relay_closed=True, limiter="NORMAL", tariff_version=1,
                                 topups_total_paise=50000, charges_total_paise=37655))
        ids = {"A": ta.id, "B": tb.id}
        consumers = {"ravi": ravi.id, "sita": sita.id, "bina": bina.id}
        s.commit()
    return tokens, ids, consumers


def make_world(engine, real_queue=False, **settings):
    """The seeded world with an API client; ``real_queue`` uses headend.commands, else FakeQueue."""
    tokens, tenants, consumers = seed(engine)
    clock = [NOW]
    queue = FakeQueue()
    cfg = Settings(database_url=str(engine.url), **settings)
    app = create_app(cfg, engine=engine, clock=lambda: clock[0],
                     enqueue=None if real_queue else queue)
    return World(engine, TestClient(app), tokens, tenants, consumers, queue, clock)


def audit_rows(engine, **where):
    with Session(engine) as s:
        q = select(G.AuditLog).order_by(G.AuditLog.id)
        for k, v in where.items():
            q = q.where(getattr(G.AuditLog, k) == v)
        return list(s.scalars(q))
