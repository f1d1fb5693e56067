"""The plugin's ``dut`` fixture on the unix board: console, commands, raw bytes, logs.

The DUT is ``micropython -m firmware.app.main`` with hil_tests/dut.py's
factory settings (meter UJ-HIL-0001, 2000 paise opening credit).  Reply
formats and error codes are docs/protocol.md "Serial commissioning CLI".
"""
import os
import time

import pytest

from hil_tests.dut import CommandError, ExpectTimeout


def test_expect_finds_a_boot_line_and_returns_its_match(dut):
    assert dut.expect(r"meter (\S+) up, journal seq (\d+)").groups() == ("UJ-HIL-0001", "1")


def test_expect_exact_consumes_so_one_line_matches_only_once(dut):
    dut.expect_exact("urja: running tasks")
    with pytest.raises(ExpectTimeout, match="running tasks"):
        dut.expect_exact("urja: running tasks", timeout=0.3)


@pytest.mark.dut(extra={"wifi_ssid": "Home Wifi"})
def test_command_returns_ok_fields_with_values_unescaped(dut):
    assert dut.command("balance")["balance_paise"] == "2000"
    assert dut.command("info")["wifi"] == "Home Wifi"


@pytest.mark.dut(extra={"wifi_ssid": "Home Wifi"})
def test_the_console_shows_the_reply_as_sent_on_the_wire(dut):
    dut.write(b"info\r\n")
    dut.expect(r"^OK .*wifi=Home%20Wifi ")  # docs/protocol.md: a space inside a value is %20


def test_command_raises_command_error_with_the_err_code_and_name(dut):
    with pytest.raises(CommandError) as e:
        dut.command("set pulse_constant 1600")
    assert (e.value.err_code, e.value.name) == (6, "LOCKED")


def test_write_sends_raw_bytes_and_the_meter_answers_bad_bytes(dut):
    dut.write(b"bal\xffance\r\n")
    dut.expect(r"^ERR 5 BAD_BYTES: .*0xff")


@pytest.mark.dut(settings=None)
def test_a_factory_state_dut_boots_uncommissioned(dut):
    dut.expect_exact("urja: not commissioned")
    with pytest.raises(CommandError) as e:
        dut.command("balance")
    assert e.value.err_code == 8


def test_console_and_control_logs_are_saved_in_the_tests_report_dir(dut, hil_log_dir):
    dut.command("balance")
    assert dut.control("relay?") == "relay closed"
    assert dut.log_dir == hil_log_dir
    assert os.path.basename(hil_log_dir) == (
        "test_plugin_dut.test_console_and_control_logs_are_saved_in_the_tests_report_dir")
    with open(os.path.join(hil_log_dir, "console.log")) as f:
        console = f.read()
    with open(os.path.join(hil_log_dir, "control.log")) as f:
        control = f.read()
    assert "log] urja: running tasks" in console
    assert ">>>] balance" in console and "cli] OK balance_paise=2000" in console
    assert "relay? -> relay closed" in control


def test_a_killed_dut_restarts_on_the_same_flash(dut):
    dut.control("pulses 3200")  # 3200 imp at 3200 imp/kWh = 1000 Wh, journaled by the meter
    dut.kill()
    dut.start()
    dut.expect(r"meter UJ-HIL-0001 up, journal seq [2-9]")  # the journal came back, not seq 1
    events = dut.command("events")["events"]
    assert "POWER_RESTORE" in events


@pytest.mark.dut(broker=True)
def test_broker_messages_of_the_test_are_logged_decoded(dut, hil_log_dir):
    path = os.path.join(hil_log_dir, "broker.log")
    # the meter connects and publishes its retained presence and the boot status
    dut.expect_exact("urja: mqtt connected", timeout=15)
    text = ""
    for _ in range(100):
        with open(path) as f:
            text = f.read()
        if "urja/v1/UJ-HIL-0001/up/status" in text:
            break
        time.sleep(0.1)
    # live delivery to a subscriber clears the retain flag (MQTT 3.1.1, 3.3.1.3)
    assert "urja/v1/UJ-HIL-0001/online q1 b'1'" in text
    assert '"kind": "status"' in text
