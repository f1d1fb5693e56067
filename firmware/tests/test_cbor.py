"""CBOR codec, dual-runtime.

Byte-exact vectors are RFC 8949 Appendix A, as machine-readable in
github.com/cbor/test-vectors appendix_a.json; other expected bytes are
worked out by hand from RFC 8949 section 3 (head = major type << 5 | info).
"""
from firmware.protocol import cbor
from firmware.protocol.cbor import CborError, Decoder, Map, Tag, decode, encode
from firmware.tests.check import eq, raises

H = bytes.fromhex

# (hex, value) pairs from RFC 8949 Appendix A that our encoder must produce exactly
APPENDIX_A_ROUND_TRIP = [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25),
    ("1864", 100), ("1903e8", 1000), ("1a000f4240", 1000000),
    ("1b000000e8d4a51000", 1000000000000),
    ("1bffffffffffffffff", 18446744073709551615),
    ("3bffffffffffffffff", -18446744073709551616),
    ("20", -1), ("29", -10), ("3863", -100), ("3903e7", -1000),
    ("f4", False), ("f5", True), ("f6", None),
    ("40", b""), ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", "\"\\"),
    ("62c3bc", "\u00fc"), ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a201020304", {1: 2, 3: 4}),
    ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145",
     {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
    ("c074323031332d30332d32315432303a30343a30305a", Tag(0, "2013-03-21T20:04:00Z")),
    ("c11a514b67b0", Tag(1, 1363896240)),
    ("d74401020304", Tag(23, b"\x01\x02\x03\x04")),
    ("d818456449455446", Tag(24, b"dIETF")),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", Tag(32, "http://www.example.com")),
]


def test_appendix_a_items_encode_to_the_rfc_bytes():
    for hx, value in APPENDIX_A_ROUND_TRIP:
        eq(encode(value), H(hx), hx)


def test_appendix_a_items_decode_to_the_rfc_values():
    for hx, value in APPENDIX_A_ROUND_TRIP:
        eq(decode(H(hx)), value, hx)


def test_appendix_a_bignums_decode_as_tags_not_ints():
    # 2**64 and -2**64-1 need tag 2/3 bignums (RFC 8949 3.4.3); we keep the tag
    eq(decode(H("c249010000000000000000")), Tag(2, b"\x01" + bytes(8)))
    eq(decode(H("c349010000000000000000")), Tag(3, b"\x01" + bytes(8)))


def test_appendix_a_floats_decode():
    for hx, want in [("f90000", 0.0), ("f93c00", 1.0), ("f93e00", 1.5),
                     ("f97bff", 65504.0), ("fa47c35000", 100000.0),
                     ("f90001", 5.960464477539063e-08), ("f90400", 6.103515625e-05),
                     ("f9c400", -4.0), ("fb3ff199999999999a", 1.1),
                     ("fbc010666666666666", -4.1), ("fb7e37e43c8800759c", 1.0e+300)]:
        eq(decode(H(hx)), want, hx)
    for hx in ("f97c00", "fa7f800000", "fb7ff0000000000000"):
        eq(decode(H(hx)), float("inf"), hx)
    for hx in ("f9fc00", "faff800000", "fbfff0000000000000"):
        eq(decode(H(hx)), float("-inf"), hx)
    for hx in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        nan = decode(H(hx))
        assert nan != nan, hx


def test_appendix_a_negative_zero_half_float_keeps_its_sign():
    z = decode(H("f98000"))
    eq(z, 0.0)
    eq(str(z), "-0.0")


def test_undefined_and_other_simple_values_are_rejected():
    for hx in ("f7", "f0", "f818", "f8ff"):  # Appendix A: undefined, simple(16/24/255)
        err = raises(CborError, decode, H(hx))
        assert "simple value" in str(err), hx


def test_indefinite_lengths_from_appendix_a_are_rejected():
    for hx in ("5f42010243030405ff", "7f657374726561646d696e67ff", "9fff",
               "9f018202039f0405ffff", "83018202039f0405ff", "bf61610161629f0203ffff"):
        err = raises(CborError, decode, H(hx))
        assert "indefinite" in str(err), hx


def test_floats_are_refused_by_the_encoder():
    err = raises(CborError, encode, {"kwh": 1.5})
    assert "float" in str(err)


def test_ints_beyond_64_bits_are_refused_by_the_encoder():
    raises(CborError, encode, 2 ** 64)
    raises(CborError, encode, -2 ** 64 - 1)
    eq(encode(-2 ** 64), H("3bffffffffffffffff"))


def test_shortest_heads_at_each_size_boundary():
    # major 0 head: <24 inline, then 1/2/4/8 argument bytes (RFC 8949 3.1)
    eq(encode(255), H("18ff"))
    eq(encode(256), H("190100"))
    eq(encode(65535), H("19ffff"))
    eq(encode(65536), H("1a00010000"))
    eq(encode(4294967295), H("1affffffff"))
    eq(encode(4294967296), H("1b0000000100000000"))
    eq(encode(-24), H("37"))
    eq(encode(-25), H("3818"))
    eq(encode(b"x" * 24)[:2], H("5818"))
    eq(encode("y" * 256)[:3], H("790100"))


def test_plain_dict_keys_follow_rfc8949_bytewise_order():
    # RFC 8949 4.2.1 orders keys 10, 100, -1, "z", "aa" (encoded 0a, 1864, 20, 617a, 626161)
    got = encode({"aa": 0, "z": 0, -1: 0, 100: 0, 10: 0})
    eq(got, H("a5" "0a00" "186400" "2000" "617a00" "62616100"))


def test_map_keeps_the_callers_key_order():
    eq(encode(Map([("z", 1), ("a", 2)])), H("a2" "617a01" "616102"))
    eq(encode(Map([])), H("a0"))


def test_map_with_duplicate_key_is_refused():
    raises(CborError, encode, Map([("k", 1), ("k", 2)]))


def test_map_keys_other_than_int_or_str_are_refused():
    for key in (b"k", True, None, (1, 2)):
        raises(CborError, encode, Map([(key, 1)]))
    raises(CborError, encode, {b"k": 1})
    raises(CborError, decode, H("a1" "41" "6b" "01"))  # {h'6b': 1}
    raises(CborError, decode, H("a1" "f5" "01"))  # {true: 1}


def test_decoded_duplicate_key_is_rejected():
    err = raises(CborError, decode, H("a2" "0100" "0100"))  # {1: 0, 1: 0}
    assert "duplicate" in str(err)


def test_unknown_types_are_refused_by_the_encoder():
    raises(CborError, encode, object())
    raises(CborError, encode, {1, 2})


def test_truncated_items_are_rejected():
    for hx in ("18", "1903", "1b00000000", "62", "6261", "82", "8201", "a1", "a101", "c1", "f9", "fb00"):
        err = raises(CborError, decode, H(hx))
        assert "truncated" in str(err), hx
    raises(CborError, decode, b"")


def test_trailing_bytes_are_rejected():
    err = raises(CborError, decode, H("0000"))
    assert "trailing" in str(err)


def test_reserved_additional_info_is_rejected():
    for hx in ("1c", "3d", "5e", "7c", "9d", "be", "dc", "fc"):
        err = raises(CborError, decode, H(hx))
        assert "reserved" in str(err), hx


def test_lone_break_byte_is_rejected():
    raises(CborError, decode, H("ff"))
    raises(CborError, decode, H("81ff"))


def test_two_byte_simple_value_below_32_is_not_well_formed():
    # RFC 8949 3.3: f8 with a value < 32 is not well-formed
    raises(CborError, decode, H("f814"))


def test_invalid_utf8_text_is_rejected():
    err = raises(CborError, decode, H("62c328"))
    assert "UTF-8" in str(err)


def test_nesting_at_the_depth_limit_decodes_and_one_deeper_fails():
    ok = b"\x81" * cbor.MAX_DEPTH + b"\x00"
    v = decode(ok)
    for _ in range(cbor.MAX_DEPTH):
        v = v[0]
    eq(v, 0)
    err = raises(CborError, decode, b"\x81" + ok)
    assert "deeper" in str(err)
    raises(CborError, decode, b"\xc1" * (cbor.MAX_DEPTH + 1) + b"\x00")  # tags nest too


def test_encoder_refuses_nesting_beyond_the_limit():
    v = 0
    for _ in range(cbor.MAX_DEPTH + 1):
        v = [v]
    raises(CborError, encode, v)


def test_item_count_limit_rejects_a_huge_declared_array_before_reading_it():
    # 9a 00 01 00 00: array of 65536 items, with none of them present
    err = raises(CborError, decode, H("9a00010000"))
    assert "exceeds" in str(err)
    err = raises(CborError, decode, H("83010203"), cbor.MAX_DEPTH, 3)  # 4 items > 3
    assert "more than 3" in str(err)


def test_decoder_yields_items_fed_whole():
    dec = Decoder()
    eq(list(dec.feed(H("01" "83010203" "a16161f5"))), [1, [1, 2, 3], {"a": True}])
    eq(dec.buffered, 0)


def test_decoder_yields_the_same_items_for_every_split_point():
    data = H("a26161016162820203" "6449455446" "1b000000e8d4a51000")
    want = [{"a": 1, "b": [2, 3]}, "IETF", 1000000000000]
    for cut in range(len(data) + 1):
        dec = Decoder()
        got = list(dec.feed(data[:cut])) + list(dec.feed(data[cut:]))
        eq(got, want, "cut %d" % cut)


def test_decoder_fed_byte_by_byte_yields_each_item_on_its_last_byte():
    data = H("8301820203820405" "f6")
    dec = Decoder()
    got = []
    for i in range(len(data)):
        items = list(dec.feed(data[i:i + 1]))
        if i == 7:
            eq(items, [[1, [2, 3], [4, 5]]])
        elif i == 8:
            eq(items, [None])
        else:
            eq(items, [], "byte %d" % i)
        got += items
    eq(dec.buffered, 0)


def test_decoder_drops_its_buffer_on_a_malformed_head_and_then_works_again():
    dec = Decoder()
    raises(CborError, list, dec.feed(H("1c0102")))
    eq(dec.buffered, 0)
    eq(list(dec.feed(H("0102"))), [1, 2])


def test_decoder_skips_only_the_item_with_invalid_utf8():
    dec = Decoder()
    items = dec.feed(H("01" "62c328" "02"))
    eq(next(items), 1)
    raises(CborError, next, items)
    eq(list(dec.feed(b"")), [2])


def test_decoder_refuses_a_declared_string_longer_than_max_bytes_at_once():
    dec = Decoder(max_bytes=100)
    raises(CborError, list, dec.feed(H("5865")))  # byte string of 101 bytes, none sent yet
    eq(dec.buffered, 0)


def test_decoder_refuses_an_incomplete_item_growing_past_max_bytes():
    dec = Decoder(max_bytes=9)
    eq(list(dec.feed(H("8a0102030405060708"))), [])  # 10-item array, 9 bytes so far
    raises(CborError, list, dec.feed(H("09")))
    eq(dec.buffered, 0)


def test_decoder_holds_a_partial_head_until_its_argument_bytes_arrive():
    dec = Decoder()
    eq(list(dec.feed(H("1a000f"))), [])
    eq(dec.buffered, 3)
    eq(list(dec.feed(H("4240"))), [1000000])


def test_decoder_refuses_an_item_over_max_bytes_even_when_it_arrives_whole():
    dec = Decoder(max_bytes=4)
    items = dec.feed(H("8401020304" "05"))  # 5-byte array, then 5
    raises(CborError, next, items)
    eq(list(dec.feed(b"")), [5])


def test_error_map_and_tag_classes_are_the_same_on_every_use():
    assert issubclass(CborError, ValueError)
    assert cbor.CborError is CborError and cbor.Map is Map and cbor.Tag is Tag
    assert isinstance(raises(ValueError, decode, H("ff")), CborError)
    assert type(decode(H("c101"))) is Tag
    raises(AttributeError, getattr, cbor, "NoSuchName")


def test_dict_keys_of_every_kind_and_width_are_in_bytewise_order():
    # expected order: each key's encoding (taken from cbor2), sorted bytewise
    d = {"\u00e9": 0, 2**32: 0, "ab": 0, -300: 0, 1: 0, "b": 0, 300: 0, -3: 0, "aa": 0,
         23: 0, 24: 0}
    eq(encode(d), H("ab" "0100" "1700" "181800" "19012c00" "1b000000010000000000" "2200"
                    "39012b00" "616200" "62616100" "62616200" "62c3a900"))
