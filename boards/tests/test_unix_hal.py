"""The unix board HAL inside the real ``micropython``, driven from pytest.

A tiny stand-in firmware (``METER_SCRIPT``) loads the unix board, prints what
it reads through the HAL whenever it changes, lets the relay follow the
commissioning input, echoes RS485 bytes reversed, and feeds the watchdog
while power_fail is inactive.  The test plays the physical world over the
control socket and a pty, and checks both sides.
"""
import os
import pathlib
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from boards.unix.hal import WATCHDOG_EXIT

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 5.0

METER_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from boards.hal import load_board
state_dir = sys.argv[2]
board = load_board("unix", {"state_dir": state_dir, "control": "unix:" + state_dir + "/ctl.sock",
                            "watchdog_timeout_ms": int(sys.argv[3])})
wdt = board.start_watchdog() if sys.argv[4] == "watchdog" else None
print("ready")
last = None
while True:
    board.poll()
    seen = (board.pulse_counter.value(), board.cover.value(), board.commissioning.value(),
            board.power_fail.value())
    if seen != last:
        print("hal pulses %d cover %d commissioning %d power_fail %d"
              % (seen[0], seen[1], seen[2], seen[3]))
        last = seen
    board.relay.set(board.commissioning.value())
    if board.rs485 is not None:
        data = board.rs485.read(64)
        if data:
            board.rs485.write(bytes(reversed(data)))
    if wdt is not None and not board.power_fail.value():
        wdt.feed()
    time.sleep_ms(5)
"""


def micropython():
    exe = shutil.which("micropython", path=str(pathlib.Path(sys.executable).parent)) \
        or shutil.which("micropython")
    if not exe:
        pytest.fail("micropython not found: run through ./dev test", pytrace=False)
    return exe


class Meter:
    """A running micropython meter process plus a control-socket client."""

    def __init__(self, watchdog_ms=8000, mode="plain", rs485_path=None):
        # short path: AF_UNIX socket paths are limited to 108 bytes
        self.dir = tempfile.mkdtemp(prefix="urja-hal-")
        script = os.path.join(self.dir, "meter.py")
        with open(script, "w") as f:
            f.write(METER_SCRIPT)
        env = dict(os.environ)
        env.pop("URJA_RS485_PTY", None)
        if rs485_path:
            env["URJA_RS485_PTY"] = rs485_path
        self.proc = subprocess.Popen(
            [micropython(), script, str(ROOT), self.dir, str(watchdog_ms), mode],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect("ready")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(os.path.join(self.dir, "ctl.sock"))
        self.reader = self.sock.makefile("rb")

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, want):
        """Wait for a stdout line equal to ``want``; return the lines seen before it."""
        seen = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line == want:
                return seen
            seen.append(line)
        raise AssertionError("no %r from the meter within %ss; saw %r" % (want, TIMEOUT_S, seen))

    def ask(self, line):
        self.sock.sendall(line.encode() + b"\n")
        return self.reader.readline().decode().rstrip("\n")

    def ask_until(self, line, want):
        deadline = time.monotonic() + TIMEOUT_S
        reply = self.ask(line)
        while reply != want and time.monotonic() < deadline:
            time.sleep(0.02)
            reply = self.ask(line)
        return reply

    def close(self):
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def meter():
    m = Meter()
    try:
        yield m
    finally:
        m.close()


def test_pulses_injected_on_the_socket_are_read_through_the_hal(meter):
    meter.expect("hal pulses 0 cover 0 commissioning 0 power_fail 0")
    assert meter.ask("pulses 16") == "ok pulses 16"
    meter.expect("hal pulses 16 cover 0 commissioning 0 power_fail 0")
    assert meter.ask("pulses 3200") == "ok pulses 3216"  # 16 + 3200
    meter.expect("hal pulses 3216 cover 0 commissioning 0 power_fail 0")
    assert meter.ask("pulses?") == "pulses 3216"


def test_input_toggles_reach_the_hal(meter):
    assert meter.ask("input cover 1") == "ok input cover 1"
    meter.expect("hal pulses 0 cover 1 commissioning 0 power_fail 0")
    assert meter.ask("input? cover") == "input cover 1"
    assert meter.ask("input cover 0") == "ok input cover 0"
    meter.expect("hal pulses 0 cover 0 commissioning 0 power_fail 0")


def test_relay_set_by_the_firmware_is_read_back_on_the_socket(meter):
    assert meter.ask("relay?") == "relay open"
    assert meter.ask("input commissioning 1") == "ok input commissioning 1"
    assert meter.ask_until("relay?", "relay closed") == "relay closed"
    assert meter.ask("input commissioning 0") == "ok input commissioning 0"
    assert meter.ask_until("relay?", "relay open") == "relay open"


def test_clock_jump_on_the_socket_moves_the_board_clock(meter):
    assert meter.ask("clock 2000000000") == "ok clock 2000000000"
    reply = meter.ask("clock?")
    assert reply.startswith("clock ")
    assert 2000000000 <= int(reply.split()[1]) <= 2000000000 + 5  # a few seconds may pass


def test_bad_and_overlong_control_lines_get_err_and_the_session_continues(meter):
    assert meter.ask("pulses -1").startswith("err pulse count must be a whole number")
    assert meter.ask("x" * 200) == "err line longer than 80 bytes"
    assert meter.ask("pulses?") == "pulses 0"


def test_a_second_client_can_connect_while_the_first_stays(meter):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.settimeout(TIMEOUT_S)
    try:
        other.connect(os.path.join(meter.dir, "ctl.sock"))
        other.sendall(b"pulses 7\n")
        assert other.makefile("rb").readline() == b"ok pulses 7\n"
    finally:
        other.close()
    assert meter.ask("pulses?") == "pulses 7"


def test_rs485_pty_carries_raw_bytes_both_ways():
    # the pty stays cooked (echo, ICRNL, IXON, ONLCR): only the HAL's setraw can make it clean
    master, slave = os.openpty()
    m = Meter(rs485_path=os.ttyname(slave))
    try:
        # a Modbus RTU request (slave 1, FC 04, 0x0000, 2 registers, CRC 0x71CB low byte first)
        # plus the bytes a cooked tty would eat or translate: XON, XOFF, CR, LF, NUL
        frame = bytes.fromhex("01040000000271cb") + b"\x11\x13\r\n\x00"
        os.write(master, frame)
        got = b""
        deadline = time.monotonic() + TIMEOUT_S
        while len(got) < len(frame) and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                got += os.read(master, 64)
        assert got == frame[::-1]
    finally:
        m.close()
        os.close(master)
        os.close(slave)


def test_watchdog_that_is_not_fed_resets_the_board():
    m = Meter(watchdog_ms=1000, mode="watchdog")
    try:
        first = int(m.ask("watchdog?").split()[1])
        time.sleep(0.2)
        assert int(m.ask("watchdog?").split()[1]) > first  # the script is feeding it
        assert m.ask("input power_fail 1") == "ok input power_fail 1"  # the script stops feeding
        assert m.proc.wait(timeout=TIMEOUT_S) == WATCHDOG_EXIT
    finally:
        m.close()


def test_journal_slots_are_files_in_the_state_dir(tmp_path):
    # in-process on CPython: the same unix HAL module, with a short socket path
    from boards.hal import load_board
    d = tempfile.mkdtemp(prefix="urja-slots-")
    board = load_board("unix", {"state_dir": d, "control": "unix:%s/c.sock" % d})
    try:
        board.slots.write(1, b"record")
        assert (pathlib.Path(d) / "slot1.bin").read_bytes() == b"record"
        assert board.slots.read(0) is None
    finally:
        board.close()
        shutil.rmtree(d, ignore_errors=True)
