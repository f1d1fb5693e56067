"""meterctl against a real unix-board DUT (``micropython`` running the meter app).

The DUT comes from the HIL plugin (hil_tests/plugin.py); meterctl opens its
CLI through ``dut.serial_port()``, a pty bridged to the meter's CLI UART, the
way it opens a USB-serial adapter.  Expected values are hand arithmetic on
the DUT's factory settings (hil_tests/dut.py ``factory_settings``: 2000
paise opening credit, 3200 imp/kWh default pulse constant) or come from
NectarAPI: key 0x0ABC12DEF3456789 and the 25.6 kWh token
29054347139309851356 (tokens-service NativeTokenDecoderTest.java, also in
firmware/tests/test_cli.py).
"""
import contextlib
import http.server
import io
import json
import os
import select
import subprocess
import sys
import threading
import time

import pytest

from hil_tests.dut import KEY_HEX, Pty
from hil_tests.plugin import dut, dut_factory, hil_log_dir  # noqa: F401  the plugin's fixtures
from tools.meterctl import (EXIT_GARBAGE, EXIT_HEADEND, EXIT_NO_REPLY, EXIT_OK, EXIT_PORT,
                            EXIT_REFUSED, EXIT_USAGE, main)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NECTAR_STS = {"sts_key_hex": "0abc12def3456789", "sts_paise_per_unit": 1000}
NECTAR_TOKEN = "29054347139309851356"  # 25.6 kWh
TARIFF = {"id": "FLAT-10", "version": 1, "service": "electricity", "unit_size": 1000,
          "slabs": [[None, 1000]], "fixed_paise_per_day": 0, "tod": [], "duty_bp": 0}


def run(*argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # argparse's
            code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    except SystemExit as e:  # argparse
        code = e.code
    return code, out.getvalue(), err.getvalue()


def run_json(*argv):
    code, out, err = run("--json", *argv)
    return code, json.loads(out), err


def wait_for(pred, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


# --- read-only commands ----------------------------------------------------------

def test_info_json_names_the_commissioned_meter(dut):
    with dut.serial_port() as port:
        code, doc, _ = run_json("--port", port, "info")
    assert code == EXIT_OK
    assert doc["ok"] is True
    assert (doc["reply"]["meter"], doc["reply"]["commissioned"], doc["reply"]["board"]) == \
        ("UJ-HIL-0001", 1, "urja-unix")


def test_balance_json_gives_integer_paise_and_the_relay(dut):
    with dut.serial_port() as port:
        code, doc, _ = run_json("--port", port, "balance")
    assert code == EXIT_OK
    # a fresh meter holds its opening credit: 2000 paise, nothing used
    assert doc["reply"] == {"balance_paise": 2000, "credit_paise": 2000,
                            "emergency_used_paise": 0, "debt_paise": 0, "state": "OK",
                            "relay": "closed"}


def test_read_shows_energy_from_injected_pulses(dut):
    dut.control("pulses 3200")  # 3200 impulses / 3200 imp/kWh = 1 kWh = 1000 Wh
    with dut.serial_port() as port:
        doc = wait_for(lambda: (lambda d: d if d["reply"]["energy_wh"] == 1000 else None)(
            run_json("--port", port, "read")[1]), 5, "1000 Wh on read")
        code, text, _ = run("--port", port, "read")
    assert doc["ok"] is True
    assert code == EXIT_OK
    assert "energy_wh  1000" in text


def test_selftest_of_a_healthy_meter_exits_0_and_lists_checks(dut):
    with dut.serial_port() as port:
        code, doc, _ = run_json("--port", port, "selftest")
    assert code == EXIT_OK
    assert {"config", "journal", "clock", "tasks"} <= set(doc["reply"])


def test_selftest_of_an_uncommissioned_meter_exits_1_naming_the_missing_settings(dut_factory):
    d = dut_factory(settings=None)
    with d.serial_port() as port:
        code, out, err = run("--port", port, "selftest")
    assert code == EXIT_REFUSED
    assert "FAILED (9)" in err and "meter_id" in err and "key_hex" in err


# --- top-up and events -------------------------------------------------------------

def test_topup_with_dashes_credits_the_nectar_token(dut_factory):
    d = dut_factory(extra=NECTAR_STS)
    with d.serial_port() as port:
        code, out, _ = run("--port", port, "topup", "2905-4347-1393-0985-1356")
    assert code == EXIT_OK
    # 25.6 kWh x 1000 paise/kWh = 25600 paise; 2000 opening + 25600 = 27600
    assert "credited_paise  25600" in out
    assert "balance_paise   27600" in out


def test_replayed_token_exits_1_and_balance_is_unchanged(dut_factory):
    d = dut_factory(extra=NECTAR_STS)
    with d.serial_port() as port:
        assert run("--port", port, "topup", NECTAR_TOKEN)[0] == EXIT_OK
        code, doc, err = run_json("--port", port, "topup", NECTAR_TOKEN)
        balance = run_json("--port", port, "balance")[1]["reply"]["balance_paise"]
    assert code == EXIT_REFUSED
    assert (doc["ok"], doc["err_code"], doc["err_name"]) == (False, 7, "REJECTED")
    assert "used" in doc["err_message"]
    assert balance == 27600


def test_mistyped_token_is_a_usage_error_and_never_reaches_the_meter(dut):
    with dut.serial_port() as port:
        code, _, err = run("--port", port, "topup", "2905-4347-1393-0985-135")  # 19 digits
    assert code == EXIT_USAGE
    assert "20 digits" in err
    with open(os.path.join(dut.log_dir, "console.log")) as f:
        assert "topup" not in f.read()


def test_events_after_a_topup_lists_it_with_its_ist_time(dut_factory):
    d = dut_factory(extra=NECTAR_STS)
    with d.serial_port() as port:
        run("--port", port, "topup", NECTAR_TOKEN)
        code, doc, _ = run_json("--port", port, "events", "4")
        _, text, _ = run("--port", port, "events")
    assert code == EXIT_OK
    applied = [e for e in doc["reply"]["events"] if e["event"] == "TOPUP_APPLIED"]
    assert len(applied) == 1
    # the DUT's clock starts at 1795753800 = 2026-11-27 04:30 UTC = 10:00 IST, time factor 1
    assert 1795753800 <= applied[0]["t"] <= 1795753800 + 30
    assert "2026-11-27 10:00:" in text and "TOPUP_APPLIED" in text


# --- garbage, silence, disconnection -------------------------------------------------

def test_events_count_out_of_range_is_a_usage_error(dut):
    with dut.serial_port() as port:
        code, _, err = run("--port", port, "events", "99")
    assert code == EXIT_USAGE
    assert "invalid choice" in err


def test_a_bad_setting_value_is_refused_by_the_meter_with_exit_1(dut_factory):
    d = dut_factory(settings=None)
    d.control("input commissioning 1")
    with d.serial_port() as port:
        code, _, err = run("--port", port, "commission", "--meter-id", "UJ-T-9", "--key", KEY_HEX,
                           "--broker", "127.0.0.1", "--tariff", json.dumps(TARIFF),
                           "--set", "pulse_constant=lots")
    assert code == EXIT_REFUSED
    assert "BAD_VALUE (3)" in err and "pulse_constant" in err


class _NoisyPort:
    """A pty whose far end answers every line with ``reply`` (a device that is not a meter)."""

    def __init__(self, reply):
        self.pty = Pty()
        self.reply = reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            if select.select([self.pty.master], [], [], 0.05)[0]:
                if b"\n" in os.read(self.pty.master, 256) and self.reply:
                    os.write(self.pty.master, self.reply)

    def close(self):
        self.stop.set()
        self.thread.join(1)
        self.pty.close()


@pytest.mark.parametrize("reply", [b"\x00\xff\xfe\x80 line noise\r\n", b"HELLO FROM A GPS\r\n",
                                   b"OK no_equals_sign\r\n"])
def test_garbage_reply_exits_5_and_says_wrong_port(reply):
    port = _NoisyPort(reply)
    try:
        code, _, err = run("--port", port.pty.path, "--timeout", "1", "info")
    finally:
        port.close()
    assert code == EXIT_GARBAGE
    assert "garbage reply" in err


def test_silent_port_exits_4_no_reply():
    port = _NoisyPort(None)
    try:
        code, _, err = run("--port", port.pty.path, "--timeout", "0.5", "balance")
    finally:
        port.close()
    assert code == EXIT_NO_REPLY
    assert "no reply to 'balance'" in err and "powered" in err


def test_missing_port_exits_3_with_a_hint(tmp_path):
    code, _, err = run("--port", str(tmp_path / "ttyUSB9"), "info")
    assert code == EXIT_PORT
    assert "cannot open" in err and "meterctl ports" in err


def test_meterctl_process_exits_3_when_the_adapter_is_unplugged(dut):
    with dut.serial_port() as port:
        pass  # plugged in, then pulled out: the device path is gone
    proc = subprocess.run([sys.executable, "-m", "tools.meterctl", "--port", port, "balance"],
                          cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert proc.returncode == EXIT_PORT
    assert "port error: cannot open" in proc.stderr


class _Session:
    """``meterctl commission`` as a process, answering its prompts on stdin."""

    def __init__(self, port, *flags):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.meterctl", "--port", port, "--timeout", "1.5",
             "commission", *flags], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.err = b""

    def wait_prompt(self, text, timeout_s=20):
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout_s
        while text.encode() not in self.err and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                self.err += os.read(fd, 4096)
        assert text.encode() in self.err, self.err

    def finish(self, answers):
        out, err = self.proc.communicate(answers.encode(), timeout=30)
        return self.proc.returncode, (self.err + err).decode()


def test_meter_killed_mid_session_exits_4_no_reply(dut):
    dut.control("input commissioning 1")
    with dut.serial_port() as port:
        s = _Session(port, "--meter-id", "UJ-T-7")
        s.wait_prompt("downlink key")  # meterctl has talked to the meter (info) and waits on us
        dut.kill()
        code, err = s.finish("%s\n127.0.0.1:1883\n%s\n" % (KEY_HEX, json.dumps(TARIFF)))
    assert code == EXIT_NO_REPLY
    assert "no reply to 'set'" in err


def test_adapter_unplugged_mid_session_exits_3_disconnected(dut):
    dut.control("input commissioning 1")
    with dut.serial_port() as port:
        s = _Session(port, "--meter-id", "UJ-T-7")
        s.wait_prompt("downlink key")
        dut.unplug()
        code, err = s.finish("%s\n127.0.0.1:1883\n%s\n" % (KEY_HEX, json.dumps(TARIFF)))
    assert code == EXIT_PORT
    assert "disconnected" in err


# --- commission ----------------------------------------------------------------------

class _HeadEnd:
    """A stand-in for POST /meters of headend/api.py that records what it was sent."""

    def __init__(self, status=201):
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                requests.append((self.path, dict(self.headers), json.loads(body)))
                sent = json.loads(body)
                reply = ({"id": sent["id"], "tenant_id": 1, "consumer_id": None,
                          "service": sent["service"], "unit": "Wh", "installed_at": 0,
                          "active": True} if status == 201 else
                         {"detail": "meter %s is already registered" % sent["id"]})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/api" % self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_commission_from_factory_state_registers_and_the_meter_boots_commissioned(
        dut_factory, tmp_path):
    d = dut_factory(settings=None)
    tariff = tmp_path / "tariff.json"
    tariff.write_text(json.dumps(TARIFF, indent=2))
    d.control("input commissioning 1")
    headend = _HeadEnd()
    try:
        with d.serial_port() as port:
            code, doc, err = run_json(
                "--port", port, "commission", "--meter-id", "UJ-NEW-0042", "--key", KEY_HEX,
                "--broker", "127.0.0.1:1884", "--tariff", str(tariff),
                "--set", "opening_credit_paise=5000", "--register", headend.url,
                "--token", "tok-123")
    finally:
        headend.close()
    assert code == EXIT_OK, err
    assert doc["set"] == ["meter_id", "key_hex", "broker_host", "broker_port", "tariff",
                          "opening_credit_paise"]
    (path, headers, body), = headend.requests
    assert path == "/api/meters" and headers["Authorization"] == "Bearer tok-123"
    assert (body["id"], body["service"], body["key_hex"]) == ("UJ-NEW-0042", "electricity", KEY_HEX)
    try:  # the head-end's own request schema, when this build has the API
        from headend.api import MeterIn
    except ImportError:
        MeterIn = None
    if MeterIn is not None:
        MeterIn.model_validate(body)

    d.control("input commissioning 0")
    d.restart()  # settings apply at the next boot
    with d.serial_port() as port:
        info = run_json("--port", port, "info")[1]["reply"]
        balance = run_json("--port", port, "balance")[1]["reply"]
    assert (info["meter"], info["commissioned"], info["broker"]) == ("UJ-NEW-0042", 1, "127.0.0.1:1884")
    assert balance["balance_paise"] == 5000


def test_commission_asks_for_what_its_flags_do_not_give(dut_factory):
    d = dut_factory(settings=None)
    d.control("input commissioning 1")
    answers = "UJ-ASK-1\n%s\nmqtt.local\n%s\n" % (KEY_HEX, json.dumps(TARIFF))
    with d.serial_port() as port:
        code, out, err = run("--port", port, "commission", stdin=answers)
        config = d.command("config")
    assert code == EXIT_OK, err
    for prompt in ("meter id", "downlink key", "broker host[:port]", "tariff"):
        assert prompt in err
    assert "commissioned UJ-ASK-1" in out and "next boot" in out
    assert (config["meter_id"], config["broker_host"], config["key_hex"]) == \
        ("UJ-ASK-1", "mqtt.local", "set")


def test_commission_outside_commissioning_mode_exits_1_and_sets_nothing(dut_factory):
    d = dut_factory(settings=None)
    with d.serial_port() as port:
        code, _, err = run("--port", port, "commission", "--wait-s", "0.5", "--meter-id", "UJ-X",
                           "--key", KEY_HEX, "--broker", "h", "--tariff", json.dumps(TARIFF))
    assert code == EXIT_REFUSED
    assert "not in commissioning mode" in err
    assert d.command("config")["meter_id"] is None


def test_commission_reports_a_refused_registration_with_exit_6(dut_factory):
    d = dut_factory(settings=None)
    d.control("input commissioning 1")
    headend = _HeadEnd(status=409)
    try:
        with d.serial_port() as port:
            code, _, err = run("--port", port, "commission", "--meter-id", "UJ-DUP-1",
                               "--key", KEY_HEX, "--broker", "h", "--tariff", json.dumps(TARIFF),
                               "--register", headend.url)
    finally:
        headend.close()
    assert code == EXIT_HEADEND
    assert "HTTP 409" in err and "already registered" in err


# --- tool surface --------------------------------------------------------------------------

def test_ports_json_is_a_list_of_ports():
    code, doc, _ = run_json("ports")
    assert code == EXIT_OK
    assert doc["ok"] is True and isinstance(doc["ports"], list)


def test_help_shows_examples_and_exit_codes():
    code, out, _ = run("--help")
    assert code == 0
    assert "meterctl --port /dev/ttyUSB0 topup" in out and "exit codes: 0 ok" in out
