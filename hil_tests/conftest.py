"""Fixtures that play a meter's world around the firmware app on the unix board.

Each piece is a small class with start/stop so the later HIL plugin (a real
ESP32 instead of ``micropython``) can reuse the peers unchanged:

- ``broker``: a private Mosquitto (stop/start on the same port);
- ``Sdm120``: an Eastron SDM120 emulated on a pty with pymodbus's RTU framer
  and PDUs (float32 input registers at the datasheet addresses);
- ``DlmsPeer``: ``firmware.protocol.dlms_peer.MeterPeer`` on another pty;
- ``MeterApp``: ``micropython -m firmware.app.main`` with a temp state dir,
  plus clients for its control socket and its CLI pty;
- ``Uplinks``: a paho subscriber that decodes every uplink with
  ``messages.decode_uplink`` (persistent session, so nothing published while
  it reconnects is lost).

Every process and thread started here is stopped in the fixture's teardown.
"""
import json
import os
import pathlib
import queue
import random
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from firmware.tests.host.conftest import Broker
from hil_tests.plugin import *  # noqa: F401,F403  the HIL plugin: --board/--port/--count, dut, reports

from hil_tests import dut as dut_module  # noqa: E402  (one Pty / micropython lookup)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def micropython():
    try:
        return dut_module.micropython()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


def wait_for(pred, timeout_s, what, step_s=0.05):
    """Poll ``pred()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step_s)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout_s, what))


Pty = dut_module.Pty


class _PtyPeer:
    """A thread answering bytes on a pty master with ``self.answer(bytes) -> bytes``."""

    MODES = ("ok", "silent", "garbage", "bad_crc")

    def __init__(self):
        self.pty = Pty()
        self.path = self.pty.path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.requests = 0
        self._mode = "ok"
        self._reset_pending = False
        self._rng = random.Random(5)

    @property
    def mode(self):
        """``ok``; ``silent`` (requests swallowed: the master times out); ``garbage``
        (random bytes instead of a reply); ``bad_crc`` (the right reply, one check byte flipped).
        Switching back to ``ok`` resets the peer's protocol state, as a power-cycled meter."""
        return self._mode

    @mode.setter
    def mode(self, value):
        if value not in self.MODES:
            raise ValueError("mode must be one of %s" % (self.MODES,))
        if value == "ok" and self._mode != "ok":
            self._reset_pending = True  # done by the peer's thread, between requests
        self._mode = value

    def reset(self):
        """Forget half-received requests and session state (subclasses)."""

    def corrupt(self, reply):
        """``reply`` with its check sequence broken (subclasses know where it is)."""
        return reply[:-1] + bytes([reply[-1] ^ 0xFF])

    def _reply(self, data):
        mode = self._mode
        if self._reset_pending:
            self._reset_pending = False
            self.reset()
        if mode == "silent":
            return b""
        if mode == "garbage":
            return bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(5, 40)))
        reply = self.answer(data)
        if reply and mode == "bad_crc":
            return self.corrupt(reply)
        return reply

    def start(self):
        self._thread.start()
        return self

    def _loop(self):
        fd = self.pty.master
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 512)
            except OSError:
                time.sleep(0.05)  # EIO until the firmware opens the slave side
                continue
            reply = self._reply(data)
            if reply:
                os.write(fd, reply)

    def answer(self, data):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        self.pty.close()


class Sdm120(_PtyPeer):
    """An SDM120 on Modbus RTU slave ``slave``: input registers as float32, high word first.

    Requests are decoded and replies built by pymodbus (``FramerRTU``,
    ``DecodePDU``, ``ReadInputRegistersResponse``): an implementation
    independent of ours.  ``set(name, value)`` changes a value live.
    """

    ADDRESSES = {"voltage": 0x0000, "current": 0x0006, "power": 0x000C, "pf": 0x001E,
                 "frequency": 0x0046, "import_kwh": 0x0048, "export_kwh": 0x004A,
                 "total_kwh": 0x0156}

    def __init__(self, slave=1, **values):
        from pymodbus.framer import FramerRTU
        from pymodbus.pdu import DecodePDU

        _PtyPeer.__init__(self)
        self.slave = slave
        self.server = FramerRTU(DecodePDU(True))
        self.builder = FramerRTU(DecodePDU(False))
        self.registers = {}
        self.lock = threading.Lock()
        self.buf = b""
        for name, value in values.items():
            self.set(name, value)

    def set(self, name, value):
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        with self.lock:
            self.registers[self.ADDRESSES[name]] = hi
            self.registers[self.ADDRESSES[name] + 1] = lo

    def reset(self):
        self.buf = b""

    def answer(self, data):
        from pymodbus.pdu import register_message as pm

        self.buf += data
        used, pdu = self.server.handleFrame(self.buf, 0, 0)
        if pdu is None:
            if len(self.buf) > 256:
                self.buf = b""
            return b""
        self.buf = self.buf[used:]
        if pdu.dev_id != self.slave or pdu.function_code != 4:
            return b""
        self.requests += 1
        with self.lock:
            regs = [self.registers.get(a, 0) for a in range(pdu.address, pdu.address + pdu.count)]
        return self.builder.buildFrame(pm.ReadInputRegistersResponse(
            dev_id=self.slave, address=pdu.address, registers=regs))


class DlmsPeer(_PtyPeer):
    """``MeterPeer`` (IS 15959 objects: energy Wh, voltage) behind a pty."""

    def __init__(self, energy_wh=1234567, voltage_dv=2301, server_physical=17):
        from firmware.protocol import dlms_data, dlms_objects
        from firmware.protocol.dlms_peer import MeterPeer

        _PtyPeer.__init__(self)
        u32 = dlms_data.DOUBLE_LONG_UNSIGNED
        # scaler/unit structures {integer scaler, enum unit}: 0 Wh; -1 V (decivolts)
        objects = {
            (3, dlms_objects.ENERGY_IMPORT, 2): dlms_data.enc_int(u32, energy_wh),
            (3, dlms_objects.ENERGY_IMPORT, 3): bytes.fromhex("02020F00161E"),
            (3, dlms_objects.VOLTAGE, 2): dlms_data.enc_int(dlms_data.LONG_UNSIGNED, voltage_dv),
            (3, dlms_objects.VOLTAGE, 3): bytes.fromhex("02020FFF1623"),
        }
        self.objects = objects
        self.server_physical = server_physical
        self.peer = MeterPeer(objects, server_physical=server_physical)

    def set_energy(self, energy_wh):
        """The cumulative import register (Wh), live."""
        from firmware.protocol import dlms_data, dlms_objects

        self.objects[(3, dlms_objects.ENERGY_IMPORT, 2)] = dlms_data.enc_int(
            dlms_data.DOUBLE_LONG_UNSIGNED, energy_wh)

    def reset(self):
        from firmware.protocol.dlms_peer import MeterPeer

        self.peer = MeterPeer(self.objects, server_physical=self.server_physical)

    def corrupt(self, reply):
        # HDLC: ... FCS (2 bytes) then the 0x7E flag; break the FCS, keep the framing
        return reply[:-2] + bytes([reply[-2] ^ 0xFF]) + reply[-1:]

    def answer(self, data):
        self.requests += 1
        return self.peer.feed(data)


class MeterApp:
    """The firmware app in ``micropython`` on the unix board, with its world attached."""

    def __init__(self, settings, rs485=None, dlms=None, time_factor=300, start_t=1795753800,
                 watchdog_ms=8000, fault_hang=None, state_dir=None):
        self.dir = state_dir or tempfile.mkdtemp(prefix="urja-app-")  # short: AF_UNIX path limit
        self.settings = settings
        self.rs485 = rs485
        self.dlms = dlms
        self.time_factor = time_factor
        self.start_t = start_t
        self.watchdog_ms = watchdog_ms
        self.fault_hang = fault_hang
        self.cli_pty = Pty()
        self.proc = None
        self.lines = queue.Queue()
        self.output = []
        self._cli_buf = b""

    def start(self, start_t=None):
        with open(os.path.join(self.dir, "factory.json"), "w") as f:
            json.dump(self.settings, f)
        env = dict(os.environ)
        env.update({"URJA_STATE_DIR": self.dir, "URJA_CONFIG": os.path.join(self.dir, "factory.json"),
                    "URJA_TIME_FACTOR": str(self.time_factor),
                    "URJA_START_T": str(start_t or self.start_t),
                    "URJA_WATCHDOG_MS": str(self.watchdog_ms),
                    "URJA_CLI_PTY": self.cli_pty.path})
        for key, value in (("URJA_RS485_PTY", self.rs485), ("URJA_DLMS_PTY", self.dlms),
                           ("URJA_FAULT_HANG", self.fault_hang)):
            env.pop(key, None)
            if value:
                env[key] = value
        self.proc = subprocess.Popen([micropython(), "-m", "firmware.app.main"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        threading.Thread(target=self._read_output, args=(self.proc,), daemon=True).start()
        self.wait_line("urja: running tasks", 15)
        return self

    def _read_output(self, proc):
        for line in proc.stdout:
            self.output.append(line.rstrip())
            self.lines.put(line.rstrip())

    def wait_line(self, prefix, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError("no line %r from the app; output:\n%s" % (prefix, self.log()))

    def log(self):
        return "\n".join(self.output[-60:])

    def control(self, command, timeout_s=5):
        """One line on the unix board's control socket -> its reply line."""
        return dut_module.control_request(self.dir, command, timeout_s)

    def cli(self, line, timeout_s=5):
        """One command on the CLI pty -> the reply line (str)."""
        fd = self.cli_pty.master
        os.write(fd, line if isinstance(line, bytes) else line.encode() + b"\r\n")
        deadline = time.monotonic() + timeout_s
        while b"\r\n" not in self._cli_buf and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                self._cli_buf += os.read(fd, 4096)
        if b"\r\n" not in self._cli_buf:
            raise AssertionError("no CLI reply to %r; output:\n%s" % (line, self.log()))
        reply, self._cli_buf = self._cli_buf.split(b"\r\n", 1)
        return reply.decode()

    def wait_exit(self, timeout_s):
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError("the app did not exit within %ss:\n%s" % (timeout_s, self.log()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self):
        self.stop()
        self.cli_pty.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def parse_ok(reply):
    """'OK a=1 b=x' -> {'a': '1', 'b': 'x'} (values still %XX-escaped)."""
    assert reply.startswith("OK"), reply
    return dict(part.split("=", 1) for part in reply.split()[1:])


class Uplinks:
    """Every uplink of one meter, decoded, in arrival order (paho, QoS 1, persistent session)."""

    def __init__(self, host, port, meter_id):
        import paho.mqtt.client as mqtt

        from firmware.protocol import messages

        self.messages = messages
        self.meter_id = meter_id
        self.received = []
        self.errors = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="hil-" + meter_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "paho could not connect to the broker"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe("urja/v1/%s/up/#" % self.meter_id, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        try:
            body = self.messages.decode_uplink(msg.topic, msg.payload)
        except Exception as e:  # a body that breaks docs/protocol.md fails the test
            self.errors.append("%s: %s" % (msg.topic, e))
            return
        with self.lock:
            self.received.append(body)

    def of(self, kind):
        with self.lock:
            return [b for b in self.received if b["kind"] == kind]

    def wait(self, pred, timeout_s, what):
        return wait_for(lambda: pred(self), timeout_s, what)

    def publish(self, topic, payload):
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker():
    """A private Mosquitto for one test (the outage test stops and restarts it)."""
    workdir = tempfile.mkdtemp(prefix="urja-hil-mosq-")
    b = Broker(workdir)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def world(request):
    """Starts and always stops the peers and apps a test creates: ``world.add(thing)``."""
    things = []

    class World:
        def add(self, thing):
            things.append(thing)
            return thing

    yield World()
    for thing in reversed(things):
        for name in ("close", "stop"):
            fn = getattr(thing, name, None)
            if fn is not None:
                try:
                    fn()
                except Exception:
                    pass
                break
