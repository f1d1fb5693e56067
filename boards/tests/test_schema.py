"""Host checks of the board files: every shipped file validates, the CLI's
output and exit codes, and a property test over random pin choices."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boards import schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "boards").rglob("*.json"))


def micropython():
    exe = shutil.which("micropython", path=str(pathlib.Path(sys.executable).parent)) \
        or shutil.which("micropython")
    if not exe:
        pytest.fail("micropython not found: run through ./dev test", pytrace=False)
    return exe


def test_there_is_a_board_file_per_platform():
    platforms = {json.loads(p.read_text())["platform"] for p in SHIPPED}
    assert platforms == {"esp32", "unix"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_board_file_validates_without_warnings(path):
    board = json.loads(path.read_text())
    assert schema.check(board) == ([], [])


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_cli_prints_ok_for_each_good_file_and_exits_0(runtime):
    exe = sys.executable if runtime == "cpython" else micropython()
    files = [str(p.relative_to(ROOT)) for p in SHIPPED]
    proc = subprocess.run([exe, "-m", "boards.schema"] + files, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["%s: OK" % f for f in files]


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_cli_prints_each_error_with_the_file_and_exits_1(runtime, tmp_path):
    exe = sys.executable if runtime == "cpython" else micropython()
    board = json.loads((ROOT / "boards/esp32/wroom32.json").read_text())
    board["relay"]["close_pin"] = 36          # input-only
    board["rs485"]["uart"] = 0                # the console
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(board))
    proc = subprocess.run([exe, "-m", "boards.schema", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "%s: rs485.uart: UART0 is the console; use one of 1, 2" % bad,
        "%s: relay.close_pin: GPIO36 is input-only (GPIO34-39 cannot drive an output)" % bad,
    ]


def test_cli_reports_a_file_that_is_not_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{\"name\": ")
    proc = subprocess.run([sys.executable, "-m", "boards.schema", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.startswith("%s: not valid JSON" % bad)


def test_cli_without_arguments_prints_usage_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "boards.schema"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout.startswith("usage: python -m boards.schema")


# Facts restated from the sources cited in boards/schema.py (MicroPython
# quickref, ESP-IDF gpio.rst, ESPHome gpio_esp32.py), written out here
# independently of the module's tables.
EXISTING = set(range(0, 20)) | {21, 22, 23, 25, 26, 27} | set(range(32, 40))
FORBIDDEN_OUTPUT = {1, 3} | set(range(6, 12)) | set(range(34, 40))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-2, max_value=45))
def test_led_pin_is_accepted_exactly_when_the_gpio_exists_and_can_drive(gpio):
    board = json.loads((ROOT / "boards/esp32/wroom32.json").read_text())
    used = {34, 17, 16, 18, 22, 23, 26, 27, 35, 32, 39}  # 22, 23: cli_uart
    board["led"]["pin"] = gpio
    errors = schema.check(board)[0]
    ok = gpio in EXISTING and gpio not in FORBIDDEN_OUTPUT and gpio not in used
    assert (errors == []) == ok, (gpio, errors)
    if not ok:
        # one error, naming the LED (a clash is reported at whichever use comes second)
        assert len(errors) == 1 and "led.pin" in errors[0], errors


# ---- cli_uart and outbox (issue 4: the CLI off the REPL, the outbox in flash)

def _wroom32():
    return json.loads((ROOT / "boards/esp32/wroom32.json").read_text())


def test_cli_uart_may_not_be_the_console_nor_the_rs485_uart():
    board = _wroom32()
    board["cli_uart"]["uart"] = 0
    assert schema.check(board)[0] == ["cli_uart.uart: UART0 is the console; use one of 1, 2"]
    board["cli_uart"]["uart"] = 2
    assert schema.check(board)[0] == ["cli_uart.uart: UART2 is already the rs485 link"]


def test_cli_uart_pins_are_checked_like_any_other():
    board = _wroom32()
    board["cli_uart"]["tx"] = 34  # input-only
    board["cli_uart"]["rx"] = 17  # the RS485 TX
    assert schema.check(board)[0] == [
        "cli_uart.tx: GPIO34 is input-only (GPIO34-39 cannot drive an output)",
        "cli_uart.rx: pin 17 is already used by rs485.tx"]


def test_outbox_partition_label_and_segment_count_are_bounded():
    board = _wroom32()
    board["outbox"] = {"partition": "x" * 16, "segments": 1}
    assert schema.check(board)[0] == [
        "outbox.partition: %r is not a partition label of 1..15 characters" % ("x" * 16),
        "outbox.segments: 1 is not an integer in 2..256 (4 KiB flash sectors)"]
    board["outbox"] = {"segments": 8}
    assert schema.check(board)[0] == ["outbox.partition: missing"]


def test_unix_boards_take_a_cli_pty_but_no_outbox_partition():
    board = json.loads((ROOT / "boards/unix/board.json").read_text())
    assert board["cli_uart"] == {"device_env": "URJA_CLI_PTY", "baud": 115200}
    board["outbox"] = {"partition": "outbox"}
    assert schema.check(board)[0][0].startswith("outbox: unknown field")
