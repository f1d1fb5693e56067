"""Property tests for firmware.core.auth against CPython's own hmac module."""
import hashlib
import hmac
import json

from hypothesis import given, settings, strategies as st

from firmware.core import auth

printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                           blacklist_characters="|"), min_size=0, max_size=12)
name = printable.filter(lambda s: s != "")
field = st.one_of(printable, st.integers(min_value=-10**12, max_value=10**12))
message = st.tuples(name, name, st.integers(0, 2**40), st.integers(0, 2**40),
                    st.lists(field, max_size=5))


@settings(max_examples=500)
@given(key=st.binary(min_size=0, max_size=200), msg=st.binary(max_size=300))
def test_hmac_sha256_equals_cpython_hmac(key, msg):
    eq = hmac.new(key, msg, hashlib.sha256).digest()
    assert auth.hmac_sha256(key, msg) == eq


@given(key=st.binary(min_size=1, max_size=80), parts=message)
def test_sign_is_cpython_hmac_over_the_documented_layout(key, parts):
    # The head-end may rebuild the bytes with nothing but the documented layout.
    kind, meter, counter, expires, fields = parts
    layout = "URJA1|" + "|".join([kind, meter, str(counter), str(expires)] + [str(f) for f in fields])
    want = hmac.new(key, layout.encode("ascii"), hashlib.sha256).hexdigest()
    assert auth.sign(key, kind, meter, counter, expires, fields) == want


@given(a=message, b=message)
def test_canonical_is_injective_on_typed_parts(a, b):
    # Different (kind, meter, counter, expiry, field texts) never sign the same bytes.
    def norm(m):
        return (m[0], m[1], m[2], m[3], [str(f) for f in m[4]])
    if norm(a) != norm(b):
        assert auth.canonical(*a) != auth.canonical(*b)


@given(text=st.text(max_size=8).filter(
    lambda s: any(c == "|" or not 0x20 <= ord(c) <= 0x7E for c in s)))
def test_canonical_refuses_any_text_outside_printable_ascii_or_with_separator(text):
    for args in (("k" + text, "M", 1, 1, []), ("k", "M" + text, 1, 1, []), ("k", "M", 1, 1, [text])):
        try:
            auth.canonical(*args)
        except auth.AuthError:
            continue
        raise AssertionError("accepted %r" % (args,))


KEY = b"property-test-key"
METER = "M-PROP"


@settings(max_examples=200)
@given(steps=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 5), st.integers(0, 3),
                                st.booleans()), max_size=40),
       remember=st.integers(1, 4))
def test_guard_applies_each_command_at_most_once_in_counter_order(steps, remember):
    """Random deliveries (resends, reorders, forgeries, restarts): the guard
    accepts strictly increasing counters, never the same id twice within the
    remembered window, and a restored guard decides exactly like the live one."""
    guard = auth.DownlinkGuard(METER, remember)
    accepted = []  # (counter, id)
    now = 1000
    for counter, id_n, expiry_delta, forge in steps:
        cmd = auth.make_topup(KEY, METER, counter, now + expiry_delta, "T-%d" % id_n, 100)
        if forge:
            cmd["fields"] = [cmd["fields"][0], 101]
        before = guard.to_state()
        restored = auth.DownlinkGuard.from_state(json.loads(json.dumps(before)))
        code = guard.check(KEY, cmd, now + 1)
        assert restored.check(KEY, cmd, now + 1) == code
        assert guard.to_state() == before
        if forge:
            assert code == auth.BAD_MAC
        if code == auth.OK:
            assert not accepted or counter > accepted[-1][0]
            assert cmd["id"] not in [i for _, i in accepted[-remember:]]
            assert now + 1 <= cmd["expires_at"]
            guard.accept(cmd)
            accepted.append((counter, cmd["id"]))
        now += 1
    assert guard.last_counter == (accepted[-1][0] if accepted else 0)
    assert guard.accepted_ids() == [i for _, i in accepted[-remember:]]
