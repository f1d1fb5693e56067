"""``urja-headend`` (headend/cli.py): every command once, JSON output, exit codes; and ``serve``
answering /health from a real uvicorn process."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from headend import cli
from headend.tests.api_world import ensure_tables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def run(engine, db_url, capsys):
    ensure_tables(engine)

    def run(*argv, stdin=None, monkeypatch=None):
        code = cli.main(["--database-url", db_url, "--json", *argv])
        out = capsys.readouterr()
        return code, (json.loads(out.out) if out.out.strip() else None), out.err
    return run


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "migrate", "meters", "topup", "commands", "report"):
        assert command in out
    assert "examples:" in out and "urja-headend topup UJ-0001 50000" in out


def test_meters_add_then_list_as_json(run):
    code, out, _ = run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC",
                       "--service", "water", "--account", "PMC-77", "--name", "Asha")
    assert code == 0 and out["tenant"] == "PMC"
    code, rows, _ = run("meters", "list", "--tenant", "PMC")
    assert code == 0
    assert [(r["id"], r["service"]) for r in rows] == [("UJ-1", "water")]


def test_json_flag_after_the_command_works_too(run, db_url, capsys):
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    assert cli.main(["--database-url", db_url, "meters", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "UJ-1"


def test_adding_a_meter_twice_exits_1_with_message(run):
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    code, out, err = run("meters", "add", "UJ-1", "--tenant", "PMC")
    assert code == 1
    assert "already registered" in out["error"] and "already registered" in err


def test_topup_queues_a_command_listed_by_commands(run):
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    code, req, _ = run("topup", "UJ-1", "50000")
    assert code == 0 and req["state"] == "QUEUED"
    cid = req["targets"][0]["command_id"]
    code, rows, _ = run("commands", "--meter", "UJ-1")
    assert code == 0
    assert [(c["id"], c["kind"], c["fields"], c["state"]) for c in rows] == [
        (cid, "topup", [cid, 50000], "QUEUED")]


def test_topup_of_unknown_meter_exits_1(run):
    assert run("topup", "NOPE", "100")[0] == 1


def test_users_add_and_token_let_the_user_call_the_api(run, engine):
    from fastapi.testclient import TestClient
    from headend.api import create_app
    from headend.config import Settings
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    code, _, _ = run("users", "add", "asha", "--role", "operator", "--tenant", "PMC")
    assert code == 0
    code, out, _ = run("users", "token", "asha")
    assert code == 0
    app = create_app(Settings(database_url=str(engine.url)), engine=engine)
    with TestClient(app) as c:
        r = c.get("/meters", headers={"Authorization": "Bearer " + out["token"]})
    assert [m["id"] for m in r.json()] == ["UJ-1"]


def test_users_add_consumer_without_account_exits_2(run):
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    code, out, _ = run("users", "add", "ravi", "--role", "consumer", "--tenant", "PMC")
    assert code == 2 and "consumer_id" in out["error"]


def test_report_counts_meters_and_queue(run):
    run("meters", "add", "UJ-1", "--tenant", "PMC", "--tenant-name", "Pune MC")
    run("meters", "add", "UJ-2", "--tenant", "PMC")
    run("topup", "UJ-1", "100")
    code, rep, _ = run("report")
    assert code == 0
    assert rep["tenants"] == [{"tenant": "PMC", "active_meters": 2, "communicating": 0,
                               "silent": 2}]
    assert rep["command_queue"]["QUEUED"] == 1 and rep["command_queue"]["APPLIED"] == 0


def test_bad_configuration_exits_2_naming_the_setting(capsys, monkeypatch):
    monkeypatch.setenv("URJA_API_PORT", "70000")
    assert cli.main(["report"]) == 2
    assert "api_port (env URJA_API_PORT): must be 1..65535, got 70000" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health(tmp_path):
    port = _free_port()
    env = dict(os.environ, URJA_DATABASE_URL="sqlite:///%s" % (tmp_path / "serve.db"))
    proc = subprocess.Popen([sys.executable, "-m", "headend.cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get("http://127.0.0.1:%d/health" % port, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("serve did not answer: %s" % proc.stdout.read1())
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["database"] == "ok"
    finally:
        proc.terminate()
        proc.wait(10)
