"""The two-person rule for mass disconnects and the audit trail, through the API.

Tenant A has 20 active meters (api_world); disconnect_approval_pct = 5 and a
1-hour window, so the limit is 5 % of 20 = 1 meter per window:
1 meter: 1 * 100 = 100 <= 5 * 20 = 100 -> queued at once;
2 meters: 200 > 100 -> held for a second approver.
"""
import pytest

from headend import guardrails as G
from headend.tests.api_world import NOW, audit_rows, make_world


@pytest.fixture
def world(engine):
    w = make_world(engine, disconnect_approval_pct=5, disconnect_window_s=3600)
    yield w
    w.client.close()


def disconnect(world, user, meters):
    return world.post(user, "/commands", json={"kind": "relay", "meter_ids": meters,
                                               "args": ["disconnect"]})


def test_disconnect_within_share_is_queued_at_once(world):
    r = disconnect(world, "op_a", ["A-05"])
    assert r.status_code == 201
    assert r.json()["state"] == "QUEUED"
    assert world.queue.calls == [("A-05", "relay", ["disconnect"], NOW)]
    assert r.json()["targets"] == [{"meter_id": "A-05", "command_id": "C-1"}]


def test_disconnect_above_share_is_held_and_queues_nothing(world):
    r = disconnect(world, "op_a", ["A-05", "A-06"])
    assert r.status_code == 202
    assert r.json()["state"] == "PENDING_APPROVAL"
    assert world.queue.calls == []


def test_disconnects_add_up_within_the_window(world):
    assert disconnect(world, "op_a", ["A-05"]).status_code == 201
    world.clock[0] = NOW + 3599          # still inside (NOW, NOW + 3600]
    r = disconnect(world, "op_a2", ["A-06"])
    assert r.status_code == 202
    assert len(world.queue.calls) == 1


def test_window_expiry_frees_the_share_again(world):
    assert disconnect(world, "op_a", ["A-05"]).status_code == 201
    world.clock[0] = NOW + 3600          # the first request (at NOW) is now outside (NOW, NOW+3600]
    assert disconnect(world, "op_a", ["A-06"]).status_code == 201


def test_same_meter_disconnected_twice_counts_once(world):
    assert disconnect(world, "op_a", ["A-05"]).status_code == 201
    assert disconnect(world, "op_a", ["A-05"]).status_code == 201


def test_connects_and_topups_never_need_approval(world):
    meters = ["A-%02d" % i for i in range(1, 21)]
    assert world.post("op_a", "/commands", json={"kind": "relay", "meter_ids": meters,
                                                 "args": ["connect"]}).status_code == 201
    assert world.post("op_a", "/commands", json={"kind": "topup", "meter_ids": meters,
                                                 "args": [10000]}).status_code == 201
    assert len(world.queue.calls) == 40


def test_other_tenant_disconnects_do_not_count(world):
    assert disconnect(world, "op_b", ["B-01"]).status_code == 202   # 1 of B's 2 meters = 50 %
    assert disconnect(world, "op_a", ["A-05"]).status_code == 201


def test_requester_cannot_approve_own_request(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    r = world.post("op_a", "/commands/requests/%d/approve" % rid)
    assert r.status_code == 403
    assert r.json()["code"] == "same_approver"
    assert world.queue.calls == []
    denied = audit_rows(world.engine, action="command.approve")
    assert [(x.actor, x.outcome) for x in denied] == [("op-a", "denied")]


def test_second_operator_approval_queues_every_target(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    world.clock[0] = NOW + 60
    r = world.post("op_a2", "/commands/requests/%d/approve" % rid, json={"reason": "feeder 7"})
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["decided_by"], body["decided_at"]) == ("QUEUED", "op-a2", NOW + 60)
    assert sorted(c[0] for c in world.queue.calls) == ["A-05", "A-06"]
    assert [t["command_id"] for t in body["targets"]] == ["C-1", "C-2"]


def test_approved_request_cannot_be_approved_again(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    assert world.post("op_a2", "/commands/requests/%d/approve" % rid).status_code == 200
    r = world.post("admin_a", "/commands/requests/%d/approve" % rid)
    assert r.status_code == 409
    assert len(world.queue.calls) == 2


def test_rejected_request_queues_nothing_and_cannot_be_approved(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    assert world.post("op_a2", "/commands/requests/%d/reject" % rid).json()["state"] == "REJECTED"
    assert world.post("admin_a", "/commands/requests/%d/approve" % rid).status_code == 409
    assert world.queue.calls == []


def test_the_verdict_is_the_path_not_a_query_parameter(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    r = world.post("op_a2", "/commands/requests/%d/approve?verdict=reject" % rid)
    assert (r.status_code, r.json()["state"]) == (200, "QUEUED")
    params = world.client.get("/openapi.json").json()["paths"][
        "/commands/requests/{request_id}/approve"]["post"].get("parameters", [])
    assert [p["name"] for p in params] == ["request_id"]


def test_rejected_disconnects_do_not_use_up_the_share(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    world.post("op_a2", "/commands/requests/%d/reject" % rid)
    assert disconnect(world, "op_a", ["A-07"]).status_code == 201


def test_pending_disconnects_count_against_the_share(world):
    disconnect(world, "op_a", ["A-05", "A-06"])             # held, may still be approved
    assert disconnect(world, "op_a", ["A-07"]).status_code == 202


def test_zero_share_makes_every_disconnect_need_approval(engine):
    w = make_world(engine, disconnect_approval_pct=0)
    assert disconnect(w, "op_a", ["A-05"]).status_code == 202


def test_technician_and_consumer_cannot_approve(world):
    rid = disconnect(world, "op_a", ["A-05", "A-06"]).json()["id"]
    assert world.post("tech_a", "/commands/requests/%d/approve" % rid).status_code == 403
    assert world.post("ravi", "/commands/requests/%d/approve" % rid).status_code == 403
    assert world.queue.calls == []


def test_every_command_request_and_decision_is_audited(world):
    disconnect(world, "op_a", ["A-05"])
    rid = disconnect(world, "op_a", ["A-06", "A-07"]).json()["id"]
    world.post("op_a2", "/commands/requests/%d/approve" % rid)
    rows = audit_rows(world.engine, tenant_id=world.tenant["A"])
    got = [(r.actor, r.action, r.outcome, r.request_id) for r in rows]
    assert got == [("op-a", "command.request", "queued", rid - 1),
                   ("op-a", "command.request", "pending_approval", rid),
                   ("op-a2", "command.approve", "queued", rid)]
    import json
    # second request: A-05 already in the window + 2 new = 3 of 20 meters, limit 5 %
    assert json.loads(rows[1].detail)["affected"] == 3
    assert json.loads(rows[1].detail)["active_meters"] == 20


def test_audit_log_is_visible_to_tenant_admin_only_for_own_tenant(world):
    disconnect(world, "op_a", ["A-05"])
    disconnect(world, "op_b", ["B-02"])
    mine = world.get("admin_a", "/audit").json()
    assert {r["tenant_id"] for r in mine} == {world.tenant["A"]}
    assert world.get("op_a", "/audit").status_code == 403


def test_bad_command_arguments_are_422_and_queue_nothing(world):
    for kind, args in (("relay", ["open"]), ("topup", []), ("topup", ["100"]),
                       ("reset_lockout", [1])):
        r = world.post("op_a", "/commands", json={"kind": kind, "meter_ids": ["A-05"], "args": args})
        assert r.status_code == 422, (kind, args, r.text)
    assert world.queue.calls == []


def test_policy_arithmetic_is_integer_and_exact():
    # 7 % of 300 = 21 meters: 21 * 100 = 2100 <= 7 * 300 = 2100 allowed; 22 is not
    p = G.DisconnectPolicy(7, 3600)
    assert not p.needs_approval(21, 300)
    assert p.needs_approval(22, 300)
