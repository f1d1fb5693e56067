"""Meter clock drift, the head-end's time sync, and friendly hours by the head-end's clock.

Decision (see ``kpis`` and ``Scenario.meter_credit``): a disconnection is
wrongful when it happens inside friendly time by the HEAD-END's clock, with
no tolerance.  Meters are commissioned with the daily friendly window
widened by ``[clock] tolerance_s`` on both sides, and the time sync keeps
their clock error within it, so the rule holds although each meter decides
by its own, drifting clock.
"""
import pathlib

import pytest

from simulator import fleet, kpis, scenario

SCEN = pathlib.Path(__file__).resolve().parent.parent / "scenarios"


def _cut_off_fleet(drift_ppm, sync_hours, tolerance_s, meters=80):
    """Meters that run out of credit in the first night and pay only after the relay
    opened: they are all waiting at 08:00 for the friendly window to end."""
    sc = scenario.load(SCEN / "quick.toml", meters=meters, days=1)
    sc.opening_credit = (2000, 4000)
    sc.habits = {"regular": 0, "late": 0, "after_disconnect": 100}
    sc.outages = []
    sc.drift_ppb = (drift_ppm[0] * 1000, drift_ppm[1] * 1000)
    sc.sync_hours, sc.clock_tolerance_s = sync_hours, tolerance_s
    return sc


def test_fast_clocks_without_sync_or_guard_band_disconnect_inside_friendly_hours_and_are_counted():
    sc = _cut_off_fleet((4000, 8000), sync_hours=0, tolerance_s=0)
    tally = fleet.run_fleet(sc)
    k = kpis.summary(tally, sc)
    # by 08:00 a clock 4000-8000 ppm fast is 115-230 s ahead: its 08:00 is 07:56-07:58
    assert k["wrongful_disconnections"] > 0
    for ex in k["wrongful_examples"]:
        assert ex["why"] == ["friendly time"]
        assert kpis.friendly_independent(sc.credit, ex["t"], sc.start_t)
        assert sc.start_t + 8 * 3600 - 230 <= ex["t"] < sc.start_t + 8 * 3600
    assert k["clock"]["max_abs_error_s"] >= 86400 * 4000 // 10 ** 6
    assert k["clock"]["meters_over_tolerance"] == sc.meters and k["clock"]["syncs"] == 0
    assert k["reconciliation"]["abs_difference_paise"] == 0


def test_time_sync_and_guard_band_keep_drifting_meters_out_of_friendly_hours():
    # +-8000 ppm is 115 s in 4 h: a 4-hourly sync and a 180 s band hold every meter
    sc = _cut_off_fleet((-8000, 8000), sync_hours=4, tolerance_s=180)
    sc.comm_down_pct = 0.0  # every sync reaches every meter
    k = kpis.summary(fleet.run_fleet(sc), sc)
    assert k["relay_opens_for_credit"] > 10  # people really were cut off
    assert k["wrongful_disconnections"] == 0, k["wrongful_examples"]
    assert 0 < k["clock"]["max_abs_error_s"] <= 180
    assert k["clock"]["meters_over_tolerance"] == 0
    assert k["clock"]["syncs"] == sc.meters * 6  # 04:00, 08:00, ..., 24:00
    assert k["reconciliation"]["abs_difference_paise"] == 0
    assert k["readings"]["intervals_lost"] == 0 and k["readings"]["intervals_duplicated"] == 0


def test_a_meter_out_of_reach_of_the_sync_is_reported_over_tolerance():
    sc = _cut_off_fleet((-8000, 8000), sync_hours=4, tolerance_s=180, meters=40)
    sc.comm_down_pct = 100.0  # nobody hears the head-end
    k = kpis.summary(fleet.run_fleet(sc), sc)
    assert k["clock"]["syncs"] == 0
    assert k["clock"]["meters_over_tolerance"] > 0
    assert k["clock"]["max_abs_error_s"] > 180


def test_the_same_drifting_scenario_and_seed_give_identical_kpis():
    def once():
        sc = _cut_off_fleet((-50, 50), sync_hours=6, tolerance_s=60, meters=40)
        return kpis.summary(fleet.run_fleet(sc, batch_meters=20), sc)
    assert once() == once()


@pytest.mark.parametrize("credit, tol, start, end", [
    ({"friendly_start_s": 64800, "friendly_end_s": 28800}, 120, 64680, 28920),  # wraps midnight
    ({"friendly_start_s": 36000, "friendly_end_s": 39600}, 300, 35700, 39900),  # 10-11 h
    ({"friendly_start_s": 0, "friendly_end_s": 86340}, 60, 0, 86400),  # band closes the gap
    ({"friendly_start_s": 100, "friendly_end_s": 28800}, 300, 86200, 29100),  # start wraps back
])
def test_meters_are_commissioned_with_the_friendly_window_widened_by_the_tolerance(credit, tol, start,
                                                                                  end):
    sc = scenario.load(SCEN / "quick.toml", meters=2, days=1)
    sc.credit, sc.clock_tolerance_s = credit, tol
    sc.credit_config = scenario.credit.CreditConfig.from_dict(credit)
    d = sc.meter_credit()
    assert (d["friendly_start_s"], d["friendly_end_s"]) == (start, end)
    cfg = fleet.base_configs(sc)["electricity"].credit
    assert (cfg.friendly_start_s, cfg.friendly_end_s) == (start, end)


def test_no_tolerance_leaves_the_regulation_window_untouched():
    sc = scenario.load(SCEN / "quick.toml", meters=2, days=1)
    sc.clock_tolerance_s = 0
    assert sc.meter_credit() is sc.credit


@pytest.mark.parametrize("table, message", [
    ("drift_ppm = [20, -20]", "clock.drift_ppm"),
    ("drift_ppm = [0, 20000]", "clock.drift_ppm"),
    ("sync_hours = -1", "clock.sync_hours"),
    ("tolerance_s = 7200", "clock.tolerance_s"),
    ("skew = 3", "clock.skew"),
])
def test_bad_clock_table_is_reported_with_its_field(tmp_path, table, message):
    text = (SCEN / "quick.toml").read_text()
    text = text.split("[clock]")[0] if "[clock]" in text else text
    p = tmp_path / "bad.toml"
    p.write_text(text + "\n[clock]\n" + table + "\n")
    with pytest.raises(scenario.ScenarioError, match=message.replace(".", r"\.")):
        scenario.load(p)
