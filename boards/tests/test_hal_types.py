"""The board interface (``boards/hal.py``) exists for mypy only: ``typing.Protocol``
classes under ``if TYPE_CHECKING:``.  These tests pin that mypy, with the same
ESP32-stub configuration as ``firmware/tests/host/test_build_checks.py``, still
sees it: a wrong call through the interface and a part that does not match
its interface both fail, and the right ones pass.
"""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

WRONG_CALLS = '''
from boards.hal import Board
from boards.unix.hal import UnixBoard


def use(b: Board, u: UnixBoard) -> None:
    b.start_watchdog().feed()
    b.start_watchdog().feed(1)  # line 8: Watchdog.feed takes no argument
    if b.relay is not None:
        b.relay.set(True)
        b.relay.set()  # line 11: Relay.set needs closed
    if b.pulse_counter is not None:
        b.pulse_counter.value() + b.pulse_counter.bits
        b.pulse_counter.reset()  # line 14: PulseCounter has no reset
    u.clock.set(5)
    u.clock.sett(5)  # line 16: a typo on the unix board's Clock
'''

WRONG_PARTS = '''
from boards.hal import Board


class GoodRelay:
    def set(self, closed: bool) -> None:
        pass

    def closed(self) -> bool:
        return True


class TwoArgRelay(GoodRelay):
    def set(self, closed: bool, pulse_ms: int) -> None:  # type: ignore[override]
        pass


class NoBitsCounter:
    def value(self) -> int:
        return 0


class SomeBoard(Board):
    def __init__(self, config):
        Board.__init__(self, config)
        self.relay = GoodRelay()
        self.relay = TwoArgRelay()  # line 27: not a Relay
        self.pulse_counter = NoBitsCounter()  # line 28: a PulseCounter needs bits
'''


def mypy_error_lines(tmp_path, source):
    exe = shutil.which("mypy", path=str(pathlib.Path(sys.executable).parent)) \
        or shutil.which("mypy")
    if not exe:
        pytest.fail("mypy not found: run through ./dev test (it installs the dev extras)",
                    pytrace=False)
    snippet = tmp_path / "snippet.py"
    snippet.write_text(source)
    proc = subprocess.run(
        [exe, "--config-file", "firmware/mypy-esp32.ini", "--cache-dir",
         str(tmp_path / "mypy-cache"), str(snippet)],
        cwd=ROOT, capture_output=True, text=True)
    lines = sorted(int(n) for n in re.findall(r"snippet\.py:(\d+): error:", proc.stdout))
    return lines, proc.stdout + proc.stderr


def test_wrong_calls_through_the_board_interface_fail_the_esp32_type_check(tmp_path):
    lines, out = mypy_error_lines(tmp_path, WRONG_CALLS)
    assert lines == [8, 11, 14, 16], out


def test_a_part_that_does_not_match_its_interface_fails_the_esp32_type_check(tmp_path):
    lines, out = mypy_error_lines(tmp_path, WRONG_PARTS)
    assert lines == [27, 28], out
