"""Ten real firmware DUTs at once on one Mosquitto (the >= 50 run is ``bench/hil_scale.py``).

Each DUT gets a simulated load as pulses and one signed top-up over MQTT;
``bench.hil_scale.run`` checks every DUT on the wire and on its CLI (see its
docstring).  Expected balance per DUT, by hand: 2000 opening + 50000 top-up
- injected Wh x 1 paise/Wh (flat 1000 paise/kWh tariff).
"""
from bench.hil_scale import OPENING, TOPUP, run


def test_ten_duts_deliver_every_wh_once_and_balance_to_the_paisa(hil_log_dir):
    res = run(count=10, seconds=8.0, log_dir=hil_log_dir)
    failed = [r for r in res["duts"] if not r["ok"]]
    assert not failed, failed
    assert res["decode_errors"] == 0
    for r in res["duts"]:
        assert r["injected_wh"] > 0 and r["delivered_wh"] == r["injected_wh"]
        assert r["balance_paise"] == OPENING + TOPUP - r["injected_wh"]
        assert r["topup_acked"] and r["seq_ok"] and r["alive"]
    assert len(res["duts"]) == 10
