"""Bounded event ring with sequence numbers and an exact overflow count.

Events are (seq, t, code, value): ``seq`` counts 1, 2, 3, ... for the meter's
whole life (never reused, kept across restarts through ``to_state``), ``t``
is UTC seconds, ``code`` one of the codes below (``_CODE_NAMES``), ``value`` a signed
32-bit int whose meaning depends on the code (paise, Wh, reason code, ...).

The uplink sends ``pending()`` and the head-end acknowledges with
``ack(upto_seq)``.  When the ring is full the oldest entry is overwritten;
if it had not been acknowledged it is counted in ``lost`` and ``pending()``
starts with one synthetic EVENTS_LOST record whose ``seq`` is that of the
newest lost event and whose ``value`` is how many are missing, so the
head-end sees a gap-free sequence and nothing disappears silently.

Memory: three preallocated ``array`` columns (no per-event objects; event
times above 2**30 would be boxed ints in a MicroPython list).

>>> log = EventLog(capacity=4)
>>> log.append(1795737600, POWER_FAIL)
1
>>> log.pending()
[(1, 1795737600, 1, 0)]
"""
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# Every event code's name, codes 1, 2, 3, ... in this order.  The codes the firmware
# itself logs are globals below; the others (the credit machine logs them under its own
# EV_* names, the simulator and head-end use them) and NAMES are made from this one
# string when asked for (``__getattr__``): a global costs every meter a dict slot and
# an interned name.
_CODE_NAMES = const(
    "POWER_FAIL POWER_RESTORE COVER_OPEN COVER_CLOSE MAGNET REVERSE_CURRENT NEUTRAL_MISSING"
    " RELAY_OPENED RELAY_CLOSED TOPUP_APPLIED TOPUP_REJECTED TARIFF_CHANGED TARIFF_SCHEDULED"
    " LOW_CREDIT_WARNING CREDIT_EXHAUSTED EMERGENCY_STARTED CREDIT_STATE LOAD_TRIP"
    " LOAD_LOCKOUT REGISTER_DECREASE CLOCK_SET JOURNAL_RESTORED EVENTS_LOST READ_FAILED"
    " READ_RESTORED FW_CONFIRMED FW_ROLLED_BACK")
POWER_FAIL = const(1)
POWER_RESTORE = const(2)
COVER_OPEN = const(3)
COVER_CLOSE = const(4)
TOPUP_REJECTED = const(11)
TARIFF_CHANGED = const(12)
TARIFF_SCHEDULED = const(13)
REGISTER_DECREASE = const(20)
CLOCK_SET = const(21)
JOURNAL_RESTORED = const(22)
_EVENTS_LOST = const(23)  # synthetic: value = number of events overwritten before delivery
READ_FAILED = const(24)  # an external meter stopped answering: value = link (READ_LINK_*)
READ_RESTORED = const(25)  # it answers again: value = link
FW_CONFIRMED = const(26)  # a new firmware image booted and confirmed: value = version code
FW_ROLLED_BACK = const(27)  # a new image did not confirm; the old one runs: value = its version code
READ_LINK_MODBUS = const(1)
READ_LINK_DLMS = const(2)

# Error texts, one string split by ``_error`` when a raise needs one: a literal of its
# own per raise would be one more str object (~32 B) in every meter's heap.
_ERRORS = const("capacity must be an int >= 1\n"
                "t must be UTC seconds in 0..2**32-1, got %r\n"
                "unknown event code %r\n"
                "value must be a signed 32-bit int, got %r\n"
                "ack needs an int seq, got %r\n"
                "bad event log state: next_seq %r acked %r\n"
                "bad event log state: %d events")


def _error(i, args=()):
    """EventError with text ``i`` of ``_ERRORS`` formatted with the tuple ``args``."""
    return __getattr__("EventError")(_ERRORS.split("\n")[i] % args)


def __getattr__(name):
    # EventError (a ValueError): An event that does not fit the log (unknown code, out-of-
    # range t/value).  Made on first use and kept in the module dict (a class held from
    # import on costs ~200 bytes of heap that a meter fed sane inputs never needs, issue
    # 3); raise sites here go through ``_error``, while ``events.EventError``
    # and ``from firmware.core.events import EventError`` work as for any class.
    if name == "EventError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    names = _CODE_NAMES.split()
    # NAMES ({code: name}) is built when asked for (the CLI, logs, tests): held
    # from import on, it would sit in every meter's heap for nothing.
    if name == "NAMES":
        return dict(enumerate(names, 1))
    if name in names:  # a code that is not a global (see _CODE_NAMES): one from now on
        g = globals()
        g[name] = names.index(name) + 1
        return g[name]
    raise AttributeError(name)


T_MAX = 0xFFFFFFFF  # unsigned 32-bit seconds: good until 2106
VALUE_MIN = -0x80000000
VALUE_MAX = 0x7FFFFFFF


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class EventLog:
    """Ring of the last ``capacity`` events, with delivery acknowledgement.

    >>> log = EventLog(capacity=2)
    >>> for t in (10, 20, 30):
    ...     _ = log.append(t, COVER_OPEN)
    >>> log.pending()        # event 1 was overwritten before delivery
    [(1, 10, 23, 1), (2, 20, 3, 0), (3, 30, 3, 0)]
    >>> log.ack(3), log.pending(), log.lost
    (3, [], 1)
    """

    def __init__(self, capacity: int = 64):
        if not _is_int(capacity) or capacity < 1:
            raise _error(0)  # "capacity must be an int >= 1"
        self.capacity = capacity
        self._t = array("I", bytes(4 * capacity))
        self._code = array("B", bytes(capacity))
        self._value = array("i", bytes(4 * capacity))
        self._next = 1  # seq the next event gets
        self._count = 0  # events held in the ring: the newest, seq _next - _count on
        self.acked = 0  # every seq <= acked was delivered (read-only for callers)
        self.lost = 0  # life-time count of events overwritten before delivery
        self.lost_t = 0  # time of the newest such event (for the marker)

    @property
    def last_seq(self) -> int:
        """Seq of the newest event, 0 if none yet."""
        return self._next - 1

    def missing(self) -> int:
        """Events lost and not yet acknowledged (the value of the EVENTS_LOST marker)."""
        return max(0, self._next - self._count - 1 - self.acked)

    def append(self, t: int, code: int, value: int = 0) -> int:
        """Record an event and return its seq."""
        if not _is_int(t) or t < 0 or t > T_MAX:
            raise _error(1, (t,))  # "t must be UTC seconds in 0..2**32-1, got %r"
        if not _is_int(code) or not POWER_FAIL <= code <= FW_ROLLED_BACK or code == _EVENTS_LOST:
            raise _error(2, (code,))  # "unknown event code %r"
        if not _is_int(value) or value < VALUE_MIN or value > VALUE_MAX:
            raise _error(3, (value,))  # "value must be a signed 32-bit int, got %r"
        seq = self._next
        pos = (seq - 1) % self.capacity
        if self._count == self.capacity:
            if self._next - self._count > self.acked:  # about to overwrite an undelivered event
                self.lost += 1
                self.lost_t = self._t[pos]
        else:
            self._count += 1
        self._t[pos] = t
        self._code[pos] = code
        self._value[pos] = value
        self._next = seq + 1
        return seq

    def pending(self, limit: int = 16) -> "list[tuple]":
        """Up to ``limit`` oldest undelivered events as (seq, t, code, value).

        If events were lost, the first record is (seq of the newest lost
        event, its t, EVENTS_LOST, how many); acking that seq clears it.
        """
        out = []  # type: list[tuple]
        if limit <= 0:
            return out
        missing = self.missing()
        if missing:
            out.append((self._next - self._count - 1, self.lost_t, _EVENTS_LOST, missing))
        seq = max(self.acked + 1, self._next - self._count)
        while seq < self._next and len(out) < limit:
            pos = (seq - 1) % self.capacity
            out.append((seq, self._t[pos], self._code[pos], self._value[pos]))
            seq += 1
        return out

    def recent(self, n: int = 16) -> "list[tuple]":
        """The newest ``n`` events still in the ring, delivered or not, oldest first.

        For display (the CLI ``events`` command, a technician's view): unlike
        ``pending`` it ignores acknowledgement and never adds the EVENTS_LOST
        marker.  After a restart the ring holds only what the journal kept
        (the undelivered events).

        >>> log = EventLog(capacity=4)
        >>> for t in (10, 20, 30):
        ...     _ = log.append(t, COVER_OPEN)
        >>> log.ack(3); log.recent(2)
        3
        [(2, 20, 3, 0), (3, 30, 3, 0)]
        """
        out = []  # type: list[tuple]
        if not _is_int(n) or n <= 0:
            return out
        seq = self._next - min(self._count, n)
        while seq < self._next:
            pos = (seq - 1) % self.capacity
            out.append((seq, self._t[pos], self._code[pos], self._value[pos]))
            seq += 1
        return out

    def ack(self, upto_seq: int) -> int:
        """Mark every event with seq <= ``upto_seq`` delivered; returns the acked seq.

        An ack below the current one changes nothing; one above the newest
        event is clamped to it (the head-end cannot ack what was never sent).
        """
        if not _is_int(upto_seq):
            raise _error(4, (upto_seq,))  # "ack needs an int seq, got %r"
        if upto_seq > self.acked:
            self.acked = min(upto_seq, self._next - 1)
        return self.acked

    def unacked(self) -> int:
        """Undelivered events still in the ring (not counting the lost ones)."""
        return min(self._next - 1 - self.acked, self._count)

    def to_state(self) -> dict:
        """Plain data for the journal; delivered events are not kept."""
        events = []
        seq = max(self.acked + 1, self._next - self._count)
        while seq < self._next:
            pos = (seq - 1) % self.capacity
            events.append([self._t[pos], self._code[pos], self._value[pos]])
            seq += 1
        return {
            "capacity": self.capacity,
            "next_seq": self._next,
            "acked": self.acked,
            "lost": self.lost,
            "lost_t": self.lost_t,
            "events": events,  # oldest first, ending at next_seq - 1
        }

    @classmethod
    def from_state(cls, data: dict) -> "EventLog":
        log = cls(data["capacity"])
        nxt = data["next_seq"]
        acked = data["acked"]
        events = data["events"]
        if not _is_int(nxt) or nxt < 1 or not _is_int(acked) or not 0 <= acked < nxt:
            raise _error(5, (nxt, acked))  # "bad event log state: next_seq %r acked %r"
        if len(events) > log.capacity or len(events) > nxt - 1:
            raise _error(6, (len(events),))  # "bad event log state: %d events"
        seq = nxt - len(events)
        for t, code, value in events:
            pos = (seq - 1) % log.capacity
            log._t[pos] = t
            log._code[pos] = code
            log._value[pos] = value
            seq += 1
        log._next = nxt
        log._count = len(events)
        log.acked = acked
        log.lost = data["lost"]
        log.lost_t = data["lost_t"]
        return log
