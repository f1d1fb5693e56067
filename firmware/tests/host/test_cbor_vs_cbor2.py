"""Our CBOR codec against cbor2 (the CPython reference implementation), under hypothesis."""
import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.protocol.cbor import CborError, Decoder, Map, Tag, decode, encode

U64 = 2 ** 64 - 1
ints = st.integers(min_value=-U64 - 1, max_value=U64)
keys = st.one_of(ints, st.text(max_size=8))
leaves = st.one_of(st.none(), st.booleans(), ints, st.binary(max_size=40), st.text(max_size=20))
values = st.recursive(
    leaves,
    lambda kids: st.one_of(st.lists(kids, max_size=6),
                           st.dictionaries(keys, kids, max_size=6)),
    max_leaves=30,
)


@settings(max_examples=400)
@given(values)
def test_our_encoding_decodes_to_the_same_value_in_cbor2(value):
    assert cbor2.loads(encode(value)) == value


@settings(max_examples=400)
@given(values)
def test_cbor2_encoding_decodes_to_the_same_value_in_ours(value):
    assert decode(cbor2.dumps(value)) == value


@settings(max_examples=200)
@given(values)
def test_our_bytes_equal_cbor2_canonical_bytes_when_no_dict_is_involved(value):
    # cbor2's canonical mode sorts keys length-first (RFC 7049), we sort bytewise
    # (RFC 8949 4.2.1); without maps both must give the one shortest encoding.
    def has_dict(v):
        if isinstance(v, dict):
            return True
        return isinstance(v, list) and any(has_dict(x) for x in v)
    if not has_dict(value):
        assert encode(value) == cbor2.dumps(value, canonical=True)


@given(st.dictionaries(keys, leaves, min_size=1, max_size=8))
def test_dict_keys_are_in_bytewise_order_of_keys_encoded_by_cbor2(d):
    pairs = sorted((cbor2.dumps(k), cbor2.dumps(v)) for k, v in d.items())
    assert len(d) < 24
    assert encode(d) == bytes([0xA0 | len(d)]) + b"".join(k + v for k, v in pairs)


@given(st.lists(st.tuples(st.text(max_size=6), leaves), max_size=8, unique_by=lambda p: p[0]))
def test_map_pairs_decode_in_cbor2_to_the_same_dict(pairs):
    assert cbor2.loads(encode(Map(pairs))) == dict(pairs)


@given(st.lists(values, min_size=1, max_size=5), st.data())
def test_a_stream_of_items_split_anywhere_decodes_to_the_same_items(items, data):
    stream = b"".join(cbor2.dumps(v) for v in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = Decoder(max_bytes=1 << 16)
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += list(dec.feed(stream[prev:cut]))
        prev = cut
    assert got == items
    assert dec.buffered == 0


@settings(max_examples=100)
@given(values)
def test_a_stream_fed_byte_by_byte_decodes_to_the_same_item(value):
    dec = Decoder(max_bytes=1 << 16)
    blob = cbor2.dumps(value)
    got = []
    for i in range(len(blob)):
        got += list(dec.feed(blob[i:i + 1]))
    assert got == [value]


@given(values)
def test_every_strict_prefix_is_truncated_and_decoder_waits(value):
    blob = encode(value)
    for cut in range(len(blob)):
        try:
            decode(blob[:cut])
        except CborError as err:
            assert "truncated" in str(err)
        else:
            raise AssertionError("prefix %d of %s decoded" % (cut, blob.hex()))
    dec = Decoder(max_bytes=1 << 16)
    assert list(dec.feed(blob[:-1])) == []


def _plain(v):
    """True if v holds only types where our and cbor2's decodings must agree exactly."""
    if isinstance(v, (Tag, float)):
        return False
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(x) for x in v.values())
    return True


@settings(max_examples=2000)
@given(st.binary(max_size=40))
def test_garbage_is_either_rejected_with_cbor_error_or_agrees_with_cbor2(blob):
    try:
        ours = decode(blob)
    except CborError:
        return
    # whatever plain data we accept cbor2 must accept too, with the same value
    # (cbor2 gives tags meaning, e.g. tag 0 must hold a date string; we do not)
    if _plain(ours):
        assert cbor2.loads(blob) == ours


@settings(max_examples=1000)
@given(values, st.binary(min_size=1, max_size=8))
def test_valid_item_followed_by_garbage_is_rejected_as_trailing(value, junk):
    try:
        decode(encode(value) + junk)
    except CborError as err:
        assert "trailing" in str(err)
    else:
        raise AssertionError("trailing junk accepted")
