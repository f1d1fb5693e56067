import binascii
import json

from firmware.core import auth
from firmware.tests.check import eq, raises

unhex = binascii.unhexlify

# ---------------------------------------------------------------- HMAC-SHA256
# RFC 4231 section 4 test vectors (HMAC-SHA-256 lines), also used by e.g. the
# ccan and dovecot HMAC tests. Case 5 (truncation to 128 bits) is left out:
# we never truncate.


def test_rfc4231_case1_short_key():
    eq(auth.hmac_sha256(b"\x0b" * 20, b"Hi There"),
       unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"))


def test_rfc4231_case2_key_shorter_than_mac():
    eq(auth.hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
       unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"))


def test_rfc4231_case3_combined_length_above_block():
    eq(auth.hmac_sha256(b"\xaa" * 20, b"\xdd" * 50),
       unhex("773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"))


def test_rfc4231_case4_counting_key():
    key = bytes(range(1, 26))  # 0x01 .. 0x19, 25 bytes
    eq(auth.hmac_sha256(key, b"\xcd" * 50),
       unhex("82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"))


def test_rfc4231_case6_key_longer_than_block_is_hashed_first():
    eq(auth.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
       unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"))


def test_rfc4231_case7_long_key_and_long_data():
    msg = (b"This is a test using a larger than block-size key and a larger than "
           b"block-size data. The key needs to be hashed before being used by the "
           b"HMAC algorithm.")
    eq(auth.hmac_sha256(b"\xaa" * 131, msg),
       unhex("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"))


def test_macs_equal_only_for_identical_bytes():
    a = b"\x00" * 31 + b"\x01"
    assert auth.macs_equal(a, a)
    assert not auth.macs_equal(a, b"\x00" * 32)  # last byte differs
    assert not auth.macs_equal(b"\x80" + a[1:], a)  # first byte differs
    assert not auth.macs_equal(a, a[:31])  # length differs


# ---------------------------------------------------------------- canonical


def test_canonical_topup_bytes_are_exact():
    eq(auth.canonical("topup", "M-0001", 7, 1795740000, ["T-42", 50000]),
       b"URJA1|topup|M-0001|7|1795740000|T-42|50000")


def test_canonical_negative_int_field_and_no_fields():
    eq(auth.canonical("adjust", "M1", 1, 0, [-250]), b"URJA1|adjust|M1|1|0|-250")
    eq(auth.canonical("ping", "M1", 12, 99, []), b"URJA1|ping|M1|12|99")


def test_canonical_tuple_fields_give_the_same_bytes_as_a_list():
    eq(auth.canonical("k", "M1", 1, 2, ("a", 3)), auth.canonical("k", "M1", 1, 2, ["a", 3]))


def test_canonical_rejects_separator_in_any_part():
    raises(auth.AuthError, auth.canonical, "top|up", "M1", 1, 2, [])
    raises(auth.AuthError, auth.canonical, "topup", "M|1", 1, 2, [])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, ["T|1", 5])


def test_canonical_rejects_non_ascii_and_control_characters():
    raises(auth.AuthError, auth.canonical, "topup", "M\u00e9", 1, 2, [])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, ["\u20b9500"])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, ["a\nb"])


def test_canonical_rejects_empty_kind_or_meter_id():
    raises(auth.AuthError, auth.canonical, "", "M1", 1, 2, [])
    raises(auth.AuthError, auth.canonical, "topup", "", 1, 2, [])


def test_canonical_rejects_wrong_types():
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, [1.5])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, [True])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, [None])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, [b"x"])
    raises(auth.AuthError, auth.canonical, "topup", "M1", -1, 2, [])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, "2", [])
    raises(auth.AuthError, auth.canonical, "topup", "M1", 1, 2, {"a": 1})


def test_sign_matches_openssl():
    # printf 'URJA1|topup|M-0001|7|1795740000|T-42|50000' \
    #   | openssl dgst -sha256 -hmac 'urja-test-key-meter-0001'
    eq(auth.sign(b"urja-test-key-meter-0001", "topup", "M-0001", 7, 1795740000, ["T-42", 50000]),
       "c3f543495107156bc15de9678183db8941c5dc44aec1bcafb95065aa05b70fc0")


# ---------------------------------------------------------------- guard

KEY = b"urja-test-key-meter-0001"
OTHER_KEY = b"urja-test-key-meter-0002"
METER = "M-0001"
NOW = 1795737600  # 2026-11-27 00:00:00 UTC
LATER = NOW + 3600


def topup(counter=1, topup_id="T-1", amount=50000, expires_at=LATER, key=KEY, meter=METER):
    return auth.make_topup(key, meter, counter, expires_at, topup_id, amount)


def flip_hex_bit(h, index, bit):
    nibble = int(h[index], 16) ^ (1 << bit)
    return h[:index] + "0123456789abcdef"[nibble] + h[index + 1:]


def check_keeps_state(guard, cmd, now=NOW):
    """Run check and prove it left the guard's state alone."""
    before = json.dumps(guard.to_state())
    code = guard.check(KEY, cmd, now)
    eq(json.dumps(guard.to_state()), before, "guard state after check")
    return code


def test_reason_names_cover_every_code_once():
    codes = [auth.OK, auth.BAD_MAC, auth.REPLAYED, auth.OUT_OF_ORDER,
             auth.EXPIRED, auth.WRONG_METER, auth.MALFORMED]
    eq(len(set(codes)), 7)
    eq(sorted(auth.REASON_NAMES.keys()), sorted(codes))
    eq(auth.REASON_NAMES[auth.REPLAYED], "REPLAYED")


def test_make_topup_carries_the_openssl_mac():
    cmd = topup(counter=7, topup_id="T-42", amount=50000, expires_at=1795740000)
    eq(cmd["mac"], "c3f543495107156bc15de9678183db8941c5dc44aec1bcafb95065aa05b70fc0")
    eq(cmd["id"], "T-42")


def test_valid_topup_is_ok_and_read_back():
    guard = auth.DownlinkGuard(METER)
    cmd = topup()
    eq(check_keeps_state(guard, cmd), auth.OK)
    eq(auth.read_topup(cmd), ("T-1", 50000))


def test_one_bit_flipped_in_mac_is_bad_mac():
    guard = auth.DownlinkGuard(METER)
    cmd = topup()
    for index in (0, 31, 63):
        forged = dict(cmd)
        forged["mac"] = flip_hex_bit(cmd["mac"], index, 0)
        eq(check_keeps_state(guard, forged), auth.BAD_MAC, "mac nibble %d" % index)


def test_changed_amount_is_bad_mac():
    guard = auth.DownlinkGuard(METER)
    forged = topup(amount=50000)
    forged["fields"] = ["T-1", 50001]
    eq(check_keeps_state(guard, forged), auth.BAD_MAC)


def test_changed_counter_is_bad_mac():
    guard = auth.DownlinkGuard(METER)
    forged = topup(counter=1)
    forged["counter"] = 2
    eq(check_keeps_state(guard, forged), auth.BAD_MAC)


def test_changed_expiry_is_bad_mac():
    guard = auth.DownlinkGuard(METER)
    forged = topup(expires_at=LATER)
    forged["expires_at"] = LATER + 86400
    eq(check_keeps_state(guard, forged), auth.BAD_MAC)


def test_other_meters_key_is_bad_mac():
    guard = auth.DownlinkGuard(METER)
    eq(check_keeps_state(guard, topup(key=OTHER_KEY)), auth.BAD_MAC)


def test_command_for_another_meter_is_wrong_meter():
    guard = auth.DownlinkGuard(METER)
    # correctly signed for M-0002, replayed at M-0001
    eq(check_keeps_state(guard, topup(meter="M-0002")), auth.WRONG_METER)


def test_uppercase_hex_mac_is_accepted():
    guard = auth.DownlinkGuard(METER)
    cmd = topup()
    cmd["mac"] = cmd["mac"].upper()
    eq(guard.check(KEY, cmd, NOW), auth.OK)


def test_replayed_topup_is_rejected():
    guard = auth.DownlinkGuard(METER)
    cmd = topup(counter=1)
    guard.accept(cmd)
    eq(check_keeps_state(guard, cmd), auth.REPLAYED)


def test_same_topup_id_resigned_with_new_counter_is_replayed():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=1, topup_id="T-1"))
    eq(check_keeps_state(guard, topup(counter=2, topup_id="T-1")), auth.REPLAYED)


def test_same_counter_with_new_id_is_replayed():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=5, topup_id="T-1"))
    eq(check_keeps_state(guard, topup(counter=5, topup_id="T-2")), auth.REPLAYED)


def test_lower_counter_is_out_of_order():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=5, topup_id="T-5"))
    eq(check_keeps_state(guard, topup(counter=4, topup_id="T-4")), auth.OUT_OF_ORDER)
    eq(check_keeps_state(guard, topup(counter=6, topup_id="T-6")), auth.OK)


def test_counters_may_skip_forward():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=1, topup_id="T-1"))
    eq(guard.check(KEY, topup(counter=1000, topup_id="T-2"), NOW), auth.OK)


def test_valid_exactly_at_expires_at_and_expired_one_second_later():
    guard = auth.DownlinkGuard(METER)
    cmd = topup(expires_at=LATER)
    eq(check_keeps_state(guard, cmd, now=LATER), auth.OK)
    eq(check_keeps_state(guard, cmd, now=LATER + 1), auth.EXPIRED)


def test_checks_run_in_the_documented_order():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=5, topup_id="T-5"))
    # wrong meter wins over a bad MAC
    cmd = topup(meter="M-0002", counter=5, topup_id="T-5")
    cmd["mac"] = "00" * 32
    eq(guard.check(KEY, cmd, LATER + 1), auth.WRONG_METER)
    # a bad MAC wins over replayed/expired: an attacker learns nothing about the state
    cmd = topup(counter=5, topup_id="T-5")
    cmd["mac"] = flip_hex_bit(cmd["mac"], 10, 3)
    eq(guard.check(KEY, cmd, LATER + 1), auth.BAD_MAC)
    # replayed wins over expired
    eq(guard.check(KEY, topup(counter=5, topup_id="T-5"), LATER + 1), auth.REPLAYED)
    # out of order wins over expired
    eq(guard.check(KEY, topup(counter=4, topup_id="T-4"), LATER + 1), auth.OUT_OF_ORDER)


def test_malformed_commands_are_rejected():
    guard = auth.DownlinkGuard(METER)
    good = topup()
    variants = []
    for name in ("kind", "meter_id", "counter", "expires_at", "id", "fields", "mac"):
        cmd = dict(good)
        del cmd[name]
        variants.append(("missing " + name, cmd))
    for name, value in (
        ("counter", "1"), ("counter", True), ("counter", 0), ("counter", -3),
        ("expires_at", 1.5), ("expires_at", -1), ("meter_id", 7), ("meter_id", ""),
        ("kind", ""), ("kind", None), ("id", 1), ("id", "T-9"), ("fields", "T-1,50000"),
        ("fields", []), ("fields", ["T-1", 0]), ("fields", ["T-1", -5]),
        ("fields", ["T-1", "50000"]), ("fields", ["T-1", True]), ("fields", ["T-1"]),
        ("fields", ["T-1", 50000, "extra"]), ("mac", good["mac"][:62]),
        ("mac", "zz" + good["mac"][2:]), ("mac", None), ("mac", good["mac"] + "00"),
    ):
        cmd = dict(good)
        cmd[name] = value
        variants.append(("%s=%r" % (name, value), cmd))
    variants.append(("not a dict", [good]))
    variants.append(("None", None))
    for what, cmd in variants:
        eq(check_keeps_state(guard, cmd), auth.MALFORMED, what)


def test_rejections_leave_the_next_valid_command_acceptable():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=1, topup_id="T-1"))
    forged = topup(counter=9, topup_id="T-9")
    forged["fields"] = ["T-9", 9999999]
    eq(guard.check(KEY, forged, NOW), auth.BAD_MAC)
    eq(guard.check(KEY, topup(counter=9, topup_id="T-9"), LATER + 1), auth.EXPIRED)
    eq(guard.check(KEY, topup(counter=2, topup_id="T-2"), NOW), auth.OK)
    eq(guard.last_counter, 1)


def test_accept_refuses_a_counter_not_above_the_last():
    guard = auth.DownlinkGuard(METER)
    guard.accept(topup(counter=3, topup_id="T-3"))
    raises(auth.AuthError, guard.accept, topup(counter=3, topup_id="T-4"))
    raises(auth.AuthError, guard.accept, topup(counter=2, topup_id="T-2"))
    eq(guard.last_counter, 3)


def test_oldest_id_is_forgotten_after_remember_accepts():
    guard = auth.DownlinkGuard(METER, remember=2)
    for n in (1, 2, 3):
        guard.accept(topup(counter=n, topup_id="T-%d" % n))
    eq(guard.accepted_ids(), ["T-2", "T-3"])
    # T-1 re-signed with a fresh counter is no longer recognised: the window is
    # `remember` ids, the counter is what protects older commands.
    eq(guard.check(KEY, topup(counter=4, topup_id="T-1"), NOW), auth.OK)
    eq(guard.check(KEY, topup(counter=4, topup_id="T-2"), NOW), auth.REPLAYED)


def test_guard_survives_to_state_from_state_through_json():
    guard = auth.DownlinkGuard(METER, remember=3)
    for n in (1, 2, 5, 8):
        guard.accept(topup(counter=n, topup_id="T-%d" % n))
    state = json.loads(json.dumps(guard.to_state()))
    eq(state["ids"], ["T-2", "T-5", "T-8"])
    eq(state["last_counter"], 8)
    back = auth.DownlinkGuard.from_state(state)
    eq(back.to_state(), guard.to_state())
    eq(back.check(KEY, topup(counter=9, topup_id="T-5"), NOW), auth.REPLAYED)
    eq(back.check(KEY, topup(counter=8, topup_id="T-99"), NOW), auth.REPLAYED)
    eq(back.check(KEY, topup(counter=7, topup_id="T-7"), NOW), auth.OUT_OF_ORDER)
    eq(back.check(KEY, topup(counter=9, topup_id="T-9"), NOW), auth.OK)
    back.accept(topup(counter=9, topup_id="T-9"))
    eq(back.accepted_ids(), ["T-5", "T-8", "T-9"])


def test_fresh_guard_state_round_trips():
    guard = auth.DownlinkGuard(METER)
    back = auth.DownlinkGuard.from_state(guard.to_state())
    eq(back.to_state(), {"meter_id": METER, "remember": 16, "last_counter": 0, "ids": []})


def test_generic_command_verifies_and_its_id_is_the_first_field():
    guard = auth.DownlinkGuard(METER)
    cmd = auth.make_command(KEY, "relay_close", METER, 1, LATER, ["C-1"])
    eq(cmd["id"], "C-1")
    eq(guard.check(KEY, cmd, NOW), auth.OK)
    raises(auth.AuthError, auth.make_command, KEY, "relay_close", METER, 1, LATER, [])


def test_the_signing_half_stays_importable_from_auth():
    from firmware.core import signing
    eq((auth.sign, auth.make_command, auth.make_topup),
       (signing.sign, signing.make_command, signing.make_topup))
    eq(issubclass(auth.AuthError, ValueError), True)
    raises(AttributeError, getattr, auth, "NoSuchName")


def test_read_topup_refuses_other_kinds():
    cmd = auth.make_command(KEY, "relay_close", METER, 1, LATER, ["C-1"])
    raises(auth.AuthError, auth.read_topup, cmd)
    raises(auth.AuthError, auth.make_topup, KEY, METER, 1, LATER, "T-1", 0)
