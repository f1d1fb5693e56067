"""Head-end vending: DKGA02 decoder keys, TIDs, and full vends, digit for digit.

Expected values are from NectarAPI tokens-service (commit ea572db9), tests
src/test/java/ke/co/nectar/token/domain/token/
  STSComplianceTests_STS_531_1_0_02_CTSA01.java  (STS 531-1-0 compliance suite)
  STSComplianceTests_STS_531_1_0_02_CTSA05.java  (key change tokens)
  STSComplianceTests_Nectar_1.java
All use VUDK abababababababab, key type 2, SGC 123456, KRN 1, KEN 255, rnd 5
and the 1993 base date.

Nectar prints the decoder key as its byte array, which holds the key
least-significant byte first: "6ff35b9d1f3453e6" there is 0xe653341f9d5bf36f here.
"""
import pytest

from firmware.sts import codec
from headend.sts import dkga02, vending

VUDK = bytes.fromhex("abababababababab")
PAN_A = "600727000000000009"
PAN_B = "000001000000000082"


def key_for(pan, ti=1):
    return dkga02.derive_key(VUDK, 123456, ti, 1, pan, key_type=2)


def minutes_1993(days, hh, mm):
    return days * 1440 + hh * 60 + mm


# 2004-03-01: 1993..2003 = 11 years, 2 of them leap (1996, 2000) -> 11*365 + 2 = 4017 days,
# + Jan 31 + Feb 29 (2004 is leap) = 4077 days.
MAR_1_2004 = 4077
# 2004-04-21: 4077 + Mar 31 + 20 = 4128 days; 2004-05-21: 4128 + 30 = 4158 days.
APR_21_2004 = 4128
MAY_21_2004 = 4158


def test_pan_block_drops_first_digit_and_check_digit():
    assert dkga02.pan_block(PAN_A) == bytes.fromhex("0072700000000000")
    assert dkga02.pan_block(PAN_B) == bytes.fromhex("0000100000000008")


def test_control_block_layout():
    assert dkga02.control_block(2, 123456, 1, 1) == bytes.fromhex("2123456011FFFFFF")


def test_dkga02_matches_compliance_decoder_key():
    # CTSA01 step1: generatedDecoderKey "6ff35b9d1f3453e6" (Nectar byte order, reversed)
    assert key_for(PAN_A).to_bytes(8, "little").hex() == "6ff35b9d1f3453e6"
    assert key_for(PAN_A) == 0xE653341F9D5BF36F


def test_dkga02_rejects_bad_inputs():
    with pytest.raises(dkga02.KeyDerivationError):
        dkga02.derive_key(VUDK, 123456, 1, 1, "12345")
    with pytest.raises(dkga02.KeyDerivationError):
        dkga02.derive_key(VUDK, 1234567, 1, 1, PAN_A)
    with pytest.raises(dkga02.KeyDerivationError):
        dkga02.derive_key(VUDK[:7], 123456, 1, 1, PAN_A)


@pytest.mark.parametrize("pan,kind,minute,expected", [
    (PAN_A, codec.ELECTRICITY, 13 * 60 + 55, "23716100501183194197"),  # CTSA01 step 1
    (PAN_B, codec.ELECTRICITY, 14 * 60 + 0, "67206107716095682372"),   # step 2
    (PAN_A, codec.WATER, 14 * 60 + 5, "42502136492215507402"),         # step 3
    (PAN_B, codec.WATER, 14 * 60 + 10, "09109691696351271646"),        # step 4
    (PAN_A, codec.GAS, 14 * 60 + 15, "67586531586639825066"),          # step 5
    (PAN_B, codec.GAS, 14 * 60 + 20, "35758660990071466853"),          # step 6
])
def test_compliance_credit_tokens_vend_digit_for_digit(pan, kind, minute, expected):
    tid = MAR_1_2004 * 1440 + minute
    # 0.1 kWh / m3 = 1 tenth
    assert vending.vend(key_for(pan), codec.CLASS_CREDIT, kind, tid, 1, rnd=5) == expected
    tok = codec.decode(expected, key_for(pan))
    assert tok.crc_ok and (tok.subclass, tok.tid, tok.units()) == (kind, tid, 1)


@pytest.mark.parametrize("kind,expected,crc_bits", [
    ("electricity", "66475648316756821785", "0011010100000100"),  # Nectar_1 step1
    ("water", "26436017448909825227", "0011011110010100"),        # step1A
    ("gas", "47052671496957348697", "0011001001100100"),          # step1B
])
def test_nectar_one_kwh_tokens_from_the_clock(kind, expected, crc_bits):
    issued = vending.BASE_1993_UTC + minutes_1993(APR_21_2004, 10, 1) * 60
    assert vending.vend_credit(key_for(PAN_A), kind, 10, issued, rnd=5) == expected
    assert codec.decode(expected, key_for(PAN_A)).crc == int(crc_bits, 2)


def test_largest_single_exponent_amount_vends_as_nectar():
    # Nectar_1 step2 CTSA20: water 16383 m3 = 163830 tenths, 2004-05-21 10:02
    tid = minutes_1993(MAY_21_2004, 10, 2)
    assert vending.vend(key_for(PAN_A), 0, codec.WATER, tid, 163830, rnd=5) == "14605694188309739537"


def test_key_change_tokens_vend_as_compliance_suite():
    old, new = key_for(PAN_A, ti=1), key_for(PAN_A, ti=2)
    # CTSA05 step1: KRN 1, KT 2, KEN 255, RO 0, new TI 02
    assert codec.encode_key_change(new, old, krn=1, key_type=2, ken=255, ti=2) == (
        "51638423060042734509", "15361891762113502242")
    # CTSA05 step2: tariff indexes swapped
    old, new = key_for(PAN_A, ti=2), key_for(PAN_A, ti=1)
    assert codec.encode_key_change(new, old, krn=1, key_type=2, ken=255, ti=1) == (
        "26553210520543055412", "00943705441908264439")


def test_tid_counts_minutes_since_1993_utc():
    assert vending.tid_from_utc(vending.BASE_1993_UTC) == 0
    assert vending.tid_from_utc(vending.BASE_1993_UTC + 59) == 0
    assert vending.tid_from_utc(vending.BASE_1993_UTC + 60) == 1
    # IST counting: 05:30 local on 1993-01-01 is 00:00 UTC -> 330 minutes
    assert vending.tid_from_utc(vending.BASE_1993_UTC, offset_s=19800) == 330


def test_1993_base_date_rolls_over_on_2024_11_24():
    # 2^24 minutes after 1993-01-01 = 1732479360 = 2024-11-24 20:16:00 UTC (date -u -d @1732479360)
    assert vending.rollover_utc(vending.BASE_1993_UTC) == 1732479360
    assert vending.tid_from_utc(1732479360 - 60) == (1 << 24) - 1
    with pytest.raises(vending.TidRangeError):
        vending.tid_from_utc(1732479360)


def test_2014_base_date_covers_today():
    # 2026-01-01 00:00 UTC = 1767225600; minus 2014-01-01 (1388534400) = 378691200 s = 6311520 min
    assert vending.tid_from_utc(1767225600, vending.BASE_2014_UTC) == 6311520
    assert vending.utc_from_tid(6311520, vending.BASE_2014_UTC) == 1767225600


def test_vend_refuses_class_1():
    with pytest.raises(ValueError):
        vending.vend(1, codec.CLASS_TEST, 0, 0, 0)


def test_default_rnd_varies_but_token_still_decodes():
    key = key_for(PAN_A)
    tokens = {vending.vend(key, 0, 0, 1234, 10) for _ in range(40)}
    assert len(tokens) > 1
    assert all(codec.decode(t, key).tid == 1234 for t in tokens)
