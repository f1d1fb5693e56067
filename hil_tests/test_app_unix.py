"""End-to-end: the firmware app in ``micropython`` on the unix board, in its whole world.

A real Mosquitto, an SDM120 emulated by pymodbus on a pty, a DLMS meter peer
on another pty, the board's control socket and the CLI pty.  Meter time runs
300x faster than wall time (a 900 s interval closes every 3 s).

Scenario clock: Friday 2026-11-27 10:00 IST (1795753800 UTC s; the credit
module's doctest uses the same instant), outside the default friendly hours
(18:00-08:00 and Sundays), so running out of credit opens the relay.
"""
import time

from firmware.core import auth
from firmware.protocol import messages

from hil_tests.conftest import DlmsPeer, MeterApp, Sdm120, Uplinks, parse_ok, wait_for

METER_ID = "UJ-HIL-0001"
KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
START_T = 1795753800  # Fri 2026-11-27 04:30 UTC = 10:00 IST
# Flat 1000 paise per kWh, i.e. 1 paise per Wh: every expected balance below is Wh arithmetic.
TARIFF = {"id": "FLAT-10", "version": 1, "service": "electricity", "unit_size": 1000,
          "slabs": [[None, 1000]], "fixed_paise_per_day": 0, "tod": [], "duty_bp": 0}


def settings(broker, **extra):
    host, port = broker
    s = {"meter_id": METER_ID, "broker_host": host, "broker_port": port, "key_hex": KEY_HEX,
         "tariff": TARIFF, "energy_source": "sdm", "modbus_period_s": 60, "dlms_period_s": 300,
         "heartbeat_s": 3600, "opening_credit_paise": 2000,
         # no emergency credit: the relay opens as soon as credit is gone
         "credit": {"emergency_enabled": False, "low_credit_paise": 500}}
    s.update(extra)
    return s


def _relay(app):
    return app.control("relay?")


def test_app_reads_sdm_and_dlms_publishes_takes_a_topup_and_opens_the_relay_when_credit_runs_out(
        broker, world):
    # SDM120 at 230.0 V, 5.0 A, 1150 W, 100.0 kWh imported (float32, exact in binary)
    sdm = world.add(Sdm120(voltage=230.0, current=5.0, power=1150.0, pf=1.0, frequency=50.0,
                           import_kwh=100.0).start())
    dlms = world.add(DlmsPeer(energy_wh=1234567, voltage_dv=2301).start())
    up = world.add(Uplinks(*broker, meter_id=METER_ID))
    app = world.add(MeterApp(settings(broker), rs485=sdm.path, dlms=dlms.path, start_t=START_T))
    app.start()

    # 1. readings: an interval record carries the SDM120's voltage and current
    #    230.0 V = 230000 mV, 5.0 A = 5000 mA (docs/protocol.md: avg_mv, avg_ma)
    reading = up.wait(lambda u: [b for b in u.of("reading") if b["r"][0][2] == 230000], 30,
                      "a reading with the SDM120 voltage")[0]
    assert reading["iv"] == 900 and reading["u"] == "Wh"
    assert reading["r"][0][3] == 5000
    assert sdm.requests > 0
    assert _relay(app) == "relay closed"

    # the CLI shows live values from both meters: DLMS 2301 dV = 230100 mV, 1234567 Wh
    live = wait_for(lambda: (lambda d: d if "dlms_energy_import_wh" in d else None)(
        parse_ok(app.cli("read"))), 20, "a DLMS reading")
    assert live["dlms_energy_import_wh"] == "1234567"
    assert live["dlms_voltage_mv"] == "230100"
    assert live["sdm_voltage_dv"] == "2300"
    assert live["sdm_import_wh"] == "100000"

    # 2. an authenticated top-up of 5000 paise arrives over MQTT and is acked OK
    cmd = auth.make_topup(bytes.fromhex(KEY_HEX), METER_ID, 1, START_T + 30 * 86400, "T-1", 5000)
    up.publish(messages.command_topic(METER_ID), messages.encode_command(cmd))
    ack = up.wait(lambda u: [b for b in u.of("ack") if b["id"] == "T-1"], 20, "the top-up ack")[0]
    assert (ack["r"], ack["rn"], ack["c"]) == (0, "OK", 1)
    # no energy used yet: 2000 opening + 5000 top-up = 7000 paise
    bal = parse_ok(app.cli("balance"))
    assert (bal["balance_paise"], bal["relay"]) == ("7000", "closed")
    # the same command again is REPLAYED (already applied), balance unchanged
    up.publish(messages.command_topic(METER_ID), messages.encode_command(cmd))
    again = up.wait(lambda u: [b for b in u.of("ack") if b["id"] == "T-1" and b["r"] == 2], 20,
                    "the replay ack")[0]
    assert again["rn"] == "REPLAYED"
    assert parse_ok(app.cli("balance"))["balance_paise"] == "7000"

    # 3. 8 kWh more on the SDM120: 8000 Wh x 1 paise/Wh = 8000 > 7000 paise -> relay opens
    sdm.set("import_kwh", 108.0)
    wait_for(lambda: _relay(app) == "relay open", 30, "the relay to open")
    status = up.wait(lambda u: [b for b in u.of("status") if not b["rl"]], 20,
                     "a status with the relay open")[-1]
    assert status["st"] == "DISCONNECTED"
    assert status["bal"] == 7000 - 8000  # the overrun becomes debt, nothing lost
    assert status["tt"] - status["tc"] == status["bal"] - 2000  # conservation: opening 2000
    opened = [e for b in up.of("event") for e in b["e"] if e[2] == 8]  # RELAY_OPENED
    assert opened, "a RELAY_OPENED event was published"
    assert not up.errors, up.errors
    assert app.proc.poll() is None, app.log()


def test_broker_outage_loses_no_reading_and_replays_in_order_exactly_once(broker, world):
    sdm = world.add(Sdm120(voltage=230.0, current=2.0, power=460.0, import_kwh=10.0).start())
    up = world.add(Uplinks(*broker, meter_id=METER_ID))
    app = world.add(MeterApp(settings(broker, modbus_period_s=30), rs485=sdm.path, start_t=START_T))
    app.start()
    up.wait(lambda u: len(u.of("reading")) >= 2, 30, "two readings before the outage")

    broker.stop()
    outage_wall_s = 4 * 3  # four 900 s intervals at 300x
    kwh = 10.0
    t_end = time.monotonic() + outage_wall_s
    while time.monotonic() < t_end:  # energy keeps flowing during the outage
        kwh += 0.25
        sdm.set("import_kwh", kwh)
        time.sleep(0.5)
    depth = int(parse_ok(app.cli("info"))["outbox"])
    assert depth >= 4, "readings were queued in the outbox while the broker was down"
    broker.start()

    wait_for(lambda: parse_ok(app.cli("info"))["outbox"] == "0" and
             parse_ok(app.cli("info"))["mqtt"] == "connected", 40, "the outbox to drain")
    time.sleep(1.0)  # the subscriber's last PUBACKs
    seqs = [b["s"] for b in up.received]
    assert seqs == sorted(seqs), "uplinks arrive in outbox order"
    assert len(seqs) == len(set(seqs)), "no uplink arrives twice"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no sequence number is missing"
    starts = [r[0] for b in up.of("reading") for r in b["r"]]
    assert starts == list(range(starts[0], starts[0] + 900 * len(starts), 900)), \
        "every 900 s interval reported once, none missing"
    energy = sum(r[1] for b in up.of("reading") for r in b["r"])
    last_cum = up.of("reading")[-1]["cum"]
    assert energy == last_cum - 0, "interval energies add up to the cumulative register"
    assert not up.errors, up.errors


def test_hung_task_starves_the_watchdog_and_the_journal_restores_the_meter_on_restart(
        broker, world):
    from boards.unix.hal import WATCHDOG_EXIT

    sts = {"sts_key_hex": "0abc12def3456789", "sts_paise_per_unit": 1000}
    app = world.add(MeterApp(settings(broker, energy_source="pulses", **sts), start_t=START_T,
                             watchdog_ms=2000, fault_hang="metering:4"))
    app.start()
    # NectarAPI vector (see firmware/tests/test_cli.py): 25.6 kWh x 1000 paise/kWh = 25600 paise
    reply = parse_ok(app.cli("topup 29054347139309851356"))
    assert reply["balance_paise"] == "27600"  # 2000 opening + 25600
    app.wait_line("urja: task metering hangs", 15)
    assert app.wait_exit(15) == WATCHDOG_EXIT, app.log()
    assert "watchdog not fed, silent tasks: metering" in app.log()

    app.fault_hang = None
    app.start(start_t=START_T + 7200)
    assert parse_ok(app.cli("balance"))["balance_paise"] == "27600"
    names = parse_ok(app.cli("events"))["events"]
    assert "JOURNAL_RESTORED" in names and "POWER_RESTORE" in names
    # the used token stays used across the reset
    assert app.cli("topup 29054347139309851356").startswith("ERR 7 REJECTED: token used")
