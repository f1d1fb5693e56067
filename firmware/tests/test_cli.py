"""Serial commissioning CLI (firmware/app/cli.py) over a real Meter and ConfigStore.

STS vectors: key 0x0ABC12DEF3456789 and the 25.6 kWh electricity token
"29054347139309851356" are NectarAPI tokens-service
NativeTokenDecoderTest.java (also used in test_sts_acceptor.py).
"""
import json

from firmware.app import cli as cli_mod
from firmware.app.cli import Cli, CliContext, LineReader
from firmware.app.config import ConfigStore
from firmware.core.journal import Journal
from firmware.core.meter import Meter
from firmware.core.outbox import RamSlots
from firmware.tests.check import eq

T0 = 1795753800  # Fri 2026-11-27 10:00 IST
NECTAR_KEY = "0abc12def3456789"
ELEC_25_6_KWH = "29054347139309851356"
TARIFF = {"id": "FLAT-10", "version": 1, "service": "electricity", "unit_size": 1000,
          "slabs": [[None, 1000]]}
SETTINGS = {"meter_id": "UJ-CLI-1", "broker_host": "10.0.0.2", "tariff": TARIFF,
            "key_hex": "00112233445566778899aabbccddeeff", "opening_credit_paise": 20000,
            "sts_key_hex": NECTAR_KEY, "sts_paise_per_unit": 1000}


class Ctx(CliContext):
    def __init__(self, commissioning=False, commissioned=True):
        self.config = ConfigStore(RamSlots())
        self.meter = None
        self.comm = commissioning
        self.changed = 0
        self.checks = [("journal", True, "seq1")]
        if commissioned:
            self.config.set_many(SETTINGS, T0)
            self.meter = Meter(self.config.meter_config(), T0, Journal(RamSlots()),
                               opening_credit_paise=self.config.get("opening_credit_paise"))

    def now(self):
        return T0 + 60

    def commissioning(self):
        return self.comm

    def selftest(self):
        return self.checks

    def meter_changed(self, now):
        self.changed += 1


def _snapshot(ctx):
    state = json.dumps(ctx.meter.to_state()) if ctx.meter is not None else None
    return state, json.dumps(ctx.config.values)


def test_help_lists_every_command():
    eq(Cli(Ctx()).handle(b"help"),
       "OK commands=help,info,read,balance,events,topup,relay,config,set,selftest")


def test_balance_reports_opening_credit_and_closed_relay():
    eq(Cli(Ctx()).handle(b"balance"),
       "OK balance_paise=20000 credit_paise=20000 emergency_used_paise=0 debt_paise=0 "
       "state=OK relay=closed")


def test_verbs_are_case_insensitive_and_surrounding_spaces_ignored():
    eq(Cli(Ctx()).handle(b"  RELAY  "), "OK relay=closed state=OK load=NORMAL")


def test_unknown_command_is_an_error_and_changes_nothing():
    ctx = Ctx(commissioning=True)
    before = _snapshot(ctx)
    eq(Cli(ctx).handle(b"reboot now"), "ERR 1 UNKNOWN_COMMAND: reboot (try help)")
    eq(_snapshot(ctx), before)


def test_extra_arguments_to_a_plain_command_are_bad_args():
    eq(Cli(Ctx()).handle(b"balance please"), "ERR 2 BAD_ARGS: usage: balance")


def test_overlong_line_comes_out_once_as_none_and_gets_line_too_long():
    reader = LineReader(max_line=8)
    lines = reader.feed(b"123456789abc\r\nhelp\n")
    eq(lines, [None, b"help"])
    eq(Cli(Ctx()).handle(lines[0]), "ERR 4 LINE_TOO_LONG: line longer than 1100 bytes, ignored")


def test_non_ascii_bytes_are_rejected_and_change_nothing():
    ctx = Ctx(commissioning=True)
    before = _snapshot(ctx)
    eq(Cli(ctx).handle(b"set meter_id UJ-\xff\xfe"),
       "ERR 5 BAD_BYTES: only printable ASCII is accepted (byte 0xff)")
    eq(_snapshot(ctx), before)


def test_control_characters_are_rejected():
    eq(Cli(Ctx()).handle(b"bal\x08ance"),
       "ERR 5 BAD_BYTES: only printable ASCII is accepted (byte 0x08)")


def test_blank_line_gets_no_reply():
    eq(Cli(Ctx()).handle(b"   "), None)


def test_line_reader_ends_lines_on_cr_lf_or_crlf_once():
    eq(LineReader().feed(b"info\r\nread\rbalance\nrel"), [b"info", b"read", b"balance"])


def test_set_outside_commissioning_mode_is_locked_and_config_unchanged():
    ctx = Ctx(commissioning=False)
    before = _snapshot(ctx)
    eq(Cli(ctx).handle(b"set pulse_constant 1600"),
       "ERR 6 LOCKED: set pulse_constant needs commissioning mode (the commissioning input)")
    eq(_snapshot(ctx), before)


def test_set_pulse_constant_is_saved_and_survives_a_reload():
    ctx = Ctx(commissioning=True)
    eq(Cli(ctx).handle(b"set pulse_constant 1600"), "OK pulse_constant=1600 applies=next_boot")
    again = ConfigStore(ctx.config.journal.storage)  # what the next boot reads
    eq(again.get("pulse_constant"), 1600)


def test_alias_broker_port_and_wifi_with_spaces_are_saved_and_escaped_in_replies():
    ctx = Ctx(commissioning=True)
    cli = Cli(ctx)
    eq(cli.handle(b"set port 8883"), "OK broker_port=8883 applies=next_boot")
    eq(cli.handle(b"set wifi Home Wifi 2"), "OK wifi_ssid=Home%20Wifi%202 applies=next_boot")
    eq(ctx.config.get("wifi_ssid"), "Home Wifi 2")


def test_out_of_range_value_is_rejected_and_config_unchanged():
    ctx = Ctx(commissioning=True)
    before = _snapshot(ctx)
    eq(Cli(ctx).handle(b"set pulse_constant 0"),
       "ERR 3 BAD_VALUE: pulse_constant: must be a whole number in 1..1000000")
    eq(Cli(ctx).handle(b"set broker_port 65536"),
       "ERR 3 BAD_VALUE: broker_port: must be a whole number in 1..65535")
    eq(_snapshot(ctx), before)


def test_unknown_setting_is_bad_value():
    reply = Cli(Ctx(commissioning=True)).handle(b"set colour blue")
    assert reply.startswith("ERR 3 BAD_VALUE: colour: unknown setting"), reply


def test_tariff_for_another_service_is_rejected_by_the_whole_config_check():
    ctx = Ctx(commissioning=True)
    before = _snapshot(ctx)
    water = dict(TARIFF, service="water")
    reply = Cli(ctx).handle(("set tariff " + json.dumps(water)).encode())
    eq(reply, "ERR 3 BAD_VALUE: tariff.service: water tariff on a electricity meter")
    eq(_snapshot(ctx), before)


def test_tariff_that_is_not_json_is_rejected():
    eq(Cli(Ctx(commissioning=True)).handle(b"set tariff {slabs"),
       "ERR 3 BAD_VALUE: tariff: not valid JSON")


def test_new_tariff_is_stored_and_shown_as_ok():
    ctx = Ctx(commissioning=True)
    new = dict(TARIFF, version=2)
    eq(Cli(ctx).handle(("set tariff " + json.dumps(new)).encode()), "OK tariff=ok applies=next_boot")
    eq(ctx.config.get("tariff")["version"], 2)


def test_provisioned_key_is_stored_lowercase_and_never_echoed():
    ctx = Ctx(commissioning=True)
    key = "AA" * 32
    eq(Cli(ctx).handle(("set key " + key).encode()), "OK key_hex=set applies=next_boot")
    eq(ctx.config.get("key_hex"), "aa" * 32)
    assert key.lower() not in Cli(ctx).handle(b"config")


def test_short_key_is_rejected():
    eq(Cli(Ctx(commissioning=True)).handle(b"set key_hex 0011"),
       "ERR 3 BAD_VALUE: key_hex: must be 32..128 characters")


def test_nectar_sts_token_credits_25600_paise():
    ctx = Ctx()
    reply = Cli(ctx).handle(("topup " + ELEC_25_6_KWH).encode())
    # 25.6 kWh x 1000 paise/kWh = 25600 paise; 20000 opening + 25600 = 45600
    eq(reply, "OK credited_paise=25600 balance_paise=45600 relay=closed")
    eq(ctx.changed, 1)


def test_reused_sts_token_is_rejected_and_balance_unchanged():
    ctx = Ctx()
    cli = Cli(ctx)
    cli.handle(("topup " + ELEC_25_6_KWH).encode())
    reply = cli.handle(("topup " + ELEC_25_6_KWH).encode())
    assert reply.startswith("ERR 7 REJECTED: token used"), reply
    eq(ctx.meter.status()["balance_paise"], 45600)


def test_topup_that_is_not_20_digits_is_bad_args_and_logs_nothing():
    ctx = Ctx()
    before = _snapshot(ctx)
    eq(Cli(ctx).handle(b"topup 1234"), "ERR 2 BAD_ARGS: usage: topup <20-digit STS token>")
    eq(Cli(ctx).handle(b"topup 2905434713930985135x"), "ERR 2 BAD_ARGS: usage: topup <20-digit STS token>")
    eq(_snapshot(ctx), before)


def test_events_lists_recent_events_with_names():
    ctx = Ctx()
    ctx.meter.log.append(T0 + 5, 3, 0)  # COVER_OPEN
    ctx.meter.log.append(T0 + 9, 4, 0)  # COVER_CLOSE
    eq(Cli(ctx).handle(b"events 2"),
       "OK count=2 last_seq=2 events=1@1795753805:COVER_OPEN:0,2@1795753809:COVER_CLOSE:0")


def test_events_count_out_of_range_is_bad_args():
    eq(Cli(Ctx()).handle(b"events 17"), "ERR 2 BAD_ARGS: usage: events [count 1..16]")


def test_uncommissioned_meter_answers_not_ready_naming_missing_settings():
    eq(Cli(Ctx(commissioned=False)).handle(b"balance"),
       "ERR 8 NOT_READY: meter not commissioned (set meter_id,broker_host,tariff,key_hex)")


def test_info_on_uncommissioned_meter_still_answers():
    eq(Cli(Ctx(commissioned=False, commissioning=True)).handle(b"info"),
       "OK meter=- commissioned=0 commissioning=1")


def test_selftest_reports_ok_checks():
    eq(Cli(Ctx()).handle(b"selftest"), "OK journal=seq1")


def test_selftest_failure_is_an_error_naming_the_check():
    ctx = Ctx()
    ctx.checks = [("journal", True, "seq1"), ("modbus", False, "no valid response")]
    eq(Cli(ctx).handle(b"selftest"), "ERR 9 FAILED: modbus:no%20valid%20response")


def test_escape_writes_spaces_percent_and_equals_as_hex():
    eq(cli_mod.escape("a b%c=d"), "a%20b%25c%3Dd")
    eq((cli_mod.escape(None), cli_mod.escape(True), cli_mod.escape(0)), ("-", "1", "0"))
