"""The board on a PC: MicroPython's unix port (also imports on CPython, for tests).

The meter's physical world lives in memory and is driven over a control
socket (``boards/unix/control.py`` has the protocol): a test injects
impulses, flips inputs, jumps the clock, and reads the relay and LED the
firmware set.  RS485 is a pty (the test holds the other end: a pymodbus
SDM120 emulator, a DLMS peer), flash is ``FileSlots`` in ``state_dir``.

The firmware calls ``board.poll()`` from a task (every ~50 ms); it answers
pending control lines and checks the watchdog.  No threads, nothing blocks.

>>> board = load_board("unix", {"state_dir": "/tmp/m1", "control": "unix:/tmp/m1/ctl.sock"})
>>> board.poll()                # serve the control socket
>>> board.pulse_counter.value() # after the test sent "pulses 16"
16
"""
import errno
import os
import select
import socket
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

from boards import hal
from boards.unix.flash import FileSlots

MICROPYTHON = sys.implementation.name == "micropython"
WATCHDOG_EXIT = const(75)  # process exit status for "the watchdog reset the board"
RESTART_EXIT = const(76)  # "the firmware asked for a reset" (OTA switch): the harness boots it again
_READ_CHUNK = const(256)
_MAX_CLIENTS = const(4)
_AF_UNIX = getattr(socket, "AF_UNIX", 1)  # the ESP32 stubs lack it; the unix port has it


def _ticks_ms():
    if MICROPYTHON:
        return time.ticks_ms()  # type: ignore[attr-defined]
    return int(time.monotonic() * 1000)  # type: ignore[attr-defined]


def _ticks_diff(a, b):
    if MICROPYTHON:
        return time.ticks_diff(a, b)  # type: ignore[attr-defined]
    return a - b


def _makedirs(path):
    """mkdir -p (MicroPython's os has no makedirs)."""
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub:
            try:
                os.mkdir(sub)
            except OSError:
                pass  # exists; a real failure shows on first use


class MemoryPulseCounter(hal.PulseCounter):
    """Impulses injected over the control socket; wraps at 2**32 like a hardware counter."""

    bits = 32

    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total

    def value(self):
        return self.total & 0xFFFFFFFF


class MemoryRelay(hal.Relay):
    """Remembers what the firmware set; ``switches`` counts changes (tests check chatter)."""

    def __init__(self):
        self.state = False
        self.switches = 0

    def set(self, closed):
        closed = bool(closed)
        if closed != self.state:
            self.switches += 1
        self.state = closed

    def closed(self):
        return self.state


class MemoryInput(hal.DigitalInput):
    def __init__(self):
        self.active = False

    def value(self):
        return self.active


class MemoryLed(hal.Led):
    def __init__(self):
        self.state = False

    def set(self, on):
        self.state = bool(on)

    def on(self):
        return self.state


class OffsetClock(hal.Clock):
    """``time.time()`` plus an offset: ``set`` (or ``clock T`` on the socket) jumps it."""

    def __init__(self):
        self.offset = 0

    def now(self):
        return int(time.time()) + self.offset

    def set(self, t):
        self.offset = int(t) - int(time.time())


class ProcessWatchdog(hal.Watchdog):
    """Exits the process with status ``WATCHDOG_EXIT`` when not fed in time.

    Checked from ``Board.poll``: it catches tasks that stop feeding, not an
    event loop that is blocked outright (the test harness's timeout does that).
    """

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0
        self.last = _ticks_ms()

    def feed(self):
        self.feeds += 1
        self.last = _ticks_ms()

    def expired(self):
        return _ticks_diff(_ticks_ms(), self.last) > self.timeout_ms


class PtyUart(hal.Uart):
    """RS485 as a pty (or any tty) path, raw mode, non-blocking by polling.

    MicroPython's file ``read(n)`` blocks until ``n`` bytes arrive, so bytes
    are taken one at a time while ``poll`` says more are waiting; at RS485
    rates (<= 115200 baud, 11.5 kB/s) that is cheap.
    """

    def __init__(self, path, baud):
        self.path = path
        self.baud = baud
        self.f = open(path, "r+b", buffering=0)
        try:
            import termios  # type: ignore[import-not-found]  # unix port only
            if hasattr(termios, "setraw"):  # MicroPython's termios
                termios.setraw(self.f.fileno())
            else:
                import tty  # type: ignore[import-not-found]  # CPython
                tty.setraw(self.f.fileno())
        except ImportError:
            pass  # no termios: a plain file/FIFO still works
        self.poller = select.poll()
        self.poller.register(self.f, select.POLLIN)
        self.one = bytearray(1)

    def read(self, n):
        out = bytearray()
        while len(out) < n and self.poller.poll(0):
            if self.f.readinto(self.one) != 1:
                break
            out.append(self.one[0])
        return bytes(out)

    def write(self, data):
        return self.f.write(data) or 0

    def close(self):
        self.f.close()


def _pty_uart(cfg, default_env):
    """A ``PtyUart`` for a board-file UART section (``device`` or ``device_env``), or None."""
    if cfg is None:
        return None
    path = cfg.get("device") or os.getenv(cfg.get("device_env") or default_env)
    return PtyUart(path, cfg["baud"]) if path else None


def _sockaddr(path):
    if MICROPYTHON:  # the unix port takes a raw struct sockaddr_un
        import struct
        return struct.pack("H", _AF_UNIX) + path.encode() + b"\x00"
    return path


class ControlServer:
    """Listens on ``unix:PATH`` or ``tcp:HOST:PORT``; ``poll()`` serves ready clients."""

    def __init__(self, address, target):
        self.address = address
        self.target = target
        self.clients = []  # [socket, LineBuffer]
        self.poller = select.poll()
        if address.startswith("unix:"):
            path = address[5:]
            try:
                os.remove(path)  # a stale socket from a killed run
            except OSError:
                pass
            s = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
            s.bind(_sockaddr(path))
        else:
            host, port = address[4:].rsplit(":", 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(socket.getaddrinfo(host, int(port))[0][-1])
        s.listen(2)
        s.setblocking(False)
        self.sock = s
        self.poller.register(s, select.POLLIN)

    def poll(self):
        for obj, _ in self.poller.poll(0):
            if obj is self.sock or (not MICROPYTHON and obj == self.sock.fileno()):
                self._accept()
            else:
                self._serve(obj)

    def _accept(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:  # EAGAIN: the client went away already
            return
        if len(self.clients) >= _MAX_CLIENTS:
            conn.close()
            return
        conn.setblocking(False)
        from boards.unix import control  # the protocol loads with the first client (heap)
        self.clients.append([conn, control.LineBuffer()])
        self.poller.register(conn, select.POLLIN)

    def _serve(self, obj):
        for entry in self.clients:
            conn = entry[0]
            if conn is obj or (not MICROPYTHON and obj == conn.fileno()):
                break
        else:
            return
        try:
            data = conn.recv(_READ_CHUNK)
        except OSError as err:
            if err.errno == errno.EAGAIN:  # spurious wake-up: nothing to read yet
                return
            data = b""  # ECONNRESET and friends: the client is gone
        if not data:
            self._drop(entry)
            return
        from boards.unix import control
        replies = [control.handle(line, self.target) for line in entry[1].feed(data)]
        if replies:
            try:
                conn.send(("\n".join(replies) + "\n").encode())
            except OSError:
                self._drop(entry)

    def _drop(self, entry):
        try:
            self.poller.unregister(entry[0])
        except (OSError, ValueError, KeyError):
            pass
        entry[0].close()
        self.clients.remove(entry)

    def close(self):
        for entry in list(self.clients):
            self._drop(entry)
        self.sock.close()


class UnixBoard(hal.Board):
    """The unix board: memory I/O behind a control socket, pty RS485, file slots.

    It is also the control protocol's target (``add_pulses``, ``relay_closed``...).
    """

    pulse_counter: "MemoryPulseCounter | None"
    relay: MemoryRelay
    led: "MemoryLed | None"
    cover: MemoryInput
    commissioning: MemoryInput
    power_fail: MemoryInput
    clock: OffsetClock
    rs485: "PtyUart | None"

    def __init__(self, config):
        hal.Board.__init__(self, config)
        self.state_dir = config.get("state_dir", "/tmp/urja-unix")
        _makedirs(self.state_dir)
        self.pulse_counter = MemoryPulseCounter() if "pulse_input" in config else None
        self.relay = MemoryRelay()
        self.led = MemoryLed() if "led" in config else None
        self.cover = MemoryInput()
        self.commissioning = MemoryInput()
        self.power_fail = MemoryInput()
        self.clock = OffsetClock()
        self.slots = FileSlots(self.state_dir)
        self.watchdog = None
        self.rs485 = _pty_uart(config.get("rs485"), "URJA_RS485_PTY")
        self._cli = None
        self._dlms = None
        self.control = ControlServer(config.get("control") or
                                     "unix:%s/control.sock" % self.state_dir, self)

    def start_watchdog(self):
        if self.watchdog is None:
            self.watchdog = ProcessWatchdog(self.config["watchdog_timeout_ms"])
        return self.watchdog

    def poll(self):
        self.control.poll()
        if self.watchdog is not None and self.watchdog.expired():
            print("urja-unix: watchdog expired after %d ms, resetting" % self.watchdog.timeout_ms)
            sys.exit(WATCHDOG_EXIT)

    def restart(self):
        """Reset the board (a new firmware image was installed): on the unix port the process
        exits with ``RESTART_EXIT`` and whoever runs it boots it again, through the selector."""
        print("urja-unix: reset requested, exiting with %d" % RESTART_EXIT)
        self.close()
        sys.exit(RESTART_EXIT)

    def close(self):
        self.control.close()
        for uart in (self.rs485, self._cli, self._dlms):
            if uart is not None:
                uart.close()

    # ---------------------------------------- storage and links (boards.hal.Board)
    def journal_slots(self, name):
        """Files in ``state_dir`` (meter), ``state_dir/config``, ``state_dir/outbox``."""
        if name in ("config", "outbox"):
            return FileSlots(self.state_dir + "/" + name)
        return hal.Board.journal_slots(self, name)

    def outbox_segments(self):
        """``seg<N>.bin`` files in ``state_dir/outbox`` (``boards/unix/outbox_files.py``)."""
        from boards.unix.outbox_files import FileSegments
        return FileSegments(self.state_dir + "/outbox")

    def cli_uart(self):
        """The board file's ``cli_uart`` pty (by default the path in ``URJA_CLI_PTY``), or None."""
        if self._cli is None:
            self._cli = _pty_uart(self.config.get("cli_uart"), "URJA_CLI_PTY")
        return self._cli

    def dlms_uart(self):
        """A DLMS meter on the pty in ``URJA_DLMS_PTY`` (9600 baud), or None."""
        if self._dlms is None:
            self._dlms = _pty_uart({"device_env": "URJA_DLMS_PTY", "baud": 9600}, "URJA_DLMS_PTY")
        return self._dlms

    # ---------------------------------------- control protocol target
    def add_pulses(self, n):
        if self.pulse_counter is None:
            return 0
        return self.pulse_counter.add(n)

    def pulse_total(self):
        return self.pulse_counter.total if self.pulse_counter is not None else 0

    def _input(self, name):
        if name == "cover":
            return self.cover
        if name == "commissioning":
            return self.commissioning
        return self.power_fail

    def set_input(self, name, active):
        self._input(name).active = bool(active)

    def input_value(self, name):
        return self._input(name).value()

    def relay_closed(self):
        return self.relay.closed()

    def led_on(self):
        return self.led.on() if self.led is not None else False

    def now(self):
        return self.clock.now()

    def set_now(self, t):
        self.clock.set(t)

    def watchdog_feeds(self):
        return self.watchdog.feeds if self.watchdog is not None else 0


def make_board(config):
    """Instantiate a validated unix board dict (``boards.hal.load_board`` calls this)."""
    return UnixBoard(config)
