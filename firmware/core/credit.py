"""Prepaid credit state machine and load limiter: the only code that decides the relay.

The credit machine is one transition table, ``CREDIT_TABLE``: rows
``from_state, guard, to_state`` (three small ints a row, one flat bytes
object: it sits in a 128 KB heap).  After every input (``charge``, ``topup``, ``tick``,
``power_sample``, ``remote``, ``reset_lockout``) the first row leaving the
current state whose guard holds fires, and this repeats until no row fires
(at most ``_MAX_STEPS`` times).  Guards are named conditions over the account
and ``now``, evaluated by ``_guard``.  The load limiter is a second, smaller
table, ``LOAD_TABLE``.  The relay rule is the only one::

    relay_closed == (state != DISCONNECTED and load_state == NORMAL and not remote_open)

Money
-----
``credit_paise`` (prepaid credit), ``emergency_used_paise`` (emergency credit
consumed, owed) and ``debt_paise`` (arrears) are all >= 0.

* ``available_paise = credit - emergency_used`` decides the state; debt does
  not block reconnection, it is recovered from top-ups.
* ``balance_paise = credit - emergency_used - debt`` is what is reported.
* ``charge``: from credit first; then from emergency credit while the
  account is in OK/LOW/EMERGENCY, emergency is enabled and not used up;
  the rest becomes debt (e.g. use during a friendly-hours hold).  Once
  emergency credit is used up (DISCONNECT_PENDING/DISCONNECTED) it is only
  re-armed by a top-up that brings ``available`` above zero.
* ``topup``: repays emergency credit first, then recovers
  ``min(debt, amount * debt_recovery_pct // 100, rest)``, the rest is credit.
* Totals make every paisa traceable: always
  ``balance == opening_balance + total_topups - total_charges`` and
  ``total_topups == total_credited + total_emergency_repaid + total_debt_recovered``.

Friendly time (no disconnection): the daily window [friendly_start_s,
friendly_end_s) local time (may wrap midnight), a weekday in
``friendly_weekdays``, a local date in ``holidays`` (YYYYMMDD), the first
``grace_days`` after conversion to prepaid, or ``never_disconnect``.

A remote disconnect inside friendly time is refused: ``remote`` returns
False (a value, not an exception: the head-end gets it as the command's
result).  Malformed inputs raise ``CreditError``.

>>> t0 = 1795753800                      # Fri 2026-11-27 10:00 IST
>>> acc = CreditAccount(CreditConfig.from_dict({}), t0, credit_paise=10000)
>>> acc.charge(6000, t0 + 60)             # 4000 left <= low threshold 5000
>>> STATE_NAMES[acc.state], acc.relay_closed
('LOW', True)
"""
from firmware.core import localtime
from firmware.core.events import _is_int  # events' check: one function object, not two

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]  # looser signature than the stub
        return x

# --- credit states ---------------------------------------------------------
OK = const(0)
LOW = const(1)
EMERGENCY = const(2)
DISCONNECT_PENDING = const(3)
DISCONNECTED = const(4)

# --- load limiter states ---------------------------------------------------
NORMAL = const(0)
TRIPPED = const(1)
LOCKED_OUT = const(2)

# --- event codes: the same numbers as core/events.py, so mapping is identity -
# Private: ``credit.EV_RELAY_OPENED`` etc. and EVENT_NAMES are made when asked for
# (``__getattr__``), so no meter holds their names.
_EV_RELAY_OPENED = const(8)
_EV_RELAY_CLOSED = const(9)
_EV_TOPUP_APPLIED = const(10)  # value: amount paise
_EV_LOW_CREDIT_WARNING = const(14)  # value: pct of the last top-up
_EV_CREDIT_EXHAUSTED = const(15)  # value: available paise (<= 0)
_EV_EMERGENCY_STARTED = const(16)  # value: emergency credit limit paise
_EV_STATE_CHANGED = const(17)  # value: new credit state (events.CREDIT_STATE)
_EV_LOAD_TRIP = const(18)  # value: trips inside the window, this one included
_EV_LOAD_LOCKOUT = const(19)  # value: idem

_NO_TIME = const(-1)  # "not set" for stored times; valid times are >= 0
_MAX_STEPS = const(6)  # longest legal chain is OK -> EMERGENCY -> DISCONNECT_PENDING -> DISCONNECTED
_PCT = const(100)

# Error texts, one string split by ``_error`` when a raise needs one: a literal of its
# own per raise would be one more str object (~32 B) in every meter's heap.
_ERRORS = const("no guard %r\n"
                "now: must be an integer >= 0 (UTC seconds), got %r\n"
                "%s: must be an integer >= 0, got %r\n"
                "watts: must be an integer, got %r\n"
                "connect: must be true or false, got %r\n"
                "%s: amount must be an integer >= %d paise, got %r\n"
                "%s table did not settle in %d steps\n"
                "credit state: missing %s\n"
                "credit state: unknown state %r/%r")
_E_GUARD = const(0)
_E_NOW = const(1)
_E_OPENING = const(2)
_E_WATTS = const(3)
_E_CONNECT = const(4)
_E_AMOUNT = const(5)
_E_SETTLE = const(6)
_E_MISSING = const(7)
_E_UNKNOWN = const(8)


def _error(i, args):
    """CreditError with message ``i`` of ``_ERRORS`` formatted with the tuple ``args``."""
    return __getattr__("CreditError")(_ERRORS.split("\n")[i] % args)


def __getattr__(name):
    # The exception classes: CreditError (a ValueError), an illegal input (bad amount, bad
    # time, bad flag) or a corrupt saved state; CreditConfigError (a CreditError), bad
    # credit configuration, the message names the field.  Made on first use and kept in
    # the module dict (a class held from import on costs ~200 bytes of heap that a meter
    # fed sane inputs never needs, issue 3); raise sites here go
    # through ``_error``, while ``credit.CreditError`` and ``from
    # firmware.core.credit import CreditError`` work as for any class.
    if name == "CreditError" or name == "CreditConfigError":
        g = globals()
        if "CreditError" not in g:
            g["CreditError"] = err = type("CreditError", (ValueError,), {})
            g["CreditConfigError"] = type("CreditConfigError", (err,), {})
        return g[name]
    # STATE_NAMES, LOAD_STATE_NAMES, EVENT_NAMES ({code: name}) and the EV_* codes
    # are built when asked for (status, logs, the CLI, tests): held from import on,
    # their dicts and names would sit in every meter's heap for nothing.
    if name == "STATE_NAMES":
        return {OK: "OK", LOW: "LOW", EMERGENCY: "EMERGENCY",
                DISCONNECT_PENDING: "DISCONNECT_PENDING", DISCONNECTED: "DISCONNECTED"}
    if name == "LOAD_STATE_NAMES":
        return {NORMAL: "NORMAL", TRIPPED: "TRIPPED", LOCKED_OUT: "LOCKED_OUT"}
    if name == "EVENT_NAMES" or name.startswith("EV_"):
        names = dict(zip(
            (_EV_RELAY_OPENED, _EV_RELAY_CLOSED, _EV_TOPUP_APPLIED, _EV_LOW_CREDIT_WARNING,
             _EV_CREDIT_EXHAUSTED, _EV_EMERGENCY_STARTED, _EV_STATE_CHANGED, _EV_LOAD_TRIP,
             _EV_LOAD_LOCKOUT),
            ("RELAY_OPENED RELAY_CLOSED TOPUP_APPLIED LOW_CREDIT_WARNING CREDIT_EXHAUSTED"
             " EMERGENCY_STARTED STATE_CHANGED LOAD_TRIP LOAD_LOCKOUT").split()))
        if name == "EVENT_NAMES":
            return names
        for code in names:
            if name == "EV_" + names[code]:  # EV_STATE_CHANGED -> 17, a global from now on
                globals()[name] = code
                return code
    raise AttributeError(name)


# --- configuration ---------------------------------------------------------
# The field table and the checks live in ``config_check`` (loaded while a config
# is checked, then forgotten on MicroPython: they need not sit in the heap).


class CreditConfig:
    """Validated thresholds and friendly-time rules (all data, no code).

    >>> cfg = CreditConfig.from_dict({"low_credit_paise": 10000, "holidays": [20261225]})
    >>> cfg.low_credit_paise, cfg.friendly_weekdays
    (10000, [6])
    """

    def __init__(self, v):
        self.low_credit_paise = v["low_credit_paise"]
        self.emergency_enabled = v["emergency_enabled"]
        self.emergency_credit_paise = v["emergency_credit_paise"]
        self.disconnect_grace_s = v["disconnect_grace_s"]
        self.friendly_start_s = v["friendly_start_s"]
        self.friendly_end_s = v["friendly_end_s"]
        self.friendly_weekdays = v["friendly_weekdays"]
        self.holidays = v["holidays"]
        self.grace_days = v["grace_days"]
        self.never_disconnect = v["never_disconnect"]
        self.utc_offset_s = v["utc_offset_s"]
        self.debt_recovery_pct = v["debt_recovery_pct"]
        # descending, so one big step warns 30 % before 10 %
        self.warn_pct_of_last_topup = sorted(v["warn_pct_of_last_topup"], reverse=True)
        self.load_limit_w = v["load_limit_w"]
        self.overload_s = v["overload_s"]
        self.reconnect_delay_s = v["reconnect_delay_s"]
        self.max_trips = v["max_trips"]
        self.trip_window_s = v["trip_window_s"]

    @classmethod
    def from_dict(cls, d):
        """Validate ``d`` (missing fields take defaults); raise CreditConfigError naming the field."""
        from firmware.core import config_check
        try:
            return cls(config_check.credit_values(d))
        finally:
            config_check.forget()

    def to_dict(self):
        from firmware.core import config_check
        try:
            names = config_check.credit_names()
        finally:
            config_check.forget()
        d = {}
        for name in names:
            x = getattr(self, name)
            d[name] = list(x) if isinstance(x, list) else x
        return d


# --- guards: named conditions over the account and now ----------------------
_CREDIT_ABOVE_LOW = const(0)  # available above the low-credit threshold
_CREDIT_LOW = const(1)  # 0 < available <= threshold
_EXHAUSTED_EMERGENCY_LEFT = const(2)  # available <= 0, emergency credit left
_EXHAUSTED = const(3)  # available <= 0
_EMERGENCY_SPENT = const(4)  # no emergency credit left (used up or disabled)
_DISCONNECT_DUE = const(5)  # pending for the grace time and not friendly time
_OVERLOAD_LOCKOUT = const(6)  # overload long enough, and this trip reaches max_trips
_OVERLOAD = const(7)  # over the load limit for overload_s
_RECONNECT_DUE = const(8)  # tripped for reconnect_delay_s


def _guard(a, guard, now):
    """True when ``guard`` holds for account ``a`` at ``now``."""
    if guard == _CREDIT_ABOVE_LOW:
        return a.available_paise > a.config.low_credit_paise
    if guard == _CREDIT_LOW:
        return 0 < a.available_paise <= a.config.low_credit_paise
    if guard == _EXHAUSTED_EMERGENCY_LEFT:
        return a.available_paise <= 0 and a.emergency_left()
    if guard == _EXHAUSTED:
        return a.available_paise <= 0
    if guard == _EMERGENCY_SPENT:
        return not a.emergency_left()
    if guard == _DISCONNECT_DUE:
        return now >= a.pending_since + a.config.disconnect_grace_s and not a.friendly(now)
    overload = a.over_since != _NO_TIME and now - a.over_since >= a.config.overload_s
    if guard == _OVERLOAD_LOCKOUT:
        if not overload:
            return False
        n = 1  # this trip, and those within trip_window_s before now
        for t in a.trip_times:
            if now - t < a.config.trip_window_s:
                n += 1
        return n >= a.config.max_trips
    if guard == _OVERLOAD:
        return overload
    if guard == _RECONNECT_DUE:
        return now >= a.tripped_at + a.config.reconnect_delay_s
    raise _error(_E_GUARD, (guard,))


# First matching row (in this order) wins.  There is deliberately no row
# EMERGENCY -> DISCONNECTED: disconnection only ever follows DISCONNECT_PENDING.
# Both tables are bytes (every code is < 256): the list is built once at import
# and let go, so a table costs a short bytes object, not a tuple of 42 ints.
CREDIT_TABLE = bytes([
    # from               guard                       to
    OK,                  _CREDIT_LOW,                LOW,
    OK,                  _EXHAUSTED_EMERGENCY_LEFT,  EMERGENCY,
    OK,                  _EXHAUSTED,                 DISCONNECT_PENDING,
    LOW,                 _CREDIT_ABOVE_LOW,          OK,
    LOW,                 _EXHAUSTED_EMERGENCY_LEFT,  EMERGENCY,
    LOW,                 _EXHAUSTED,                 DISCONNECT_PENDING,
    EMERGENCY,           _CREDIT_ABOVE_LOW,          OK,
    EMERGENCY,           _CREDIT_LOW,                LOW,
    EMERGENCY,           _EMERGENCY_SPENT,           DISCONNECT_PENDING,
    DISCONNECT_PENDING,  _CREDIT_ABOVE_LOW,          OK,
    DISCONNECT_PENDING,  _CREDIT_LOW,                LOW,
    DISCONNECT_PENDING,  _DISCONNECT_DUE,            DISCONNECTED,
    DISCONNECTED,        _CREDIT_ABOVE_LOW,          OK,
    DISCONNECTED,        _CREDIT_LOW,                LOW,
])

# LOCKED_OUT has no row: only reset_lockout() (a technician) leaves it.
LOAD_TABLE = bytes([
    NORMAL,   _OVERLOAD_LOCKOUT,  LOCKED_OUT,
    NORMAL,   _OVERLOAD,          TRIPPED,
    TRIPPED,  _RECONNECT_DUE,     NORMAL,
])


def _next_state(table, state, a, now):
    for i in range(0, len(table), 3):
        if table[i] == state and _guard(a, table[i + 1], now):
            return table[i + 2]
    return None


def _check_now(now):
    if not _is_int(now) or now < 0:
        raise _error(_E_NOW, (now,))


# Persisted attributes, in a fixed order (to_state / from_state).
_STATE_FIELDS = (
    "state", "load_state", "remote_open", "credit_paise", "emergency_used_paise",
    "debt_paise", "prepaid_since", "pending_since", "last_topup_paise", "warned",
    "opening_balance", "total_topups", "total_charges", "total_credited",
    "total_emergency_repaid", "total_debt_recovered", "over_since", "tripped_at",
    "trip_times", "last_now",
)


class CreditAccount:
    """One consumer's prepaid account: balances, credit state, load limiter, relay.

    ``credit_paise``/``debt_paise`` are the opening balances (migration day);
    ``prepaid_since`` (default ``now``) starts the ``grace_days`` grace.

    >>> t0 = 1795753800                  # Fri 2026-11-27 10:00 IST
    >>> acc = CreditAccount(CreditConfig.from_dict({}), t0, credit_paise=0, debt_paise=5000)
    >>> STATE_NAMES[acc.state]           # zero credit: emergency credit starts
    'EMERGENCY'
    >>> acc.topup(10000, t0 + 60)        # 25 % of 10000 recovers debt
    (7500, 0, 2500)
    """

    def __init__(self, config, now, credit_paise=0, debt_paise=0, prepaid_since=None):
        _check_now(now)
        for name, x in (("credit_paise", credit_paise), ("debt_paise", debt_paise)):
            if not _is_int(x) or x < 0:
                raise _error(_E_OPENING, (name, x))
        if prepaid_since is None:
            prepaid_since = now
        _check_now(prepaid_since)
        self.config = config
        self.state = OK
        self.load_state = NORMAL
        self.remote_open = False
        self.credit_paise = credit_paise
        self.emergency_used_paise = 0
        self.debt_paise = debt_paise
        self.prepaid_since = prepaid_since
        self.pending_since = _NO_TIME
        # The opening credit is the reference for %-warnings until the first top-up.
        self.last_topup_paise = credit_paise
        self.warned: list = []  # pcts warned since the last top-up; 0 = CREDIT_EXHAUSTED
        self.opening_balance = credit_paise - debt_paise
        self.total_topups = 0
        self.total_charges = 0
        self.total_credited = 0
        self.total_emergency_repaid = 0
        self.total_debt_recovered = 0
        self.over_since = _NO_TIME  # start of the current overload, NORMAL only
        self.tripped_at = _NO_TIME
        self.trip_times: list = []  # trips inside trip_window_s, oldest first
        self.last_now = now
        self._events: list = []
        self._relay_was_closed = True  # a new meter's relay ships closed
        self._settle(now)

    # --- derived values ---------------------------------------------------
    @property
    def available_paise(self):
        return self.credit_paise - self.emergency_used_paise

    @property
    def balance_paise(self):
        return self.credit_paise - self.emergency_used_paise - self.debt_paise

    @property
    def relay_closed(self):
        return self.state != DISCONNECTED and self.load_state == NORMAL and not self.remote_open

    def emergency_left(self):
        """True while emergency credit is enabled and not used up."""
        cfg = self.config
        return cfg.emergency_enabled and self.emergency_used_paise < cfg.emergency_credit_paise

    def friendly(self, now):
        """True when disconnection is not allowed at UTC ``now``."""
        cfg = self.config
        if cfg.never_disconnect or now < self.prepaid_since + cfg.grace_days * localtime.DAY_S:
            return True
        off = cfg.utc_offset_s
        if localtime.in_daily_window(localtime.second_of_day(now, off),
                                     cfg.friendly_start_s, cfg.friendly_end_s):
            return True
        if localtime.weekday_of_day(localtime.local_day(now, off)) in cfg.friendly_weekdays:
            return True
        return localtime.date_key(now, off) in cfg.holidays

    # --- inputs -----------------------------------------------------------
    def charge(self, amount, now):
        """Debit ``amount`` paise: credit, then emergency credit, then debt."""
        if not _is_int(amount) or amount < 0:  # inline: a helper would be one more function object
            raise _error(_E_AMOUNT, ("charge", 0, amount))
        self._begin(now)
        take = amount if amount < self.credit_paise else self.credit_paise
        self.credit_paise -= take
        rest = amount - take
        if rest and self.state in (OK, LOW, EMERGENCY) and self.emergency_left():
            room = self.config.emergency_credit_paise - self.emergency_used_paise
            take = rest if rest < room else room
            self.emergency_used_paise += take
            rest -= take
        self.debt_paise += rest
        self.total_charges += amount
        self._settle(now)

    def topup(self, amount, now):
        """Apply an authenticated top-up; return (credited, emergency_repaid, debt_recovered)."""
        if not _is_int(amount) or amount < 1:
            raise _error(_E_AMOUNT, ("topup", 1, amount))
        self._begin(now)
        repaid = amount if amount < self.emergency_used_paise else self.emergency_used_paise
        left = amount - repaid
        recovered = min(self.debt_paise, amount * self.config.debt_recovery_pct // _PCT, left)
        credited = left - recovered
        self.emergency_used_paise -= repaid
        self.debt_paise -= recovered
        self.credit_paise += credited
        self.total_topups += amount
        self.total_credited += credited
        self.total_emergency_repaid += repaid
        self.total_debt_recovered += recovered
        self.last_topup_paise = amount
        self.warned = []
        self._events.append((now, _EV_TOPUP_APPLIED, amount))
        self._settle(now)
        return credited, repaid, recovered

    def tick(self, now):
        """Re-evaluate the time guards (grace, friendly time, reconnect delay)."""
        self._begin(now)
        self._settle(now)

    def power_sample(self, watts, now):
        """Feed the load limiter one instantaneous power reading (W)."""
        if not _is_int(watts):
            raise _error(_E_WATTS, (watts,))
        self._begin(now)
        limit = self.config.load_limit_w
        if self.load_state == NORMAL and limit and watts > limit:
            if self.over_since == _NO_TIME:
                self.over_since = now
        else:
            self.over_since = _NO_TIME
        self._settle(now)

    def remote(self, connect, now):
        """Operator connect (True) / disconnect (False); True if done, False if refused.

        The one refusal: a disconnect inside friendly time (it changes
        nothing; the head-end reports the command as refused).  A connect
        clears ``remote_open`` only: it cannot close a relay opened for lack
        of credit or by the load limiter.
        """
        if not isinstance(connect, bool):
            raise _error(_E_CONNECT, (connect,))
        self._begin(now)
        done = True
        if connect:
            self.remote_open = False
        elif self.friendly(now):
            done = False
        else:
            self.remote_open = True
        self._settle(now)
        return done

    def reset_lockout(self, now):
        """Technician reset after a load lock-out; True if it was locked out.

        Idempotent (False, nothing changes) otherwise, so a retried reset
        command is harmless.
        """
        self._begin(now)
        if self.load_state != LOCKED_OUT:
            self._settle(now)
            return False
        self.load_state = NORMAL
        self.trip_times = []
        self.tripped_at = _NO_TIME
        self.over_since = _NO_TIME
        self._settle(now)
        return True

    def pop_events(self):
        """Events since the last call, as a list of (t, code, value) (an empty tuple when
        there are none); clears them."""
        ev = self._events
        if not ev:
            return ()  # nothing new: no fresh list at every input (they pin the heap)
        self._events = []
        return ev

    # --- machinery --------------------------------------------------------
    def _begin(self, now):
        _check_now(now)
        if now < self.last_now:
            # Clock set back: pull stored times back to now so waits do not grow by
            # the jump (a reconnect delay must not become a day).  Balances untouched.
            if self.pending_since > now:
                self.pending_since = now
            if self.tripped_at > now:
                self.tripped_at = now
            if self.over_since > now:
                self.over_since = now
            times = self.trip_times
            for i in range(len(times)):
                if times[i] > now:
                    times[i] = now
        self.last_now = now

    def _settle(self, now):
        events = self._events
        for _ in range(_MAX_STEPS):
            dst = _next_state(CREDIT_TABLE, self.state, self, now)
            if dst is None:
                break
            self.state = dst
            self.pending_since = now if dst == DISCONNECT_PENDING else _NO_TIME
            events.append((now, _EV_STATE_CHANGED, dst))
            if dst == EMERGENCY:
                events.append((now, _EV_EMERGENCY_STARTED, self.config.emergency_credit_paise))
        else:
            raise _error(_E_SETTLE, ("credit", _MAX_STEPS))
        for _ in range(_MAX_STEPS):
            dst = _next_state(LOAD_TABLE, self.load_state, self, now)
            if dst is None:
                break
            # entering a load state (inline, not a method: one function object fewer)
            self.over_since = _NO_TIME
            self.load_state = dst
            if dst == NORMAL:
                self.tripped_at = _NO_TIME
                continue
            w = self.config.trip_window_s
            times = []
            for t in self.trip_times:
                if now - t < w:
                    times.append(t)
            times.append(now)
            self.trip_times = times
            self.tripped_at = now
            n = len(times)
            events.append((now, _EV_LOAD_TRIP, n))
            if dst == LOCKED_OUT:
                events.append((now, _EV_LOAD_LOCKOUT, n))
        else:
            raise _error(_E_SETTLE, ("load", _MAX_STEPS))
        # low-credit warnings, each once per top-up: avail <= pct % of the last top-up
        # (exactly in integers), then 0 = CREDIT_EXHAUSTED
        avail = self.available_paise
        ref = self.last_topup_paise
        for pct in self.config.warn_pct_of_last_topup:
            if ref > 0 and avail * _PCT <= pct * ref and pct not in self.warned:
                self.warned.append(pct)
                events.append((now, _EV_LOW_CREDIT_WARNING, pct))
        if avail <= 0 and 0 not in self.warned:
            self.warned.append(0)
            events.append((now, _EV_CREDIT_EXHAUSTED, avail))
        closed = self.relay_closed
        if closed != self._relay_was_closed:
            self._relay_was_closed = closed
            events.append((now, _EV_RELAY_CLOSED if closed else _EV_RELAY_OPENED, 0))

    # --- journal ----------------------------------------------------------
    def to_state(self):
        """Plain data for the journal (config is stored separately); pending events are not included."""
        d = {}
        for name in _STATE_FIELDS:
            x = getattr(self, name)
            d[name] = list(x) if isinstance(x, list) else x
        return d

    def state_members(self):
        """``to_state`` as ``(name, value)`` pairs, one at a time (the journal writes them
        as a nested object without building the dict)."""
        for name in _STATE_FIELDS:
            yield name, getattr(self, name)

    @classmethod
    def from_state(cls, config, data):
        """Rebuild an account that behaves exactly like the one that produced ``data``."""
        for name in _STATE_FIELDS:
            if name not in data:
                raise _error(_E_MISSING, (name,))
        if data["state"] not in (OK, LOW, EMERGENCY, DISCONNECT_PENDING, DISCONNECTED) or \
                data["load_state"] not in (NORMAL, TRIPPED, LOCKED_OUT):
            raise _error(_E_UNKNOWN, (data["state"], data["load_state"]))
        acc = object.__new__(cls)
        acc.config = config
        for name in _STATE_FIELDS:
            x = data[name]
            setattr(acc, name, list(x) if isinstance(x, (list, tuple)) else x)
        acc._events = []
        acc._relay_was_closed = acc.relay_closed
        return acc
