"""One prepaid meter: the functional core composed and driven by ``now``.

``Meter`` wires metering -> tariff -> credit, authenticates downlinks,
keeps the event log, and persists everything through the two-slot journal.
It does no I/O and reads no clock: the app shell (or the simulator, or a
test) calls it with pulses, readings, power samples, downlink commands and
the current UTC time, and drives the relay from ``relay_closed``.

Charging rule (why the head-end can recompute every paisa): each ``step``
charges the energy since the previous step to the interval the block load
profile books it to (``IntervalProfile.booking_start``: normally the interval
holding the step's last second; after a power-off gap, the new interval), and
the tariff's exact-rational charge is additive, so the sum of the meter's
debits equals the tariff applied to its interval records.

Journal policy: a commit at every closed interval, billing snapshot, credit
state change, applied downlink and power-fail notice; between commits at most
one interval's pulses can be lost to a power cut (an ESP32 board with a
power-fail input calls ``power_fail`` to commit at once).

>>> m = Meter(MeterConfig.from_dict(example_config()), now=1795737600, opening_credit_paise=20000)
>>> m.add_pulses(3200, now=1795737660)      # 1 kWh at 3200 imp/kWh
>>> out = m.step(now=1795737660)
>>> m.status()["energy_wh"]
1000
"""
import json

from firmware.core import auth, credit, events, localtime, metering, tariff


try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_STATE_FORMAT = const(1)

# Results of apply_command beyond the authentication reasons (auth.OK .. auth.MALFORMED).
REFUSED = const(7)  # authentic but not allowed now (e.g. remote disconnect in friendly hours)
UNKNOWN_KIND = const(8)
BAD_VALUE = const(9)  # authentic but its content is invalid (bad tariff, bad amount)
_MAX_BACKFILL_SPAN = const(10000)  # sequence numbers one backfill command may ask for
_CLOCK_EPOCH_T = const(1767225600)  # 2026-01-01 00:00 UTC: no clock this firmware runs on is older
_MAX_CLOCK_STEP_S = const(86400)  # default ``Meter.max_clock_step_s``

# Texts of apply_command's details (and one error), one string split by ``_text``: a
# literal of its own each would be one more str object (~32 B) in every meter's heap.
_TEXTS = const("credited %d paise\n"
               "relay: connect or disconnect\n"
               "disconnect refused in friendly hours\n"
               "tariff %d staged for %d\n"
               "load limiter reset\n"
               "backfill: [id, first_s, last_s], first <= last, span <= %d\n"
               "backfill %d..%d\n"
               "time: [id, utc_s] or [id, utc_s, \"force\"], utc_s >= %d\n"
               "time: step %d s exceeds %d s (send with \"force\")\n"
               "clock %d step %d\n"
               "unknown command kind %r\n"
               "journal state format %r not understood")
_T_CREDITED = const(0)
_T_RELAY = const(1)
_T_REFUSED = const(2)
_T_STAGED = const(3)
_T_RESET = const(4)
_T_BACKFILL_BAD = const(5)
_T_BACKFILL = const(6)
_T_TIME_BAD = const(7)
_T_TIME_STEP = const(8)
_T_CLOCK = const(9)
_T_UNKNOWN = const(10)
_T_FORMAT = const(11)


def _text(i, args=()):
    """Text ``i`` of ``_TEXTS`` formatted with the tuple ``args``."""
    return _TEXTS.split("\n")[i] % args


def backfill_range(fields):
    """(first_s, last_s) of a ``backfill`` command's fields ``[id, first_s, last_s]``, or None.

    None (BAD_VALUE) unless both are ints >= 0, ``first_s <= last_s`` and the
    range spans at most 10,000 sequence numbers.  The meter core only checks
    and journals the command; the app re-publishes.

    >>> backfill_range(["BF-1", 40, 49])
    (40, 49)
    """
    if not isinstance(fields, list) or len(fields) != 3:
        return None
    first, last = fields[1], fields[2]
    for v in (first, last):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None
    if first > last or last - first + 1 > _MAX_BACKFILL_SPAN:
        return None
    return first, last


def clock_sync_time(fields):
    """The UTC second a ``time`` command's fields ``[id, utc_s]`` / ``[id, utc_s, "force"]``
    set the clock to, or None (BAD_VALUE): not an int, before 2026-01-01 UTC or past 2106.

    >>> clock_sync_time(["TS-1", 1795753800])
    1795753800
    """
    if not isinstance(fields, list) or not 2 <= len(fields) <= 3:
        return None
    if len(fields) == 3 and fields[2] != "force":
        return None
    t = fields[1]
    if not isinstance(t, int) or isinstance(t, bool) or t < _CLOCK_EPOCH_T or t > events.T_MAX:
        return None
    return t


def example_config():
    """A complete, valid meter configuration (a new dict at every call): for the
    demo, tests and benchmarks; also as ``EXAMPLE_CONFIG``.  It lives in
    ``config_check`` (a meter in the field never needs it in its heap).

    >>> MeterConfig.from_dict(example_config()).meter_id
    'UJ-DEMO-0001'
    """
    from firmware.core import config_check
    try:
        return config_check.example_config()
    finally:
        config_check.forget()


def __getattr__(name):
    # MeterConfigError (a ValueError): Bad meter configuration; the message names the
    # field.  Made on first use and kept in the module dict (a class held from import on
    # costs ~200 bytes of heap that a meter fed sane inputs never needs, issue 3); raise
    # sites here call ``__getattr__("MeterConfigError")``, while
    # ``meter.MeterConfigError`` and ``from firmware.core.meter import MeterConfigError``
    # work as for any class.
    if name == "MeterConfigError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # RESULT_NAMES ({result: name}: auth.REASON_NAMES and the three above) and
    # EXAMPLE_CONFIG are made when asked for, a new dict each time: held from
    # import on they would sit in every meter's heap, and a meter in the field
    # never uses EXAMPLE_CONFIG (``from firmware.core.meter import ...`` works the same).
    if name == "RESULT_NAMES":
        names = auth.REASON_NAMES
        names[REFUSED] = "REFUSED"
        names[UNKNOWN_KIND] = "UNKNOWN_KIND"
        names[BAD_VALUE] = "BAD_VALUE"
        return names
    if name == "EXAMPLE_CONFIG":
        return example_config()
    raise AttributeError(name)


def sts_credit_paise(quantity, paise_per_unit, unit_size=1000):
    """Money credit for a token's quantity (Wh or litres): rounded down, one rule
    shared by the meter and the head-end's ledger."""
    return quantity * paise_per_unit // unit_size


class MeterConfig:
    """Commissioning data of one meter, validated (``MeterConfig.from_dict``).

    Fields: meter_id, service, pulses_per_unit + litres_per_pulses (pulse
    constant: electricity imp/kWh; water/gas ``pulses_per_unit`` pulses per
    ``litres_per_pulses`` litres), interval_s (900 or 1800), md_window_s,
    md_step_s, utc_offset_s, key_hex (downlink HMAC key, >= 16 bytes),
    tariff (``tariff.Tariff`` dict), credit (``credit.CreditConfig`` dict),
    events_capacity.
    """

    # set by ``config_check.meter_config`` (annotations only: no heap on the meter)
    meter_id: str
    service: str
    pulses_per_unit: int
    litres_per_pulses: int
    interval_s: int
    md_window_s: int
    md_step_s: int
    utc_offset_s: int
    events_capacity: int
    key: bytes
    tariff: "tariff.Tariff"
    credit: "credit.CreditConfig"
    sts: "dict | None"

    def __init__(self, d):
        # the checks live in ``config_check`` (loaded for the check, then forgotten)
        from firmware.core import config_check
        try:
            config_check.meter_config(self, d)
        finally:
            config_check.forget()

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise __getattr__("MeterConfigError")("config: must be a mapping")
        return cls(d)


class Meter:
    """The meter's whole functional state; see the module docstring."""

    # how far a ``time`` command may move the clock unless forced (the app sets its
    # configured limit)
    max_clock_step_s = _MAX_CLOCK_STEP_S

    def __init__(self, config, now, journal=None, opening_credit_paise=0, opening_debt_paise=0):
        self.config = config
        self.journal = journal
        self.commits = 0
        if journal is not None and hasattr(journal, "reserve"):
            journal.reserve()  # its record buffer first, while the heap is in one piece
        saved = journal.load() if journal is not None else None
        if not saved:  # a new meter (inline, not a method: one function object fewer)
            c = config
            if c.service == "electricity":
                self.pulses = metering.PulseRegister.electricity(c.pulses_per_unit)
            else:
                self.pulses = metering.PulseRegister(c.litres_per_pulses, c.pulses_per_unit)
            self.profile = metering.IntervalProfile(c.interval_s)
            self.md = metering.MaxDemand(c.md_window_s, c.md_step_s)
            self.billing = metering.BillingSnapshots(c.utc_offset_s)
            self.schedule = tariff.TariffSchedule(c.tariff)
            self.biller = tariff.Biller(c.tariff)
            self.account = credit.CreditAccount(c.credit, now, credit_paise=opening_credit_paise,
                                                debt_paise=opening_debt_paise)
            self.guard = auth.DownlinkGuard(c.meter_id)
            self.log = events.EventLog(c.events_capacity)
            self.tokens = None
            if c.sts is not None:
                # only meters that take tokens (and their names)
                from firmware.sts import meter_tokens
                self.tokens = meter_tokens.make_acceptor(c.sts)
            self.charged_units = 0  # cumulative units already charged by the tariff
            self.last_step_t = now
            self.power_w = 0
            # open the first interval at commissioning, so energy counted before the
            # first step lands in an interval record (the head-end charges from those)
            self.profile.add_sample(now, 0)
        else:
            self._restore(json.loads(saved))
            self.log.append(now, events.JOURNAL_RESTORED, self.journal.sequence & 0x7FFFFFFF)
            self.log.append(now, events.POWER_RESTORE, 0)
        self._commit(now)

    # -- construction -------------------------------------------------
    def _restore(self, s):
        if s.get("format") != _STATE_FORMAT:
            raise ValueError(_text(_T_FORMAT, (s.get("format"),)))
        c = self.config
        self.pulses = metering.PulseRegister.from_state(s["pulses"])
        self.profile = metering.IntervalProfile.from_state(s["profile"])
        self.md = metering.MaxDemand.from_state(s["md"])
        self.billing = metering.BillingSnapshots.from_state(s["billing"])
        self.schedule = tariff.TariffSchedule.from_state(s["schedule"])
        self.biller = tariff.Biller.from_state(s["biller"])
        self.account = credit.CreditAccount.from_state(c.credit, s["credit"])
        self.guard = auth.DownlinkGuard.from_state(s["guard"])
        self.log = events.EventLog.from_state(s["events"])
        self.tokens = None
        if s.get("tokens"):
            from firmware.sts import meter_tokens  # only meters that take tokens
            self.tokens = meter_tokens.make_acceptor(None, s["tokens"])
        self.charged_units = s["charged_units"]
        self.last_step_t = s["last_step_t"]
        self.power_w = 0

    def to_state(self):
        """Everything the meter must remember across a power cut, as JSON-able data."""
        d = dict(self._state_members())
        # _state_members gives these as generators of their members
        d["schedule"] = self.schedule.to_state()
        d["biller"] = self.biller.to_state()
        d["credit"] = self.account.to_state()
        return d

    def _state_members(self):
        # One member at a time, so a commit holds one part's data, not all of it
        # (``Journal.commit_members``); ``to_state`` is the same as one dict.
        yield "format", _STATE_FORMAT
        yield "pulses", self.pulses.to_state()
        yield "profile", self.profile.to_state()
        yield "md", self.md.to_state()
        yield "billing", self.billing.to_state()
        # nested objects, member by member: no dict or text of a whole tariff
        yield "schedule", self.schedule.state_members()
        yield "biller", self.biller.state_members()
        yield "credit", self.account.state_members()
        yield "guard", self.guard.to_state()
        yield "events", self.log.to_state()
        yield "tokens", self.tokens.to_state() if self.tokens is not None else None
        yield "charged_units", self.charged_units
        yield "last_step_t", self.last_step_t

    def _commit(self, now):
        if self.journal is not None:
            self.journal.commit_members(self._state_members(), now)
            self.commits += 1

    # -- inputs ---------------------------------------------------------
    def add_pulses(self, pulses, now):
        """Count pulses read from the pulse counter (charged at the next ``step``)."""
        self.pulses.add(pulses)

    def power_sample(self, watts, now):
        """Instantaneous demand for the load limiter (W)."""
        self.power_w = watts
        self.account.power_sample(watts, now)
        self._after_credit_change(now)

    @property
    def energy_units(self):
        """Cumulative import in the smallest unit (Wh, or litres for water/gas)."""
        return self.pulses.total_units

    def step(self, now, voltage_mv=None, current_ma=None):
        """Advance to ``now``: charge usage and fixed charges, close intervals and
        snapshots, run the credit machine's timers, commit the journal when
        something durable happened.  Returns a list of ``(kind, record)`` with
        kind ``"interval"``, ``"daily"`` or ``"monthly"``.
        """
        out = []
        durable = False
        # The interval the block load profile books this step's usage to; a staged
        # tariff takes over from the first interval that starts at or after its
        # activation time.
        attributed = self.profile.booking_start(now)
        if self.schedule.apply_due(attributed):
            self.biller.use_tariff(self.schedule.active)
            self.log.append(now, events.TARIFF_CHANGED, self.schedule.version)
            durable = True
        cum = self.energy_units
        qty = cum - self.charged_units
        if qty > 0:
            paise = self.biller.charge_usage(attributed, qty)
            self.charged_units = cum
            self.md.add(now, qty)
            if paise:
                self.account.charge(paise, now)
        else:
            self.md.advance(now)
        fixed = self.biller.charge_day(now)
        if fixed:
            self.account.charge(fixed, now)
        for rec in self.profile.add_sample(now, cum, voltage_mv, current_ma):
            out.append(("interval", rec))
            durable = True
        # all energy up to ``now`` is in: close the demand slots that end at ``now``, so a
        # window ending exactly at midnight counts for the month it belongs to
        self.md.advance(now + 1)
        for snap in self.billing.observe(now, cum, self.account.balance_paise, self.md.max_w):
            monthly = snap[0] == metering.SNAP_MONTHLY
            out.append(("monthly" if monthly else "daily", snap))
            if monthly:
                self.md.reset()
            durable = True
        self.account.tick(now)
        if self._after_credit_change(now, commit=False):
            durable = True
        self.last_step_t = now
        if durable:
            self._commit(now)
        return out

    def apply_command(self, cmd, now, act=None):
        """Authenticate and apply one downlink command exactly once.

        Returns ``(result, detail)``: result ``auth.OK`` when applied, else an
        ``auth`` reason or ``REFUSED`` / ``UNKNOWN_KIND`` / ``BAD_VALUE``
        (names in ``RESULT_NAMES``).  A REPLAYED command was applied before:
        the head-end treats its ack as delivered.  State is untouched on any
        rejection.

        ``act(kind, fields, now)`` (optional) applies kinds the core does not
        know (the app's ``ota``, ``ota_chunk``) once the command is authentic:
        it returns ``(result, detail)``, or None for a kind it does not know
        either.  Only an OK result is journaled with the command's counter.
        """
        reason = self.guard.check(self.config.key, cmd, now)
        kind = cmd.get("kind") if isinstance(cmd, dict) else None
        if reason != auth.OK:
            if kind == auth.TOPUP:
                self.log.append(now, events.TOPUP_REJECTED, reason)
            return reason, auth.REASON_NAMES[reason]
        fields = cmd["fields"]
        if kind == auth.TOPUP:
            _, amount = auth.read_topup(cmd)
            self.account.topup(amount, now)
            detail = _text(_T_CREDITED, (amount,))
        elif kind == "relay":
            action = fields[1] if len(fields) > 1 else None
            if action not in ("connect", "disconnect"):
                return BAD_VALUE, _text(_T_RELAY)
            if not self.account.remote(action == "connect", now):
                return REFUSED, _text(_T_REFUSED)
            detail = "relay " + action
        elif kind == "tariff":
            try:
                staged = tariff.Tariff.from_dict(json.loads(fields[1]))
                self.schedule.set_passive(staged)
            except (ValueError, IndexError) as err:  # tariff.TariffError is a ValueError
                return BAD_VALUE, "tariff: %s" % err
            self.log.append(now, events.TARIFF_SCHEDULED, staged.version)
            detail = _text(_T_STAGED, (staged.version, staged.activates_at))
        elif kind == "reset_lockout":
            self.account.reset_lockout(now)
            detail = _text(_T_RESET)
        elif kind == "backfill":
            span = backfill_range(fields)
            if span is None:
                return BAD_VALUE, _text(_T_BACKFILL_BAD, (_MAX_BACKFILL_SPAN,))
            detail = _text(_T_BACKFILL, span)
        elif kind == "time":
            new_t = clock_sync_time(fields)
            if new_t is None:
                return BAD_VALUE, _text(_T_TIME_BAD, (_CLOCK_EPOCH_T,))
            step = new_t - now
            forced = len(fields) == 3
            # an unset clock (before the epoch) may be set to anything the check above allows
            if not forced and now >= _CLOCK_EPOCH_T and abs(step) > self.max_clock_step_s:
                return BAD_VALUE, _text(_T_TIME_STEP, (step, self.max_clock_step_s))
            self.log.append(now, events.CLOCK_SET,
                            max(events.VALUE_MIN, min(events.VALUE_MAX, step)))
            detail = _text(_T_CLOCK, (new_t, step))
        else:
            done = act(kind, fields, now) if act is not None else None
            if done is None:
                return UNKNOWN_KIND, _text(_T_UNKNOWN, (kind,))
            result, detail = done
            if result != auth.OK:
                return result, detail
        self.guard.accept(cmd)
        self._after_credit_change(now, commit=False)
        self._commit(now)
        return auth.OK, detail

    def apply_sts_token(self, digits, now):
        """Accept a 20-digit STS token typed on the keypad or the CLI, exactly once.

        Returns ``(reason, detail)`` with reason an ``sts.acceptor`` code
        (``sts.ACCEPTED`` == 0; names in ``sts.REASON_NAMES``).  Credit tokens
        become money credit at ``sts.paise_per_unit``; key-change tokens move
        the meter to the new key.  Other management tokens are UNSUPPORTED for
        now.  A rejected token changes nothing but the event log
        (TOPUP_REJECTED, value 100 + reason).
        """
        from firmware.sts import meter_tokens  # only meters that take tokens load it
        return meter_tokens.apply(self, digits, now)

    def power_fail(self, now):
        """The board saw the supply fail: log it and commit while the capacitor lasts."""
        self.log.append(now, events.POWER_FAIL, 0)
        self._commit(now)

    def _after_credit_change(self, now, commit=True):
        """Move the credit machine's events into the log; True when any arrived."""
        evs = self.account.pop_events()
        for t, code, value in evs:
            # the credit machine's event codes are the event log's codes
            # (test_credit: test_event_codes_are_the_meter_event_log_codes)
            self.log.append(t, code, value)
        if evs and commit:
            self._commit(now)
        return bool(evs)

    # -- outputs --------------------------------------------------------
    @property
    def relay_closed(self):
        """What the relay must be: the credit machine is the only authority."""
        return self.account.relay_closed

    def status(self):
        """A snapshot for the CLI, the heartbeat and the demo (plain data)."""
        a = self.account
        return {
            "meter_id": self.config.meter_id,
            "t": self.last_step_t,
            "energy_wh": self.energy_units,
            "balance_paise": a.balance_paise,
            "credit_paise": a.credit_paise,
            "emergency_used_paise": a.emergency_used_paise,
            "debt_paise": a.debt_paise,
            "state": credit.STATE_NAMES[a.state],
            "load_state": credit.LOAD_STATE_NAMES[a.load_state],
            "relay": "closed" if a.relay_closed else "open",
            "tariff_version": self.schedule.version,
            "md_w": self.md.max_w,
            "events_pending": self.log.unacked(),
        }
