import random

from firmware.core import backoff as bk
from firmware.core.backoff import Backoff, BackoffError, Supervisor, SupervisorError
from firmware.tests.check import eq, raises


def top(stop):
    return stop - 1  # the largest value randrange(stop) can return


def bottom(stop):
    return 0


class Recorder:
    """A randrange that returns fixed values and remembers every ``stop`` asked for."""

    def __init__(self, value):
        self.value = value
        self.stops = []

    def __call__(self, stop):
        self.stops.append(stop)
        return min(self.value, stop - 1)


def test_max_random_gives_the_doubling_windows_up_to_the_cap():
    b = Backoff(base_ms=1000, cap_ms=8000, multiplier=2, randrange=top)
    # windows 1000, 2000, 4000, 8000, then min(8000, 16000) = 8000
    eq([b.next_delay_ms() for _ in range(6)], [1000, 2000, 4000, 8000, 8000, 8000])


def test_min_random_gives_zero_delays_full_jitter_reaches_down_to_zero():
    b = Backoff(base_ms=1000, cap_ms=8000, randrange=bottom)
    eq([b.next_delay_ms() for _ in range(4)], [0, 0, 0, 0])


def test_random_source_is_asked_for_the_inclusive_window():
    rec = Recorder(0)
    b = Backoff(base_ms=500, cap_ms=20000, multiplier=3, randrange=rec)
    for _ in range(6):
        b.next_delay_ms()
    # 500, 1500, 4500, 13500, min(20000, 40500) = 20000, 20000; randrange(w + 1) covers 0..w
    eq(rec.stops, [501, 1501, 4501, 13501, 20001, 20001])


def test_seeded_delays_stay_inside_their_windows_and_repeat_exactly():
    windows = [500, 1500, 4500, 13500] + [20000] * 36  # hand-computed as above
    runs = []
    for _ in range(2):
        random.seed(2026)
        b = Backoff(base_ms=500, cap_ms=20000, multiplier=3, randrange=random.randrange)
        runs.append([b.next_delay_ms() for _ in range(40)])
    eq(runs[0], runs[1])
    for i, d in enumerate(runs[0]):
        assert 0 <= d <= windows[i], (i, d)
    assert len(set(runs[0])) > 30  # jittered, not a constant


def test_reset_starts_again_from_the_base_window():
    b = Backoff(base_ms=1000, cap_ms=60000, randrange=top)
    for _ in range(5):
        b.next_delay_ms()
    b.reset()
    eq((b.next_delay_ms(), b.attempts), (1000, 1))


def test_nonsense_backoff_parameters_are_rejected():
    raises(BackoffError, Backoff, 0, 1000, 2, top)
    raises(BackoffError, Backoff, 2000, 1000, 2, top)
    raises(BackoffError, Backoff, 1000, 8000, 1, top)
    raises(BackoffError, Backoff, 1000, 8000, 2)  # no random source


def test_errors_are_value_errors():
    eq(issubclass(BackoffError, ValueError) and issubclass(SupervisorError, ValueError), True)
    eq(type(raises(ValueError, Backoff, 0, 1000, 2, top)) is BackoffError, True)


def test_backoff_from_state_continues_where_it_stopped():
    b = Backoff(base_ms=1000, cap_ms=60000, randrange=top)
    b.next_delay_ms()
    b.next_delay_ms()
    again = Backoff.from_state(b.to_state(), top)
    eq([again.next_delay_ms() for _ in range(3)], [b.next_delay_ms() for _ in range(3)])
    eq([again.next_delay_ms() for _ in range(3)], [32000, 60000, 60000])


def sup_with(randrange=top, now=0, **kw):
    return Supervisor(Backoff(1000, 60000, 2, randrange), now_ms=now, **kw)


def test_first_tick_connects_at_once_without_boot_spread():
    sup = sup_with()
    eq(sup.tick(0), bk.CONNECT)
    eq(sup.state, bk.CONNECTING)


def test_boot_spread_delays_the_first_connect_by_a_random_share():
    sup = sup_with(randrange=Recorder(4321), now=100, boot_spread_ms=10000)
    eq(sup.retry_at_ms, 100 + 4321)
    eq(sup.tick(4420), bk.NOTHING)
    eq(sup.tick(4421), bk.CONNECT)


def test_connect_ok_tells_the_shell_to_replay_the_outbox():
    sup = sup_with()
    sup.tick(0)
    eq(sup.connect_ok(250), bk.REPLAY)
    eq((sup.state, sup.connects), (bk.CONNECTED, 1))
    eq(sup.tick(99999), bk.NOTHING)


def test_failed_connects_wait_for_growing_windows():
    sup = sup_with()
    t, waits = 0, []
    for _ in range(4):
        eq(sup.tick(t), bk.CONNECT)
        eq(sup.connect_failed(t + 10), bk.WAIT)
        waits.append(sup.retry_at_ms - (t + 10))
        eq(sup.tick(sup.retry_at_ms - 1), bk.NOTHING)  # not yet
        t = sup.retry_at_ms
    eq(waits, [1000, 2000, 4000, 8000])
    eq(sup.failures, 4)


def test_connect_that_hangs_is_aborted_at_the_timeout():
    sup = sup_with(connect_timeout_ms=30000)
    sup.tick(1000)
    eq(sup.tick(30999), bk.NOTHING)
    eq(sup.tick(31000), bk.ABORT)  # 1000 + 30000
    eq((sup.state, sup.retry_at_ms), (bk.DISCONNECTED, 31000 + 1000))


def test_link_lost_after_a_stable_connection_resets_the_backoff():
    sup = sup_with(stable_ms=60000)
    for t in (0, 1000, 3000):  # two failures widen the window to 4000
        sup.tick(t)
        if t < 3000:
            sup.connect_failed(t)
    sup.connect_ok(3000)
    eq(sup.link_lost(3000 + 60000), bk.WAIT)
    eq(sup.retry_at_ms - 63000, 1000)  # base window again


def test_flapping_link_keeps_widening_the_backoff():
    sup = sup_with(stable_ms=60000)
    t, waits = 0, []
    for _ in range(4):
        sup.tick(t)
        sup.connect_ok(t)
        sup.link_lost(t + 5000)  # up for 5 s only: not a success
        waits.append(sup.retry_at_ms - (t + 5000))
        t = sup.retry_at_ms
    eq(waits, [1000, 2000, 4000, 8000])


def test_events_the_table_does_not_allow_raise_supervisor_error():
    sup = sup_with()
    raises(SupervisorError, sup.connect_ok, 0)  # not connecting
    raises(SupervisorError, sup.link_lost, 0)
    sup.tick(0)
    sup.connect_ok(1)
    err = raises(SupervisorError, sup.connect_failed, 2)
    assert "connect_failed" in str(err) and "CONNECTED" in str(err), str(err)


def test_random_event_walk_never_leaves_the_table_and_waits_stay_under_the_cap():
    random.seed(11)
    sup = sup_with(randrange=random.randrange, connect_timeout_ms=5000)
    t = 0
    for _ in range(2000):
        t += random.randrange(3000)
        before = sup.state
        legal = [sup.tick]
        if before == bk.CONNECTING:
            legal += [sup.connect_ok, sup.connect_failed, sup.link_lost]
        elif before == bk.CONNECTED:
            legal += [sup.link_lost]
        action = legal[random.randrange(len(legal))](t)
        assert sup.state in (bk.DISCONNECTED, bk.CONNECTING, bk.CONNECTED)
        if action in (bk.WAIT, bk.ABORT):
            assert 0 <= sup.retry_at_ms - t <= 60000, (t, sup.retry_at_ms)
        if action == bk.CONNECT:
            eq(before, bk.DISCONNECTED)
        if action == bk.REPLAY:
            eq(before, bk.CONNECTING)
