"""Real firmware DUTs as members of a simulated city (the >= 50 run is ``bench/hil_scale.py``).

The simulator's networked mode (``simulator/networked.py``) runs 50 simulated
meters on one MQTT connection and, through ``simulator/dut_meters.py``, six
``micropython`` meter processes on their own connections, all against one
Mosquitto and the real head-end (ingest + dispatcher, SQLite).  The
simulator's consumer model drives the DUTs' pulse inputs and its payment
habits pay their top-ups through the signed webhook.  Six simulated hours
at 1800x.  Per DUT, ``DutFleet.results`` checks the wire, the head-end's database
and the ground truth (see its docstring); the simulated meters keep the
networked KPIs (nothing lost, reconciliation to the paisa).
"""
import pathlib

import pytest

from simulator import networked

SCENARIO = pathlib.Path(__file__).parent / "scenarios" / "duts_net.toml"


@pytest.fixture
def engine(tmp_path):
    from headend import migrations
    from headend.db import make_engine

    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_simulator_drives_real_duts_beside_simulated_meters_and_every_dut_balances(broker, engine):
    sc, plan = networked.load(SCENARIO)
    plan.hours = 6
    assert (plan.duts, sc.meters) == (6, 50)
    k = networked.run(sc, plan, engine, broker)
    duts = k["duts"]
    table = duts["table"]
    assert duts["count"] == 6 and duts["wire_decode_errors"] == 0
    for r in table:
        assert r["failed"] == [], r
        assert r["injected_wh"] > 0 and r["injected_wh"] == r["wire_wh"] == r["stored_wh"]
        assert r["alive"] and r["seq_ok"]
        assert r["balance_paise"] == r["opening_paise"] + r["topups_paise"] - r["charges_paise"]
        assert r["balance_paise"] == r["headend_balance_paise"]
    # the simulator's payment habits reached real meters: every payment applied once
    assert duts["payments"] >= 1
    assert sum(r["acked_ok"] for r in table) == duts["payments"]
    # the simulated meters beside them: nothing lost or altered, no gap
    rd, upl = k["readings"], k["uplinks"]
    assert (rd["lost"], rd["duplicated"], rd["altered"]) == (0, 0, 0), rd
    assert upl["stored"] == upl["queued"] and upl["open_seq_gaps"] == 0, upl
    assert k["reconciliation"]["meters"] == 50 + 6
    off = [x for x in k["reconciliation"]["examples"] if not x[0].startswith("UJ-DUT-")]
    assert off == [] and k["reconciliation"]["final_status_differs_from_meter"] == 0
    # the first reading's cum is the register at its records' end (no energy counted twice)
    assert all(r["first_cum_drift_wh"] == 0 for r in table), table
