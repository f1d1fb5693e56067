"""Meter-side STS acceptor: reasons, replay memory, units, key change, state.

Tokens under key 0x0ABC12DEF3456789 come from NectarAPI tokens-service
NativeTokenDecoderTest.java (see test_sts_codec.py): all have TID 1698595.
Tokens for other TIDs are made with our encoder, whose output is pinned
digit for digit to those vectors in test_sts_codec.py.
"""
from firmware.sts import acceptor as ac
from firmware.sts import codec
from firmware.tests.check import eq

KEY = 0x0ABC12DEF3456789
ELEC_25_6_KWH = "29054347139309851356"
WATER_35_6_M3 = "47445274807975686464"
GAS_45_6_M3 = "36694449120075654222"
POWER_LIMIT_10_W = "36190854030032778902"
CLEAR_CREDIT_ALL = "64677297699170608942"
CLEAR_TAMPER = "61329751000448523691"
KEY_CHANGE_1 = "33981812261387035127"
KEY_CHANGE_2 = "14367398748900528122"


def _elec(tid, tenths=10, key=KEY):
    return codec.encode_credit(codec.ELECTRICITY, 5, tid, tenths, key)


def test_electricity_credit_is_accepted_in_wh():
    res = ac.Acceptor(KEY).accept(ELEC_25_6_KWH)
    eq(res.reason, ac.ACCEPTED)
    eq((res.kind, res.quantity, res.unit), ("electricity", 25600, "Wh"))  # 25.6 kWh * 1000
    eq(res.new_state["tids"], [1698595])


def test_water_and_gas_credit_are_accepted_in_litres():
    res = ac.Acceptor(KEY).accept(WATER_35_6_M3)
    eq((res.reason, res.kind, res.quantity, res.unit), (ac.ACCEPTED, "water", 35600, "L"))
    res = ac.Acceptor(KEY).accept(GAS_45_6_M3)
    eq((res.reason, res.kind, res.quantity, res.unit), (ac.ACCEPTED, "gas", 45600, "L"))


def test_accept_does_not_change_the_acceptor_until_commit():
    acc = ac.Acceptor(KEY)
    before = acc.to_state()
    res = acc.accept(ELEC_25_6_KWH)
    eq(acc.to_state(), before)
    acc.commit(res)
    eq(acc.tids, [1698595])


def test_replayed_token_is_rejected_as_used_and_state_unchanged():
    acc = ac.Acceptor(KEY)
    acc.commit(acc.accept(ELEC_25_6_KWH))
    before = acc.to_state()
    res = acc.accept(ELEC_25_6_KWH)
    eq(res.reason_name(), "used")
    eq(res.new_state, None)
    eq(acc.to_state(), before)


def test_token_older_than_oldest_remembered_is_old_once_memory_is_full():
    acc = ac.Acceptor(KEY, memory=3)
    for tid in (10, 20, 30):
        acc.commit(acc.accept(_elec(tid)))
    eq(acc.accept(_elec(5)).reason, ac.OLD)
    res = acc.accept(_elec(25))  # newer than the oldest: fine, and 10 is forgotten
    eq(res.reason, ac.ACCEPTED)
    eq(res.new_state["tids"], [20, 25, 30])


def test_older_token_is_accepted_while_memory_has_room():
    acc = ac.Acceptor(KEY, memory=3)
    acc.commit(acc.accept(_elec(30)))
    eq(acc.accept(_elec(5)).reason, ac.ACCEPTED)


def test_wrong_key_or_typo_is_bad_crc():
    eq(ac.Acceptor(KEY ^ 0x10).accept(ELEC_25_6_KWH).reason, ac.BAD_CRC)
    typo = "2905434713930985135" + "7"
    eq(ac.Acceptor(KEY).accept(typo).reason_name(), "bad_crc")


def test_wrong_length_is_a_format_error():
    eq(ac.Acceptor(KEY).accept("2905434713930985135").reason, ac.FORMAT)


def test_key_expiry_number_bounds_the_tid_top_byte():
    # TID 1698595 >> 16 = 25 (25 * 65536 = 1638400 <= 1698595 < 26 * 65536)
    eq(ac.Acceptor(KEY, ken=24).accept(ELEC_25_6_KWH).reason, ac.KEY_EXPIRED)
    eq(ac.Acceptor(KEY, ken=25).accept(ELEC_25_6_KWH).reason, ac.ACCEPTED)


def test_credit_beyond_headroom_is_overflow_and_not_remembered():
    acc = ac.Acceptor(KEY)
    res = acc.accept(ELEC_25_6_KWH, headroom=25599)
    eq((res.reason_name(), res.new_state), ("overflow", None))
    eq(acc.accept(ELEC_25_6_KWH, headroom=25600).reason, ac.ACCEPTED)


def test_power_limit_token_gives_watts():
    res = ac.Acceptor(KEY).accept(POWER_LIMIT_10_W)
    eq((res.reason, res.kind, res.quantity, res.unit), (ac.ACCEPTED, "set_max_power_limit", 10, "W"))


def test_clear_credit_and_clear_tamper_are_accepted_once():
    acc = ac.Acceptor(KEY)
    res = acc.accept(CLEAR_CREDIT_ALL)
    eq((res.reason, res.kind, res.quantity, res.unit), (ac.ACCEPTED, "clear_credit", 0xFFFF, "register"))
    acc.commit(res)
    # same TID as the clear credit token: a different token, same minute -> used
    eq(acc.accept(CLEAR_TAMPER).reason, ac.USED)
    eq(ac.Acceptor(KEY).accept(CLEAR_TAMPER).kind, "clear_tamper")


def test_test_tokens_are_reported_unsupported():
    eq(ac.Acceptor(KEY).accept("00000000000150997584").reason, ac.UNSUPPORTED)


def test_key_change_second_section_alone_is_refused():
    eq(ac.Acceptor(KEY).accept(KEY_CHANGE_2).reason_name(), "no_first_section")


def test_key_change_sections_set_key_attributes():
    acc = ac.Acceptor(KEY, krn=1, ti=7)
    res = acc.accept(KEY_CHANGE_1)
    eq(res.reason, ac.ACCEPTED)
    acc.commit(res)
    res = acc.accept(KEY_CHANGE_2)
    eq(res.reason, ac.ACCEPTED)
    acc.commit(res)
    # Nectar's sections carry new key 0x0ABC12DE|F3456789, KRN 2, KT 2, KEN 0xFF, TI 1
    eq((acc.key, acc.krn, acc.key_type, acc.ken, acc.ti, acc.pending), (KEY, 2, 2, 255, 1, None))


def test_key_change_moves_meter_to_new_key_and_rollover_clears_tids():
    new_key = 0x1122334455667788
    acc = ac.Acceptor(KEY)
    acc.commit(acc.accept(ELEC_25_6_KWH))
    first, second = codec.encode_key_change(new_key, KEY, krn=3, key_type=2, ken=255, ti=2, ro=1)
    acc.commit(acc.accept(first))
    acc.commit(acc.accept(second))
    eq((acc.key, acc.krn, acc.ti, acc.tids), (new_key, 3, 2, []))
    eq(acc.accept(_elec(5)).reason, ac.BAD_CRC)  # old-key token no longer decodes
    eq(acc.accept(_elec(5, key=new_key)).reason, ac.ACCEPTED)


def test_state_round_trip_behaves_identically():
    acc = ac.Acceptor(KEY, memory=3, ken=200)
    for tid in (10, 20, 30):
        acc.commit(acc.accept(_elec(tid)))
    acc.commit(acc.accept(KEY_CHANGE_1))
    copy = ac.Acceptor.from_state(acc.to_state())
    eq(copy.to_state(), acc.to_state())
    for text in (_elec(5), _elec(20), _elec(40), KEY_CHANGE_2, ELEC_25_6_KWH):
        a, b = acc.accept(text), copy.accept(text)
        eq((a.reason, a.quantity, a.new_state), (b.reason, b.quantity, b.new_state), text)


# A measured limitation of the standard's CRC-16 (not of this code): over 360,000
# single-digit changes of 2,000 random tokens, 2 decoded with a valid CRC.  This is one:
# water token (TID 11455318) with digit 13 changed 2 -> 7 becomes an electricity credit.
WATER_TOKEN = "37633725306720457042"
TYPO_THAT_PASSES_CRC = "37633725306770457042"


def test_a_rare_single_digit_typo_passes_crc_as_another_token():
    orig = codec.decode(WATER_TOKEN, KEY)
    eq((orig.crc_ok, orig.subclass, orig.tid), (True, codec.WATER, 11455318))
    typo = codec.decode(TYPO_THAT_PASSES_CRC, KEY)
    eq((typo.crc_ok, typo.subclass, typo.tid), (True, codec.ELECTRICITY, 13070766))


def test_future_tid_guard_refuses_the_typo_token():
    acc = ac.Acceptor(KEY)
    eq(acc.accept(TYPO_THAT_PASSES_CRC).reason, ac.ACCEPTED)  # the standard's rules alone
    # meter clock says TID 11455318 + one day of tolerance
    eq(acc.accept(TYPO_THAT_PASSES_CRC, max_tid=11455318 + 1440).reason_name(), "future")
    eq(acc.accept(WATER_TOKEN, max_tid=11455318 + 1440).reason, ac.ACCEPTED)
