"""Property tests (hypothesis) for the STS codec and acceptor.

Note on the single-digit property: it does NOT hold for every token.  A
changed digit gives a different 66-bit number whose CRC-16 after decryption
matches by chance: measured 2 hits in 360,000 single-digit changes of 2,000
random tokens (one is pinned in firmware/tests/test_sts_acceptor.py, with the
acceptor's optional future-TID guard that refuses it).  This test therefore
runs a fixed (derandomised) sample of 60 tokens x 180 changes and asserts the
acceptor does not *accept* any of them (hypothesis itself found a CRC-valid
change there, refused as UNSUPPORTED); it guards against regressions (a
transposition or CRC bug would make many changes pass), it does not prove
the property for all tokens.
"""
from hypothesis import given, settings, strategies as st

from firmware.sts import acceptor as ac
from firmware.sts import codec, ea07

keys = st.integers(min_value=0, max_value=(1 << 64) - 1)
tids = st.integers(min_value=0, max_value=(1 << 24) - 1)
rnds = st.integers(min_value=0, max_value=15)


@given(block=st.integers(min_value=0, max_value=(1 << 64) - 1), key=keys,
       sample=st.booleans())
def test_ea07_decrypt_inverts_encrypt(block, key, sample):
    tables = ea07.SAMPLE if sample else ea07.PRODUCTION
    assert ea07.decrypt(ea07.encrypt(block, key, tables), key, tables) == block


@given(cls=st.sampled_from([0, 2]), subclass=st.integers(0, 15), rnd=rnds, tid=tids,
       value=st.integers(0, 0xFFFF), key=keys)
def test_vend_then_decode_round_trips_all_fields(cls, subclass, rnd, tid, value, key):
    text = codec.encode(cls, subclass, codec.data_rnd_tid_value(rnd, tid, value), key)
    assert len(text) == 20 and text.isdigit()
    tok = codec.decode(text, key)
    assert tok.crc_ok
    assert (tok.cls, tok.subclass, tok.rnd, tok.tid, tok.value) == (cls, subclass, rnd, tid, value)


@given(units=st.integers(0, codec.AMOUNT_MAX_UNITS))
def test_amount_encoding_never_gives_less_and_is_the_smallest_field_value_that_covers(units):
    field = codec.encode_amount(units)
    carried = codec.decode_amount(field)
    assert carried >= units
    # one step lower in the same exponent would fall short (or the mantissa is 0)
    if field & 0x3FFF:
        assert codec.decode_amount(field - 1) < units


@settings(max_examples=60, derandomize=True, deadline=None)
@given(subclass=st.integers(0, 2), rnd=rnds, tid=tids, units=st.integers(0, 100000), key=keys)
def test_single_digit_changes_of_sampled_tokens_are_rejected(subclass, rnd, tid, units, key):
    text = codec.encode_credit(subclass, rnd, tid, units, key)
    acc = ac.Acceptor(key)
    for pos in range(20):
        for digit in "0123456789":
            if digit == text[pos]:
                continue
            res = acc.accept(text[:pos] + digit + text[pos + 1:])
            # usually BAD_CRC/FORMAT; a CRC-valid collision may still be refused otherwise
            # (key 0: '36592147058355269225' -> '36592147056355269225' is a CRC-valid class 1
            # subclass 15 token, refused as UNSUPPORTED)
            assert not res.ok, (text, pos, digit, res.reason_name())


@settings(deadline=None)
@given(key=keys, steps=st.lists(st.tuples(tids, st.integers(0, 1000)), min_size=1, max_size=30),
       memory=st.integers(1, 8), pick=st.integers(0, 10 ** 6))
def test_replayed_token_is_rejected_and_state_unchanged(key, steps, memory, pick):
    acc = ac.Acceptor(key, memory=memory)
    accepted = []
    for tid, units in steps:
        text = codec.encode_credit(codec.ELECTRICITY, 0, tid, units, key)
        res = acc.accept(text)
        if res.ok:
            acc.commit(res)
            accepted.append(text)
    assert accepted  # the first token always fits an empty memory
    replay = accepted[pick % len(accepted)]
    before = acc.to_state()
    res = acc.accept(replay)
    assert res.reason in (ac.USED, ac.OLD)
    assert res.new_state is None
    assert acc.to_state() == before
