"""Board files: declarative data (ESPHome style), validated before anything drives a pin.

A board file is one JSON object (field order does not matter).  ``check``
returns every problem at once, each naming the field and what is allowed, so
a technician fixes a file in one pass.  Pure: no I/O except ``load`` / the CLI.

>>> errors, warnings = check({"name": "x", "platform": "esp32", ...})
>>> errors
['relay.close_pin: GPIO35 is input-only (GPIO34-39 cannot drive an output)']

CLI (host or unix port)::

    python -m boards.schema boards/esp32/wroom32.json boards/unix/board.json

prints ``FILE: OK`` or one error per line and exits 1 when any file is bad.

ESP32 (chip and WROOM-32 module) pin facts, from independent sources:

- GPIO numbers that exist: 0-19, 21-23, 25-27, 32-39 (MicroPython
  docs/esp32/quickref.rst "Available Pins"; ESPHome
  esphome/components/esp32/gpio_esp32.py rejects 24 and 28-31).
- GPIO6-11 connect the module's SPI flash (ESP-IDF docs
  api-reference/peripherals/gpio.rst: "GPIO6-11 are usually used for SPI
  flash"; ESPHome rejects 6, 7, 8, 11 and warns on 9, 10 for QIO flash).
  We reject all six: a meter must boot on either flash mode.
- GPIO34-39 are input-only, without pull-up/pull-down (ESP-IDF gpio.rst;
  ESPHome: "GPIO{n} (34-39) does not support output pin mode / pullups").
- GPIO1/GPIO3 are UART0 TX/RX, the REPL console (MicroPython quickref
  "Pins 1 and 3 are REPL UART TX and RX"), so UART0 and those pins are
  not available to RS485.
- Strapping pins 0, 2, 5, 12, 15 (ESPHome ``_ESP32_STRAPPING_PINS``): usable,
  but an external pull on them can stop the board booting -> a warning.
- PCNT glitch filter: 10-bit count of 12.5 ns APB clock ticks, at most
  1023 * 12.5 ns = 12787 ns (MicroPython docs/library/pcnt.rst; esp32.PCNT
  ``filter`` 1..1023 ticks of the 80 MHz clock).
- WDT: "On the esp32 the minimum timeout is 1 second" (MicroPython
  machine.WDT docs).
"""
import json
import sys

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_PLATFORMS = const(("esp32", "unix"))
_METER_TYPES = const(("electricity", "water", "gas"))
_EDGES = const(("rising", "falling"))
_LEVELS = const(("high", "low"))
_PULLS = const(("up", "down", "none"))
_RELAY_KINDS = const(("level", "latching"))
_BAUDS = const((1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200))

ESP32_GPIOS = tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_ESP32_FLASH_PINS = const((6, 7, 8, 9, 10, 11))
_ESP32_INPUT_ONLY = const((34, 35, 36, 37, 38, 39))
_ESP32_CONSOLE_PINS = const((1, 3))
_ESP32_STRAPPING = const((0, 2, 5, 12, 15))
_ESP32_RS485_UARTS = const((1, 2))  # UART0 is the console
_ESP32_FILTER_MAX_NS = const(12787)
_UNIX_MAX_PIN = const(255)  # unix pins are just names for control-socket lines
_WATCHDOG_MIN_MS = const(1000)
_WATCHDOG_MAX_MS = const(600000)  # ours: a meter stuck for 10 minutes is not being watched
_PULSE_MS_MIN = const(10)
_PULSE_MS_MAX = const(1000)

# Top-level fields in the order errors are reported (dicts are unordered on MicroPython).
_COMMON_FIELDS = const(("name", "platform", "meter_type", "pulse_input", "rs485", "cli_uart",
                        "relay", "led", "cover_input", "commissioning_input",
                        "power_fail_input", "watchdog_timeout_ms"))
PLATFORM_FIELDS = {"esp32": ("nvs_namespace", "outbox"), "unix": ("state_dir", "control")}
# ESP-IDF esp_partition_t.label is char[17]; the CSV tool allows 16: keep 15
_PARTITION_LABEL_MAX = const(15)
_OUTBOX_SEGMENTS_MIN = const(2)  # firmware.core.outbox needs a ring of two at least
_OUTBOX_SEGMENTS_MAX = const(256)
_REQUIRED = const(("name", "platform", "meter_type", "relay", "cover_input",
                   "commissioning_input", "power_fail_input", "watchdog_timeout_ms"))
_INPUT_FIELDS = const(("cover_input", "commissioning_input", "power_fail_input"))


class BoardError(ValueError):
    """A board file is invalid; ``errors`` lists every problem (``field: why``)."""

    def __init__(self, errors, source=""):
        self.errors = list(errors)
        head = "invalid board file%s" % (" " + source if source else "")
        super().__init__(head + ":\n  " + "\n  ".join(self.errors))


def _field(name, key):
    return key if name is None else "%s.%s" % (name, key)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _choices(values):
    return ", ".join(str(v) for v in values)


def _ranges(values):
    """(0, 1, 2, 5) -> '0-2, 5': readable allowed-pin lists."""
    out = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else "%d-%d" % (values[i], values[j]))
        i = j + 1
    return ", ".join(out)


class _Checker:
    def __init__(self, board):
        self.board = board
        self.errors = []
        self.warnings = []
        self.platform = board.get("platform") if isinstance(board, dict) else None
        self.pins = []  # (pin, field) in check order, for the duplicate check
        self.rs485_uart = None

    def err(self, field, msg):
        self.errors.append("%s: %s" % (field, msg))

    def section(self, name, allowed):
        """The sub-dict ``name`` or None (error if not a dict); flags unknown keys."""
        value = self.board.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.err(name, "must be an object with fields %s" % _choices(allowed))
            return None
        for key in sorted(value):
            if key not in allowed:
                self.err("%s.%s" % (name, key), "unknown field (allowed: %s)" % _choices(allowed))
        return value

    def need(self, sec, name, key):
        if key not in sec:
            self.err(_field(name, key), "missing")
            return False
        return True

    def choice(self, sec, name, key, allowed, default=None):
        if key not in sec:
            if default is None:
                self.err("%s.%s" % (name, key), "missing (one of %s)" % _choices(allowed))
            return default
        value = sec[key]
        if value not in allowed:
            self.err("%s.%s" % (name, key), "%r is not one of %s" % (value, _choices(allowed)))
            return None
        return value

    def integer(self, sec, name, key, lo, hi, unit=""):
        if not self.need(sec, name, key):
            return None
        value = sec[key]
        if not _is_int(value) or not lo <= value <= hi:
            self.err(_field(name, key), "%r is not an integer in %d..%d%s"
                     % (value, lo, hi, unit))
            return None
        return value

    def pin(self, sec, name, key, output=False, pull="none"):
        field = "%s.%s" % (name, key)
        if not self.need(sec, name, key):
            return None
        p = sec[key]
        if not _is_int(p):
            self.err(field, "%r is not a pin number" % (p,))
            return None
        if self.platform == "unix":
            if not 0 <= p <= _UNIX_MAX_PIN:
                self.err(field, "%d is not a unix pin (0-%d)" % (p, _UNIX_MAX_PIN))
                return None
        elif self.platform == "esp32":
            if p not in ESP32_GPIOS:
                self.err(field, "GPIO%d does not exist on the ESP32 (GPIOs: %s)"
                         % (p, _ranges(ESP32_GPIOS)))
                return None
            if p in _ESP32_FLASH_PINS:
                self.err(field, "GPIO%d is wired to the SPI flash (GPIO6-11 are not usable)" % p)
                return None
            if p in _ESP32_CONSOLE_PINS:
                self.err(field, "GPIO%d is the UART0 console (GPIO1 TX, GPIO3 RX)" % p)
                return None
            if output and p in _ESP32_INPUT_ONLY:
                self.err(field, "GPIO%d is input-only (GPIO34-39 cannot drive an output)" % p)
                return None
            if pull != "none" and p in _ESP32_INPUT_ONLY:
                self.err(field, "GPIO%d has no internal pull-%s (GPIO34-39); use pull none "
                         "and an external resistor" % (p, pull))
            if p in _ESP32_STRAPPING:
                self.warnings.append("%s: GPIO%d is a strapping pin (%s): an external pull "
                                     "on it can stop the board booting"
                                     % (field, p, _choices(_ESP32_STRAPPING)))
        self.pins.append((p, field))
        return p

    # ----------------------------------------------------------- sections

    def top(self):
        b = self.board
        allowed = _COMMON_FIELDS + PLATFORM_FIELDS.get(str(self.platform), ())
        for key in sorted(b):
            if key not in allowed:
                self.err(key, "unknown field (allowed: %s)" % _choices(allowed))
        for key in _REQUIRED:
            if key not in b:
                self.err(key, "missing")
        name = b.get("name")
        if "name" in b and (not isinstance(name, str) or not name):
            self.err("name", "must be a non-empty string")
        if "platform" in b and self.platform not in _PLATFORMS:
            self.err("platform", "%r is not one of %s" % (self.platform, _choices(_PLATFORMS)))
            self.platform = None
        if "meter_type" in b and b["meter_type"] not in _METER_TYPES:
            self.err("meter_type", "%r is not one of %s" % (b["meter_type"], _choices(_METER_TYPES)))
        if "pulse_input" not in b and "rs485" not in b:
            self.err("pulse_input", "a meter needs a pulse_input or an rs485 link to read energy")
        if "watchdog_timeout_ms" in b:
            self.integer(b, None, "watchdog_timeout_ms", _WATCHDOG_MIN_MS, _WATCHDOG_MAX_MS, " ms")
        if self.platform == "esp32" and "nvs_namespace" in b:
            ns = b["nvs_namespace"]
            # NVS namespace names are at most 15 characters (ESP-IDF NVS_KEY_NAME_MAX_SIZE - 1)
            if not isinstance(ns, str) or not 1 <= len(ns) <= 15:
                self.err("nvs_namespace", "%r is not a string of 1..15 characters" % (ns,))
        if self.platform == "unix":
            for key in ("state_dir", "control"):
                if key in b and (not isinstance(b[key], str) or not b[key]):
                    self.err(key, "must be a non-empty string")
            control = b.get("control")
            if isinstance(control, str) and control and not (
                    control.startswith("unix:") or control.startswith("tcp:")):
                self.err("control", "%r must be unix:PATH or tcp:HOST:PORT" % (control,))

    def pulse_input(self):
        name = "pulse_input"
        meter = self.board.get("meter_type")
        units: "tuple[str, ...]"
        if meter == "electricity":
            units = ("imp_per_kwh",)
        elif meter in _METER_TYPES:
            units = ("litres_per_imp",)
        else:  # meter_type already reported: do not cascade into the unit field
            units = ("imp_per_kwh", "litres_per_imp")
        sec = self.section(name, ("pin", "edge", "filter_ns") + units)
        if sec is None:
            return
        self.pin(sec, name, "pin")
        self.choice(sec, name, "edge", _EDGES)
        hi = _ESP32_FILTER_MAX_NS if self.platform == "esp32" else 10 ** 9
        self.integer(sec, name, "filter_ns", 0, hi, " ns")
        if meter == "electricity":
            # meters with LED/S0 outputs: typically 1600-3200 imp/kWh; 100000 is a generous ceiling
            self.integer(sec, name, "imp_per_kwh", 1, 100000, " imp/kWh")
        elif meter in ("water", "gas"):
            self.integer(sec, name, "litres_per_imp", 1, 1000, " litres per impulse")

    def uart(self, name, esp32_keys):
        """A UART section (RS485 link or CLI); returns the esp32 UART number or None."""
        if self.platform == "unix":
            sec = self.section(name, ("device", "device_env", "baud"))
            if sec is None:
                return None
            if "device" not in sec and "device_env" not in sec:
                self.err(name, "needs device (a pty path) or device_env (the variable holding it)")
            for key in ("device", "device_env"):
                if key in sec and (not isinstance(sec[key], str) or not sec[key]):
                    self.err("%s.%s" % (name, key), "must be a non-empty string")
            self.choice(sec, name, "baud", _BAUDS)
            return None
        sec = self.section(name, esp32_keys)
        if sec is None:
            return None
        uart = None
        if "uart" in sec and sec["uart"] == 0:
            self.err(name + ".uart", "UART0 is the console; use one of %s"
                     % _choices(_ESP32_RS485_UARTS))
        else:
            uart = self.choice(sec, name, "uart", _ESP32_RS485_UARTS)
        self.pin(sec, name, "tx", output=True)
        self.pin(sec, name, "rx")
        if "de_pin" in esp32_keys:
            self.pin(sec, name, "de_pin", output=True)
        self.choice(sec, name, "baud", _BAUDS)
        return uart

    def rs485(self):
        self.rs485_uart = self.uart("rs485", ("uart", "tx", "rx", "de_pin", "baud"))

    def cli_uart(self):
        # the commissioning CLI: its own UART, never the REPL console (UART0)
        uart = self.uart("cli_uart", ("uart", "tx", "rx", "baud"))
        if uart is not None and uart == self.rs485_uart:
            self.err("cli_uart.uart", "UART%d is already the rs485 link" % uart)

    def outbox(self):
        """ESP32: the raw data partition holding the uplink outbox (boards/esp32/outbox_flash.py)."""
        if self.platform != "esp32":
            return
        sec = self.section("outbox", ("partition", "segments"))
        if sec is None:
            return
        if self.need(sec, "outbox", "partition"):
            label = sec["partition"]
            if not isinstance(label, str) or not 1 <= len(label) <= _PARTITION_LABEL_MAX:
                self.err("outbox.partition", "%r is not a partition label of 1..%d characters"
                         % (label, _PARTITION_LABEL_MAX))
        if "segments" in sec:
            self.integer(sec, "outbox", "segments", _OUTBOX_SEGMENTS_MIN, _OUTBOX_SEGMENTS_MAX,
                         " (4 KiB flash sectors)")

    def relay(self):
        name = "relay"
        sec = self.section(name, ("kind", "pin", "close_pin", "open_pin", "active", "pulse_ms"))
        if sec is None:
            return
        kind = self.choice(sec, name, "kind", _RELAY_KINDS)
        self.choice(sec, name, "active", _LEVELS)
        if kind == "level":
            self.pin(sec, name, "pin", output=True)
            for key in ("close_pin", "open_pin", "pulse_ms"):
                if key in sec:
                    self.err("%s.%s" % (name, key), "only for kind latching")
        elif kind == "latching":
            # a bistable relay: a pulse on one coil closes it, on the other opens it
            self.pin(sec, name, "close_pin", output=True)
            self.pin(sec, name, "open_pin", output=True)
            self.integer(sec, name, "pulse_ms", _PULSE_MS_MIN, _PULSE_MS_MAX, " ms")
            if "pin" in sec:
                self.err("relay.pin", "only for kind level (latching uses close_pin/open_pin)")

    def led(self):
        sec = self.section("led", ("pin", "active"))
        if sec is None:
            return
        self.pin(sec, "led", "pin", output=True)
        self.choice(sec, "led", "active", _LEVELS)

    def inputs(self):
        for name in _INPUT_FIELDS:
            sec = self.section(name, ("pin", "active", "pull"))
            if sec is None:
                continue
            pull = self.choice(sec, name, "pull", _PULLS, default="none")
            self.pin(sec, name, "pin", pull=pull or "none")
            self.choice(sec, name, "active", _LEVELS)

    def duplicates(self):
        seen: "dict[int, str]" = {}
        for p, field in self.pins:
            if p in seen:
                self.err(field, "pin %d is already used by %s" % (p, seen[p]))
            else:
                seen[p] = field

    def run(self):
        if not isinstance(self.board, dict):
            self.errors.append("board: must be a JSON object")
            return
        self.top()
        self.pulse_input()
        self.rs485()
        self.cli_uart()
        self.outbox()
        self.relay()
        self.led()
        self.inputs()
        self.duplicates()


def check(board):
    """Return ``(errors, warnings)``, two lists of ``"field: why"`` strings.

    >>> check({"platform": "esp32"})[0][0]
    'name: missing'
    """
    c = _Checker(board)
    c.run()
    return c.errors, c.warnings


def validate(board, source=""):
    """Return ``board`` unchanged when valid; else raise ``BoardError`` listing every error."""
    errors, _ = check(board)
    if errors:
        raise BoardError(errors, source)
    return board


def load(path):
    """Read and validate a board JSON file; raises ``BoardError`` (bad content) or ``OSError``."""
    with open(path) as f:
        text = f.read()
    try:
        board = json.loads(text)
    except ValueError as err:
        raise BoardError(["board: not valid JSON (%s)" % (err,)], path)
    return validate(board, path)


def main(argv):
    """CLI entry: validate each file; 0 when all are OK, 1 otherwise, 2 on usage."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m boards.schema BOARD.json [BOARD.json ...]\n"
              "Validates board files; prints 'FILE: OK' or one 'FILE: field: why' per error.\n"
              "example: python -m boards.schema boards/esp32/wroom32.json")
        return 0 if argv else 2
    status = 0
    for path in argv:
        try:
            with open(path) as f:
                board = json.loads(f.read())
        except OSError as err:
            print("%s: cannot read (%s)" % (path, err))
            status = 1
            continue
        except ValueError as err:
            print("%s: not valid JSON (%s)" % (path, err))
            status = 1
            continue
        errors, warnings = check(board)
        for w in warnings:
            print("%s: warning: %s" % (path, w))
        if errors:
            for e in errors:
                print("%s: %s" % (path, e))
            status = 1
        else:
            print("%s: OK" % path)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
