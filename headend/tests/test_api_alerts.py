"""Alerts through the API: staff of the meter's tenant list and acknowledge them; nobody else
sees them (404 on another tenant's alert, 403 for consumers and gateways)."""
import pytest
from sqlalchemy.orm import Session

from headend import alerts as AL
from headend.tests.api_world import NOW, audit_rows, make_world


@pytest.fixture
def world(engine):
    w = make_world(engine)
    with Session(engine) as s:
        w.alert_a = AL.raise_alert(s, "A-01", AL.TAMPER, NOW - 60, "cover open").alert
        w.alert_b = AL.raise_alert(s, "B-01", AL.TAMPER, NOW - 60, "magnet").alert
        s.commit()
        w.alert_a, w.alert_b = w.alert_a.id, w.alert_b.id
    yield w
    w.client.close()


def test_staff_list_only_their_tenant_alerts(world):
    assert [a["id"] for a in world.get("tech_a", "/alerts").json()] == [world.alert_a]
    assert [a["id"] for a in world.get("op_b", "/alerts").json()] == [world.alert_b]


def test_acknowledge_hides_from_open_list_and_is_audited(world):
    r = world.post("op_a", "/alerts/%d/ack" % world.alert_a)
    assert r.status_code == 200
    assert (r.json()["acknowledged_by"], r.json()["acknowledged_at"]) == ("op-a", NOW)
    assert world.get("op_a", "/alerts").json() == []
    assert len(world.get("op_a", "/alerts", params={"open_only": False}).json()) == 1
    assert [(x.actor, x.meter_id) for x in audit_rows(world.engine, action="alert.ack")] == [
        ("op-a", "A-01")]


def test_operator_cannot_acknowledge_other_tenant_alert(world):
    assert world.post("op_a", "/alerts/%d/ack" % world.alert_b).status_code == 404
    assert [a["acknowledged_at"] for a in world.get("op_b", "/alerts").json()] == [None]


@pytest.mark.parametrize("user", ["ravi", "gw_a"])
def test_consumers_and_gateways_cannot_see_or_ack_alerts(world, user):
    assert world.get(user, "/alerts").status_code == 403
    assert world.post(user, "/alerts/%d/ack" % world.alert_a).status_code == 403
