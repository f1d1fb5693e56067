"""Security acceptance (issue 6): roles and tenant isolation through the HTTP API,
on SQLite and PostgreSQL (``db_url`` from conftest.py).

Isolation answers 404 (the meter "does not exist" for the caller, so ids do
not leak across tenants); a role acting outside its permissions gets 403.
"""
import pytest

from headend import auth as A
from headend.tests.api_world import NOW, audit_rows, make_world


@pytest.fixture
def world(engine):
    w = make_world(engine)
    yield w
    w.client.close()


# --- authentication -------------------------------------------------------------

def test_request_without_token_is_401_with_bearer_challenge(world):
    r = world.client.get("/meters")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_token_is_401(world):
    r = world.client.get("/meters", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


def test_login_token_works_until_it_expires(world):
    from sqlalchemy.orm import Session
    with Session(world.engine) as s:
        A.create_user(s, "meena", A.OPERATOR, tenant_id=world.tenant["A"], password="correct horse")
        s.commit()
    r = world.client.post("/auth/token", json={"username": "meena", "password": "correct horse"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    # default token_ttl_s = 8 h = 28800 s
    assert r.json()["expires_at"] == NOW + 28800
    auth = {"Authorization": "Bearer " + token}
    assert world.client.get("/meters", headers=auth).status_code == 200
    world.clock[0] = NOW + 28799
    assert world.client.get("/meters", headers=auth).status_code == 200
    world.clock[0] = NOW + 28800
    assert world.client.get("/meters", headers=auth).status_code == 401


def test_login_with_wrong_password_is_401_and_issues_nothing(world):
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session
    with Session(world.engine) as s:
        A.create_user(s, "meena", A.OPERATOR, tenant_id=world.tenant["A"], password="correct horse")
        s.commit()
        before = s.scalar(select(func.count()).select_from(A.ApiToken))
    r = world.client.post("/auth/token", json={"username": "meena", "password": "wrong horse"})
    assert r.status_code == 401
    with Session(world.engine) as s:
        assert s.scalar(select(func.count()).select_from(A.ApiToken)) == before


def test_tokens_are_stored_only_as_hashes(world):
    from sqlalchemy import select
    from sqlalchemy.orm import Session
    with Session(world.engine) as s:
        stored = set(s.scalars(select(A.ApiToken.token_sha256)))
    assert world.tokens["op_a"] not in stored
    import hashlib
    assert hashlib.sha256(world.tokens["op_a"].encode()).hexdigest() in stored


# --- tenant isolation -------------------------------------------------------------

def test_operator_lists_only_own_tenant_meters(world):
    r = world.get("op_a", "/meters", params={"limit": 1000})
    assert r.status_code == 200
    ids = [m["id"] for m in r.json()]
    # tenant A holds A-01 .. A-20 (api_world.seed)
    assert ids == ["A-%02d" % i for i in range(1, 21)]


@pytest.mark.parametrize("path", ["/meters/B-01", "/meters/B-01/readings", "/meters/B-01/balance",
                                  "/meters/B-01/events"])
def test_operator_of_tenant_a_cannot_read_tenant_b_meter(world, path):
    assert world.get("op_b", path).status_code == 200  # B's own operator can: the data exists
    r = world.get("op_a", path)
    assert r.status_code == 404
    assert "B-01" in r.json()["detail"] and "12345" not in r.text


@pytest.mark.parametrize("kind,args", [("relay", ["disconnect"]), ("relay", ["connect"]),
                                       ("topup", [50000]), ("tariff", ['{"id": "t"}'])])
def test_operator_of_tenant_a_cannot_command_tenant_b_meter(world, kind, args):
    r = world.post("op_a", "/commands", json={"kind": kind, "meter_ids": ["B-01"], "args": args})
    assert r.status_code == 404
    assert world.queue.calls == []


def test_mixed_batch_with_one_foreign_meter_queues_nothing(world):
    r = world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": ["A-05", "B-02"],
                                              "args": ["connect"]})
    assert r.status_code == 404
    assert world.queue.calls == []


def test_operator_cannot_register_meter_into_other_tenant(world):
    r = world.post("op_a", "/meters", json={"id": "X-1", "tenant_id": world.tenant["B"]})
    assert r.status_code == 404
    assert world.get("op_b", "/meters/X-1").status_code == 404


def test_operator_of_tenant_a_cannot_see_tenant_b_command_requests(world):
    r = world.post("op_b", "/commands", json={"kind": "relay", "meter_ids": ["B-02"],
                                              "args": ["connect"]})
    assert r.status_code == 201
    rid = r.json()["id"]
    assert world.get("op_a", "/commands/requests/%d" % rid).status_code == 404
    assert rid not in [x["id"] for x in world.get("op_a", "/commands/requests").json()]
    assert world.post("op_a", "/commands/requests/%d/approve" % rid).status_code == 404


def test_platform_admin_sees_every_tenant(world):
    ids = [m["id"] for m in world.get("admin", "/meters", params={"limit": 1000}).json()]
    assert "A-01" in ids and "B-01" in ids and len(ids) == 22


# --- consumers ------------------------------------------------------------------

def test_consumer_lists_only_own_meters(world):
    assert [m["id"] for m in world.get("ravi", "/meters").json()] == ["A-01", "A-02"]
    assert [m["id"] for m in world.get("sita", "/meters").json()] == ["A-03"]


def test_consumer_reads_own_balance(world):
    r = world.get("ravi", "/meters/A-01/balance")
    assert r.status_code == 200
    assert r.json()["balance_paise"] == 12345


@pytest.mark.parametrize("path", ["/meters/A-01", "/meters/A-01/readings", "/meters/A-01/balance",
                                  "/meters/A-01/events"])
def test_consumer_cannot_read_a_neighbours_meter_in_same_tenant(world, path):
    assert world.get("sita", path).status_code == 404


def test_consumer_cannot_read_other_tenant_meter(world):
    assert world.get("ravi", "/meters/B-01").status_code == 404


def test_consumer_cannot_queue_commands_even_on_own_meter(world):
    r = world.post("ravi", "/commands", json={"kind": "relay", "meter_ids": ["A-01"],
                                              "args": ["connect"]})
    assert r.status_code == 403
    assert world.queue.calls == []


@pytest.mark.parametrize("path", ["/commands", "/commands/requests", "/alerts", "/audit"])
def test_consumer_cannot_read_operations_views(world, path):
    assert world.get("ravi", path).status_code == 403


# --- technician and payment gateway -------------------------------------------------

def test_technician_reads_meters_but_cannot_command(world):
    assert world.get("tech_a", "/meters/A-05").status_code == 200
    r = world.post("tech_a", "/commands", json={"kind": "relay", "meter_ids": ["A-05"],
                                                "args": ["disconnect"]})
    assert r.status_code == 403
    assert world.queue.calls == []


@pytest.mark.parametrize("path", ["/meters", "/meters/A-01", "/meters/A-01/balance",
                                  "/meters/A-01/readings", "/commands", "/commands/requests",
                                  "/alerts", "/audit"])
def test_payment_gateway_cannot_read_anything(world, path):
    assert world.get("gw_a", path).status_code == 403


def test_payment_gateway_cannot_command_or_register(world):
    r = world.post("gw_a", "/commands", json={"kind": "topup", "meter_ids": ["A-01"],
                                              "args": [100]})
    assert r.status_code == 403
    assert world.post("gw_a", "/meters", json={"id": "GW-1"}).status_code == 403
    assert world.queue.calls == []


@pytest.mark.parametrize("user", ["admin_a", "op_a", "tech_a", "ravi"])
def test_only_payment_gateway_may_post_payments(world, user):
    r = world.post(user, "/payments/webhook", json={"meter_id": "A-01", "amount_paise": 100})
    assert r.status_code == 403


def test_payment_gateway_cannot_pay_into_other_tenant(world):
    r = world.post("gw_b", "/payments/webhook", json={"meter_id": "A-01", "amount_paise": 100})
    assert r.status_code == 404


def test_denied_role_leaves_no_audit_or_queue_trace_but_allowed_one_is_audited(world):
    world.post("ravi", "/commands", json={"kind": "relay", "meter_ids": ["A-01"],
                                          "args": ["connect"]})
    assert audit_rows(world.engine, action="command.request") == []
    r = world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": ["A-01"],
                                              "args": ["connect"]})
    assert r.status_code == 201
    rows = audit_rows(world.engine, action="command.request")
    assert [(x.actor, x.outcome, x.meter_id) for x in rows] == [("op-a", "queued", "A-01")]
