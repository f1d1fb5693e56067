"""Scenario files (TOML): loaded, validated, and turned into a ``Scenario``.

A scenario says who is in the fleet, how they use energy and pay, what goes
wrong and for how long.  Every field is checked on load; an error names the
file and the dotted field (``quick.toml: fleet.mix: shares must add up to
100, got 95``).  Tariffs and credit rules are the firmware's own data and are
validated by ``firmware.core.tariff`` / ``firmware.core.credit``.

``[clock]``: ``drift_ppm = [min, max]`` (each meter's RTC error, drawn per
meter; default [0, 0]), ``sync_hours`` (the head-end's time sync period,
0 = never; default 24), ``tolerance_s`` (the allowed clock error; meters are
commissioned with the daily friendly window widened by it, see
``Scenario.meter_credit``; default 0).

>>> sc = load("simulator/scenarios/quick.toml", meters=20, days=1)
>>> sc.meters, sc.days, sc.interval_s
(20, 1, 900)
"""
import datetime

try:
    import tomllib
except ImportError:  # Python < 3.11 (PyPy 3.9 for the bench): the same parser, packaged
    import tomli as tomllib  # type: ignore[no-redef]

from firmware.core import credit, localtime, tariff

CLASSES = ("residential", "commercial", "agricultural", "water", "gas")
SERVICE_OF = {"residential": "electricity", "commercial": "electricity",
              "agricultural": "electricity", "water": "water", "gas": "gas"}
HABITS = ("regular", "late", "after_disconnect")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and field."""


def _fail(path, msg):
    raise ScenarioError("%s: %s" % (path, msg))


def _table(d, path, allowed):
    if not isinstance(d, dict):
        _fail(path, "must be a table")
    for k in d:
        if k not in allowed:
            _fail("%s.%s" % (path, k) if path else k,
                  "unknown field (known: %s)" % ", ".join(allowed))
    return d


def _int(d, key, path, default=None, lo=None, hi=None):
    v = d.get(key, default)
    where = "%s.%s" % (path, key) if path else key
    if v is None:
        _fail(where, "required")
    if not isinstance(v, int) or isinstance(v, bool):
        _fail(where, "must be an integer, got %r" % (v,))
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(where, "%r out of range [%s, %s]" % (v, lo, hi))
    return v


def _pct(d, key, path, default=0.0):
    v = d.get(key, default)
    where = "%s.%s" % (path, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        _fail(where, "must be a percentage in [0, 100], got %r" % (v,))
    return float(v)


def _range(d, key, path, default, lo=0):
    v = d.get(key, default)
    where = "%s.%s" % (path, key)
    if (not isinstance(v, list) or len(v) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in v) or v[0] > v[1] or v[0] < lo):
        _fail(where, "must be [min, max] integers with %d <= min <= max, got %r" % (lo, v))
    return (v[0], v[1])


def _shares(d, path, names, default):
    d = _table(d if d is not None else default, path, names)
    out = {}
    for n in names:
        out[n] = _int(d, n, path, 0, 0, 100)
    if sum(out.values()) != 100:
        _fail(path, "shares must add up to 100, got %d" % sum(out.values()))
    return out


def _windows(d, key, path, extra=()):
    """A list of fault windows ``{<extra>, start_hour, minutes}`` under ``key``:
    ``[(table, where, start_s, duration_s)]``; the caller checks the ``extra`` fields."""
    fields = extra + ("start_hour", "minutes")
    items = d.get(key, [])
    if not isinstance(items, list):
        _fail("%s.%s" % (path, key), "must be a list of {%s}" % ", ".join(fields))
    out = []
    for i, w in enumerate(items):
        where = "%s.%s[%d]" % (path, key, i)
        _table(w, where, fields)
        sh = w.get("start_hour")
        if isinstance(sh, bool) or not isinstance(sh, (int, float)) or sh < 0:
            _fail(where + ".start_hour", "must be a number >= 0 (hours after the start)")
        out.append((w, where, int(sh * 3600), _int(w, "minutes", where, None, 1) * 60))
    return out


def _null_slab(td):
    """TOML has no null: a slab ``upto`` of -1 means "no upper bound" (firmware ``None``)."""
    if isinstance(td, dict) and isinstance(td.get("slabs"), list):
        td = dict(td)
        td["slabs"] = [[None, s[1]] if isinstance(s, list) and len(s) == 2 and s[0] == -1 else s
                       for s in td["slabs"]]
    return td


class Outage:
    """One scheduled feeder outage: ``feeder`` index, start (hours after the run starts), minutes."""

    def __init__(self, feeder, start_s, duration_s):
        self.feeder = feeder
        self.start_s = start_s
        self.duration_s = duration_s


class Scenario:
    """A validated scenario; build with ``load(path)`` or ``from_dict(data)``."""

    def __init__(self, data, name="scenario"):
        top = ("name", "description", "seed", "start_date", "days", "interval_s", "fleet",
               "tariffs", "credit", "opening", "payments", "faults", "clock", "detection")
        _table(data, "", top)
        self.name = data.get("name", name)
        if not isinstance(self.name, str) or not self.name:
            _fail("name", "must be a non-empty string")
        self.description = data.get("description", "")
        self.seed = _int(data, "seed", "", 1, 0, 2 ** 63)
        sd = data.get("start_date", "2026-11-27")
        if isinstance(sd, str):
            try:
                sd = datetime.date.fromisoformat(sd)
            except ValueError:
                _fail("start_date", "must be a date YYYY-MM-DD, got %r" % (sd,))
        if not isinstance(sd, datetime.date) or isinstance(sd, datetime.datetime):
            _fail("start_date", "must be a date YYYY-MM-DD, got %r" % (sd,))
        self.start_date = sd.isoformat()
        self.days = _int(data, "days", "", 1, 1, 3660)
        self.interval_s = _int(data, "interval_s", "", 900)
        if self.interval_s not in (900, 1800):
            _fail("interval_s", "900 or 1800 (IS 15959 block load profile), got %r" % self.interval_s)
        # The run starts at local (IST) midnight of start_date.
        self.start_t = localtime.local_midnight_utc(
            localtime.days_from_civil(sd.year, sd.month, sd.day), localtime.IST_OFFSET_S)

        f = _table(data.get("fleet", {}), "fleet", ("meters", "meters_per_feeder", "mix"))
        self.meters = _int(f, "meters", "fleet", None, 1, 10 ** 8)
        self.meters_per_feeder = _int(f, "meters_per_feeder", "fleet", 500, 1, 100000)
        self.mix = _shares(f.get("mix"), "fleet.mix", CLASSES, {"residential": 100})

        self.tariffs = {}
        tt = _table(data.get("tariffs", {}), "tariffs", ("electricity", "water", "gas"))
        for cls in CLASSES:
            service = SERVICE_OF[cls]
            if self.mix[cls] and service not in tt:
                _fail("tariffs.%s" % service, "required: the fleet has %s meters" % cls)
        for service, td in tt.items():
            td = _null_slab(td)
            try:
                t = tariff.Tariff.from_dict(td)
            except tariff.TariffError as err:
                _fail("tariffs.%s.%s" % (service, str(err).split(":")[0]), str(err))
            if t.service != service:
                _fail("tariffs.%s.service" % service, "is %r" % t.service)
            self.tariffs[service] = td
        self.credit = data.get("credit", {})
        try:
            self.credit_config = credit.CreditConfig.from_dict(self.credit)
        except credit.CreditConfigError as err:
            _fail("credit.%s" % str(err).split(":")[0], str(err))

        o = _table(data.get("opening", {}), "opening", ("credit_paise", "debt_share_pct", "debt_paise"))
        self.opening_credit = _range(o, "credit_paise", "opening", [20000, 60000])
        self.debt_share_pct = _pct(o, "debt_share_pct", "opening")
        self.opening_debt = _range(o, "debt_paise", "opening", [0, 0])

        p = _table(data.get("payments", {}), "payments", ("amounts_paise", "habits", "network_delay_s"))
        amounts = p.get("amounts_paise", [20000, 50000, 100000])
        if (not isinstance(amounts, list) or not amounts or not all(
                isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in amounts)):
            _fail("payments.amounts_paise", "must be a non-empty list of integers > 0 (paise)")
        self.amounts = list(amounts)
        self.habits = _shares(p.get("habits"), "payments.habits", HABITS, {"regular": 100})
        self.network_delay = _range(p, "network_delay_s", "payments", [2, 60])

        fl = _table(data.get("faults", {}), "faults",
                    ("comm_down_pct", "outage_rate_per_feeder_day", "outage_minutes", "outages",
                     "bypass_pct", "magnet_pct", "cover_open_pct", "water_leak_pct"))
        self.comm_down_pct = _pct(fl, "comm_down_pct", "faults", 1.0)
        rate = fl.get("outage_rate_per_feeder_day", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 24:
            _fail("faults.outage_rate_per_feeder_day", "must be a number in [0, 24], got %r" % (rate,))
        self.outage_rate = float(rate)
        self.outage_minutes = _range(fl, "outage_minutes", "faults", [30, 240], lo=1)
        self.outages = [Outage(_int(od, "feeder", where, None, 0), start_s, duration_s)
                        for od, where, start_s, duration_s in
                        _windows(fl, "outages", "faults", ("feeder",))]
        self.bypass_pct = _pct(fl, "bypass_pct", "faults")
        self.magnet_pct = _pct(fl, "magnet_pct", "faults")
        self.cover_open_pct = _pct(fl, "cover_open_pct", "faults")
        self.water_leak_pct = _pct(fl, "water_leak_pct", "faults")

        ck = _table(data.get("clock", {}), "clock", ("drift_ppm", "sync_hours", "tolerance_s"))
        drift = ck.get("drift_ppm", [0, 0])
        if (not isinstance(drift, list) or len(drift) != 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not -10000 <= x <= 10000
                for x in drift) or drift[0] > drift[1]):
            _fail("clock.drift_ppm", "must be [min, max] numbers in [-10000, 10000] ppm with "
                  "min <= max, got %r" % (drift,))
        # integer parts per billion: the simulator's clock arithmetic stays integer
        self.drift_ppb = (int(round(drift[0] * 1000)), int(round(drift[1] * 1000)))
        self.sync_hours = _int(ck, "sync_hours", "clock", 24, 0, 8760)
        self.clock_tolerance_s = _int(ck, "tolerance_s", "clock", 0, 0, 3600)

        de = _table(data.get("detection", {}), "detection", ("bypass_drop_pct",))
        self.bypass_drop_pct = _int(de, "bypass_drop_pct", "detection", 35, 1, 99)
        self._check_outage_feeders()

    def _check_outage_feeders(self):
        for i, o in enumerate(self.outages):
            if o.feeder >= self.feeders:
                _fail("faults.outages[%d].feeder" % i,
                      "feeder %d does not exist (the fleet has %d)" % (o.feeder, self.feeders))

    @property
    def drifting(self):
        """True when meters' clocks drift (``[clock] drift_ppm`` other than [0, 0])."""
        return self.drift_ppb != (0, 0)

    def meter_credit(self):
        """The credit rules the meters are commissioned with: the scenario's (the
        regulation's), with the daily friendly window widened by ``[clock] tolerance_s``
        on both sides, so a meter whose clock is off by up to the tolerance still never
        disconnects inside the window by the head-end's clock."""
        tol = self.clock_tolerance_s
        start = self.credit_config.friendly_start_s
        end = self.credit_config.friendly_end_s
        if not tol or start == end:
            return self.credit
        span = (end - start) % 86400 + 2 * tol
        d = dict(self.credit)
        if span >= 86400:  # the guard band closes the gap: friendly all day
            d["friendly_start_s"], d["friendly_end_s"] = 0, 86400
        else:
            d["friendly_start_s"] = (start - tol) % 86400
            d["friendly_end_s"] = (end + tol) % 86400 or 86400
        return d

    @property
    def feeders(self):
        return -(-self.meters // self.meters_per_feeder)

    @property
    def intervals(self):
        return self.days * 86400 // self.interval_s

    def override(self, meters=None, days=None, seed=None):
        """Command-line overrides (``--meters``, ``--days``, ``--seed``), re-checked."""
        if meters is not None:
            if meters < 1:
                raise ScenarioError("--meters: must be >= 1")
            self.meters = meters
            self.meters_per_feeder = min(self.meters_per_feeder, meters)
            self.outages = [o for o in self.outages if o.feeder < self.feeders]
        if days is not None:
            if days < 1:
                raise ScenarioError("--days: must be >= 1")
            self.days = days
        if seed is not None:
            self.seed = seed
        return self


def from_dict(data, name="scenario"):
    """Validate ``data`` (a parsed TOML document)."""
    return Scenario(data, name)


def read(path):
    """A scenario file's TOML document and its name (the file name without ``.toml``)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise ScenarioError("%s: cannot read (%s)" % (path, err.strerror))
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError("%s: not valid TOML (%s)" % (path, err))
    return data, path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def load(path, meters=None, days=None, seed=None):
    """Read and validate a scenario file; raise ``ScenarioError`` naming the field."""
    data, name = read(path)
    try:
        sc = Scenario(data, name)
    except ScenarioError as err:
        raise ScenarioError("%s: %s" % (path, err))
    return sc.override(meters, days, seed)
