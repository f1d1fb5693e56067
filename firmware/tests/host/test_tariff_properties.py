"""Property tests for the tariff engine against an independent exact oracle.

The oracle prices every smallest unit (Wh, litre) one at a time with
``fractions.Fraction`` and finds the local month with ``datetime``: none of
``tariff.py``'s slab arithmetic, rounding or calendar code is reused.

The splitting bound is 0 paise.  Proof: for a fixed ToD percent p and duty d
the exact charge of q units starting at month position m is
F(m, q) = k * (C(m + q) - C(m)), with C(x) the sum of rates of positions
< x (a step-function integral) and k = (100 + p)(10000 + d) / (unit_size * 10**6).
So splitting q = a + b gives F(m, a) + F(m + a, b) = F(m, q): the exact total
does not depend on the split.  The biller debits, in total,
floor(exact total) (the debits telescope), hence the same paise for every
split.  (Rounding each call separately would instead drift by up to one
paisa per call.)
"""
import datetime
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.core.tariff import Biller, Tariff

IST = datetime.timezone(datetime.timedelta(seconds=19800))
JAN1_IST = 1767205800  # 2026-01-01 00:00 IST, `date -u -d '2025-12-31 18:30' +%s`
SLOT_S = 900
DAY_SLOTS = 96


@st.composite
def tariffs(draw):
    n = draw(st.integers(1, 4))
    bounds = sorted(draw(st.sets(st.integers(1, 60), min_size=n - 1, max_size=n - 1)))
    rates = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    slabs = [[b, r] for b, r in zip(bounds + [None], rates)]
    k = draw(st.integers(0, 3))
    pts = sorted(draw(st.sets(st.integers(0, DAY_SLOTS - 1), min_size=2 * k, max_size=2 * k)))
    pts = [p * SLOT_S for p in pts]
    if k and draw(st.booleans()):  # rotate so the last window wraps midnight
        pts = pts[1:] + pts[:1]
    tod = [[pts[2 * i], pts[2 * i + 1], draw(st.integers(-100, 100))] for i in range(k)]
    return Tariff.from_dict({
        "id": "P", "version": 1, "service": "electricity",
        "unit_size": draw(st.sampled_from([1, 3, 10, 100])),
        "slabs": slabs, "tod": tod,
        "duty_bp": draw(st.integers(0, 10000)),
        "fixed_paise_per_day": draw(st.integers(0, 10000)),
    })


def oracle_pct(tf, t):
    sod = (t + 19800) % 86400
    for s, e, pct in tf.tod:
        inside = s <= sod < e if s < e else (sod >= s or sod < e)
        if inside:
            return pct
    return 0


def oracle_unit_price(tf, pos):
    """Exact price in paise of the smallest unit at month position ``pos``."""
    for upto, rate in tf.slabs:
        if upto is None or pos < upto * tf.unit_size:
            return Fraction(rate, tf.unit_size)
    raise AssertionError("no open slab")


def oracle_exact_usage(tf, calls):
    """Exact paise for [(t, qty), ...] in time order, slabs reset per IST month."""
    total = Fraction(0)
    month, pos = None, 0
    for t, qty in calls:
        m = datetime.datetime.fromtimestamp(t, IST).strftime("%Y-%m")
        if m != month:
            month, pos = m, 0
        energy = sum(oracle_unit_price(tf, p) for p in range(pos, pos + qty))
        pos += qty
        total += energy * Fraction(100 + oracle_pct(tf, t), 100) * Fraction(10000 + tf.duty_bp, 10000)
    return total


def chunks_of(draw, total, max_parts):
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=max_parts - 1)))
    edges = [0] + cuts + [total]
    return [b - a for a, b in zip(edges, edges[1:])]


@settings(max_examples=300, deadline=None)
@given(tf=tariffs(), data=st.data())
def test_splitting_usage_into_chunks_never_changes_the_total(tf, data):
    total_qty = data.draw(st.integers(0, 3000))
    slot = data.draw(st.integers(0, 31 * DAY_SLOTS - 1))
    t = JAN1_IST + slot * SLOT_S  # one ToD window for all chunks: same p
    whole = Biller(tf).charge_usage(t, total_qty)
    b = Biller(tf)
    parts = [b.charge_usage(t, q) for q in chunks_of(data.draw, total_qty, 40)]
    assert sum(parts) == whole  # bound 0: see module docstring
    assert all(p >= 0 for p in parts)


@settings(max_examples=300, deadline=None)
@given(tf=tariffs(), data=st.data())
def test_debits_equal_floor_of_exact_total_at_every_call(tf, data):
    # intervals across January and February in time order, any ToD window
    slots = sorted(data.draw(st.lists(st.integers(0, 59 * DAY_SLOTS - 1), max_size=30)))
    calls = [(JAN1_IST + s * SLOT_S, data.draw(st.integers(0, 400))) for s in slots]
    b = Biller(tf)
    debited = 0
    for i, (t, q) in enumerate(calls):
        d = b.charge_usage(t, q)
        assert d >= 0
        debited += d
        exact = oracle_exact_usage(tf, calls[: i + 1])
        assert debited == exact.__floor__(), (debited, exact)
        assert 0 <= exact - debited < 1


@settings(max_examples=200, deadline=None)
@given(tf=tariffs(), data=st.data())
def test_fixed_and_usage_together_debit_floor_of_exact_sum(tf, data):
    days = sorted(data.draw(st.sets(st.integers(0, 27), max_size=10)))
    b = Biller(tf)
    debited = 0
    exact = Fraction(0)
    calls = []
    for day in days:
        t = JAN1_IST + day * 86400 + data.draw(st.integers(0, DAY_SLOTS - 1)) * SLOT_S
        debited += b.charge_day(t)
        exact += Fraction(tf.fixed_paise_per_day * (10000 + tf.duty_bp), 10000)
        calls.append((t, data.draw(st.integers(0, 300))))
        debited += b.charge_usage(*calls[-1])
        assert debited == (exact + oracle_exact_usage(tf, calls)).__floor__()


@settings(max_examples=200, deadline=None)
@given(tf=tariffs(), data=st.data())
def test_restoring_state_mid_stream_changes_nothing(tf, data):
    slots = sorted(data.draw(st.lists(st.integers(0, 40 * DAY_SLOTS), min_size=1, max_size=20)))
    calls = [(JAN1_IST + s * SLOT_S, data.draw(st.integers(0, 500))) for s in slots]
    cut = data.draw(st.integers(0, len(calls)))
    a = Biller(tf)
    b = Biller(tf)
    out_a = [a.charge_usage(t, q) for t, q in calls]
    out_b = [b.charge_usage(t, q) for t, q in calls[:cut]]
    b = Biller.from_state(b.to_state())
    out_b += [b.charge_usage(t, q) for t, q in calls[cut:]]
    assert out_a == out_b
