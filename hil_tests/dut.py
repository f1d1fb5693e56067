"""Devices under test: one console API over a unix-board ``micropython`` process or a real board.

In the spirit of pytest-embedded's ``dut``: ``expect(regex)`` /
``expect_exact(text)`` search what the meter printed since the last match,
``write(bytes)`` sends raw bytes to its CLI UART, ``command(line)`` sends one
CLI line and returns the parsed ``OK`` fields (raises ``CommandError`` on
``ERR``).  Everything in and out is logged with wall-clock offsets to the
test's log directory (``console.log``, ``control.log``).

- ``UnixDut``: ``micropython -m firmware.app.main`` on the unix board; its
  console is the process output (the ``urja:`` log) merged line by line with
  the CLI pty; ``control(line)`` drives the board's control socket.
- ``SerialDut``: a real board on a serial port (pyserial), log and CLI on
  the same UART.

``serial_port()`` hands the CLI to another program (``meterctl``) as a
device path: on the unix board a second pty bridged to the CLI (a
USB-serial adapter; ``unplug()`` pulls it), on a real board the port itself.

>>> dut = UnixDut("dut", "reports/hil/t", settings=factory_settings()).start()
>>> dut.expect(r"meter (\\S+) up").group(1)
'UJ-HIL-0001'
>>> dut.command("balance")["balance_paise"]
'2000'
"""
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

from tools.meterctl import MeterRefused, MeterctlError, parse_reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CommandError = MeterRefused  # .err_code, .name, .text of an ERR reply
REPLY = re.compile(r"^(?:OK|ERR)(?: [^\n]*)?$", re.M)
KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
START_T = 1795753800  # Fri 2026-11-27 10:00 IST, outside friendly hours (hil_tests/test_app_unix.py)
FLAT_TARIFF = {"id": "FLAT-10", "version": 1, "service": "electricity", "unit_size": 1000,
               "slabs": [[None, 1000]], "fixed_paise_per_day": 0, "tod": [], "duty_bp": 0}


class ExpectTimeout(AssertionError):
    """``expect`` found nothing in time; the message shows what the console did say."""


class DutDied(AssertionError):
    """The DUT process ended while a test waited for it."""


def factory_settings(meter_id="UJ-HIL-0001", broker=("127.0.0.1", 1), **extra):
    """A commissioned meter: flat 1 paise/Wh, 2000 paise opening credit, no emergency credit.

    The default broker port 1 has no listener: the meter runs, its MQTT link retries.
    """
    s = {"meter_id": meter_id, "broker_host": broker[0], "broker_port": broker[1],
         "key_hex": KEY_HEX, "tariff": FLAT_TARIFF, "opening_credit_paise": 2000,
         "credit": {"emergency_enabled": False, "low_credit_paise": 500}}
    s.update(extra)
    return s


def micropython():
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable)) or shutil.which("micropython")
    if not exe:
        raise RuntimeError("micropython not found: run through ./dev test")
    return exe


def control_request(state_dir, line, timeout_s=5):
    """Send one line to a unix-board DUT's control socket in ``state_dir``; its reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(os.path.join(state_dir, "control.sock"))
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


class Pty:
    """A raw pty pair: a program opens ``path``; we read/write ``master``."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: a serial line
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class Console:
    """What a DUT printed, searchable from a cursor like pexpect, and logged with timestamps.

    Only whole lines enter the buffer, so the process log and the CLI replies
    never interleave inside a line.
    """

    def __init__(self, log_path, t0):
        self.text = ""
        self.pos = 0
        self.cond = threading.Condition()
        self.t0 = t0
        self.log_file = open(log_path, "a", encoding="utf-8", errors="replace") if log_path else None
        self.alive = lambda: True

    def log(self, tag, text):
        if self.log_file is not None:
            self.log_file.write("[%8.3f %s] %s\n" % (time.monotonic() - self.t0, tag, text))
            self.log_file.flush()

    def feed_line(self, tag, line):
        self.log(tag, line)
        with self.cond:
            self.text += line + "\n"
            self.cond.notify_all()

    def skip_to_end(self):
        with self.cond:
            self.pos = len(self.text)

    def expect(self, pattern, timeout_s, consume=True, since=None, what=None):
        """The first match of ``pattern`` after the cursor (or ``since``, an offset in ``text``);
        ``consume`` moves the cursor past it."""
        regex = pattern if hasattr(pattern, "search") else re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                m = regex.search(self.text, self.pos if since is None else since)
                if m:
                    if consume:
                        self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpectTimeout("no %s within %ss; console since the last match:\n%s"
                                        % (what or repr(regex.pattern), timeout_s,
                                           self.text[self.pos:][-3000:]))
                if not self.alive():
                    raise DutDied("the DUT died while waiting for %r; console:\n%s"
                                  % (regex.pattern, self.text[-3000:]))
                self.cond.wait(min(left, 0.2))

    def close(self):
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


class Dut:
    """The console API both boards share; subclasses provide ``_send`` and the console."""

    name = "dut"
    meter_id = None

    def __init__(self, name, log_dir):
        self.name = name
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.t0 = time.monotonic()
        prefix = "" if name == "dut" else name + "."
        self.console = Console(os.path.join(log_dir, prefix + "console.log"), self.t0)
        self._command_lock = threading.Lock()

    def expect(self, pattern, timeout=10):
        """Wait for ``pattern`` (regex, multi-line) after the last match -> ``re.Match``."""
        return self.console.expect(pattern, timeout)

    def expect_exact(self, text, timeout=10):
        """Wait for the literal ``text`` after the last match -> ``re.Match``."""
        return self.console.expect(re.compile(re.escape(text)), timeout, what=repr(text))

    def write(self, data):
        """Raw bytes to the CLI UART (no line end added)."""
        if isinstance(data, str):
            data = data.encode()
        self.console.log(">>>", repr(data))
        self._send(data)

    def command(self, line, timeout=5):
        """One CLI command -> its OK fields (values unescaped); raises ``CommandError`` on ERR.

        Output nobody ``expect``-ed before the command is skipped.
        """
        with self._command_lock:
            self.console.skip_to_end()
            self.console.log(">>>", line)
            self._send(line.encode() + b"\r\n")
            reply = self.console.expect(REPLY, timeout).group(0)
        try:
            return parse_reply(reply)
        except MeterRefused:
            raise
        except MeterctlError as e:
            raise AssertionError("garbage CLI reply to %r: %s" % (line, e.message))

    def _send(self, data):
        raise NotImplementedError

    def control(self, line, timeout=5):
        raise NotImplementedError("%s has no control socket: the unix board has one; on a real "
                                  "bench wire the input to a relay card" % type(self).__name__)

    def close(self):
        self.console.close()


class UnixDut(Dut):
    """The meter app in ``micropython`` on the unix board (CLI on a pty, world on a socket)."""

    def __init__(self, name, log_dir, settings=None, time_factor=1, start_t=START_T,
                 watchdog_ms=8000, rs485=None, dlms=None, env=None, boot_selector=False):
        Dut.__init__(self, name, log_dir)
        # boot_selector: run the A/B boot selector (boards/unix/ota_dirs.py) on <dir>/ota, which
        # runs the image in slot a/ or b/ (put one there before start), from a cwd without sources
        self.boot_selector = boot_selector
        self.settings = settings  # None: a meter in factory state (not commissioned)
        self.meter_id = settings.get("meter_id") if settings else None
        self.time_factor = time_factor
        self.start_t = start_t
        self.watchdog_ms = watchdog_ms
        self.rs485 = rs485
        self.dlms = dlms
        self.extra_env = env or {}
        self.dir = tempfile.mkdtemp(prefix="urja-dut-")  # short: AF_UNIX path limit
        self.cli = Pty()
        self.proc = None
        self.adapter = None  # the technician-side pty while serial_port() is lent out
        prefix = "" if name == "dut" else name + "."
        self.control_log = open(os.path.join(log_dir, prefix + "control.log"), "a")
        self.console.alive = lambda: self.proc is not None and self.proc.poll() is None
        self._stop = threading.Event()
        self._io = threading.Thread(target=self._io_loop, daemon=True, name=name + "-io")
        self._io.start()

    def start(self, start_t=None, wait=True):
        """Boot (or reboot) the meter; waits for its tasks to run unless ``wait`` is False."""
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("URJA_"):
                env.pop(key)
        env.update({"URJA_STATE_DIR": self.dir, "URJA_CLI_PTY": self.cli.path,
                    "URJA_TIME_FACTOR": str(self.time_factor),
                    "URJA_WATCHDOG_MS": str(self.watchdog_ms)})
        if start_t or self.start_t:
            env["URJA_START_T"] = str(start_t or self.start_t)
        if self.settings is not None:
            path = os.path.join(self.dir, "factory.json")
            with open(path, "w") as f:
                json.dump(self.settings, f)
            env["URJA_CONFIG"] = path
        if self.rs485:
            env["URJA_RS485_PTY"] = self.rs485
        if self.dlms:
            env["URJA_DLMS_PTY"] = self.dlms
        env.update(self.extra_env)
        self.console.log("---", "start micropython (state %s)" % self.dir)
        boot_at = len(self.console.text)
        argv, cwd = [micropython(), "-m", "firmware.app.main"], ROOT
        if self.boot_selector:
            argv, cwd = [micropython(), os.path.join(ROOT, "boards", "unix", "ota_dirs.py"),
                         os.path.join(self.dir, "ota")], self.dir
        self.proc = subprocess.Popen(argv, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        threading.Thread(target=self._read_output, args=(self.proc,), daemon=True).start()
        if wait:  # the boot lines stay unread: a test may still expect them
            self.console.expect(re.compile(r"^urja: running tasks", re.M), 15, consume=False,
                                since=boot_at)
        return self

    def _read_output(self, proc):
        for raw in proc.stdout:
            self.console.feed_line("log", raw.decode("utf-8", "replace").rstrip("\r\n"))
        self.console.log("---", "micropython exited with %s" % proc.wait())
        with self.console.cond:
            self.console.cond.notify_all()

    def _io_loop(self):
        """CLI bytes -> console lines (and the adapter); adapter bytes -> CLI."""
        pending = b""
        while not self._stop.is_set():
            adapter = self.adapter
            fds = [self.cli.master] + ([adapter.master] if adapter else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                time.sleep(0.05)  # an fd closed under us (unplug, close)
                continue
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    time.sleep(0.02)
                    continue
                if fd == self.cli.master:
                    if adapter is not None:
                        _write_all(adapter.master, data)
                    pending += data
                    while b"\n" in pending:
                        raw, pending = pending.split(b"\n", 1)
                        self.console.feed_line("cli", raw.rstrip(b"\r").decode("latin-1"))
                else:
                    self.console.log(">>>", "(port) %r" % data)
                    _write_all(self.cli.master, data)

    def _send(self, data):
        _write_all(self.cli.master, data)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def control(self, line, timeout=5):
        """One line on the board's control socket (pulses, inputs, relay?, clock) -> reply."""
        reply = control_request(self.dir, line, timeout)
        self.control_log.write("[%8.3f] %s -> %s\n" % (time.monotonic() - self.t0, line, reply))
        self.control_log.flush()
        return reply

    def kill(self, why="power cut"):
        """Power cut: SIGKILL, nothing flushed."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            self.console.log("---", "killed (%s)" % why)

    def restart(self, start_t=None):
        """Power-cycle: kill, boot again on the same flash (state directory)."""
        self.kill()
        return self.start(start_t)

    @contextlib.contextmanager
    def serial_port(self):
        """A device path another program opens like the meter's USB-serial port.

        The DUT's own ``command`` keeps working; the adapter stays while the
        meter is killed (a dead meter is silent), ``unplug()`` removes it.
        """
        self.adapter = Pty()
        self.console.log("---", "adapter plugged in at %s" % self.adapter.path)
        try:
            yield self.adapter.path
        finally:
            self.unplug()

    def unplug(self):
        """Pull the USB-serial adapter: its path vanishes, an open port gets EIO."""
        adapter, self.adapter = self.adapter, None
        if adapter is not None:
            time.sleep(0.06)  # let the io loop drop the fd before it closes
            adapter.close()
            self.console.log("---", "adapter unplugged")

    def close(self):
        self.kill("end of test")
        self._stop.set()
        self._io.join(2)
        self.unplug()
        self.cli.close()
        self.control_log.close()
        Dut.close(self)
        shutil.rmtree(self.dir, ignore_errors=True)


class SerialDut(Dut):
    """A real board on ``port`` (pyserial): one UART carries the meter's log and its CLI."""

    def __init__(self, name, log_dir, port, baud=115200):
        import serial  # type: ignore[import-untyped]

        Dut.__init__(self, name, log_dir)
        self.port = port
        self.baud = baud
        self.serial_mod = serial
        self.serial = None
        self._stop = threading.Event()
        self._reader = None

    def start(self, start_t=None, wait=True):
        s = self.serial_mod.serial_for_url(self.port, do_not_open=True, baudrate=self.baud,
                                           timeout=0.05)
        s.dtr = False  # no reset into the bootloader on open
        s.rts = False
        s.open()
        self.serial = s
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=self.name)
        self._reader.start()
        if wait:
            info = self.command("info")
            self.meter_id = info.get("meter")
        return self

    def _read_loop(self):
        pending = b""
        while not self._stop.is_set():
            try:
                pending += self.serial.read(256)
            except (self.serial_mod.SerialException, OSError) as e:
                self.console.log("---", "port error: %s" % e)
                return
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                self.console.feed_line("uart", raw.rstrip(b"\r").decode("latin-1"))

    def _send(self, data):
        self.serial.write(data)
        self.serial.flush()

    def _release(self):
        self._stop.set()
        if self._reader is not None:
            self._reader.join(2)
        if self.serial is not None:
            self.serial.close()
            self.serial = None

    @contextlib.contextmanager
    def serial_port(self):
        """Lend the port to another program (one opener at a time), then take it back."""
        self._release()
        try:
            yield self.port
        finally:
            self.start(wait=False)

    def close(self):
        self._release()
        Dut.close(self)


def _write_all(fd, data):
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        except OSError:
            return  # the other side is gone (adapter unplugged)
        data = data[n:]
