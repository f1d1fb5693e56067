"""Property tests for the prepaid credit machine: random configs and input sequences.

Checked after every input, against oracles that share no code with
``credit.py``: friendly time comes from ``datetime`` (fixed-offset zone,
``weekday()``, ``strftime('%Y%m%d')``) instead of ``localtime``; the money
split of each charge/top-up is recomputed from the rule as written in the
brief, from the balances before the input.

Invariants: balance conservation to the paisa (both identities), non-negative
components, the relay rule (and EV_RELAY_OPENED/CLOSED events tracking it), every transition into DISCONNECTED at a
non-friendly time and only from DISCONNECT_PENDING (so never straight from
EMERGENCY), each warning at most once per top-up, and a machine rebuilt with
``from_state(to_state())`` producing the same events and state from then on.
"""
import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.core import credit as cr
from firmware.core.credit import CreditAccount, CreditConfig

T0 = 1795753800  # Fri 2026-11-27 10:00 IST (`TZ=Asia/Kolkata date -d '2026-11-27 10:00' +%s`)
DAY = 86400


@st.composite
def configs(draw):
    return {
        "low_credit_paise": draw(st.integers(0, 8000)),
        "emergency_enabled": draw(st.booleans()),
        "emergency_credit_paise": draw(st.integers(0, 8000)),
        "disconnect_grace_s": draw(st.sampled_from([0, 0, 600, 7200])),
        "friendly_start_s": draw(st.integers(0, DAY - 1)),
        "friendly_end_s": draw(st.integers(0, DAY)),
        "friendly_weekdays": draw(st.lists(st.integers(0, 6), max_size=2, unique=True)),
        # the days around T0, so holidays are actually hit
        "holidays": draw(st.lists(st.sampled_from(
            [20261127, 20261128, 20261130, 20261201, 20261203]), max_size=2, unique=True)),
        "grace_days": draw(st.sampled_from([0, 0, 1, 3])),
        "never_disconnect": draw(st.integers(0, 9)) == 0,
        "utc_offset_s": draw(st.sampled_from([19800, 0, -18000, 20700])),
        "debt_recovery_pct": draw(st.integers(0, 100)),
        "warn_pct_of_last_topup": draw(st.lists(st.integers(1, 100), max_size=3, unique=True)),
        "load_limit_w": draw(st.sampled_from([0, 2000, 3000])),
        "overload_s": draw(st.sampled_from([0, 60, 300])),
        "reconnect_delay_s": draw(st.sampled_from([0, 300, 900])),
        "max_trips": draw(st.integers(1, 4)),
        "trip_window_s": draw(st.sampled_from([600, 3600, DAY])),
    }


step = st.tuples(
    st.sampled_from(["charge", "charge", "charge", "topup", "topup", "tick",
                     "power", "power", "power", "remote", "reset"]),
    st.one_of(st.integers(0, 4 * 3600), st.integers(0, 3 * DAY), st.integers(-7200, 0)),
    st.integers(0, 20000),
)


def friendly_oracle(cfg, prepaid_since, t):
    if cfg["never_disconnect"] or t < prepaid_since + cfg["grace_days"] * DAY:
        return True
    tz = datetime.timezone(datetime.timedelta(seconds=cfg["utc_offset_s"]))
    local = datetime.datetime.fromtimestamp(t, tz)
    sod = local.hour * 3600 + local.minute * 60 + local.second
    s, e = cfg["friendly_start_s"], cfg["friendly_end_s"]
    in_window = (s <= sod < e) if s <= e else (sod >= s or sod < e)
    return (in_window or local.weekday() in cfg["friendly_weekdays"]
            or int(local.strftime("%Y%m%d")) in cfg["holidays"])


def expected_split(acc, kind, amount):
    """(credit, emergency_used, debt) after the input, by the rule in the brief."""
    credit, used, debt = acc.credit_paise, acc.emergency_used_paise, acc.debt_paise
    cfg = acc.config
    if kind == "charge":
        from_credit = min(amount, credit)
        rest = amount - from_credit
        from_em = 0
        if acc.state in (cr.OK, cr.LOW, cr.EMERGENCY) and cfg.emergency_enabled:
            from_em = max(0, min(rest, cfg.emergency_credit_paise - used))
        return credit - from_credit, used + from_em, debt + rest - from_em
    repaid = min(amount, used)
    recovered = min(debt, amount * cfg.debt_recovery_pct // 100, amount - repaid)
    return credit + amount - repaid - recovered, used - repaid, debt - recovered


def apply(acc, kind, t, value):
    locked = acc.load_state == cr.LOCKED_OUT
    if kind == "charge":
        acc.charge(value, t)
    elif kind == "topup":
        acc.topup(value + 1, t)
    elif kind == "power":
        acc.power_sample(value // 5, t)  # 0..4000 W around the limits
    elif kind == "remote":
        acc.remote(value % 2 == 0, t)
    elif kind == "reset":
        assert acc.reset_lockout(t) == (acc.load_state == cr.NORMAL and locked)
    else:
        acc.tick(t)


@settings(max_examples=400, deadline=None)
@given(configs(), st.integers(0, 30000), st.integers(0, 5000), st.integers(0, 2 * DAY),
       st.lists(step, min_size=10, max_size=120), st.integers(0, 120))
def test_random_inputs_keep_every_invariant(cfg_d, credit0, debt0, start, steps, split_at):
    cfg = CreditConfig.from_dict(cfg_d)
    t = T0 + start
    acc = CreditAccount(cfg, t, credit_paise=credit0, debt_paise=debt0)
    prepaid_since = t  # conversion day = the account's creation
    prev_state = cr.OK  # the machine starts in OK and settles from there
    twin = None
    split_at %= len(steps)  # always clone somewhere in the walk
    relay_seen = True  # a new meter's relay ships closed; events report every change
    warned = set()
    events = acc.pop_events()
    for i in range(len(steps) + 1):
        # --- invariants over the state and the events of the last input
        assert acc.balance_paise == acc.opening_balance + acc.total_topups - acc.total_charges
        assert acc.total_topups == (acc.total_credited + acc.total_emergency_repaid
                                    + acc.total_debt_recovered)
        assert acc.credit_paise >= 0 and acc.emergency_used_paise >= 0 and acc.debt_paise >= 0
        assert acc.relay_closed == (acc.state != cr.DISCONNECTED and acc.load_state == cr.NORMAL
                                    and not acc.remote_open)
        for et, code, value in events:
            if code == cr.EV_TOPUP_APPLIED:
                warned = set()
            elif code in (cr.EV_LOW_CREDIT_WARNING, cr.EV_CREDIT_EXHAUSTED):
                key = value if code == cr.EV_LOW_CREDIT_WARNING else "zero"
                assert key not in warned, "warning %r twice for one top-up" % (key,)
                warned.add(key)
            elif code in (cr.EV_RELAY_OPENED, cr.EV_RELAY_CLOSED):
                assert relay_seen == (code == cr.EV_RELAY_OPENED), "relay event without a change"
                relay_seen = code == cr.EV_RELAY_CLOSED
            elif code == cr.EV_STATE_CHANGED:
                if value == cr.DISCONNECTED:
                    assert not friendly_oracle(cfg_d, prepaid_since, et), et
                    assert prev_state == cr.DISCONNECT_PENDING, cr.STATE_NAMES[prev_state]
                prev_state = value
        assert relay_seen == acc.relay_closed
        if twin is not None:
            assert twin.to_state() == acc.to_state()
        if i == len(steps):
            break
        if i == split_at:
            twin = CreditAccount.from_state(cfg, acc.to_state())
        # --- next input
        kind, dt, value = steps[i]
        t = max(0, t + dt)
        want = expected_split(acc, kind, value + (kind == "topup")) \
            if kind in ("charge", "topup") else None
        apply(acc, kind, t, value)
        if want is not None:
            assert (acc.credit_paise, acc.emergency_used_paise, acc.debt_paise) == want
        events = acc.pop_events()
        if twin is not None:
            apply(twin, kind, t, value)
            assert twin.pop_events() == events
