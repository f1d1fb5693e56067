import json
import random

from firmware.core import auth, events, journal, localtime, tariff
from firmware.core.meter import BAD_VALUE, EXAMPLE_CONFIG, REFUSED, UNKNOWN_KIND, Meter, MeterConfig, MeterConfigError
from firmware.tests.check import eq, raises

# 2026-11-27 00:00 IST (Friday)
T0 = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 27), localtime.IST_OFFSET_S)
KEY = bytes.fromhex(EXAMPLE_CONFIG["key_hex"])
MID = EXAMPLE_CONFIG["meter_id"]

FLAT_TARIFF = {"id": "FLAT", "version": 1, "service": "electricity", "unit_size": 1000,
               "slabs": [[None, 500]]}  # Rs 5.00 per kWh, no fixed charge, no duty


class MemSlots:
    def __init__(self):
        self.slots = [None, None]

    def read(self, slot):
        return self.slots[slot]

    def write(self, slot, data):
        self.slots[slot] = bytes(data)


def config(**over):
    d = dict(EXAMPLE_CONFIG)
    d["credit"] = {"friendly_start_s": 18 * 3600, "friendly_end_s": 8 * 3600,
                   "friendly_weekdays": [6], "emergency_credit_paise": 0,
                   "low_credit_paise": 1000}
    for k in over:
        d[k] = over[k]
    return MeterConfig.from_dict(d)


def topup(counter, amount, tid=None, now=T0, key=KEY, meter_id=MID):
    return auth.make_topup(key, meter_id, counter, now + 3600, tid or "T-%d" % counter, amount)


def test_pulses_become_energy_at_the_pulse_constant():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=10000)
    m.add_pulses(3200 + 16, T0 + 60)  # 1 kWh + 5 Wh at 3200 imp/kWh
    m.step(T0 + 60)
    eq(m.status()["energy_wh"], 1005)


def test_usage_is_charged_by_the_tariff():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=10000)
    m.add_pulses(6400, T0 + 60)  # 2 kWh * 500 paise = 1000 paise
    m.step(T0 + 60)
    eq(m.status()["balance_paise"], 9000)


def test_meter_debits_equal_the_tariff_applied_to_its_interval_records():
    # The head-end recomputes charges from interval records; both must agree to the paisa.
    m = Meter(config(), now=T0, opening_credit_paise=10 ** 7)
    random.seed(7)
    records = []
    fixed_days = set()
    for minute in range(1, 2 * 24 * 60 + 1):
        now = T0 + minute * 60
        m.add_pulses(random.randrange(0, 120), now)
        for kind, rec in m.step(now):
            if kind == "interval":
                records.append(rec)
        fixed_days.add(localtime.local_day(now, localtime.IST_OFFSET_S))
    shadow = tariff.Biller(tariff.Tariff.from_dict(EXAMPLE_CONFIG["tariff"]))
    expected = 0
    for day in sorted(fixed_days):
        expected += shadow.charge_day(localtime.local_midnight_utc(day, localtime.IST_OFFSET_S))
    for rec in records:
        expected += shadow.charge_usage(rec[0], rec[2])
    charged_wh = sum(rec[2] for rec in records)
    # the last (still open) interval's energy is charged but not yet a record
    open_wh = m.energy_units - charged_wh
    if open_wh:
        expected += shadow.charge_usage(((T0 + 2 * 86400 - 1) // 900) * 900, open_wh)
    eq(m.account.total_charges, expected, "meter debits vs shadow tariff")
    assert len(records) >= 2 * 96 - 1


def test_authentic_topup_is_applied_once():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=0)
    cmd = topup(1, 25000)
    eq(m.apply_command(cmd, T0 + 10)[0], auth.OK)
    eq(m.status()["balance_paise"], 25000)
    eq(m.apply_command(cmd, T0 + 20)[0], auth.REPLAYED)
    eq(m.status()["balance_paise"], 25000)


def test_forged_topup_is_rejected_logged_and_balance_unchanged():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=500)
    forged = topup(1, 25000, key=b"x" * 32)
    eq(m.apply_command(forged, T0 + 10)[0], auth.BAD_MAC)
    eq(m.status()["balance_paise"], 500)
    codes = [e[2] for e in m.log.pending(64)]
    assert events.TOPUP_REJECTED in codes
    assert events.TOPUP_APPLIED not in codes


def test_out_of_order_and_expired_topups_are_rejected():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0)
    eq(m.apply_command(topup(5, 100), T0)[0], auth.OK)
    eq(m.apply_command(topup(4, 100), T0)[0], auth.OUT_OF_ORDER)
    eq(m.apply_command(topup(6, 100, now=T0), T0 + 3601)[0], auth.EXPIRED)
    eq(m.status()["balance_paise"], 100)


def test_relay_opens_when_credit_runs_out_outside_friendly_hours():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0 + 9 * 3600, opening_credit_paise=500)
    assert m.relay_closed
    m.add_pulses(3200, T0 + 9 * 3600 + 60)  # 1 kWh = 500 paise: exactly exhausted
    m.step(T0 + 9 * 3600 + 60)
    m.step(T0 + 9 * 3600 + 120)
    assert not m.relay_closed
    eq(m.apply_command(topup(1, 1000, now=T0 + 9 * 3600), T0 + 9 * 3600 + 180)[0], auth.OK)
    assert m.relay_closed


def test_relay_stays_closed_when_credit_runs_out_in_friendly_hours():
    t = T0 + 20 * 3600  # 20:00 IST
    m = Meter(config(tariff=FLAT_TARIFF), now=t, opening_credit_paise=500)
    m.add_pulses(6400, t + 60)
    m.step(t + 60)
    m.step(t + 3600)
    assert m.relay_closed
    assert m.status()["balance_paise"] < 0


def test_state_survives_a_restart_through_the_journal():
    slots = MemSlots()
    m = Meter(config(), now=T0, journal=journal.Journal(slots), opening_credit_paise=50000)
    for minute in range(1, 61):
        m.add_pulses(50, T0 + minute * 60)
        m.step(T0 + minute * 60)
    eq(m.apply_command(topup(1, 12345, now=T0 + 3600), T0 + 3700)[0], auth.OK)
    before = m.to_state()
    again = Meter(config(), now=T0 + 3800, journal=journal.Journal(slots))
    after = again.to_state()
    for part in ("pulses", "profile", "md", "billing", "schedule", "biller", "credit", "guard"):
        eq(json.dumps(after[part]), json.dumps(before[part]), part)
    eq(again.apply_command(topup(1, 12345, now=T0 + 3600), T0 + 3900)[0], auth.REPLAYED)
    codes = [e[2] for e in again.log.pending(64)]
    assert events.JOURNAL_RESTORED in codes and events.POWER_RESTORE in codes


def test_tariff_downlink_is_staged_then_activated_at_its_time():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=100000)
    new = dict(FLAT_TARIFF)
    new["version"] = 2
    new["slabs"] = [[None, 1000]]
    new["activates_at"] = T0 + 3600
    cmd = auth.make_command(KEY, "tariff", MID, 1, T0 + 7200, ["TAR-2", json.dumps(new)])
    eq(m.apply_command(cmd, T0 + 60)[0], auth.OK)
    eq(m.status()["tariff_version"], 1)
    m.add_pulses(3200, T0 + 3540)
    m.step(T0 + 3540)  # consumed before activation: old rate
    eq(m.status()["balance_paise"], 100000 - 500)
    m.add_pulses(3200, T0 + 3660)
    m.step(T0 + 3660)
    eq(m.status()["tariff_version"], 2)
    eq(m.status()["balance_paise"], 100000 - 500 - 1000)


def test_bad_tariff_downlink_is_refused_and_nothing_changes():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0)
    cmd = auth.make_command(KEY, "tariff", MID, 1, T0 + 7200, ["TAR-2", '{"version": 2}'])
    eq(m.apply_command(cmd, T0)[0], BAD_VALUE)
    eq(m.status()["tariff_version"], 1)
    # a refused command does not use up its counter: a corrected one with the same counter works
    good = dict(FLAT_TARIFF)
    good["version"] = 2
    cmd2 = auth.make_command(KEY, "tariff", MID, 1, T0 + 7200, ["TAR-2b", json.dumps(good)])
    eq(m.apply_command(cmd2, T0)[0], auth.OK)


def test_remote_disconnect_is_refused_in_friendly_hours_and_allowed_by_day():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=10000)
    night = auth.make_command(KEY, "relay", MID, 1, T0 + 86400, ["R-1", "disconnect"])
    eq(m.apply_command(night, T0 + 3600)[0], REFUSED)
    assert m.relay_closed
    day = auth.make_command(KEY, "relay", MID, 2, T0 + 86400, ["R-2", "disconnect"])
    eq(m.apply_command(day, T0 + 10 * 3600)[0], auth.OK)
    assert not m.relay_closed
    back = auth.make_command(KEY, "relay", MID, 3, T0 + 86400, ["R-3", "connect"])
    eq(m.apply_command(back, T0 + 11 * 3600)[0], auth.OK)
    assert m.relay_closed


def test_unknown_command_kind_is_reported():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0)
    cmd = auth.make_command(KEY, "selfdestruct", MID, 1, T0 + 60, ["X-1"])
    eq(m.apply_command(cmd, T0)[0], UNKNOWN_KIND)


def test_config_errors_name_the_field():
    err = raises(MeterConfigError, config, interval_s=600)
    assert "interval_s" in str(err)
    err = raises(MeterConfigError, config, key_hex="zz")
    assert "key_hex" in str(err)
    err = raises(MeterConfigError, config, tariff={"id": "x"})
    assert "tariff" in str(err)
    err = raises(MeterConfigError, config, meter_id="a|b")
    assert "meter_id" in str(err)


# STS tokens: NectarAPI tokens-service vectors under this key (see test_sts_acceptor.py)
STS_KEY_HEX = "0abc12def3456789"
ELEC_25_6_KWH = "29054347139309851356"
POWER_LIMIT_10_W = "36190854030032778902"


def sts_meter(slots=None, price=650):
    cfg = config(tariff=FLAT_TARIFF, sts={"key_hex": STS_KEY_HEX, "paise_per_unit": price})
    return Meter(cfg, now=T0, journal=journal.Journal(slots or MemSlots()))


def test_sts_token_credits_its_energy_at_the_configured_price():
    m = sts_meter()
    reason, detail = m.apply_sts_token(ELEC_25_6_KWH, T0 + 60)
    eq(reason, 0, detail)
    eq(m.status()["balance_paise"], 16640)  # 25.6 kWh * 650 paise/kWh = 16640 paise


def test_sts_token_is_accepted_once_even_across_a_restart():
    slots = MemSlots()
    m = sts_meter(slots)
    eq(m.apply_sts_token(ELEC_25_6_KWH, T0 + 60)[0], 0)
    again = Meter(config(tariff=FLAT_TARIFF, sts={"key_hex": STS_KEY_HEX, "paise_per_unit": 650}),
                  now=T0 + 120, journal=journal.Journal(slots))
    reason, name = again.apply_sts_token(ELEC_25_6_KWH, T0 + 180)
    eq(name, "used")
    eq(again.status()["balance_paise"], 16640)


def test_mistyped_or_wrong_key_token_is_rejected_and_logged():
    m = sts_meter()
    typo = ELEC_25_6_KWH[:-1] + ("0" if ELEC_25_6_KWH[-1] != "0" else "1")
    eq(m.apply_sts_token(typo, T0)[1], "bad_crc")
    eq(m.apply_sts_token("1234", T0)[1], "format")
    eq(m.status()["balance_paise"], 0)
    rejected = [e for e in m.log.pending(64) if e[2] == events.TOPUP_REJECTED]
    eq([e[3] for e in rejected], [102, 101])


def test_management_tokens_the_meter_does_not_act_on_are_unsupported():
    m = sts_meter()
    eq(m.apply_sts_token(POWER_LIMIT_10_W, T0)[1], "unsupported")


def test_meter_without_sts_config_refuses_tokens_clearly():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0)
    reason, detail = m.apply_sts_token(ELEC_25_6_KWH, T0)
    assert "not configured" in detail


def test_monthly_snapshot_carries_max_demand_and_resets_it():
    # 30 Nov 2026 23:00 IST: a 6 kW hour, then the month ends at midnight
    start = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 30), localtime.IST_OFFSET_S) + 23 * 3600
    m = Meter(config(tariff=FLAT_TARIFF), now=start, opening_credit_paise=10 ** 7)
    kinds = []
    for minute in range(1, 121):
        now = start + minute * 60
        m.add_pulses(320 if minute <= 60 else 16, now)  # 100 Wh/min = 6 kW, then 5 Wh/min = 300 W
        for kind, rec in m.step(now):
            kinds.append(kind)
            if kind == "monthly":
                monthly = rec
    assert "daily" in kinds and "monthly" in kinds
    eq(monthly[5], 6000, "max demand of November (W)")
    # The reset clears the maximum, not the sliding window (metering.MaxDemand): December's
    # highest window is the one ending 00:05, 25 min at 6 kW + 5 min at 300 W:
    # (25 * 100 Wh + 5 * 5 Wh) * 3600 / 1800 = 5050 W.  Before the fix that closes the
    # demand slot ending at midnight inside November, December wrongly showed 6000 W.
    eq(m.md.max_w, 5050)


def test_energy_across_a_gap_is_charged_at_the_interval_that_records_it():
    # Supply off from 16:50 to exactly 18:00 IST; the 18:00-22:00 peak is +20 %.
    # The profile books the energy counted at 18:00 to the 18:00 interval
    # (AFTER_GAP), so the meter must charge it at the peak rate too.
    t = T0 + 16 * 3600 + 50 * 60
    m = Meter(config(), now=t, opening_credit_paise=10 ** 6)
    m.step(t)
    m.add_pulses(3200, T0 + 18 * 3600)
    out = m.step(T0 + 18 * 3600)
    shadow = tariff.Biller(tariff.Tariff.from_dict(EXAMPLE_CONFIG["tariff"]))
    expected = shadow.charge_day(t)
    for kind, rec in out:
        if kind == "interval":
            expected += shadow.charge_usage(rec[0], rec[2])
    for kind, rec in m.step(T0 + 18 * 3600 + 900):
        if kind == "interval":
            expected += shadow.charge_usage(rec[0], rec[2])
    eq(m.account.total_charges, expected)


def test_stepping_twice_at_the_same_second_is_harmless():
    m = Meter(config(tariff=FLAT_TARIFF), now=T0, opening_credit_paise=10000)
    m.add_pulses(3200, T0 + 900)
    m.step(T0 + 900)
    m.add_pulses(3200, T0 + 900)
    m.step(T0 + 900)
    eq(m.status()["energy_wh"], 2000)
    eq(m.status()["balance_paise"], 10000 - 1000)


def test_example_config_is_a_fresh_dict_at_every_use():
    from firmware.core import meter as M
    first = M.EXAMPLE_CONFIG
    first["tariff"]["slabs"].append([1, 2])
    first["meter_id"] = "CHANGED"
    eq(M.EXAMPLE_CONFIG["meter_id"], "UJ-DEMO-0001")
    eq(len(M.EXAMPLE_CONFIG["tariff"]["slabs"]), 3)
    eq(M.example_config(), M.EXAMPLE_CONFIG)


def test_result_names_are_the_auth_reasons_then_the_meter_results():
    from firmware.core import meter as M
    names = M.RESULT_NAMES
    for code, name in auth.REASON_NAMES.items():
        eq(names[code], name)
    eq((names[REFUSED], names[UNKNOWN_KIND], names[BAD_VALUE]), ("REFUSED", "UNKNOWN_KIND", "BAD_VALUE"))
    eq(len(names), len(auth.REASON_NAMES) + 3)


def test_journal_record_holds_exactly_to_state():
    slots = MemSlots()
    m = Meter(config(), now=T0, journal=journal.Journal(slots), opening_credit_paise=50000)
    m.add_pulses(3200, T0 + 900)
    m.step(T0 + 900)
    eq(m.apply_command(topup(1, 12345, now=T0 + 3600), T0 + 1000)[0], auth.OK)
    saved = json.loads(journal.Journal(slots).load())
    # the same data (on MicroPython a dict's key order is not insertion order)
    eq(saved["credit"], m.account.to_state())
    eq(saved, json.loads(json.dumps(m.to_state())))
