"""Reconnect policy: exponential backoff with full jitter, and the link supervisor table.

Full jitter (Marc Brooker, "Exponential Backoff And Jitter", AWS
Architecture Blog, 2015): the n-th retry waits a uniformly random time in
[0, min(cap, base * multiplier**n)].  Spreading retries over the whole
window is what stops a city of meters that lost the broker together from
reconnecting together.  The random source is injected (``randrange(stop)``
-> int in [0, stop), e.g. ``random.randrange``), so tests are repeatable.

Times are integer milliseconds of a monotonic clock the shell passes in
(``now_ms``); nothing here reads a clock or touches a socket.

Supervisor states and what the shell must do (one table, ``TRANSITIONS``)::

    DISCONNECTED --tick(now >= retry_at)--> CONNECTING     do CONNECT
    CONNECTING   --connect_ok-------------> CONNECTED      do REPLAY (outbox from oldest)
    CONNECTING   --connect_failed/lost----> DISCONNECTED   do WAIT (until retry_at)
    CONNECTING   --tick(connect timeout)--> DISCONNECTED   do ABORT (close socket, wait)
    CONNECTED    --link_lost--------------> DISCONNECTED   do WAIT

>>> import random
>>> sup = Supervisor(Backoff(randrange=random.randrange), now_ms=0)
>>> sup.tick(0) == CONNECT, sup.state == CONNECTING
(True, True)
>>> sup.connect_ok(120) == REPLAY
True
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

# states
DISCONNECTED = const(0)
CONNECTING = const(1)
CONNECTED = const(2)
STATE_NAMES = ("DISCONNECTED", "CONNECTING", "CONNECTED")

# events (their names, ``EVENT_NAMES``, are made when asked for: see ``__getattr__``)
_EV_TICK = const(0)
_EV_CONNECT_OK = const(1)
_EV_CONNECT_FAILED = const(2)
_EV_LINK_LOST = const(3)
_EV_TIMEOUT = const(4)  # internal: a tick past the connect deadline
_EV_DUE = const(5)  # internal: a tick at or after retry_at while DISCONNECTED

# actions for the shell
NOTHING = const(0)
CONNECT = const(1)  # open the socket, send CONNECT
REPLAY = const(2)   # connected: resubscribe, publish the outbox from its oldest message
WAIT = const(3)     # stay off the network until retry_at_ms
ABORT = const(4)    # give up this attempt: close the socket, then wait

# (state, event) -> (next state, action), a row of four codes each; a pair not listed
# is an illegal event.  bytes (every code is < 256): the list is built once at import
# and let go, so the table is a short bytes object, not a dict of 18 tuples.
TRANSITIONS = bytes([
    # state        event                next state     action
    DISCONNECTED,  _EV_TICK,            DISCONNECTED,  NOTHING,
    DISCONNECTED,  _EV_DUE,             CONNECTING,    CONNECT,
    CONNECTING,    _EV_TICK,            CONNECTING,    NOTHING,
    CONNECTING,    _EV_CONNECT_OK,      CONNECTED,     REPLAY,
    CONNECTING,    _EV_CONNECT_FAILED,  DISCONNECTED,  WAIT,
    CONNECTING,    _EV_LINK_LOST,       DISCONNECTED,  WAIT,
    CONNECTING,    _EV_TIMEOUT,         DISCONNECTED,  ABORT,
    CONNECTED,     _EV_TICK,            CONNECTED,     NOTHING,
    CONNECTED,     _EV_LINK_LOST,       DISCONNECTED,  WAIT,
])

_DEFAULT_BASE_MS = const(1000)
_DEFAULT_CAP_MS = const(300000)  # 5 minutes
_DEFAULT_MULTIPLIER = const(2)
_DEFAULT_CONNECT_TIMEOUT_MS = const(30000)
_DEFAULT_STABLE_MS = const(60000)


def __getattr__(name):
    # The exception classes: BackoffError (a ValueError), backoff parameters that make no
    # sense (base < 1, cap < base, multiplier < 2); SupervisorError (a ValueError), an
    # event the supervisor's table does not allow in the current state.  Made on first
    # use and kept in the module dict (a class held from import on costs ~250 bytes of
    # heap that a meter fed sane inputs never needs); raise sites here call
    # ``__getattr__("BackoffError")``, while ``backoff.BackoffError`` and ``from
    # firmware.core.backoff import BackoffError`` work as for any class.
    if name == "BackoffError" or name == "SupervisorError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # EVENT_NAMES (index = event code, for the error message) is made when asked for,
    # from one string: a tuple held from import on would sit in every meter's heap.
    if name == "EVENT_NAMES":
        return tuple("tick connect_ok connect_failed link_lost timeout due".split())
    raise AttributeError(name)


class Backoff:
    """Full-jitter exponential backoff; ``next_delay_ms()`` grows, ``reset()`` starts over.

    >>> b = Backoff(base_ms=1000, cap_ms=8000, randrange=lambda stop: stop - 1)
    >>> [b.next_delay_ms() for _ in range(5)]   # the top of each window
    [1000, 2000, 4000, 8000, 8000]
    """

    def __init__(self, base_ms=_DEFAULT_BASE_MS, cap_ms=_DEFAULT_CAP_MS,
                 multiplier=_DEFAULT_MULTIPLIER, randrange=None):
        if base_ms < 1 or cap_ms < base_ms or multiplier < 2:
            raise __getattr__("BackoffError")(
                "need 1 <= base_ms <= cap_ms and multiplier >= 2, got %r, %r, %r"
                % (base_ms, cap_ms, multiplier))
        if randrange is None:
            raise __getattr__("BackoffError")("pass a random source: randrange(stop) -> int in [0, stop)")
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.multiplier = multiplier
        self.randrange = randrange
        self.ceiling_ms = base_ms  # the window the next delay is drawn from
        self.attempts = 0

    def next_delay_ms(self):
        """A delay uniform in [0, ceiling], then widen the ceiling (integers only, capped)."""
        delay = self.randrange(self.ceiling_ms + 1)
        self.ceiling_ms = min(self.cap_ms, self.ceiling_ms * self.multiplier)
        self.attempts += 1
        return delay

    def reset(self):
        self.ceiling_ms = self.base_ms
        self.attempts = 0

    def to_state(self):
        # worth journalling: after a reset the meter does not hammer the broker from base again
        return {"base_ms": self.base_ms, "cap_ms": self.cap_ms, "multiplier": self.multiplier,
                "ceiling_ms": self.ceiling_ms, "attempts": self.attempts}

    @classmethod
    def from_state(cls, data, randrange):
        """Rebuild from ``to_state()`` data; the random source is not state, so pass it again."""
        b = cls(data["base_ms"], data["cap_ms"], data["multiplier"], randrange)
        b.ceiling_ms = max(b.base_ms, min(b.cap_ms, data["ceiling_ms"]))
        b.attempts = data["attempts"]
        return b


class Supervisor:
    """The link supervisor: feed it events, do the action it returns.

    A connection counts as a success (backoff reset) once it has stayed up
    ``stable_ms``; a link that flaps keeps widening the backoff instead of
    retrying at the base rate forever.  ``boot_spread_ms`` delays the very
    first connect by a random share of it, so meters powering up together
    after a grid outage do not all connect in the same second.  A reboot
    starts DISCONNECTED by design, so the supervisor keeps no journalled
    state of its own (journal ``backoff.to_state()`` if wanted).

    >>> sup = Supervisor(backoff, now_ms=0, connect_timeout_ms=30000)
    >>> act = sup.tick(now_ms)      # CONNECT when due
    >>> act = sup.connect_failed(now_ms)   # WAIT: sleep until sup.retry_at_ms
    """

    def __init__(self, backoff, now_ms, connect_timeout_ms=_DEFAULT_CONNECT_TIMEOUT_MS,
                 stable_ms=_DEFAULT_STABLE_MS, boot_spread_ms=0):
        self.backoff = backoff
        self.connect_timeout_ms = connect_timeout_ms
        self.stable_ms = stable_ms
        self.state = DISCONNECTED
        spread = backoff.randrange(boot_spread_ms + 1) if boot_spread_ms > 0 else 0
        self.retry_at_ms = now_ms + spread
        self.deadline_ms = 0  # connect timeout while CONNECTING
        self.connected_at_ms = 0
        self.connects = 0  # successful connections, for the heartbeat
        self.failures = 0  # failed or timed-out attempts

    def _fire(self, event, now_ms):
        t = TRANSITIONS
        for i in range(0, len(t), 4):
            if t[i] == self.state and t[i + 1] == event:
                nxt, action = t[i + 2], t[i + 3]
                break
        else:
            raise __getattr__("SupervisorError")("%s is not allowed in state %s"
                                                 % (__getattr__("EVENT_NAMES")[event],
                                                    STATE_NAMES[self.state]))
        if action == CONNECT:
            self.deadline_ms = now_ms + self.connect_timeout_ms
        elif action == REPLAY:
            self.connected_at_ms = now_ms
            self.connects += 1
        elif action == WAIT or action == ABORT:
            if self.state == CONNECTED and now_ms - self.connected_at_ms >= self.stable_ms:
                self.backoff.reset()  # that connection was a success: start small again
            elif self.state == CONNECTING:
                self.failures += 1
            self.retry_at_ms = now_ms + self.backoff.next_delay_ms()
        self.state = nxt
        return action

    def tick(self, now_ms):
        """Time passed: CONNECT when a retry is due, ABORT on connect timeout, else NOTHING."""
        if self.state == CONNECTING and now_ms >= self.deadline_ms:
            return self._fire(_EV_TIMEOUT, now_ms)
        if self.state == DISCONNECTED and now_ms >= self.retry_at_ms:
            return self._fire(_EV_DUE, now_ms)
        return self._fire(_EV_TICK, now_ms)

    def connect_ok(self, now_ms):
        """The broker accepted the session (CONNACK 0): returns REPLAY."""
        return self._fire(_EV_CONNECT_OK, now_ms)

    def connect_failed(self, now_ms):
        """The attempt failed (socket error, CONNACK refused): returns WAIT."""
        return self._fire(_EV_CONNECT_FAILED, now_ms)

    def link_lost(self, now_ms):
        """The connection dropped (read error, keepalive missed): returns WAIT."""
        return self._fire(_EV_LINK_LOST, now_ms)
