import csv

from tools import demo


def test_demo_day_shows_disconnection_and_reconnection_after_upi_recharge(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--no-plot", "--no-fleet"]) == 0
    text = capsys.readouterr().out
    assert "RELAY_OPENED" in text and "RELAY_CLOSED" in text
    assert "TOPUP_APPLIED" in text and "UPI recharge of Rs 300.00" in text
    with open(tmp_path / "meter_day.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 * 60
    relay = [r["relay"] for r in rows]
    first_open = relay.index("open")
    reclosed = relay.index("closed", first_open)
    # disconnected outside friendly hours (before 18:00), reconnected by the 19:40 recharge
    assert rows[first_open]["local"] < "18:00"
    assert rows[reclosed]["local"] == "19:40"
    # from the minute after the relay opened until it closed, no load flows
    assert all(r["load_w"] == "0" for r in rows[first_open + 1:reclosed])
    assert rows[first_open + 1]["energy_wh"] == rows[reclosed - 1]["energy_wh"]


def test_demo_plot_is_written(tmp_path):
    assert demo.main(["--out", str(tmp_path), "--no-fleet"]) == 0
    png = tmp_path / "meter_day.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_city_runs_over_a_private_broker_and_the_real_headend(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--no-plot", "--fleet-meters", "4"]) == 0
    text = capsys.readouterr().out
    assert "0 lost, 0 duplicated" in text
    assert (tmp_path / "fleet" / "kpis.json").exists()
