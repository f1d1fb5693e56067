"""STS tokens typed on the meter's serial CLI: the app in ``micropython`` on the unix board.

Tokens are vended by the head-end's vending code (``headend.sts.vending``,
itself checked digit for digit against NectarAPI's vectors in
headend/tests/test_sts_vending.py) under the decoder key of the
NectarAPI/IEC worked example, 0abc12def3456789, with 2014-based TIDs, the
meter's default base date.  The meter runs at 300x wall time from
Friday 2026-11-27 10:00 IST with no load and a flat tariff without fixed
charge, so its balance moves only by top-ups.
"""
from headend.sts import vending
from hil_tests.conftest import MeterApp, parse_ok
from hil_tests.test_app_unix import START_T, settings

DECODER_KEY = 0x0ABC12DEF3456789
PRICE = 850  # sts_paise_per_unit: Rs 8.50 per kWh
STS = {"sts_key_hex": "0abc12def3456789", "sts_paise_per_unit": PRICE, "energy_source": "pulses"}


def token(tenths, issued_utc, rnd=5):
    return vending.vend_credit(DECODER_KEY, "electricity", tenths, issued_utc,
                               base_utc=vending.BASE_2014_UTC, rnd=rnd)


def mistype(digits, position):
    """The same token with one digit changed (+1 mod 10)."""
    d = str((int(digits[position]) + 1) % 10)
    return digits[:position] + d + digits[position + 1:]


def start(broker, world):
    return world.add(MeterApp(settings(broker, **STS), start_t=START_T)).start()


def test_token_on_the_cli_credits_the_balance_at_the_configured_price(broker, world):
    app = start(broker, world)
    assert parse_ok(app.cli("balance"))["balance_paise"] == "2000"  # opening credit
    # 12.3 kWh = 12300 Wh; 12300 * 850 // 1000 = 10455 paise; 2000 + 10455 = 12455
    reply = parse_ok(app.cli("topup " + token(123, START_T - 3600)))
    assert (reply["credited_paise"], reply["balance_paise"]) == ("10455", "12455")
    assert parse_ok(app.cli("balance"))["balance_paise"] == "12455"


def test_the_same_token_twice_is_refused_as_used_and_the_balance_is_unchanged(broker, world):
    app = start(broker, world)
    digits = token(10, START_T - 60)  # 1.0 kWh: 1000 * 850 // 1000 = 850 paise
    assert parse_ok(app.cli("topup " + digits))["balance_paise"] == "2850"
    assert app.cli("topup " + digits).startswith("ERR 7 REJECTED: token used")
    assert parse_ok(app.cli("balance"))["balance_paise"] == "2850"


def test_a_mistyped_token_is_refused_as_bad_crc_and_logged(broker, world):
    app = start(broker, world)
    digits = token(10, START_T - 60)
    assert app.cli("topup " + mistype(digits, 19)).startswith("ERR 7 REJECTED: token bad_crc")
    assert parse_ok(app.cli("balance"))["balance_paise"] == "2000"
    # docs/protocol.md: a rejected token logs TOPUP_REJECTED with 100 + reason (2 bad_crc)
    assert "TOPUP_REJECTED:102" in parse_ok(app.cli("events"))["events"]


def test_a_token_vended_after_the_meters_clock_plus_seven_days_is_refused_as_future(
        broker, world):
    app = start(broker, world)
    assert app.cli("topup " + token(10, START_T + 30 * 86400)).startswith(
        "ERR 7 REJECTED: token future")
    assert parse_ok(app.cli("balance"))["balance_paise"] == "2000"


def test_after_a_power_cut_the_token_stays_used_and_the_balance_is_kept(broker, world):
    app = start(broker, world)
    digits = token(123, START_T - 3600)
    assert parse_ok(app.cli("topup " + digits))["balance_paise"] == "12455"
    app.stop()  # SIGKILL: no shutdown path runs
    app.start(start_t=START_T + 7200)
    assert parse_ok(app.cli("balance"))["balance_paise"] == "12455"
    assert app.cli("topup " + digits).startswith("ERR 7 REJECTED: token used")
    assert parse_ok(app.cli("balance"))["balance_paise"] == "12455"
