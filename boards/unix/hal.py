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

WATCHDOG_EXIT = const(75)  # process exit status for "the watchdog reset the board"
RESTART_EXIT = const(76)  # "the firmware asked for a reset" (OTA switch): the harness boots it again
_MAX_CLIENTS = const(4)

try:  # MicroPython: bound to the built-ins, no function objects of our own
    from time import ticks_diff as _ticks_diff, ticks_ms as _ticks_ms
except ImportError:  # CPython (tests): milliseconds that never wrap
    def _ticks_ms():  # type: ignore[misc, no-redef]
        return int(time.monotonic() * 1000)  # type: ignore[attr-defined]

    def _ticks_diff(a, b):  # type: ignore[misc, no-redef]
        return a - b


class MemoryPulseCounter:
    """A PulseCounter: impulses injected over the control socket; wraps at 2**32 like hardware."""

    bits = 32

    def __init__(self):
        self.total = 0  # the control socket adds to it (``boards.unix.control.BoardSession``)

    def value(self):
        return self.total & 0xFFFFFFFF


class MemorySwitch:
    """The relay, the LED or a logic input, as one bool ``state`` in memory.

    The firmware sets the relay and the LED (``set``) and the control socket
    reads them back; the control socket sets an input (True = active) and
    the firmware reads it: ``closed()`` (Relay), ``on()`` (Led) and
    ``value()`` (DigitalInput) all return ``state``.
    """

    def __init__(self):
        self.state = False

    def set(self, on):
        self.state = bool(on)

    def value(self):
        return self.state

    closed = on = value  # one function under the Relay's and the Led's names


class OffsetClock:
    """A Clock: ``time.time()`` plus an offset; ``set`` (or ``clock T`` on the socket) jumps it."""

    def __init__(self):
        self.offset = 0

    def now(self):
        return int(time.time()) + self.offset

    def set(self, t):
        self.offset = int(t) - int(time.time())


class ProcessWatchdog:
    """A Watchdog that exits the process with status ``WATCHDOG_EXIT`` when not fed in time.

    Checked from ``UnixBoard.poll``: it catches tasks that stop feeding, not an
    event loop that is blocked outright (the test harness's timeout does that).
    """

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0
        self.last = _ticks_ms()

    def feed(self):
        self.feeds += 1
        self.last = _ticks_ms()


class PtyUart:
    """A Uart: RS485 as a pty (or any tty) path, raw mode, non-blocking by polling.

    MicroPython's file ``read(n)`` blocks until ``n`` bytes arrive, so bytes
    are taken one at a time while ``poll`` says more are waiting; at RS485
    rates (<= 115200 baud, 11.5 kB/s) that is cheap.
    """

    def __init__(self, path, baud):
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


def _pty_uart(cfg, default_env) -> "PtyUart | None":
    """A ``PtyUart`` for a board-file UART section (``device`` or ``device_env``), or None."""
    if cfg is None:
        return None
    path = cfg.get("device") or os.getenv(cfg.get("device_env") or default_env)
    return PtyUart(path, cfg["baud"]) if path else None


class UnixBoard(hal.Board):
    """The unix board: memory I/O behind a control socket, pty RS485, file slots.

    The board serves the control socket itself (``unix:PATH`` or
    ``tcp:HOST:PORT``, the board file's ``control``) from ``poll``;
    ``boards.unix.control`` (the protocol, and ``BoardSession``, one client
    on this board) loads with the first client.
    """

    pulse_counter: "MemoryPulseCounter | None"
    relay: MemorySwitch
    led: "MemorySwitch | None"
    cover: MemorySwitch
    commissioning: MemorySwitch
    power_fail: MemorySwitch
    clock: OffsetClock
    rs485: "PtyUart | None"
    slots: FileSlots

    def __init__(self, config):
        hal.Board.__init__(self, config)
        d = config.get("state_dir", "/tmp/urja-unix")
        parts = d.split("/")  # mkdir -p (MicroPython's os has no makedirs)
        for i in range(2, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub:
                try:
                    os.mkdir(sub)
                except OSError:
                    pass  # exists; a real failure shows on first use
        self.pulse_counter = MemoryPulseCounter() if "pulse_input" in config else None
        self.relay = MemorySwitch()
        self.led = MemorySwitch() if "led" in config else None
        self.cover = MemorySwitch()
        self.commissioning = MemorySwitch()
        self.power_fail = MemorySwitch()
        self.clock = OffsetClock()
        self.slots = FileSlots(d)  # its ``directory`` is the state_dir from here on
        self.watchdog: "ProcessWatchdog | None" = None
        self.rs485 = _pty_uart(config.get("rs485"), "URJA_RS485_PTY")
        self._cli = None
        self._dlms = None
        # the control socket; its clients are ``boards.unix.control.BoardSession``s
        address = config.get("control") or "unix:%s/control.sock" % d
        if address.startswith("unix:"):
            path = address[5:]
            try:
                os.remove(path)  # a stale socket from a killed run
            except OSError:
                pass
            af = getattr(socket, "AF_UNIX", 1)  # the ESP32 stubs lack it; the unix port has it
            s = socket.socket(af, socket.SOCK_STREAM)
            if sys.implementation.name == "micropython":  # it takes a raw struct sockaddr_un
                s.bind(af.to_bytes(2, sys.byteorder) + path.encode() + b"\x00")
            else:
                s.bind(path)
        else:
            host, port = address[4:].rsplit(":", 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(socket.getaddrinfo(host, int(port))[0][-1])
        s.listen(2)
        s.setblocking(False)
        self.sock = s
        self.clients: list = []
        self.poller = select.poll()
        self.poller.register(s, select.POLLIN)

    def start_watchdog(self) -> "hal.Watchdog":  # annotated: mypy checks ProcessWatchdog
        if self.watchdog is None:
            self.watchdog = ProcessWatchdog(self.config["watchdog_timeout_ms"])
        return self.watchdog

    def poll(self):
        """Serve the control socket's ready clients, then check the watchdog."""
        # MicroPython's poll() gives the registered objects, CPython's their fds
        for obj, _ in self.poller.poll(0):
            if obj is self.sock or obj == self.sock.fileno():  # a new client
                try:
                    conn, _ = self.sock.accept()
                except OSError:  # EAGAIN: the client went away already
                    continue
                if len(self.clients) >= _MAX_CLIENTS:
                    conn.close()
                    continue
                conn.setblocking(False)
                from boards.unix import control  # the protocol loads with the first client (heap)
                self.clients.append(control.BoardSession(self, conn))
                self.poller.register(conn, select.POLLIN)
                continue
            for client in self.clients:
                if client.conn is obj or obj == client.conn.fileno():
                    client.serve()  # may drop it from clients: stop iterating
                    break
        w = self.watchdog
        if w is not None and _ticks_diff(_ticks_ms(), w.last) > w.timeout_ms:
            print("urja-unix: watchdog expired after %d ms, resetting" % w.timeout_ms)
            sys.exit(WATCHDOG_EXIT)

    def restart(self):
        """Reset the board (a new firmware image was installed): on the unix port the process
        exits with ``RESTART_EXIT`` and whoever runs it boots it again, through the selector."""
        print("urja-unix: reset requested, exiting with %d" % RESTART_EXIT)
        self.close()
        sys.exit(RESTART_EXIT)

    def close(self):
        for client in list(self.clients):
            client.close()
        self.sock.close()
        for uart in (self.rs485, self._cli, self._dlms):
            if uart is not None:
                uart.close()

    # ---------------------------------------- storage and links (boards.hal.Board)
    def journal_slots(self, name):
        """Files in ``state_dir`` (meter), ``state_dir/config``, ``state_dir/outbox``."""
        if name in ("config", "outbox"):
            return FileSlots(self.slots.directory + "/" + name)
        return hal.Board.journal_slots(self, name)

    def outbox_segments(self):
        """``seg<N>.bin`` files in ``state_dir/outbox`` (``boards/unix/outbox_files.py``)."""
        from boards.unix.outbox_files import FileSegments
        return FileSegments(self.slots.directory + "/outbox")

    def cli_uart(self) -> "hal.Uart | None":
        """The board file's ``cli_uart`` pty (by default the path in ``URJA_CLI_PTY``), or None."""
        if self._cli is None:
            self._cli = _pty_uart(self.config.get("cli_uart"), "URJA_CLI_PTY")
        return self._cli

    def dlms_uart(self) -> "hal.Uart | None":
        """A DLMS meter on the pty in ``URJA_DLMS_PTY`` (9600 baud), or None."""
        if self._dlms is None:
            path = os.getenv("URJA_DLMS_PTY")
            self._dlms = PtyUart(path, 9600) if path else None
        return self._dlms


make_board = UnixBoard  # what ``boards.hal.load_board`` calls with the validated board dict
