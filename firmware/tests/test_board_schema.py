"""Board-file validation and the unix control protocol, on CPython and MicroPython.

Pin facts the expected errors rest on (independent sources, not our code):
- ESP32 GPIOs that exist: "0-19, 21-23, 25-27, 32-39" (MicroPython
  docs/esp32/quickref.rst, "Available Pins are from the following ranges").
- GPIO6-11 are the SPI flash; GPIO34-39 are input-only with no pull resistors
  (ESP-IDF docs/api-reference/peripherals/gpio.rst; ESPHome
  esphome/components/esp32/gpio_esp32.py: "GPIO{n} (34-39) does not support
  output pin mode", "does not support pullups").
- GPIO1/3 are the REPL UART0 (MicroPython quickref: "Pins 1 and 3 are REPL
  UART TX and RX").
- Strapping pins {0, 2, 5, 12, 15} (ESPHome ``_ESP32_STRAPPING_PINS``).
- PCNT filter: 10-bit count of 12.5 ns ticks -> 1023 * 12.5 = 12787.5 ns
  (MicroPython docs/library/pcnt.rst: "1023 * 12.5 ns = 12.7875 us").
- WDT minimum 1 s on ESP32 (MicroPython machine.WDT docs).
"""
from boards import schema
from boards.hal import Board
from boards.unix import control
from firmware.tests.check import eq, raises


def wroom32():
    """A valid ESP32 board, rebuilt per test so a test can break one field."""
    return {
        "name": "test-wroom32",
        "platform": "esp32",
        "meter_type": "electricity",
        "pulse_input": {"pin": 34, "edge": "falling", "filter_ns": 10000, "imp_per_kwh": 3200},
        "rs485": {"uart": 2, "tx": 17, "rx": 16, "de_pin": 18, "baud": 9600},
        "relay": {"kind": "level", "pin": 26, "active": "high"},
        "led": {"pin": 25, "active": "high"},
        "cover_input": {"pin": 35, "active": "high", "pull": "none"},
        "commissioning_input": {"pin": 32, "active": "low", "pull": "up"},
        "power_fail_input": {"pin": 39, "active": "low", "pull": "none"},
        "watchdog_timeout_ms": 8000,
    }


def errors_of(board):
    return schema.check(board)[0]


# ------------------------------------------------------------ good boards

def test_valid_esp32_board_has_no_errors_and_no_warnings():
    eq(schema.check(wroom32()), ([], []))


def test_shipped_board_files_validate():
    # the runner's working directory is the repo root on both runtimes
    for path in ("boards/esp32/wroom32.json", "boards/unix/board.json"):
        board = schema.load(path)
        eq(schema.check(board), ([], []), path)


def test_unix_board_pins_are_free_numbers_not_esp32_gpios():
    board = wroom32()
    board["platform"] = "unix"
    del board["rs485"]
    board["relay"]["pin"] = 6      # a flash pin on an ESP32, a plain line on unix
    board["led"]["pin"] = 36       # input-only on an ESP32
    board["pulse_input"]["filter_ns"] = 50000  # above the PCNT limit, irrelevant on unix
    eq(errors_of(board), [])


# ------------------------------------------------------------ ESP32 pin rules

def test_input_only_gpio_cannot_drive_the_relay():
    board = wroom32()
    board["relay"]["pin"] = 35
    board["cover_input"]["pin"] = 33  # free 35 so only the relay error remains
    eq(errors_of(board), ["relay.pin: GPIO35 is input-only (GPIO34-39 cannot drive an output)"])


def test_input_only_gpio_cannot_drive_the_rs485_de_pin():
    board = wroom32()
    board["rs485"]["de_pin"] = 36
    eq(errors_of(board), ["rs485.de_pin: GPIO36 is input-only (GPIO34-39 cannot drive an output)"])


def test_input_only_gpio_is_fine_as_rs485_rx():
    # quickref: input-only pins 34-39 "can be used as rx"
    board = wroom32()
    board["rs485"]["rx"] = 36
    eq(errors_of(board), [])


def test_every_flash_pin_is_rejected():
    for gpio in (6, 7, 8, 9, 10, 11):
        board = wroom32()
        board["led"]["pin"] = gpio
        eq(errors_of(board), ["led.pin: GPIO%d is wired to the SPI flash (GPIO6-11 are not usable)"
                              % gpio], "GPIO%d" % gpio)


def test_gpio_that_does_not_exist_is_rejected_with_the_list_of_gpios():
    for gpio in (20, 24, 28, 31, 40):
        board = wroom32()
        board["led"]["pin"] = gpio
        eq(errors_of(board), ["led.pin: GPIO%d does not exist on the ESP32 "
                              "(GPIOs: 0-19, 21-23, 25-27, 32-39)" % gpio], "GPIO%d" % gpio)


def test_console_pins_cannot_be_used():
    board = wroom32()
    board["rs485"]["tx"] = 1
    board["rs485"]["rx"] = 3
    eq(errors_of(board), ["rs485.tx: GPIO1 is the UART0 console (GPIO1 TX, GPIO3 RX)",
                          "rs485.rx: GPIO3 is the UART0 console (GPIO1 TX, GPIO3 RX)"])


def test_uart0_is_the_console_and_cannot_carry_rs485():
    board = wroom32()
    board["rs485"]["uart"] = 0
    eq(errors_of(board), ["rs485.uart: UART0 is the console; use one of 1, 2"])


def test_pull_up_on_input_only_pin_is_rejected():
    board = wroom32()
    board["cover_input"]["pull"] = "up"
    eq(errors_of(board), ["cover_input.pin: GPIO35 has no internal pull-up (GPIO34-39); "
                          "use pull none and an external resistor"])


def test_strapping_pin_is_a_warning_not_an_error():
    board = wroom32()
    board["led"]["pin"] = 2
    errors, warnings = schema.check(board)
    eq(errors, [])
    eq(warnings, ["led.pin: GPIO2 is a strapping pin (0, 2, 5, 12, 15): an external pull "
                  "on it can stop the board booting"])


def test_pin_used_twice_is_reported_at_the_second_use():
    board = wroom32()
    board["led"]["pin"] = 26  # the relay's pin
    eq(errors_of(board), ["led.pin: pin 26 is already used by relay.pin"])


def test_glitch_filter_above_the_pcnt_maximum_is_rejected():
    board = wroom32()
    board["pulse_input"]["filter_ns"] = 12787  # 1023 ticks * 12.5 ns = 12787.5: the last whole ns
    eq(errors_of(board), [])
    board["pulse_input"]["filter_ns"] = 12788
    eq(errors_of(board), ["pulse_input.filter_ns: 12788 is not an integer in 0..12787 ns"])


def test_watchdog_shorter_than_one_second_is_rejected():
    board = wroom32()
    board["watchdog_timeout_ms"] = 999
    eq(errors_of(board), ["watchdog_timeout_ms: 999 is not an integer in 1000..600000 ms"])


# ------------------------------------------------------------ shape and values

def test_unknown_field_is_named_with_the_allowed_fields():
    board = wroom32()
    board["relay"]["activ"] = "high"
    eq(errors_of(board), ["relay.activ: unknown field (allowed: kind, pin, close_pin, open_pin, "
                          "active, pulse_ms)"])


def test_bad_choice_lists_the_allowed_values():
    board = wroom32()
    board["meter_type"] = "electric"
    board["rs485"]["baud"] = 9601
    eq(errors_of(board), [
        "meter_type: 'electric' is not one of electricity, water, gas",
        "rs485.baud: 9601 is not one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200",
    ])


def test_every_missing_required_field_is_reported_in_one_pass():
    errors = errors_of({"name": "bare", "platform": "esp32", "meter_type": "gas"})
    eq(errors, ["relay: missing", "cover_input: missing", "commissioning_input: missing",
                "power_fail_input: missing", "watchdog_timeout_ms: missing",
                "pulse_input: a meter needs a pulse_input or an rs485 link to read energy"])


def test_water_meter_takes_litres_per_impulse_not_imp_per_kwh():
    board = wroom32()
    board["meter_type"] = "water"
    errors = errors_of(board)
    eq(errors, ["pulse_input.imp_per_kwh: unknown field (allowed: pin, edge, filter_ns, "
                "litres_per_imp)", "pulse_input.litres_per_imp: missing"])
    del board["pulse_input"]["imp_per_kwh"]
    board["pulse_input"]["litres_per_imp"] = 10
    eq(errors_of(board), [])


def test_latching_relay_needs_two_different_coil_pins_and_a_pulse_length():
    board = wroom32()
    board["relay"] = {"kind": "latching", "close_pin": 26, "open_pin": 26, "active": "high",
                      "pulse_ms": 5}
    eq(errors_of(board), ["relay.pulse_ms: 5 is not an integer in 10..1000 ms",
                          "relay.open_pin: pin 26 is already used by relay.close_pin"])


def test_a_bool_is_not_accepted_as_a_pin():
    board = wroom32()
    board["led"]["pin"] = True  # JSON true: an int subclass in Python, still not a pin
    eq(errors_of(board), ["led.pin: True is not a pin number"])


def test_validate_raises_board_error_carrying_every_error():
    board = wroom32()
    board["platform"] = "arduino"
    board["watchdog_timeout_ms"] = "8s"
    err = raises(schema.BoardError, schema.validate, board, "x.json")
    eq(err.errors, ["platform: 'arduino' is not one of esp32, unix",
                    "watchdog_timeout_ms: '8s' is not an integer in 1000..600000 ms"])
    assert "x.json" in str(err)


def test_pulse_units_give_wh_or_litres_per_impulse():
    eq(Board(wroom32()).pulse_units(), (1000, 3200))  # 3200 imp/kWh: 1000 Wh per 3200 imp
    water = wroom32()
    water["meter_type"] = "water"
    water["pulse_input"] = {"pin": 34, "edge": "falling", "filter_ns": 0, "litres_per_imp": 10}
    eq(Board(water).pulse_units(), (10, 1))


# ------------------------------------------------------------ control protocol

class FakeWorld:
    def __init__(self):
        self.pulses = 0
        self.inputs = {"cover": False, "commissioning": False, "power_fail": False}
        self.relay = True
        self.led = False
        self.t = 1795737600
        self.feeds = 3

    def add_pulses(self, n):
        self.pulses += n
        return self.pulses

    def pulse_total(self):
        return self.pulses

    def set_input(self, name, active):
        self.inputs[name] = active

    def input_value(self, name):
        return self.inputs[name]

    def relay_closed(self):
        return self.relay

    def led_on(self):
        return self.led

    def now(self):
        return self.t

    def set_now(self, t):
        self.t = t

    def watchdog_feeds(self):
        return self.feeds


def test_control_parses_each_command():
    eq(control.parse("pulses 16"), ("pulses", 16))
    eq(control.parse("pulses?"), ("pulses?",))
    eq(control.parse("input power_fail 1"), ("input", "power_fail", 1))
    eq(control.parse("input? cover"), ("input?", "cover"))
    eq(control.parse("clock 1795737600"), ("clock", 1795737600))
    for verb in ("relay?", "led?", "clock?", "watchdog?", "help"):
        eq(control.parse(verb), (verb,))


def test_control_pulses_accumulate_and_report_the_total():
    world = FakeWorld()
    eq(control.handle(b"pulses 16", world), "ok pulses 16")
    eq(control.handle(b"pulses 4", world), "ok pulses 20")  # 16 + 4
    eq(control.handle(b"pulses?", world), "pulses 20")


def test_control_reports_relay_led_clock_and_watchdog():
    world = FakeWorld()
    eq(control.handle(b"relay?", world), "relay closed")
    world.relay = False
    eq(control.handle(b"relay?", world), "relay open")
    eq(control.handle(b"led?", world), "led off")
    eq(control.handle(b"clock 1800000000", world), "ok clock 1800000000")
    eq(control.handle(b"clock?", world), "clock 1800000000")
    eq(control.handle(b"watchdog?", world), "watchdog 3")


def test_control_sets_and_reads_an_input():
    world = FakeWorld()
    eq(control.handle(b"input cover 1", world), "ok input cover 1")
    eq(world.inputs["cover"], True)
    eq(control.handle(b"input? cover", world), "input cover 1")


def test_control_bad_lines_get_err_and_change_nothing():
    world = FakeWorld()
    bad = (b"pulses -5", b"pulses 1.5", b"pulses", b"pulses 1000000001", b"input lid 1",
           b"input cover 2", b"clock yesterday", b"relay", b"open relay", b"", b"pulses 5\x00",
           b"pulses \xe0\xa5\xa7")  # Devanagari digit one: not an ASCII digit
    for line in bad:
        reply = control.handle(line, world)
        assert reply.startswith("err "), "%r -> %r" % (line, reply)
    eq(world.pulses, 0)
    eq(world.inputs["cover"], False)
    eq(world.t, 1795737600)


def test_control_unknown_command_lists_the_commands():
    reply = control.handle(b"reboot", FakeWorld())
    eq(reply, "err unknown command 'reboot' (commands: " + control.COMMANDS + ")")


def test_line_buffer_gives_the_same_lines_whole_split_and_byte_by_byte():
    stream = b"pulses 5\r\ninput cover 1\nrelay?\n"
    want = [b"pulses 5", b"input cover 1", b"relay?"]
    eq(control.LineBuffer().feed(stream), want, "whole")
    buf = control.LineBuffer()
    eq(buf.feed(stream[:12]) + buf.feed(stream[12:]), want, "split")
    buf = control.LineBuffer()
    got = []
    for i in range(len(stream)):
        got += buf.feed(stream[i:i + 1])
    eq(got, want, "byte by byte")


def test_line_buffer_reports_an_overlong_line_once_and_recovers():
    buf = control.LineBuffer(8)
    eq(buf.feed(b"pulses 123456789"), [None])       # 16 bytes > 8: reported once
    eq(buf.feed(b"0000000\nrelay?\n"), [b"relay?"])  # its tail is dropped up to the newline
    eq(control.handle(None, FakeWorld()), "err line longer than 80 bytes")
