"""Scenario files: the shipped ones load, bad ones fail naming the file and the field."""
import pathlib

import pytest

from simulator import cli, scenario

SCEN = pathlib.Path(__file__).resolve().parent.parent / "scenarios"
QUICK = (SCEN / "quick.toml").read_text()


@pytest.mark.parametrize("name, meters", [("quick", 200), ("monsoon_outage", 2000),
                                          ("migration_day", 1000), ("city_rollout", 131000)])
def test_shipped_scenarios_load(name, meters):
    assert scenario.load(SCEN / (name + ".toml")).meters == meters


def test_slab_upto_minus_one_becomes_the_open_ended_last_slab():
    sc = scenario.load(SCEN / "quick.toml")
    assert sc.tariffs["electricity"]["slabs"][-1] == [None, 650]


def _load_edited(tmp_path, old, new):
    assert old in QUICK
    p = tmp_path / "bad.toml"
    p.write_text(QUICK.replace(old, new, 1))
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(p)
    return str(err.value)


@pytest.mark.parametrize("old, new, message", [
    ("residential = 70", "residential = 65", "fleet.mix: shares must add up to 100, got 95"),
    ("meters = 200", "meters = 0", "fleet.meters: 0 out of range"),
    ("meters = 200", 'meters = "many"', "fleet.meters: must be an integer"),
    ("days = 2", "dayz = 2", "dayz: unknown field"),
    ("interval_s = 900", "interval_s = 600", "interval_s: 900 or 1800"),
    ("duty_bp = 500", "duty_bp = 50000", "tariffs.electricity.duty_bp"),
    ("friendly_end_s = 28800", "friendly_end_s = 90000", "credit.friendly_end_s"),
    ("network_delay_s = [2, 90]", "network_delay_s = [90, 2]", "payments.network_delay_s: must be [min, max]"),
    ("feeder = 1,", "feeder = 9,", "faults.outages[0].feeder: feeder 9 does not exist (the fleet has 4)"),
    ("bypass_pct = 3.0", "bypass_pct = 300.0", "faults.bypass_pct: must be a percentage"),
    ('start_date = "2026-11-27"', 'start_date = "27/11/2026"', "start_date: must be a date YYYY-MM-DD"),
])
def test_bad_field_is_reported_with_file_and_dotted_name(tmp_path, old, new, message):
    msg = _load_edited(tmp_path, old, new)
    assert msg.startswith(str(tmp_path / "bad.toml") + ": ")
    assert message in msg


def test_a_service_in_the_mix_needs_its_tariff(tmp_path):
    msg = _load_edited(tmp_path, '[tariffs.gas]\nid = "PNG-DOM"', '[tariffs.gaz]\nid = "PNG-DOM"')
    assert "tariffs.gaz: unknown field" in msg


def test_broken_toml_is_a_scenario_error(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("name = \n")
    with pytest.raises(scenario.ScenarioError, match="not valid TOML"):
        scenario.load(p)


def test_cli_exits_2_on_a_bad_scenario(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text(QUICK.replace("residential = 70", "residential = 71"))
    assert cli.main(["run", str(p), "--no-progress"]) == 2
    assert "fleet.mix: shares must add up to 100, got 101" in capsys.readouterr().err


def test_overrides_replace_meters_days_and_seed():
    sc = scenario.load(SCEN / "quick.toml", meters=30, days=1, seed=99)
    assert (sc.meters, sc.days, sc.seed, sc.intervals) == (30, 1, 99, 96)
