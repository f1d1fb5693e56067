"""``Meter.apply_command``'s ``act`` hook: kinds the app applies (``config``, ``ota``, ``ota_chunk``)
are authenticated by the core, and journaled with their counter only when the app says OK."""
from firmware.core import auth, localtime
from firmware.core.meter import BAD_VALUE, EXAMPLE_CONFIG, UNKNOWN_KIND, Meter, MeterConfig
from firmware.tests.check import eq

T0 = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 27), localtime.IST_OFFSET_S)
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MID = EXAMPLE_CONFIG["meter_id"]


def meter():
    return Meter(MeterConfig.from_dict(EXAMPLE_CONFIG), now=T0, opening_credit_paise=5000)


def cmd(counter, kind="config", key=KEY):
    return auth.make_command(key, kind, MID, counter, T0 + 3600, ["C-%d" % counter, "heartbeat_s", "900"])


class Act:
    def __init__(self, result):
        self.result = result
        self.calls = []

    def __call__(self, kind, fields, now):
        self.calls.append((kind, fields, now))
        return self.result


def test_app_kind_is_applied_once_and_its_counter_journaled_when_the_app_says_ok():
    m = meter()
    act = Act((auth.OK, "saved"))
    eq(m.apply_command(cmd(1), T0, act), (auth.OK, "saved"))
    eq(act.calls, [("config", ["C-1", "heartbeat_s", "900"], T0)])
    eq(m.guard.last_counter, 1)
    eq(m.apply_command(cmd(1), T0 + 1, act)[0], auth.REPLAYED)  # a re-delivery: not applied again
    eq(len(act.calls), 1)


def test_app_refusal_changes_nothing_so_the_counter_can_be_used_again():
    m = meter()
    eq(m.apply_command(cmd(1), T0, Act((BAD_VALUE, "no"))), (BAD_VALUE, "no"))
    eq(m.guard.last_counter, 0)
    eq(m.apply_command(cmd(1), T0, Act((auth.OK, "yes")))[0], auth.OK)


def test_forged_app_kind_never_reaches_the_app():
    act = Act((auth.OK, "saved"))
    eq(meter().apply_command(cmd(1, key=b"\x02" * 32), T0, act)[0], auth.BAD_MAC)
    eq(act.calls, [])


def test_kind_neither_core_nor_app_knows_is_unknown_kind():
    m = meter()
    eq(m.apply_command(cmd(1, "selfdestruct"), T0, Act(None))[0], UNKNOWN_KIND)
    eq(m.apply_command(cmd(2, "config"), T0)[0], UNKNOWN_KIND)  # no app hook at all
    eq(m.guard.last_counter, 0)
