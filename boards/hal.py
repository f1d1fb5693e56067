"""The board interface the firmware programs against (never ``machine`` directly).

Each platform (``boards/esp32``, ``boards/unix``) implements these interfaces
(by their methods: the classes here are ``typing.Protocol``s, for mypy only) and
subclasses ``Board``; the firmware receives a board and calls only the methods
documented here.
"""

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

# The interface is a set of ``typing.Protocol`` classes under ``if TYPE_CHECKING:``:
# mypy treats any TYPE_CHECKING as true and checks each platform's classes
# structurally wherever they are stored or returned as these types (the
# ``Board`` attributes, ``start_watchdog``), and every call made through them,
# while MicroPython's compiler drops a block whose condition is a const 0, so
# the interface costs no heap on the meter (and CPython skips it too).  The
# platforms' parts inherit nothing from these classes; one that lacks a method
# fails with AttributeError where it is called.
TYPE_CHECKING = const(0)

if TYPE_CHECKING:  # the interface, for mypy and readers (see TYPE_CHECKING)
    from typing import Protocol

    class SlotStorage(Protocol):
        """Two (or more) independently written slots of persistent bytes.

        The journal (``firmware.core.journal``) writes whole records into slot 0
        or 1 and reads them back after a reset.  A board implements:

        - ``read(slot)`` -> the bytes last written to ``slot``, or ``None`` when the
          slot was never written.  After a power cut in the middle of ``write`` it
          may return a prefix of the new data, or anything else: the journal checks
          magic, length and CRC, so the storage need not be atomic.
        - ``write(slot, data)`` -> ``None``; replaces the slot's contents.  Raise
          ``OSError`` on a hardware failure.

        Writing one slot must never disturb the other: that is the whole point of
        keeping two.

        >>> class RamSlots:  # a SlotStorage by its methods: no base class needed
        ...     def __init__(self): self.slots = [None, None]
        ...     def read(self, slot): return self.slots[slot]
        ...     def write(self, slot, data): self.slots[slot] = bytes(data)
        """

        def read(self, slot: int): ...

        def write(self, slot: int, data) -> None: ...

    class PulseCounter(Protocol):
        """A free-running impulse counter on the meter's pulse input.

        - ``value()`` -> the raw count, an int that wraps modulo ``2 ** bits``
          (never reset by reading); feed it to
          ``firmware.core.metering.CounterDelta(counter.bits)`` to get pulses per read.
        - ``bits``: the counter's width (each implementation sets it; 32 on the unix board).

        >>> delta = CounterDelta(board.pulse_counter.bits)
        >>> pulses = delta.update(board.pulse_counter.value())
        """

        bits: int

        def value(self) -> int: ...

    class Relay(Protocol):
        """The load switch.  Only ``firmware.core.credit`` decides it; the board just obeys.

        - ``set(closed)``: True closes the contact (supply on), False opens it.
        - ``closed()`` -> the state last set (a latching relay cannot be read
          back: after a reset it is unknown until the first ``set``, so the shell
          sets it once at boot from the credit state).

        >>> board.relay.set(False); board.relay.closed()
        False
        """

        def set(self, closed: bool) -> None: ...

        def closed(self) -> bool: ...

    class DigitalInput(Protocol):
        """A polled logic input: cover switch, commissioning input, power-fail detect.

        ``value()`` -> True when the input is *active* (cover open, commissioning
        enabled, supply failing), whatever the pin's electrical level.  Read it
        from a task; a board never runs firmware code in an interrupt.

        >>> if board.commissioning.value(): allow_key_provisioning()
        """

        def value(self) -> bool: ...

    class Uart(Protocol):
        """A byte link to the RS485 bus (Modbus/DLMS meter), never blocking.

        - ``read(n)`` -> up to ``n`` bytes that have already arrived, or ``b""``.
        - ``write(data)`` -> bytes written; the board drives the RS485 driver-enable
          (DE) pin around the transmission itself, so the caller only sees bytes.
        - ``baud``: the configured rate (protocol timing, e.g. the Modbus 3.5-character gap).

        >>> board.rs485.write(frame)
        >>> reply = board.rs485.read(256)
        """

        baud: int

        def read(self, n: int) -> bytes: ...

        def write(self, data) -> int: ...

    class Watchdog(Protocol):
        """A started hardware watchdog: ``feed()`` within ``timeout_ms`` or the board resets.

        Started only by ``Board.start_watchdog()`` (it cannot be stopped once started).
        """

        timeout_ms: int

        def feed(self) -> None: ...

    class Led(Protocol):
        """The status LED: ``set(on)``; ``on()`` -> the state last set."""

        def set(self, on: bool) -> None: ...

        def on(self) -> bool: ...

    class Clock(Protocol):
        """Wall-clock time as integer UTC seconds since 1970 (the only clock the shell reads).

        - ``now()`` -> int UTC seconds.
        - ``set(t)``: set it (time sync downlink, commissioning).

        >>> board.clock.set(1795737600); board.clock.now() >= 1795737600
        True
        """

        def now(self) -> int: ...

        def set(self, t: int) -> None: ...


class Board:
    """One meter's hardware, built from a validated board file by ``load_board``.

    Attributes, each set by the platform's board (``None`` when the board
    file has no such part):
    ``config`` (the board dict: ``config["platform"]``, ``config["meter_type"]``...),
    ``name``, ``pulse_counter`` (PulseCounter), ``rs485`` (Uart), ``relay`` (Relay),
    ``led`` (Led), ``cover``, ``commissioning``, ``power_fail`` (DigitalInput),
    ``clock`` (Clock), ``slots`` (SlotStorage for the meter journal, the same
    as ``journal_slots("meter")``).

    Methods: the storage and links the shell asks for once at boot
    (``journal_slots(name)``, ``outbox_segments()``, ``cli_uart()``,
    ``dlms_uart()``), ``poll()`` (call often) and ``start_watchdog()``.  Only
    what both platforms share is code here; the rest is documented under
    TYPE_CHECKING below and each platform's board defines it.

    >>> board = load_board("unix")
    >>> board.relay.set(True)
    """

    pulse_counter: "PulseCounter | None"
    rs485: "Uart | None"
    relay: "Relay | None"
    led: "Led | None"
    cover: "DigitalInput | None"
    commissioning: "DigitalInput | None"
    power_fail: "DigitalInput | None"
    clock: "Clock | None"
    slots: "SlotStorage | None"

    def __init__(self, config):
        self.config = config
        self.name = config["name"]

    def pulse_units(self):
        """(num, den): units (Wh or litres) per impulse, for ``PulseRegister(num, den)``.

        >>> Board(wroom32).pulse_units()   # 3200 imp/kWh = 1000 Wh per 3200 impulses
        (1000, 3200)
        """
        p = self.config.get("pulse_input")
        if p is None:
            return None
        if "imp_per_kwh" in p:
            return (1000, p["imp_per_kwh"])
        return (p["litres_per_imp"], 1)

    def journal_slots(self, name):
        """SlotStorage for the two-slot journal ``name`` (``meter``, ``config``, ``outbox``).

        Each name is stored apart from the others (a file directory, an NVS
        key pair), so one journal's writes never touch another's slots.
        Raises ``ValueError`` for another name.  A platform's board handles
        the names other than ``meter`` and passes the rest on to this one.

        >>> ConfigStore(board.journal_slots("config"))
        """
        if name == "meter" and self.slots is not None:
            return self.slots
        raise ValueError("no journal %r on board %s (names: meter, config, outbox)"
                         % (name, self.name))

    if TYPE_CHECKING:  # the interface, for mypy and readers (see TYPE_CHECKING)
        def poll(self) -> None:
            """Service board housekeeping without blocking (the unix control socket); call often."""

        def start_watchdog(self) -> "Watchdog":
            """Start the watchdog with the board's ``watchdog_timeout_ms``; returns a Watchdog."""
            raise NotImplementedError

        def outbox_segments(self):
            """Flash segments for the uplink outbox, or None when the board has none.

            The object follows the segment-storage interface documented at
            ``firmware.core.outbox.RamSegments`` (``segment_count``,
            ``segment_size``, ``read``, ``write`` of erased bytes only, ``erase``).
            Raises ``OSError`` when the board file names flash that is not there
            (the shell then keeps the outbox in RAM and says so).

            >>> Outbox(board.outbox_segments(), board.journal_slots("outbox"))
            """

        def cli_uart(self) -> "Uart | None":
            """The commissioning CLI's byte link (a ``Uart``, never the REPL), or None."""

        def dlms_uart(self) -> "Uart | None":
            """A second meter link for a DLMS meter (a ``Uart``), or None."""


# Short names for the shipped board files (relative to this package's folder).
BOARD_FILES = {"unix": "unix/board.json", "wroom32": "esp32/wroom32.json"}


def load_board(name_or_path, overrides=None):
    """Read, validate and instantiate a board for the running platform.

    ``overrides`` (optional dict) replaces top-level fields, e.g.
    ``{"state_dir": "/tmp/m1", "control": "unix:/tmp/m1/ctl.sock"}``; the result
    is validated again.  Raises ``boards.schema.BoardError`` for a bad file or
    a board made for another platform.

    >>> board = load_board("unix", {"state_dir": "/tmp/meter-7"})
    >>> board.pulse_counter.value()
    0
    """
    import sys
    from boards import schema

    path = name_or_path  # a path ending in .json, or a short name from BOARD_FILES
    if not path.endswith(".json"):
        rel = BOARD_FILES.get(path)
        if rel is None:
            raise ValueError("unknown board %r: give a .json path or one of %s"
                             % (path, ", ".join(sorted(BOARD_FILES))))
        here = globals().get("__file__") or "boards/hal.py"  # this package's folder
        cut = here.replace("\\", "/").rfind("/")
        path = (here[:cut] if cut >= 0 else ".") + "/" + rel
    config = schema.load(path)
    if overrides:
        config = dict(config)
        for key in overrides:
            config[key] = overrides[key]
        schema.validate(config, path)
    running = "esp32" if sys.platform == "esp32" else "unix"
    if config["platform"] != running:
        raise schema.BoardError(["platform: this board is for %s, running on %s (sys.platform %r)"
                                 % (config["platform"], running, sys.platform)], path)
    if running == "esp32":
        from boards.esp32 import hal as platform_hal
    else:
        from boards.unix import hal as platform_hal  # type: ignore[no-redef]
    return platform_hal.make_board(config)
