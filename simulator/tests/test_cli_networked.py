"""`urja-sim run ... --mode networked`: a private broker and the real head-end, end to end."""
import json
import os

from simulator import cli

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
