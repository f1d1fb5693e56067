"""The board on an ESP32 (WROOM-32): ``machine`` pins, PCNT, UART2 + DE, WDT, NVS.

Everything here is polled from asyncio tasks; the only interrupt handler
(the PCNT overflow on the ``esp32.PCNT`` fallback) adds one to a counter.

>>> board = load_board("wroom32")
>>> wdt = board.start_watchdog()
>>> board.relay.set(True)
"""
import time

import esp32
import machine

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

from boards import hal
from boards.esp32.nvs_slots import DEFAULT_CAPACITY, NvsSlots
from firmware.core import localtime

_PCNT_MAX = const(32767)
_EPOCH_2000_S = const(946684800)  # 2000-01-01 UTC in Unix seconds: `date -u -d 2000-01-01 +%s`
_COUNTER_BITS = const(30)  # machine.Counter is unbounded; 30 bits keep reads small ints
_CONFIG_NAMESPACE = const("urjacfg")  # commissioning settings: an NVS namespace of their own
_METER_JOURNAL_CAPACITY = const(8192 + 15)  # firmware.app.main.METER_JOURNAL_BYTES + framing
_CURSOR_CAPACITY = const(64)  # the outbox cursor journal: 12-byte payload + 15 framing
_OTA_CAPACITY = const(512 + 15)  # boards.esp32.ota_partition.OTA_JOURNAL_BYTES + framing


def _pull(name):
    if name == "up":
        return machine.Pin.PULL_UP
    if name == "down":
        return machine.Pin.PULL_DOWN
    return None


class CounterPulses:
    """A PulseCounter on ``machine.Counter`` (MicroPython >= 1.27 on ESP32).

    PCNT, with the overflow handled inside.
    """

    bits = _COUNTER_BITS

    def __init__(self, unit, pin, edge, filter_ns):
        C = machine.Counter
        self.counter = C(unit, machine.Pin(pin, machine.Pin.IN),
                         edge=C.RISING if edge == "rising" else C.FALLING, filter_ns=filter_ns)

    def value(self):
        return self.counter.value() & ((1 << _COUNTER_BITS) - 1)


class PcntPulses:
    """A PulseCounter on the ``esp32.PCNT`` fallback.

    The 16-bit unit resets to 0 on reaching ``max``; the IRQ handler only
    counts those wraps (no allocation, no other work);
    ``value()`` combines wraps and the hardware count, re-reading if a wrap
    landed in between.
    """

    bits = _COUNTER_BITS

    def __init__(self, unit, pin, edge, filter_ns):
        P = esp32.PCNT
        ticks = min(1023, filter_ns * 2 // 25)  # 80 MHz APB: 12.5 ns per tick
        kw = {"rising": P.INCREMENT} if edge == "rising" else {"falling": P.INCREMENT}
        self.wraps = 0
        self.pcnt = P(unit, pin=machine.Pin(pin, machine.Pin.IN), filter=ticks, max=_PCNT_MAX,
                      min=0, **kw)
        self.pcnt.irq(self._wrapped, P.IRQ_MAX)
        self.pcnt.start()

    def _wrapped(self, _pcnt):
        self.wraps += 1

    def value(self):
        while True:
            w = self.wraps
            v = self.pcnt.value()
            if w == self.wraps:
                return (w * _PCNT_MAX + v) & ((1 << _COUNTER_BITS) - 1)


def _pulse_counter(cfg) -> "hal.PulseCounter":
    if hasattr(machine, "Counter"):
        return CounterPulses(0, cfg["pin"], cfg["edge"], cfg["filter_ns"])
    return PcntPulses(0, cfg["pin"], cfg["edge"], cfg["filter_ns"])


class PinOutput:
    """An output pin with an active level; ``drive(True)`` = active."""

    def __init__(self, pin, active):
        self.active_high = active == "high"
        self.pin = machine.Pin(pin, machine.Pin.OUT, value=0 if self.active_high else 1)

    def drive(self, on):
        self.pin.value(1 if bool(on) == self.active_high else 0)


class LevelRelay:
    """A Relay, monostable: the coil is held for as long as the contact is closed."""

    def __init__(self, cfg):
        self.out = PinOutput(cfg["pin"], cfg["active"])
        self.state = False

    def set(self, closed):
        self.out.drive(closed)
        self.state = bool(closed)

    def closed(self):
        return self.state


class LatchingRelay:
    """A Relay, bistable: a ``pulse_ms`` pulse on one coil closes it, on the other opens it.

    ``set`` blocks for ``pulse_ms`` (10-1000 ms, rare: only on a credit change)
    and always pulses, because the contact's position cannot be read back.
    """

    def __init__(self, cfg):
        self.close_coil = PinOutput(cfg["close_pin"], cfg["active"])
        self.open_coil = PinOutput(cfg["open_pin"], cfg["active"])
        self.pulse_ms = cfg["pulse_ms"]
        self.state = False

    def set(self, closed):
        coil = self.close_coil if closed else self.open_coil
        coil.drive(True)
        time.sleep_ms(self.pulse_ms)
        coil.drive(False)
        self.state = bool(closed)

    def closed(self):
        return self.state


class PinInput:
    """A DigitalInput on a GPIO, with its active level and pull."""

    def __init__(self, cfg):
        pull = _pull(cfg.get("pull", "none"))
        if pull is None:
            self.pin = machine.Pin(cfg["pin"], machine.Pin.IN)
        else:
            self.pin = machine.Pin(cfg["pin"], machine.Pin.IN, pull)
        self.active_level = 1 if cfg["active"] == "high" else 0

    def value(self):
        return self.pin.value() == self.active_level


class PinLed:
    """The Led on a GPIO."""

    def __init__(self, cfg):
        self.out = PinOutput(cfg["pin"], cfg["active"])
        self.state = False

    def set(self, on):
        self.out.drive(on)
        self.state = bool(on)

    def on(self):
        return self.state


class HardwareUart:
    """A Uart on a hardware UART (1 or 2, pins from the board file), never blocking on read.

    The commissioning CLI uses one as is (``cli_uart``): its own UART and
    pins, so the REPL on UART0 stays what it is and a field technician's
    cable never reaches a Python prompt.
    """

    def __init__(self, cfg):
        self.baud = cfg["baud"]
        self.uart = machine.UART(cfg["uart"], baudrate=self.baud, tx=cfg["tx"], rx=cfg["rx"],
                                 timeout=0, timeout_char=0)

    def read(self, n):
        if not self.uart.any():
            return b""
        return self.uart.read(n) or b""

    def write(self, data):
        return self.uart.write(data) or 0


class Rs485Uart(HardwareUart):
    """A hardware UART with the transceiver's DE pin high only while transmitting.

    ``write`` raises DE, queues the bytes, waits for the last stop bit
    (``UART.flush``: a 16-byte Modbus frame is ~17 ms at 9600 baud) and drops
    DE so the slave's answer is not talked over.
    """

    def __init__(self, cfg):
        HardwareUart.__init__(self, cfg)
        self.de = machine.Pin(cfg["de_pin"], machine.Pin.OUT, value=0)

    def write(self, data):
        self.de.value(1)
        try:
            n = self.uart.write(data) or 0
            self.uart.flush()
        finally:
            self.de.value(0)
        return n


class HardwareWatchdog:
    """The Watchdog: ``machine.WDT``."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self.wdt.feed()


class RtcClock:
    """The Clock on the ESP32 RTC as UTC seconds since 1970, whichever epoch the port uses."""

    def __init__(self):
        # older ESP32 builds count from 2000-01-01 (time.gmtime(0) says which)
        self.epoch_s = _EPOCH_2000_S if time.gmtime(0)[0] == 2000 else 0
        self.rtc = machine.RTC()

    def now(self):
        return int(time.time()) + self.epoch_s

    def set(self, t):
        days, sec = divmod(int(t), localtime.DAY_S)
        y, m, d = localtime.civil_from_days(days)
        wd = localtime.weekday_of_day(days)
        self.rtc.datetime((y, m, d, wd, sec // 3600, sec // 60 % 60, sec % 60, 0))


class Esp32Board(hal.Board):
    relay: "hal.Relay"
    clock: RtcClock

    def __init__(self, config):
        hal.Board.__init__(self, config)
        p = config.get("pulse_input")
        self.pulse_counter = _pulse_counter(p) if p is not None else None
        self.rs485 = Rs485Uart(config["rs485"]) if "rs485" in config else None
        relay = config["relay"]
        self.relay = LatchingRelay(relay) if relay["kind"] == "latching" else LevelRelay(relay)
        self.led = PinLed(config["led"]) if "led" in config else None
        self.cover = PinInput(config["cover_input"])
        self.commissioning = PinInput(config["commissioning_input"])
        self.power_fail = PinInput(config["power_fail_input"])
        self.clock = RtcClock()
        self.namespace = config.get("nvs_namespace", "urja")
        self.slots = NvsSlots(self.namespace, _METER_JOURNAL_CAPACITY)
        self.watchdog = None
        self._cli: "HardwareUart | None" = None

    def start_watchdog(self) -> "hal.Watchdog":  # annotated: mypy checks HardwareWatchdog
        if self.watchdog is None:
            self.watchdog = HardwareWatchdog(self.config["watchdog_timeout_ms"])
        return self.watchdog

    def poll(self):
        """Nothing to service: every part is read when the firmware asks."""

    def journal_slots(self, name):
        """NVS key pairs: meter ``j0``/``j1`` and outbox ``o0``/``o1`` in the board's
        namespace, config ``j0``/``j1`` in ``urjacfg`` (the layout meters already have);
        ``ota`` (the firmware update in progress, ``ota_partition.OtaPartitions``):
        ``u0``/``u1`` in the board's namespace."""
        if name == "config":
            return NvsSlots(_CONFIG_NAMESPACE, DEFAULT_CAPACITY)
        if name == "outbox":
            return NvsSlots(self.namespace, _CURSOR_CAPACITY, ("o0", "o1"))
        if name == "ota":
            return NvsSlots(self.namespace, _OTA_CAPACITY, ("u0", "u1"))
        return hal.Board.journal_slots(self, name)

    def outbox_segments(self):
        """The board file's ``outbox`` data partition as segments (``outbox_flash.py``), or None."""
        cfg = self.config.get("outbox")
        if cfg is None:
            return None
        from boards.esp32.outbox_flash import PartitionSegments, find_partition
        return PartitionSegments(find_partition(cfg["partition"]), cfg.get("segments"))

    def cli_uart(self) -> "hal.Uart | None":
        """The board file's ``cli_uart`` (UART1/2 on its own pins), opened once; None without one."""
        if self._cli is None and "cli_uart" in self.config:
            self._cli = HardwareUart(self.config["cli_uart"])
        return self._cli

    def dlms_uart(self) -> "hal.Uart | None":
        """None: a DLMS meter link is not wired on this board yet."""
        return None


make_board = Esp32Board  # what ``boards.hal.load_board`` calls with the validated board dict
