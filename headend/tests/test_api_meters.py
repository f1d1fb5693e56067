"""Meters, readings, balance, events and commands through the API (SQLite and PostgreSQL).

Stored data comes from api_world.seed: A-01 has four 15-minute readings
starting at NOW-3600, NOW-2700, NOW-1800, NOW-900 with energy 100..103 Wh, one
COVER_OPEN event (code 3, docs/protocol.md) and a status with balance 12345 paise.
"""
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from headend import models as M
from headend.tests.api_world import NOW, audit_rows, make_world


@pytest.fixture
def world(engine):
    w = make_world(engine, real_queue=True)
    yield w
    w.client.close()


def test_register_meter_with_new_consumer_links_both_in_callers_tenant(world):
    r = world.post("tech_a", "/meters", json={
        "id": "A-NEW", "service": "water",
        "consumer": {"account_no": "A-ACC-9", "name": "Kiran", "language": "en"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["tenant_id"], body["service"], body["unit"]) == (world.tenant["A"], "water", "L")
    assert body["consumer_account_no"] == "A-ACC-9"
    assert world.get("op_b", "/meters/A-NEW").status_code == 404
    assert [(a.actor, a.meter_id) for a in audit_rows(world.engine, action="meter.register")] == [
        ("tech-a", "A-NEW")]


def test_register_meter_reuses_existing_consumer_account(world):
    r = world.post("op_a", "/meters", json={"id": "A-NEW", "consumer": {
        "account_no": "A-ACC-1", "name": "Ravi"}})
    assert r.json()["consumer_id"] == world.consumer["ravi"]
    # Ravi now sees three meters: A-01, A-02 (seed) and A-NEW
    assert [m["id"] for m in world.get("ravi", "/meters").json()] == ["A-01", "A-02", "A-NEW"]


def test_register_duplicate_meter_id_is_409(world):
    assert world.post("op_a", "/meters", json={"id": "A-01"}).status_code == 409
    # even when the id belongs to another tenant (no data of B is revealed beyond "taken")
    assert world.post("op_a", "/meters", json={"id": "B-01"}).status_code == 409


def test_register_meter_with_key_seals_it_under_the_master_key(world, monkeypatch):
    monkeypatch.setenv("URJA_MASTER_KEY", "11" * 32)
    r = world.post("op_a", "/meters", json={"id": "A-KEY", "key_hex": "ab" * 32})
    assert r.status_code == 201, r.text
    with Session(world.engine) as s:
        row = s.get(M.MeterKey, "A-KEY")
        assert row.ciphertext != bytes.fromhex("ab" * 32)
        assert row.open(bytes.fromhex("11" * 32)) == bytes.fromhex("ab" * 32)


def test_register_meter_with_key_but_no_master_key_is_503_and_stores_nothing(world, monkeypatch):
    monkeypatch.delenv("URJA_MASTER_KEY", raising=False)
    r = world.post("op_a", "/meters", json={"id": "A-KEY", "key_hex": "ab" * 32})
    assert r.status_code == 503
    assert world.get("op_a", "/meters/A-KEY").status_code == 404


@pytest.mark.parametrize("body", [{"id": "bad id"}, {"id": "A-1\u0000"}, {"id": ""},
                                  {"id": "A-X", "service": "steam"},
                                  {"id": "A-X", "consumer": {"account_no": "1", "name": "N\u0000"}},
                                  {"id": "A-X", "surprise": 1}])
def test_register_meter_rejects_bad_bodies_with_422(world, body):
    assert world.post("op_a", "/meters", json=body).status_code == 422


def test_platform_admin_must_name_the_tenant(world):
    assert world.post("admin", "/meters", json={"id": "P-1"}).status_code == 422
    r = world.post("admin", "/meters", json={"id": "P-1", "tenant_id": world.tenant["B"]})
    assert r.status_code == 201 and r.json()["tenant_id"] == world.tenant["B"]


def test_readings_range_is_start_inclusive_end_exclusive(world):
    r = world.get("ravi", "/meters/A-01/readings",
                  params={"start": NOW - 2700, "end": NOW - 900})
    assert r.status_code == 200
    # start_t in [NOW-2700, NOW-900): the 2nd and 3rd readings (energy 101 and 102)
    assert [(x["start_t"], x["energy"], x["unit"]) for x in r.json()] == [
        (NOW - 2700, 101, "Wh"), (NOW - 1800, 102, "Wh")]


def test_readings_limit_takes_the_oldest(world):
    r = world.get("op_a", "/meters/A-01/readings", params={"limit": 2})
    assert [x["energy"] for x in r.json()] == [100, 101]


@pytest.mark.parametrize("params", [{"start": -1}, {"end": 2 ** 63}, {"limit": 0},
                                    {"limit": 1001}, {"start": "yesterday"}])
def test_readings_bad_query_is_422(world, params):
    assert world.get("op_a", "/meters/A-01/readings", params=params).status_code == 422


def test_balance_and_events_as_reported(world):
    b = world.get("ravi", "/meters/A-01/balance").json()
    assert (b["balance_paise"], b["state"], b["relay_closed"], b["t"]) == (12345, "OK", True,
                                                                            NOW - 120)
    e = world.get("ravi", "/meters/A-01/events").json()
    assert e == [{"event_seq": 1, "t": NOW - 1800, "code": 3, "value": 0}]


def test_balance_before_first_status_is_all_null(world):
    b = world.get("op_a", "/meters/A-05/balance").json()
    assert b == {"meter_id": "A-05", "t": None, "balance_paise": None, "credit_paise": None,
                 "emergency_paise": None, "debt_paise": None, "state": None,
                 "relay_closed": None, "tariff_version": None}


def test_list_meters_pages_by_id(world):
    page = world.get("op_a", "/meters", params={"limit": 3, "offset": 3}).json()
    assert [m["id"] for m in page] == ["A-04", "A-05", "A-06"]


# --- commands on the real durable queue (headend/commands.py) -----------------------

def test_topup_request_puts_a_queued_command_on_the_durable_queue(world):
    from headend import commands as C
    r = world.post("op_a", "/commands", json={"kind": "topup", "meter_ids": ["A-01"],
                                              "args": [50000]})
    assert r.status_code == 201, r.text
    cid = r.json()["targets"][0]["command_id"]
    with Session(world.engine) as s:
        cmd = s.get(C.Command, cid)
        assert (cmd.meter_id, cmd.kind, cmd.state, cmd.fields) == ("A-01", "topup", "QUEUED",
                                                                   [cid, 50000])
        # top-up default TTL in headend.commands.DEFAULT_TTL_S: 7 days = 604800 s
        assert cmd.expires_at == NOW + 604800


def test_command_list_shows_only_the_callers_tenant(world):
    world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": ["A-05"],
                                          "args": ["connect"]})
    world.post("op_b", "/commands", json={"kind": "relay", "meter_ids": ["B-02"],
                                          "args": ["connect"]})
    assert [c["meter_id"] for c in world.get("op_a", "/commands").json()] == ["A-05"]
    assert [c["meter_id"] for c in world.get("op_b", "/commands").json()] == ["B-02"]
    assert world.get("op_a", "/commands", params={"meter_id": "B-02"}).status_code == 404


def test_held_disconnect_creates_no_command_until_approved(world):
    from headend import commands as C
    r = world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": ["A-05", "A-06"],
                                              "args": ["disconnect"]})
    assert r.status_code == 202
    with Session(world.engine) as s:
        assert s.scalars(select(C.Command)).all() == []
    world.post("op_a2", "/commands/requests/%d/approve" % r.json()["id"])
    with Session(world.engine) as s:
        got = sorted((c.meter_id, c.state) for c in s.scalars(select(C.Command)))
    assert got == [("A-05", "QUEUED"), ("A-06", "QUEUED")]
