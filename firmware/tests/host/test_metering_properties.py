"""Property tests (hypothesis) for firmware/core/metering.py: invariants over random streams."""
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.core import localtime as lt
from firmware.core import metering as m

T0 = 1795717800  # 2026-11-27 00:00 IST


@given(st.integers(1, 10000), st.integers(1, 10000), st.lists(st.integers(0, 100000), max_size=60))
def test_pulse_register_total_is_exact_for_any_split(num, den, chunks):
    r = m.PulseRegister(num, den)
    added = sum(r.add(c) for c in chunks)
    want = sum(chunks) * num // den  # floor(total_pulses * num / den), straight from the definition
    assert r.total_units == want
    assert added == want


@given(st.integers(1, 10000), st.integers(1, 10000), st.lists(st.integers(0, 5000), max_size=40),
       st.integers(0, 40))
def test_pulse_register_restored_mid_stream_stays_exact(num, den, chunks, cut):
    r = m.PulseRegister(num, den)
    for i, c in enumerate(chunks):
        if i == cut:
            r = m.PulseRegister.from_state(r.to_state())
        r.add(c)
    assert r.total_units == sum(chunks) * num // den


@given(st.integers(4, 24), st.integers(0, 2 ** 24), st.data())
def test_counter_deltas_sum_to_the_pulses_when_read_often_enough(bits, start, data):
    steps = data.draw(st.lists(st.integers(0, 2 ** bits - 1), max_size=50))
    c = m.CounterDelta(bits)
    true_count = start
    c.update(true_count)  # the hardware shows the true count modulo 2**bits
    got = 0
    for s in steps:
        true_count += s
        got += c.update(true_count % (1 << bits))
    assert got == sum(steps)


readings = st.one_of(st.integers(-10, 2 * 10 ** 6), st.integers(0, 999))


@given(st.integers(0, 10 ** 6), st.sampled_from([0, 10 ** 6]), st.sampled_from([0, 5000]),
       st.lists(readings, max_size=60))
def test_cumulative_register_never_decreases(value, modulus, max_step, feed):
    if modulus:
        value %= modulus
    r = m.CumulativeRegister(value, modulus, max_step)
    prev = r.value
    total = 0
    for reading in feed:
        d = r.update(reading)
        assert d >= 0
        assert r.value == prev + d
        assert d == 0 or r.status in (m.REG_OK, m.REG_ROLLOVER)
        prev = r.value
        total += d
    assert r.value == value + total


@st.composite
def sample_streams(draw):
    n = draw(st.integers(1, 300))
    t = T0 + draw(st.integers(0, 3600))
    cum = draw(st.integers(0, 10 ** 6))
    out = []
    for _ in range(n):
        out.append((t, cum))
        # mostly minute-ish steps, sometimes a long power cut, sometimes exactly a boundary
        t += draw(st.one_of(st.integers(0, 120), st.integers(0, 3 * 86400), st.sampled_from([900, 1800])))
        cum += draw(st.integers(0, 500))
    return out


@settings(max_examples=300)
@given(st.sampled_from([900, 1800]), sample_streams(), st.integers(0, 300))
def test_profile_energy_sums_to_cumulative_delta_with_no_holes(interval_s, stream, cut):
    p = m.IntervalProfile(interval_s)
    records = []
    for i, (t, cum) in enumerate(stream):
        if i == cut:
            p = m.IntervalProfile.from_state(p.to_state())
        records.extend(p.add_sample(t, cum))
    open_energy = stream[-1][1] - p.base_wh  # the interval still open
    assert sum(r[2] for r in records) + open_energy == stream[-1][1] - stream[0][1]
    expect_start = stream[0][0] - stream[0][0] % interval_s
    for start, length, energy, _, _, count, flags in records:
        assert start == expect_start  # contiguous: the head-end sees no gap
        assert start % interval_s == 0 and length % interval_s == 0 and length > 0
        assert energy >= 0
        assert (flags & m.PROFILE_POWER_OFF) == (count == 0)
        expect_start = start + length
    assert p.start_t == expect_start
    assert sum(r[5] for r in records) + p.count == len(stream)


def brute_force_max_demand(adds, window_s, step_s, until):
    """Slot energies in a dict, then every full window ending at a closed slot's end."""
    slots = {}
    for t, e in adds:
        k = (t - 1) // step_s
        slots[k] = slots.get(k, 0) + e
    n = window_s // step_s
    first = (adds[0][0] - 1) // step_s
    last_closed = (until - 1) // step_s - 1
    best = 0
    for end in range(first, last_closed + 1):
        wh = sum(slots.get(k, 0) for k in range(end - n + 1, end + 1))
        best = max(best, wh * 3600 // window_s)
    return best


@settings(max_examples=300)
@given(st.sampled_from([(1800, 300), (900, 300), (900, 900), (1800, 60)]),
       st.lists(st.tuples(st.integers(0, 900), st.integers(0, 2000)), min_size=1, max_size=80),
       st.integers(0, 4000))
def test_max_demand_matches_brute_force_over_all_windows(ws, steps, tail):
    window_s, step_s = ws
    md = m.MaxDemand(window_s, step_s)
    t = T0
    adds = []
    for dt, e in steps:
        t += dt
        adds.append((t, e))
        md.add(t, e)
    md.advance(t + tail)
    assert md.max_w == brute_force_max_demand(adds, window_s, step_s, t + tail)


@settings(max_examples=200)
@given(st.lists(st.integers(1, 40 * 3600), min_size=1, max_size=60))
def test_daily_snapshots_are_consecutive_days_without_holes(gaps):
    b = m.BillingSnapshots(lt.IST_OFFSET_S)
    t = T0 + 5 * 3600
    b.observe(t, 0, 0, 0)
    days = []
    for g in gaps:
        t += g
        for rec in b.observe(t, 0, 0, 0):
            if rec[0] == m.SNAP_DAILY:
                days.append(lt.days_from_civil(rec[1] // 10000, rec[1] // 100 % 100, rec[1] % 100))
                # the snapshot's midnight is the end of the day named by its key
                assert rec[2] == lt.local_midnight_utc(days[-1] + 1, lt.IST_OFFSET_S)
    assert days == list(range(lt.local_day(T0, lt.IST_OFFSET_S), lt.local_day(t, lt.IST_OFFSET_S)))
