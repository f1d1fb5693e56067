"""Issue 8 scenarios on the unix board: real ``micropython`` meters, Mosquitto, faults.

Every meter here counts pulses at 1000 imp/kWh, so one pulse is 1 Wh, and
bills the flat tariff of ``hil_tests.dut.FLAT_TARIFF`` (1000 paise/kWh =
1 paise/Wh): every expected balance is Wh arithmetic.  Meter time runs 300x
wall time (a 900 s interval closes every 3 s).  The scenario clock starts
Friday 2026-11-27 10:00 IST (``dut.START_T``), outside the default friendly
hours (18:00-08:00 local, and Sundays).  Each test checks the uplinks on the
wire, decoded by ``firmware.protocol.messages`` (``Uplinks``), and the
meter's console (log lines and CLI replies).
"""
import time

import pytest

from firmware.core import auth
from firmware.protocol import messages
from hil_tests import dut as dut_mod
from hil_tests.conftest import Uplinks, wait_for
from hil_tests.faults import TcpProxy, clock_jump, corrupt_newer_slot, journal_slots

START_T = dut_mod.START_T  # Fri 2026-11-27 04:30 UTC = 10:00 IST
KEY = bytes.fromhex(dut_mod.KEY_HEX)
METER = "UJ-HIL-0001"
NO_EMERGENCY = {"emergency_enabled": False, "low_credit_paise": 500}


def settings(addr, credit=None, **extra):
    s = dut_mod.factory_settings(METER, addr, pulse_constant=1000, energy_source="pulses",
                                 heartbeat_s=3600)
    s["credit"] = credit or NO_EMERGENCY
    s.update(extra)
    return s


def boot(dut_factory, addr, start_t=START_T, **kw):
    return dut_factory(settings=settings(addr, **kw), time_factor=300, start_t=start_t)


def publish_topup(up, counter, topup_id, paise):
    cmd = auth.make_topup(KEY, METER, counter, START_T + 30 * 86400, topup_id, paise)
    up.publish(messages.command_topic(METER), messages.encode_command(cmd))


def acks(up, topup_id, result):
    return [b for b in up.of("ack") if b["id"] == topup_id and b["r"] == result]


def older_balance(state):
    """balance = credit - emergency_used - debt (firmware/core/credit.py docstring)."""
    c = state["credit"]
    return c["credit_paise"] - c["emergency_used_paise"] - c["debt_paise"]


def relay_events(up, code):
    return [e for b in up.of("event") for e in b["e"] if e[2] == code]


@pytest.fixture
def up(broker, world):
    return world.add(Uplinks(*broker, meter_id=METER))


def test_factory_meter_is_commissioned_over_the_cli_and_reports_after_reboot(
        broker, up, dut_factory):
    dut = dut_factory(settings=None, time_factor=300)
    assert dut.command("info")["commissioned"] == "0"
    with pytest.raises(dut_mod.CommandError) as locked:
        dut.command("set meter_id %s" % METER)
    assert locked.value.err_code == 6  # LOCKED: the commissioning switch is off
    assert dut.control("input commissioning 1") == "ok input commissioning 1"
    host, port = broker
    tariff = '{"id":"FLAT-10","version":1,"service":"electricity","unit_size":1000,' \
             '"slabs":[[null,1000]],"fixed_paise_per_day":0,"tod":[],"duty_bp":0}'
    for line in ("meter_id " + METER, "broker_host " + host, "broker_port %d" % port,
                 "key_hex " + dut_mod.KEY_HEX, "tariff " + tariff,
                 "opening_credit_paise 2000", "pulse_constant 1000"):
        assert dut.command("set " + line)["applies"] == "next_boot"
    dut.control("input commissioning 0")
    dut.restart()
    dut.expect_exact("urja: meter %s up" % METER, timeout=15)
    dut.expect(r"urja: mqtt connected to .*:%d" % port, timeout=15)
    info = dut.command("info")
    assert (info["meter"], info["commissioned"]) == (METER, "1")
    assert dut.command("balance")["balance_paise"] == "2000"
    # the commissioned meter speaks on the wire: 250 pulses = 250 Wh in its first interval
    dut.control("pulses 250")
    got = up.wait(lambda u: [b for b in u.of("reading") if sum(r[1] for r in b["r"]) > 0], 20,
                  "a reading with energy")[0]
    assert sum(r[1] for r in got["r"]) == 250
    assert not up.errors, up.errors


def test_first_reading_reaches_the_broker_with_the_pulsed_energy(broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    dut.expect(r"urja: mqtt connected", timeout=15)
    dut.control("pulses 400")  # 400 Wh
    first = up.wait(lambda u: [b for b in u.of("reading") if b["cum"] >= 400], 20,
                    "a reading carrying the 400 Wh")[0]
    assert first["iv"] == 900 and first["u"] == "Wh"
    assert first["cum"] == 400
    everything = sum(r[1] for b in up.of("reading") for r in b["r"])
    assert everything == 400  # interval energies add up to the register, nothing twice
    # 2000 opening - 400 Wh x 1 paise/Wh = 1600 paise, on the CLI too
    wait_for(lambda: dut.command("balance")["balance_paise"] == "1600", 10, "balance 1600")
    assert not up.errors, up.errors


def test_credit_exhaustion_opens_the_relay_outside_friendly_hours(broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    dut.control("pulses 2500")  # 2500 Wh = 2500 paise > 2000 opening credit
    dut.expect_exact("urja: relay open", timeout=15)
    assert dut.control("relay?") == "relay open"
    status = up.wait(lambda u: [b for b in u.of("status") if not b["rl"]], 20,
                     "a status with the relay open")[-1]
    assert status["st"] == "DISCONNECTED"
    assert status["bal"] == 2000 - 2500  # the overrun is debt: -500 paise
    assert relay_events(up, 8) or up.wait(lambda u: relay_events(u, 8), 10, "RELAY_OPENED")


def test_credit_exhaustion_inside_friendly_hours_keeps_the_relay_closed(broker, up, dut_factory):
    # Friday 2026-11-27 20:00 IST = 14:30 UTC = START_T + 10 h: inside 18:00-08:00
    dut = boot(dut_factory, tuple(broker), start_t=START_T + 10 * 3600)
    dut.control("pulses 2500")
    wait_for(lambda: dut.command("balance")["balance_paise"] == "-500", 15, "balance -500")
    time.sleep(1.0)  # a few more metering steps (60 s meter time each = 0.2 s wall)
    assert dut.control("relay?") == "relay closed"
    assert dut.command("balance")["relay"] == "closed"
    assert "urja: relay open" not in dut.console.text
    assert not relay_events(up, 8)


def test_emergency_credit_keeps_the_relay_closed_until_it_is_used_up(broker, up, dut_factory):
    credit = {"emergency_enabled": True, "emergency_credit_paise": 1000, "low_credit_paise": 500}
    dut = boot(dut_factory, tuple(broker), credit=credit)
    dut.control("pulses 2500")  # 2000 credit + 500 of the 1000 emergency
    wait_for(lambda: dut.command("balance")["emergency_used_paise"] == "500", 15,
             "500 paise of emergency credit used")
    bal = dut.command("balance")
    assert (bal["state"], bal["relay"]) == ("EMERGENCY", "closed")
    # credit 2000 - 2000 used = 0; balance = credit 0 - emergency used 500 - debt 0 = -500
    assert (bal["credit_paise"], bal["debt_paise"], bal["balance_paise"]) == ("0", "0", "-500")
    up.wait(lambda u: [e for b in u.of("event") for e in b["e"] if e[2] == 16], 20,
            "EMERGENCY_STARTED on the wire")
    dut.control("pulses 600")  # 500 left of emergency credit; 600 Wh exhausts it
    dut.expect_exact("urja: relay open", timeout=15)
    assert dut.control("relay?") == "relay open"


def test_load_limit_trips_the_relay_and_reconnects_after_the_delay(broker, up, dut_factory):
    credit = dict(NO_EMERGENCY, load_limit_w=1000, overload_s=60, reconnect_delay_s=600)
    dut = boot(dut_factory, tuple(broker), credit=credit, opening_credit_paise=100000)
    # 25 pulses (25 Wh) every ~0.1 s wall = 30 s meter time: 25 Wh x 3600 / 30 s = 3000 W,
    # 3x the 1000 W limit, held longer than overload_s = 60 s
    deadline = time.monotonic() + 15
    while "urja: relay open" not in dut.console.text and time.monotonic() < deadline:
        dut.control("pulses 25")
        time.sleep(0.1)
    dut.expect_exact("urja: relay open", timeout=1)
    assert dut.command("relay")["load"] == "TRIPPED"
    # no load while tripped; 600 s meter time = 2 s wall later it reconnects
    dut.expect_exact("urja: relay closed", timeout=10)
    assert dut.control("relay?") == "relay closed"
    up.wait(lambda u: [e for b in u.of("event") for e in b["e"] if e[2] == 18], 20,
            "LOAD_TRIP on the wire")


def test_power_cut_right_after_a_topup_command_applies_it_exactly_once(broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    dut.expect(r"urja: mqtt connected", timeout=15)
    publish_topup(up, 1, "T-CUT", 5000)
    dut.expect(r"urja: command \S+ -> OK", timeout=15)  # applied (journaled) ...
    dut.kill()  # ... and the power goes before anything else
    dut.start()
    # 2000 opening + 5000 = 7000 paise, once
    assert dut.command("balance")["balance_paise"] == "7000"
    # The ack: OK, or - when the power went after the journal commit but before the
    # ack reached the outbox - REPLAYED for the broker's redelivery, which the
    # head-end also books as applied (docs/protocol.md).  Never a second credit.
    up.wait(lambda u: acks(u, "T-CUT", 0) or acks(u, "T-CUT", 2), 20,
            "an OK or REPLAYED ack after the restart")
    replayed = len(acks(up, "T-CUT", 2))
    publish_topup(up, 1, "T-CUT", 5000)  # the head-end resends: REPLAYED, not credited again
    again = up.wait(lambda u: acks(u, "T-CUT", 2)[replayed:], 20, "the REPLAYED ack")[0]
    assert again["rn"] == "REPLAYED"
    assert dut.command("balance")["balance_paise"] == "7000"
    assert not up.errors, up.errors


def test_broker_partition_during_reporting_loses_and_duplicates_no_reading(
        broker, up, dut_factory):
    proxy = TcpProxy(tuple(broker)).start()
    try:
        dut = boot(dut_factory, proxy.address)
        dut.expect(r"urja: mqtt connected", timeout=15)
        dut.control("pulses 100")
        up.wait(lambda u: len(u.of("reading")) >= 1, 20, "a reading before the partition")
        proxy.partition()
        dut.expect(r"urja: mqtt link lost", timeout=20)
        for _ in range(3):  # 3 x 3 s wall = 3 intervals of 900 s, 50 Wh each
            dut.control("pulses 50")
            time.sleep(3)
        assert int(dut.command("info")["outbox"]) >= 2, "readings queued during the partition"
        proxy.heal()
        wait_for(lambda: dut.command("info")["outbox"] == "0", 40, "the outbox to drain")
        assert proxy.connections >= 2
        time.sleep(1.0)
        # QoS 1 is at-least-once: a PUBACK lost in the partition makes the meter send the
        # same uplink again, which the head-end dedupes on (m, s).  So a repeat must be
        # identical, and the distinct sequence numbers must be complete and in order.
        first = {}
        for b in up.received:
            if b["s"] in first:
                assert b == first[b["s"]], "a re-sent uplink differs from the first copy"
            else:
                first[b["s"]] = b
        seqs = list(first)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "each uplink, in order"
        # 100 + 3 x 50 = 250 Wh, each interval counted once
        readings = {b["s"]: b for b in up.of("reading")}.values()
        assert sum(r[1] for b in readings for r in b["r"]) == 250
        assert not up.errors, up.errors
    finally:
        proxy.close()


def test_slow_lossy_link_still_delivers_every_reading(broker, up, dut_factory):
    # 50 ms each way per chunk; 5% of chunks lost, each loss breaks the connection
    proxy = TcpProxy(tuple(broker), delay_s=0.05, loss=0.05, seed=3).start()
    try:
        dut = boot(dut_factory, proxy.address)
        for _ in range(4):  # four 3 s intervals with 60 Wh each: 240 Wh
            dut.control("pulses 60")
            time.sleep(3)
        assert proxy.dropped >= 1 and proxy.connections >= 2, "the fault did happen"
        proxy.loss = 0.0
        wait_for(lambda: dut.command("info")["outbox"] == "0", 40, "the outbox to drain")
        time.sleep(1.0)
        # QoS 1 may deliver a message twice after a broken link; each seq counts once
        by_seq = {b["s"]: b for b in up.received}
        seqs = sorted(by_seq)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no uplink lost"
        assert sum(r[1] for b in by_seq.values() if b["kind"] == "reading" for r in b["r"]) == 240
        assert not up.errors, up.errors
    finally:
        proxy.close()


def test_garbage_in_the_newer_journal_slot_restores_the_older_one(broker, dut_factory):
    import json

    dut = boot(dut_factory, tuple(broker))
    dut.control("pulses 300")
    wait_for(lambda: dut.command("balance")["balance_paise"] == "1700", 15, "balance 1700")
    # an interval closes every 3 s wall and commits: wait until both slots hold a record
    wait_for(lambda: None not in journal_slots(dut.dir).values(), 15, "two journal records")
    dut.control("pulses 200")
    wait_for(lambda: dut.command("balance")["balance_paise"] == "1500", 15, "balance 1500")
    assert dut.control("input power_fail 1") == "ok input power_fail 1"  # commits at once
    time.sleep(0.3)
    dut.kill()
    slot, (seq, payload) = corrupt_newer_slot(dut.dir)
    assert journal_slots(dut.dir)[slot] is None
    older = json.loads(payload)
    dut.start()
    # the meter restores record seq, then commits its restart as seq + 1 (the boot line)
    dut.expect_exact("urja: meter %s up, journal seq %d," % (METER, seq + 1), timeout=15)
    assert "JOURNAL_RESTORED:%d" % seq in dut.command("events")["events"]
    assert dut.command("balance")["balance_paise"] == str(older_balance(older))


def test_clock_jump_forward_a_day_keeps_the_balance_and_the_readings(broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    dut.control("pulses 100")
    up.wait(lambda u: [b for b in u.of("reading") if b["r"][0][1] == 100], 20, "a reading")
    clock_jump(dut, START_T + 86400)  # an NTP sync a day ahead
    dut.control("pulses 100")
    rows = up.wait(lambda u: [r for b in u.of("reading") for r in b["r"]
                              if r[0] >= START_T + 86400 and r[1] > 0], 20,
                   "a reading after the jump with the energy")
    assert rows[0][1] == 100 and rows[0][0] % 900 == 0  # on the new day's 15-min grid
    # 100 Wh before + 100 Wh after = 200 Wh, none lost or doubled across the jump
    assert sum(r[1] for b in up.of("reading") for r in b["r"]) == 200
    assert dut.command("balance")["balance_paise"] == "1800"  # 2000 - 200 Wh x 1 paise
    assert int(dut.command("info")["t"]) >= START_T + 86400
    assert not up.errors, up.errors


def test_payment_webhook_topup_reaches_the_meter_and_closes_the_relay(
        broker, up, dut_factory, tmp_path):
    from sqlalchemy.orm import Session

    from headend import commands as C
    from headend import migrations
    from headend.db import make_engine
    from simulator.net_headend import HeadEnd

    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    t0 = time.monotonic()
    he = HeadEnd(engine, *broker, clock=lambda: START_T + int((time.monotonic() - t0) * 300))
    he.provision([(METER, "electricity", KEY, 2000, dut_mod.FLAT_TARIFF)], START_T)
    he.start()
    try:
        dut = boot(dut_factory, tuple(broker))
        dut.control("pulses 2500")  # 2500 Wh > 2000 paise: -500 paise, relay open
        dut.expect_exact("urja: relay open", timeout=15)
        cid = he.pay(METER, 5000, "UPI-HIL-1", he.clock())  # the signed UPI webhook
        dut.expect(r"urja: command %s -> OK" % cid, timeout=20)
        dut.expect_exact("urja: relay closed", timeout=15)
        ack = up.wait(lambda u: acks(u, cid, 0), 20, "the top-up ack on the wire")[0]
        assert ack["rn"] == "OK"
        assert dut.control("relay?") == "relay closed"
        # -500 + 5000 = 4500 paise, however the top-up splits between debt and credit
        assert dut.command("balance")["balance_paise"] == "4500"

        def applied():
            with Session(engine) as s:
                return s.get(C.Command, cid).state == C.APPLIED
        wait_for(applied, 20, "the head-end to mark the command APPLIED")

        def headend_view():  # the readings stored and the latest status, in the database
            from sqlalchemy import func, select

            from headend import models as M
            with Session(engine) as s:
                wh = s.scalar(select(func.sum(M.Reading.energy)).where(M.Reading.meter_id == METER))
                bal = s.get(M.MeterBalance, METER)
                return (wh, bal.balance_paise if bal else None, bal.relay_closed if bal else None)
        # the 2500 Wh reached the head-end once; its balance equals the meter's to the paisa
        wait_for(lambda: headend_view() == (2500, 4500, True), 20, "the head-end's view")
        assert not up.errors, up.errors
    finally:
        he.stop()
        engine.dispose()
