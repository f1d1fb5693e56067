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

# GPIOs 0-39 except these do not exist (see above); the text is for error messages
_ESP32_NO_GPIOS = const((20, 24, 28, 29, 30, 31))
_ESP32_GPIO_TEXT = const("0-19, 21-23, 25-27, 32-39")
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

# Top-level fields in the order errors are reported (dicts are unordered on MicroPython),
# then those of each platform.
_COMMON_FIELDS = const(("name", "platform", "meter_type", "pulse_input", "rs485", "cli_uart",
                        "relay", "led", "cover_input", "commissioning_input",
                        "power_fail_input", "watchdog_timeout_ms"))
_ESP32_FIELDS = const(("nvs_namespace", "outbox"))
_UNIX_FIELDS = const(("state_dir", "control"))
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
        super().__init__("invalid board file%s:\n  %s"
                         % (" " + source if source else "", "\n  ".join(self.errors)))


def _field(name, key):
    return key if name is None else "%s.%s" % (name, key)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


# Helpers with one caller are written out in it: this module is dropped after the
# boot check, but every name it interns (functions, methods, arguments) stays.

class _Checker:
    def __init__(self, board):
        self.board = board
        self.errors = []
        self.warnings = []
        self.platform = board.get("platform") if isinstance(board, dict) else None
        self.pins = []  # (pin, field) in check order, for the duplicate check

    def error(self, where, msg):
        self.errors.append("%s: %s" % (where, msg))

    def section(self, name, allowed):
        """The sub-dict ``name`` or None (error if not a dict); flags unknown keys."""
        value = self.board.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(name, "must be an object with fields %s" % ", ".join(allowed))
            return None
        for key in sorted(value):
            if key not in allowed:
                self.error("%s.%s" % (name, key), "unknown field (allowed: %s)" % ", ".join(allowed))
        return value

    def choice(self, d, name, key, allowed):
        if key not in d:
            self.error("%s.%s" % (name, key), "missing (one of %s)" % ", ".join(map(str, allowed)))
            return None
        value = d[key]
        if value not in allowed:
            self.error("%s.%s" % (name, key), "%r is not one of %s"
                       % (value, ", ".join(map(str, allowed))))
            return None
        return value

    def integer(self, d, name, key, lo, hi, unit=""):
        if key not in d:
            self.error(_field(name, key), "missing")
            return None
        value = d[key]
        if not _is_int(value) or not lo <= value <= hi:
            self.error(_field(name, key), "%r is not an integer in %d..%d%s"
                       % (value, lo, hi, unit))
            return None
        return value

    def pin(self, d, name, key, output=False, pull="none"):
        field = "%s.%s" % (name, key)
        if key not in d:
            self.error(field, "missing")
            return None
        p = d[key]
        if not _is_int(p):
            self.error(field, "%r is not a pin number" % (p,))
            return None
        if self.platform == "unix":
            if not 0 <= p <= _UNIX_MAX_PIN:
                self.error(field, "%d is not a unix pin (0-%d)" % (p, _UNIX_MAX_PIN))
                return None
        elif self.platform == "esp32":
            if p in _ESP32_NO_GPIOS or not 0 <= p <= 39:
                self.error(field, "GPIO%d does not exist on the ESP32 (GPIOs: %s)"
                           % (p, _ESP32_GPIO_TEXT))
                return None
            if p in _ESP32_FLASH_PINS:
                self.error(field, "GPIO%d is wired to the SPI flash (GPIO6-11 are not usable)" % p)
                return None
            if p in _ESP32_CONSOLE_PINS:
                self.error(field, "GPIO%d is the UART0 console (GPIO1 TX, GPIO3 RX)" % p)
                return None
            if output and p in _ESP32_INPUT_ONLY:
                self.error(field, "GPIO%d is input-only (GPIO34-39 cannot drive an output)" % p)
                return None
            if pull != "none" and p in _ESP32_INPUT_ONLY:
                self.error(field, "GPIO%d has no internal pull-%s (GPIO34-39); use pull none "
                           "and an external resistor" % (p, pull))
            if p in _ESP32_STRAPPING:
                self.warnings.append("%s: GPIO%d is a strapping pin (%s): an external pull "
                                     "on it can stop the board booting"
                                     % (field, p, ", ".join(map(str, _ESP32_STRAPPING))))
        self.pins.append((p, field))
        return p

    # ----------------------------------------------------------- sections

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
        d = self.section(name, ("pin", "edge", "filter_ns") + units)
        if d is None:
            return
        self.pin(d, name, "pin")
        self.choice(d, name, "edge", _EDGES)
        hi = _ESP32_FILTER_MAX_NS if self.platform == "esp32" else 10 ** 9
        self.integer(d, name, "filter_ns", 0, hi, " ns")
        if meter == "electricity":
            # meters with LED/S0 outputs: typically 1600-3200 imp/kWh; 100000 is a generous ceiling
            self.integer(d, name, "imp_per_kwh", 1, 100000, " imp/kWh")
        elif meter in ("water", "gas"):
            self.integer(d, name, "litres_per_imp", 1, 1000, " litres per impulse")

    def uart(self, name, allowed):
        """A UART section (RS485 link or CLI; ``allowed``: its fields on the ESP32);
        returns the esp32 UART number or None."""
        if self.platform == "unix":
            d = self.section(name, ("device", "device_env", "baud"))
            if d is None:
                return None
            if "device" not in d and "device_env" not in d:
                self.error(name, "needs device (a pty path) or device_env (the variable holding it)")
            for key in ("device", "device_env"):
                if key in d and (not isinstance(d[key], str) or not d[key]):
                    self.error("%s.%s" % (name, key), "must be a non-empty string")
            self.choice(d, name, "baud", _BAUDS)
            return None
        d = self.section(name, allowed)
        if d is None:
            return None
        uart = None
        if "uart" in d and d["uart"] == 0:
            self.error(_field(name, "uart"), "UART0 is the console; use one of %s"
                       % ", ".join(map(str, _ESP32_RS485_UARTS)))
        else:
            uart = self.choice(d, name, "uart", _ESP32_RS485_UARTS)
        self.pin(d, name, "tx", output=True)
        self.pin(d, name, "rx")
        if "de_pin" in allowed:
            self.pin(d, name, "de_pin", output=True)
        self.choice(d, name, "baud", _BAUDS)
        return uart

    def outbox(self):
        """ESP32: the raw data partition holding the uplink outbox (boards/esp32/outbox_flash.py)."""
        if self.platform != "esp32":
            return
        d = self.section("outbox", ("partition", "segments"))
        if d is None:
            return
        if "partition" not in d:
            self.error("outbox.partition", "missing")
        else:
            label = d["partition"]
            if not isinstance(label, str) or not 1 <= len(label) <= _PARTITION_LABEL_MAX:
                self.error("outbox.partition", "%r is not a partition label of 1..%d characters"
                           % (label, _PARTITION_LABEL_MAX))
        if "segments" in d:
            self.integer(d, "outbox", "segments", _OUTBOX_SEGMENTS_MIN, _OUTBOX_SEGMENTS_MAX,
                         " (4 KiB flash sectors)")

    def relay(self):
        name = "relay"
        d = self.section(name, ("kind", "pin", "close_pin", "open_pin", "active", "pulse_ms"))
        if d is None:
            return
        kind = self.choice(d, name, "kind", _RELAY_KINDS)
        self.choice(d, name, "active", _LEVELS)
        if kind == "level":
            self.pin(d, name, "pin", output=True)
            for key in ("close_pin", "open_pin", "pulse_ms"):
                if key in d:
                    self.error("%s.%s" % (name, key), "only for kind latching")
        elif kind == "latching":
            # a bistable relay: a pulse on one coil closes it, on the other opens it
            self.pin(d, name, "close_pin", output=True)
            self.pin(d, name, "open_pin", output=True)
            self.integer(d, name, "pulse_ms", _PULSE_MS_MIN, _PULSE_MS_MAX, " ms")
            if "pin" in d:
                self.error(_field(name, "pin"), "only for kind level (latching uses close_pin/open_pin)")

    def led(self):
        d = self.section("led", ("pin", "active"))
        if d is None:
            return
        self.pin(d, "led", "pin", output=True)
        self.choice(d, "led", "active", _LEVELS)

    def run(self):
        """The top-level fields, then each section, then pins used twice."""
        b = self.board
        if not isinstance(b, dict):
            self.errors.append("board: must be a JSON object")
            return
        allowed = _COMMON_FIELDS + (_ESP32_FIELDS if self.platform == "esp32" else
                                    _UNIX_FIELDS if self.platform == "unix" else ())
        for key in sorted(b):
            if key not in allowed:
                self.error(key, "unknown field (allowed: %s)" % ", ".join(allowed))
        for key in _REQUIRED:
            if key not in b:
                self.error(key, "missing")
        name = b.get("name")
        if "name" in b and (not isinstance(name, str) or not name):
            self.error("name", "must be a non-empty string")
        if "platform" in b and self.platform not in _PLATFORMS:
            self.error("platform", "%r is not one of %s" % (self.platform, ", ".join(_PLATFORMS)))
            self.platform = None
        if "meter_type" in b and b["meter_type"] not in _METER_TYPES:
            self.error("meter_type", "%r is not one of %s" % (b["meter_type"], ", ".join(_METER_TYPES)))
        if "pulse_input" not in b and "rs485" not in b:
            self.error("pulse_input", "a meter needs a pulse_input or an rs485 link to read energy")
        if "watchdog_timeout_ms" in b:
            self.integer(b, None, "watchdog_timeout_ms", _WATCHDOG_MIN_MS, _WATCHDOG_MAX_MS, " ms")
        if self.platform == "esp32" and "nvs_namespace" in b:
            ns = b["nvs_namespace"]
            # NVS namespace names are at most 15 characters (ESP-IDF NVS_KEY_NAME_MAX_SIZE - 1)
            if not isinstance(ns, str) or not 1 <= len(ns) <= 15:
                self.error("nvs_namespace", "%r is not a string of 1..15 characters" % (ns,))
        if self.platform == "unix":
            for key in _UNIX_FIELDS:
                if key in b and (not isinstance(b[key], str) or not b[key]):
                    self.error(key, "must be a non-empty string")
            control = b.get("control")
            if isinstance(control, str) and control and not (
                    control.startswith("unix:") or control.startswith("tcp:")):
                self.error("control", "%r must be unix:PATH or tcp:HOST:PORT" % (control,))

        self.pulse_input()
        rs485_uart = self.uart("rs485", ("uart", "tx", "rx", "de_pin", "baud"))
        # the commissioning CLI: its own UART, never the REPL console (UART0)
        uart = self.uart("cli_uart", ("uart", "tx", "rx", "baud"))
        if uart is not None and uart == rs485_uart:
            self.error("cli_uart.uart", "UART%d is already the rs485 link" % uart)
        self.outbox()
        self.relay()
        self.led()
        for name in _INPUT_FIELDS:
            d = self.section(name, ("pin", "active", "pull"))
            if d is None:
                continue
            pull = self.choice(d, name, "pull", _PULLS) if "pull" in d else "none"
            self.pin(d, name, "pin", pull=pull or "none")
            self.choice(d, name, "active", _LEVELS)

        seen: "dict[int, str]" = {}
        for p, field in self.pins:
            if p in seen:
                self.error(field, "pin %d is already used by %s" % (p, seen[p]))
            else:
                seen[p] = field


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


def main(args):
    """CLI entry: validate each file; 0 when all are OK, 1 otherwise, 2 on usage."""
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m boards.schema BOARD.json [BOARD.json ...]\n"
              "Validates board files; prints 'FILE: OK' or one 'FILE: field: why' per error.\n"
              "example: python -m boards.schema boards/esp32/wroom32.json")
        return 0 if args else 2
    status = 0
    for path in args:
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
        for e in errors or ("OK",):
            print("%s: %s" % (path, e))
        if errors:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
