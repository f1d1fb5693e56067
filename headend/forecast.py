"""Usage forecast: "days of credit left" per meter, and the low-credit alert ahead of time.

The model for one meter, fitted on its last ``window_days`` complete local
days of block load profile readings:

    predicted use of local day d = weekday_mean[weekday(d)] * season[month(d)] * level

* ``weekday_mean``: the mean deseasonalised daily use per weekday in the
  window (a weekday with no data takes the window mean), so a shop's quiet
  Sunday or a household's busier weekend is kept;
* ``season``: a month -> factor table (mean 1.0) fitted on a fleet's year of
  history (``fit_season``); it moves the forecast across a month boundary,
  e.g. into April's cooling load, before the meter's own data shows it;
* ``level``: actual / predicted use over the last ``level_days``, so a
  recent change (guests, a new appliance) counts at once.

Days left walk forward from ``now``: the rest of today, then whole days,
spending ``predicted use * paise per unit`` until the balance is gone.
The price is the meter's own effective rate over the window (charges
from its status uplinks / energy from its readings), so slabs, ToD and
duty are included as the meter actually paid them.

Floats are used for the *estimate* (consumer behaviour, like
simulator/consumers.py); the answer is integer hours, and no balance is
ever computed here.

>>> m = UsageModel([4000] * 7)                       # 4 kWh every day, no season
>>> hours_left(100000, m, 1795737600, 2, 1)   # Rs 1000 / (4000 Wh * 2 paise) = 12.5 days
300
"""
import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import localtime as LT
from headend import alerts
from headend import models as M

DAY_S = LT.DAY_S
LOW_CREDIT_FORECAST = alerts.LOW_CREDIT_FORECAST   # the kind lives in the alert catalogue
HORIZON_DAYS = 120          # beyond this, "plenty": None


class ForecastError(ValueError):
    """Not enough data to forecast (no readings in the window, no price)."""


log = logging.getLogger("urja.forecast")


def daily_use(readings, offset_s=LT.IST_OFFSET_S):
    """``{local day number: energy}`` from ``(start_t, energy)`` pairs (days with no reading absent).

    >>> daily_use([(0, 5), (900, 7), (86400, 1)], 0)
    {0: 12, 1: 1}
    """
    out = {}
    for start_t, energy in readings:
        d = LT.local_day(start_t, offset_s)
        out[d] = out.get(d, 0) + energy
    return out


def month_of_day(day):
    return LT.civil_from_days(day)[1]


def fit_season(daily_by_meter):
    """Month (1..12) -> factor, mean 1.0, from many meters' ``daily_use`` over about a year.

    Each meter's monthly mean is divided by its own overall mean (big and
    small consumers weigh the same); months nobody covered get 1.0.

    >>> s = fit_season([{0: 10, 40: 30}])      # day 0 in January, day 40 in February
    >>> s[1], s[2], s[3]
    (0.5, 1.5, 1.0)
    """
    sums = {m: [0.0, 0] for m in range(1, 13)}
    for daily in daily_by_meter:
        if not daily:
            continue
        overall = sum(daily.values()) / len(daily)
        if overall <= 0:
            continue
        per_month = {}
        for d, e in daily.items():
            acc = per_month.setdefault(month_of_day(d), [0, 0])
            acc[0] += e
            acc[1] += 1
        for m, (e, n) in per_month.items():
            sums[m][0] += e / n / overall
            sums[m][1] += 1
    raw = {m: (s / n if n else None) for m, (s, n) in sums.items()}
    known = [v for v in raw.values() if v is not None]
    mean = sum(known) / len(known) if known else 1.0
    return {m: (v / mean if v is not None else 1.0) for m, v in raw.items()}


class UsageModel:
    """Predicted daily use of one meter (module docstring); energy in the meter's unit.

    >>> UsageModel([10, 10, 10, 10, 10, 20, 20]).predict(4)   # day 4 = 1970-01-05, a Monday
    10.0
    """

    def __init__(self, weekday_mean, season=None, level=1.0):
        self.weekday_mean = list(weekday_mean)
        self.season = season
        self.level = level

    def season_factor(self, day):
        return self.season[month_of_day(day)] if self.season else 1.0

    def predict(self, day):
        """Expected use on local day ``day``."""
        return self.weekday_mean[LT.weekday_of_day(day)] * self.season_factor(day) * self.level

    @classmethod
    def fit(cls, daily, today, window_days=28, level_days=7, season=None):
        """Fit on the complete days ``today - window_days .. today - 1`` of ``daily``."""
        days = [d for d in range(today - window_days, today) if d in daily]
        if not days:
            raise ForecastError("no readings in the last %d days" % window_days)
        bare = cls([0.0] * 7, season)
        flat = {d: daily[d] / bare.season_factor(d) for d in days}
        mean = sum(flat.values()) / len(flat)
        by_wd = [[] for _ in range(7)]
        for d, e in flat.items():
            by_wd[LT.weekday_of_day(d)].append(e)
        model = cls([sum(v) / len(v) if v else mean for v in by_wd], season)
        recent = [d for d in days if d >= today - level_days]
        predicted = sum(model.predict(d) for d in recent)
        if predicted > 0:
            model.level = sum(daily[d] for d in recent) / predicted
        return model


def hours_left(balance_paise, model, now, rate_num, rate_den, offset_s=LT.IST_OFFSET_S,
               horizon_days=HORIZON_DAYS):
    """Whole hours until ``balance_paise`` is spent at ``rate_num / rate_den`` paise per unit.

    0 when the balance is already gone; None when it lasts beyond ``horizon_days``.
    """
    if balance_paise <= 0:
        return 0
    if rate_num <= 0 or rate_den <= 0:
        raise ForecastError("rate must be positive, got %d/%d" % (rate_num, rate_den))
    left = float(balance_paise)
    day = LT.local_day(now, offset_s)
    s = LT.local_midnight_utc(day + 1, offset_s) - now     # seconds left in today
    t = now
    while t < now + horizon_days * DAY_S:
        spend = model.predict(day) * rate_num / rate_den * s / DAY_S
        if spend >= left:
            return int((t - now + s * left / spend) // 3600)
        left -= spend
        t += s
        day += 1
        s = DAY_S
    return None


# --- the head-end side: from stored readings and status uplinks ---------------------------

class Forecast:
    """One meter's forecast: ``hours_left`` (None: beyond the horizon), the next day's use, rate."""
    __slots__ = ("meter_id", "balance_paise", "hours_left", "next_day_use", "rate_num", "rate_den")

    def __init__(self, meter_id, balance_paise, hours_left, next_day_use, rate_num, rate_den):
        self.meter_id = meter_id
        self.balance_paise = balance_paise
        self.hours_left = hours_left
        self.next_day_use = next_day_use
        self.rate_num = rate_num
        self.rate_den = rate_den

    @property
    def days_left(self):
        """Whole days left (None: beyond the horizon)."""
        return None if self.hours_left is None else self.hours_left // 24


def effective_rate(session, meter_id, since, until):
    """(paise, units) the meter was charged for the energy it read in [since, until), or None."""
    rows = list(session.scalars(select(M.StatusRecord).where(
        M.StatusRecord.meter_id == meter_id, M.StatusRecord.t >= since,
        M.StatusRecord.t < until).order_by(M.StatusRecord.t)))
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    paise = last.charges_total_paise - first.charges_total_paise
    energy = sum(session.scalars(select(M.Reading.energy).where(
        M.Reading.meter_id == meter_id, M.Reading.start_t >= first.t,
        M.Reading.start_t < last.t)))
    if paise <= 0 or energy <= 0:
        return None
    return paise, energy


def forecast_meter(session, meter_id, now, window_days=28, season=None,
                   offset_s=LT.IST_OFFSET_S, rate=None):
    """The meter's ``Forecast`` at ``now``; ForecastError without readings, balance or price.

    ``rate`` (paise, units) overrides the effective rate (e.g. a flat tariff).
    """
    bal = session.get(M.MeterBalance, meter_id)
    if bal is None:
        raise ForecastError("meter %s has reported no balance" % meter_id)
    today = LT.local_day(now, offset_s)
    since = LT.local_midnight_utc(today - window_days, offset_s)
    until = LT.local_midnight_utc(today, offset_s)
    rows = session.execute(select(M.Reading.start_t, M.Reading.energy).where(
        M.Reading.meter_id == meter_id, M.Reading.start_t >= since, M.Reading.start_t < until))
    model = UsageModel.fit(daily_use(rows, offset_s), today, window_days, season=season)
    rate = rate or effective_rate(session, meter_id, since, now)
    if rate is None:
        raise ForecastError("meter %s: no charges and energy to price its use" % meter_id)
    h = hours_left(bal.balance_paise, model, now, rate[0], rate[1], offset_s)
    return Forecast(meter_id, bal.balance_paise, h, int(model.predict(today + 1)), rate[0],
                    rate[1])


def check_low_credit_forecast(session, now, threshold_days=3, policy=None, season=None,
                              meter_ids=None):
    """Raise ``low_credit_forecast`` for every active meter whose credit lasts < threshold_days.

    Returns the ``raise_alert`` outcomes (pass them to headend.notify.notify_outcomes);
    meters without enough data are skipped.  The caller commits.
    """
    q = select(M.Meter.id).where(M.Meter.active.is_(True))
    if meter_ids is not None:
        q = q.where(M.Meter.id.in_(list(meter_ids)))
    outcomes = []
    for meter_id in session.scalars(q.order_by(M.Meter.id)).all():
        try:
            f = forecast_meter(session, meter_id, now, season=season)
        except ForecastError:
            continue
        if f.hours_left is not None and f.hours_left < threshold_days * 24:
            outcomes.append(alerts.raise_alert(
                session, meter_id, LOW_CREDIT_FORECAST, now,
                "%d h" % f.hours_left, policy))
    return outcomes


# --- the periodic job (run by ``urja-headend serve``) ------------------------------------

class LowCreditForecastJob:
    """Every ``interval_s``: raise ``low_credit_forecast`` for meters whose credit lasts fewer
    than ``threshold_days`` and tell their consumers (headend/notify.py; numbers that sent
    STOP are skipped there).  State is only in the database (the alert window stops
    repeats), so a restarted service simply carries on.

    >>> job = LowCreditForecastJob(engine, 3, 3600).start()      # doctest: +SKIP
    >>> job.stop()                                               # doctest: +SKIP
    """

    def __init__(self, engine, threshold_days=3, interval_s=3600, clock=time.time,
                 consumer=None, operator=None, alert_policy=None, season=None):
        if not isinstance(threshold_days, int) or threshold_days < 1:
            raise ForecastError("threshold_days: must be an integer >= 1, got %r"
                                % (threshold_days,))
        self.engine = engine
        self.threshold_days, self.interval_s = threshold_days, interval_s
        self.clock = clock
        self.consumer, self.operator = consumer, operator
        self.alert_policy, self.season = alert_policy, season
        self.runs = 0
        self.last = None           # what the last run did
        self._stop = threading.Event()
        self._thread = None

    def step(self):
        """One run: ``{"alerts": n raised or repeated, "sent": [(Message, Delivery)]}``."""
        from headend import notify  # notify -> channel -> forecast: import when running
        now = int(self.clock())
        with Session(self.engine) as session:
            outcomes = check_low_credit_forecast(session, now, self.threshold_days,
                                                 self.alert_policy, self.season)
            session.flush()
            sent = notify.notify_outcomes(session, outcomes, consumer=self.consumer,
                                          operator=self.operator)
            session.commit()
        self.runs += 1
        self.last = {"at": now, "alerts": len(outcomes), "sent": sent}
        return self.last

    def run(self):
        """Run ``step`` every ``interval_s`` until ``stop``; a failing run is logged and retried."""
        while not self._stop.is_set():
            try:
                out = self.step()
                log.info("low-credit forecast: %d alert(s), %d message(s)", out["alerts"],
                         len(out["sent"]))
            except Exception:  # database down: try again next round, nothing is lost
                log.exception("low-credit forecast run failed")
            self._stop.wait(self.interval_s)

    def start(self):
        """Run in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.run, name="urja-forecast", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s=30.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def job_from_settings(engine, settings, clock=time.time):
    """The job ``serve`` starts, or None when ``forecast_alert_days`` is 0 (switched off)."""
    if not settings.forecast_alert_days:
        return None
    from headend import notify
    return LowCreditForecastJob(engine, settings.forecast_alert_days,
                                settings.forecast_interval_s, clock,
                                consumer=notify.consumer_notifier_from_env(),
                                operator=notify.operator_notifier_from_env())
