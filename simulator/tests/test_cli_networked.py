"""`urja-sim run ... --mode networked`: a private broker and the real head-end, end to end."""
import json
import os

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from headend import models as M
from headend.db import make_engine
from simulator import cli, networked, report

SCENARIOS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scenarios")


def test_networked_run_from_the_cli_writes_kpis_and_holds_the_guardrails(tmp_path, capsys):
    rc = cli.main(["run", os.path.join(SCENARIOS, "partition_net.toml"), "--mode", "networked",
                   "--meters", "6", "--report", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    kpis = json.loads((tmp_path / "kpis.json").read_text())
    assert kpis["mode"] == "networked" and kpis["meters"] == 6
    # 6 meters x 96 intervals of one day, all stored once through the real broker and ingest
    assert kpis["readings"]["produced"] == 6 * 96
    assert kpis["readings"]["lost"] == 0 and kpis["readings"]["duplicated"] == 0
    assert kpis["money"]["topups_applied_paise"] == kpis["money"]["paid_paise"] > 0
    assert (tmp_path / "headend.db").exists()
    # the same HTML report as fast mode, with the networked headline and four plots
    html = (tmp_path / "report.html").read_text()
    assert "networked mode" in html and "Interval readings lost (must be 0)</th><td>0<" in html
    assert html.count("data:image/png;base64,") == 4
    assert "class='bad'" not in html
    _plot_series_are_what_the_database_holds(tmp_path, kpis)


def _plot_series_are_what_the_database_holds(tmp_path, k):
    """The networked plots' series: every stored electricity reading, one balance per meter,
    every applied top-up command, and the delivery delay for each hour of the day."""
    sc, _ = networked.load(os.path.join(SCENARIOS, "partition_net.toml"), meters=k["meters"])
    engine = make_engine("sqlite:///%s" % (tmp_path / "headend.db"))
    try:
        data = report.plot_data_networked(engine, sc)
        with Session(engine) as s:
            elec_wh = s.execute(select(func.sum(M.Reading.energy)).join(
                M.Meter, M.Meter.id == M.Reading.meter_id).where(
                M.Meter.service == "electricity")).scalar()
    finally:
        engine.dispose()
    assert sum(data.load_wh) == elec_wh > 0
    assert len(data.balances_paise) == k["meters"]
    assert len(data.latency_s) == k["money"]["topups_applied"] > 0
    assert all(lat >= 0 for lat in data.latency_s)
    assert data.health[0] == "delay_by_hour" and [h for h, _, _ in data.health[1]] == list(range(24))
    assert all(0 <= p50 <= mx for _, p50, mx in data.health[1])


def test_networked_mode_rejects_a_bad_scenario_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[fleet]\nmeters = -1\n")
    assert cli.main(["run", str(bad), "--mode", "networked", "--no-progress"]) == 2
    assert "bad.toml" in capsys.readouterr().err


def test_a_second_networked_run_into_the_same_report_folder_starts_afresh(tmp_path):
    args = ["run", os.path.join(SCENARIOS, "partition_net.toml"), "--mode", "networked",
            "--meters", "2", "--days", "1", "--report", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    assert cli.main(args) == 0
