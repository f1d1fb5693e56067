"""Campaigns (headend/campaigns.py) through the API and the CLI: stages advance on the
APPLIED share, halt on the failed share, firmware needs a second approver and counts a
meter done only when its heartbeat reports the new ``fw``; tenants stay apart.

The world is headend/tests/api_world.py: tenant A has 20 active meters (A-01..A-20),
tenant B two.  Stages [5, 50, 100] over 20 meters: ceil(20 * 5 / 100) = 1,
ceil(20 * 50 / 100) = 10, 20 -> stage sizes 1, 9, 10.  Runs on SQLite and PostgreSQL.
"""
import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import auth
from firmware.core import meter as fw_meter
from firmware.protocol import messages
from headend import alerts
from headend import campaigns as CP
from headend import cli
from headend import commands as C
from headend import ota
from headend.store import UplinkStore
from headend.tests.api_world import NOW, audit_rows, make_world

KEY = bytes(range(32))
POLICY = C.RetryPolicy()
IMAGE = bytes(range(256)) * 20  # 5120 bytes: 2 chunks
TARIFF = json.dumps(fw_meter.EXAMPLE_CONFIG["tariff"])


@pytest.fixture
def world(engine):
    w = make_world(engine, real_queue=True)
    yield w
    w.client.close()


def create(world, user="op_a", **body):
    body.setdefault("kind", "config")
    body.setdefault("args", ["heartbeat_s", "600"])
    body.setdefault("stages", [5, 50, 100])
    body.setdefault("success_pct", 100)
    body.setdefault("failure_pct", 10)
    return world.post(user, "/campaigns", json=body)


def answer(engine, command_id, result, detail=None, now=NOW + 60):
    """Send a queued command and give the meter's ack (as the dispatcher would apply it)."""
    with Session(engine, expire_on_commit=False) as s:
        cmd = s.get(C.Command, command_id)
        C.prepare_send(s, cmd, KEY, now, POLICY)
        body = {"id": cmd.id, "c": cmd.counter, "r": result, "rn": C.RESULT_NAMES[result]}
        if detail:
            body["d"] = detail
        C.handle_ack(s, cmd.meter_id, body, now + 1)
        s.commit()


def advance(engine, now):
    with Session(engine) as s:
        moved = CP.advance(s, now)
        s.commit()
    return moved


def targets(engine, campaign_id, **where):
    with Session(engine) as s:
        q = select(CP.CampaignTarget).where(CP.CampaignTarget.campaign_id == campaign_id)
        for k, v in where.items():
            q = q.where(getattr(CP.CampaignTarget, k) == v)
        return list(s.scalars(q.order_by(CP.CampaignTarget.meter_id)))


def sizes(campaign):
    return [s["size"] for s in campaign["progress"]]


# --- stages -----------------------------------------------------------------------------

def test_stage_sizes_are_cumulative_shares_rounded_up():
    rules = CP.StageRules([1, 10, 100], 95, 5)
    assert rules.sizes(20) == [1, 1, 18]
    assert rules.sizes(1000) == [10, 90, 900]
    assert CP.StageRules([5, 50, 100], 95, 5).sizes(20) == [1, 9, 10]
    with pytest.raises(Exception, match="rising"):
        CP.StageRules([10, 5, 100], 95, 5)


def test_config_campaign_starts_with_the_pilot_only(world):
    r = create(world)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["state"] == "RUNNING" and sizes(c) == [1, 9, 10]
    pilot = targets(world.engine, c["id"], state=CP.ACTIVE)
    assert [t.stage for t in pilot] == [0]
    with Session(world.engine) as s:
        cmd = s.get(C.Command, pilot[0].command_id)
        assert (cmd.kind, cmd.fields[1:]) == ("config", ["heartbeat_s", "600"])
        assert s.scalar(select(C.Command.id).where(C.Command.kind == "config")
                        .where(C.Command.id != cmd.id)) is None


def test_next_stage_starts_once_the_previous_reached_the_success_share(world):
    c = create(world).json()
    assert advance(world.engine, NOW + 10) == []          # pilot not applied yet
    pilot = targets(world.engine, c["id"], stage=0)[0]
    answer(world.engine, pilot.command_id, auth.OK, "config heartbeat_s saved: applies next boot")
    assert advance(world.engine, NOW + 120) == [(c["id"], "stage 1")]
    got = world.get("op_a", "/campaigns/%d" % c["id"]).json()
    assert got["stage"] == 1
    assert [(p["DONE"], p["ACTIVE"], p["WAITING"]) for p in got["progress"]] == \
        [(1, 0, 0), (0, 9, 0), (0, 0, 10)]
    assert [a.action for a in audit_rows(world.engine, tenant_id=world.tenant["A"])
            if a.action.startswith("campaign.")] == ["campaign.create", "campaign.stage"]


def test_all_stages_done_completes_the_campaign(world):
    c = create(world, stages=[50, 100], meter_ids=["A-01", "A-02"]).json()
    for stage in (0, 1):
        for t in targets(world.engine, c["id"], stage=stage):
            answer(world.engine, t.command_id, auth.OK)
        advance(world.engine, NOW + 100 + stage)
    assert world.get("op_a", "/campaigns/%d" % c["id"]).json()["state"] == "COMPLETED"


def test_failures_above_the_threshold_halt_the_campaign_with_an_alert(world):
    c = create(world, kind="tariff", args=[TARIFF]).json()
    pilot = targets(world.engine, c["id"], stage=0)[0]
    answer(world.engine, pilot.command_id, fw_meter.BAD_VALUE, "tariff: bad slabs")
    assert advance(world.engine, NOW + 120) == [(c["id"], "halted")]
    got = world.get("op_a", "/campaigns/%d" % c["id"]).json()
    assert got["state"] == "HALTED" and "1 of 1 failed" in got["reason"]
    assert targets(world.engine, c["id"], state=CP.ACTIVE) == []     # nothing more started
    with Session(world.engine) as s:
        halted = s.scalars(select(alerts.Alert).where(alerts.Alert.kind == CP.HALT_ALERT)).all()
    assert [(a.tenant_id, a.severity) for a in halted] == [(world.tenant["A"], "critical")]
    assert advance(world.engine, NOW + 200) == []                     # stays halted
    assert world.post("op_a", "/campaigns/%d/cancel" % c["id"]).json()["state"] == "CANCELLED"
    assert {t.state for t in targets(world.engine, c["id"], stage=2)} == {CP.SKIPPED}


def test_bad_campaign_fields_are_a_422(world):
    assert create(world, args=["key_hex", "00" * 16]).status_code == 422
    assert create(world, stages=[10, 5]).status_code == 422
    assert create(world, kind="tariff", args=["{not json"]).status_code == 422
    assert create(world, kind="firmware", args=["9.9.9"]).status_code == 422


# --- firmware: approval and confirmation -------------------------------------------------

def store_image(engine, version="1.1.0"):
    with Session(engine) as s:
        ota.add_image(s, version, IMAGE, NOW)
        s.commit()


def heartbeat(engine, meter_id, seq, fw, at):
    body = messages.decode_uplink(messages.topic(meter_id, "heartbeat"), messages.encode_uplink(
        "heartbeat", meter_id, seq, at, {"up": 5, "fw": fw}))
    UplinkStore(engine).write([body], now=at)


def test_firmware_campaign_waits_for_a_second_approver(world):
    store_image(world.engine)
    r = create(world, kind="firmware", args=["1.1.0"])
    assert r.status_code == 202 and r.json()["state"] == "PENDING_APPROVAL"
    cid = r.json()["id"]
    with Session(world.engine) as s:
        assert s.scalars(select(ota.OtaJob)).all() == []
    same = world.post("op_a", "/campaigns/%d/approve" % cid)
    assert same.status_code == 403 and same.json()["code"] == "same_approver"
    assert world.post("tech_a", "/campaigns/%d/approve" % cid).status_code == 403
    ok = world.post("op_a2", "/campaigns/%d/approve" % cid)
    assert ok.status_code == 200 and ok.json()["state"] == "RUNNING"
    assert ok.json()["decided_by"] == "op-a2"
    assert world.post("op_a2", "/campaigns/%d/reject" % cid).status_code == 409
    pilot = targets(world.engine, cid, stage=0)[0]
    with Session(world.engine) as s:
        job = s.get(ota.OtaJob, pilot.ota_job_id)
        assert (job.meter_id, job.version, job.state) == (pilot.meter_id, "1.1.0", ota.RUNNING)
    outcomes = [(a.action, a.outcome) for a in audit_rows(world.engine, tenant_id=world.tenant["A"])
                if a.action.startswith("campaign.")]
    assert outcomes == [("campaign.create", "pending_approval"), ("campaign.approve", "denied"),
                        ("campaign.approve", "running"), ("campaign.reject", "denied")]


def test_firmware_stage_counts_a_meter_only_after_its_heartbeat_reports_the_version(world):
    store_image(world.engine)
    cid = create(world, kind="firmware", args=["1.1.0"]).json()["id"]
    world.post("op_a2", "/campaigns/%d/approve" % cid)
    pilot = targets(world.engine, cid, stage=0)[0]
    with Session(world.engine) as s:
        job_id = pilot.ota_job_id
        manifest = s.get(ota.OtaJob, job_id).command_id
    answer(world.engine, manifest, auth.OK, "ota 1.1.0 next chunk 0")
    for i, detail in ((0, "chunk 0/2"), (1, "ota 1.1.0 installed: restarting")):
        with Session(world.engine) as s:
            cmd_id = s.get(ota.OtaJob, job_id).command_id
        answer(world.engine, cmd_id, auth.OK, detail, now=NOW + 100 + i)
    with Session(world.engine) as s:
        assert s.get(ota.OtaJob, job_id).state == ota.INSTALLED
    assert advance(world.engine, NOW + 200) == []     # installed, not yet confirmed
    heartbeat(world.engine, pilot.meter_id, 1, "1.0.0", NOW + 250)   # still the old image
    assert advance(world.engine, NOW + 260) == []
    heartbeat(world.engine, pilot.meter_id, 2, "1.1.0", NOW + 300)
    assert advance(world.engine, NOW + 310) == [(cid, "stage 1")]
    assert len(targets(world.engine, cid, stage=1, state=CP.ACTIVE)) == 9


# --- tenants and roles -------------------------------------------------------------------

def test_another_tenants_meters_and_campaigns_are_invisible(world):
    assert create(world, user="op_b", meter_ids=["A-01"]).status_code == 404
    c = create(world).json()
    assert world.get("op_b", "/campaigns/%d" % c["id"]).status_code == 404
    assert world.post("op_b", "/campaigns/%d/cancel" % c["id"]).status_code == 404
    assert world.get("op_b", "/campaigns").json() == []
    mine = create(world, user="op_b").json()
    assert sizes(mine) == [1, 0, 1] and mine["tenant_id"] == world.tenant["B"]
    assert [x["id"] for x in world.get("op_a", "/campaigns").json()] == [c["id"]]


def test_only_operators_and_admins_create_campaigns(world):
    assert create(world, user="tech_a").status_code == 403
    assert create(world, user="ravi").status_code == 403
    assert create(world, user="admin_a").status_code == 201
    assert create(world, user="admin").status_code == 422      # platform admin: which tenant?
    assert create(world, user="admin", tenant_id=world.tenant["B"]).status_code == 201


# --- CLI --------------------------------------------------------------------------------

def run_cli(db_url, capsys, *argv):
    code = cli.main(["--database-url", db_url, "--json", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_cli_campaign_roundtrip_as_json(world, db_url, capsys, tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(IMAGE)
    code, image, _ = run_cli(db_url, capsys, "campaigns", "image-add", str(fw), "--version", "2.0.0")
    assert code == 0 and image["chunk_count"] == 2 and image["size"] == len(IMAGE)
    code, c, _ = run_cli(db_url, capsys, "campaigns", "create", "--tenant", "A", "--kind",
                         "firmware", "--args", "2.0.0", "--as", "op-a", "--stages", "10,100")
    assert code == 1 and c["state"] == "PENDING_APPROVAL" and sizes(c) == [2, 18]
    code, _, err = run_cli(db_url, capsys, "campaigns", "approve", str(c["id"]), "--as", "op-a")
    assert code == 1 and "second approver" in err
    code, c, _ = run_cli(db_url, capsys, "campaigns", "approve", str(c["id"]), "--as", "op-a2")
    assert code == 0 and c["state"] == "RUNNING"
    code, listed, _ = run_cli(db_url, capsys, "campaigns", "list", "--tenant", "A")
    assert code == 0 and [x["id"] for x in listed] == [c["id"]]
    code, _, err = run_cli(db_url, capsys, "campaigns", "create", "--tenant", "A", "--kind",
                           "config", "--args", "meter_id", "X")
    assert code == 2 and "commissioning CLI only" in err


def test_cli_campaigns_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["campaigns", "--help"])
    assert exit_.value.code == 0
    assert "urja-headend campaigns approve 3 --as ravi" in capsys.readouterr().out
