"""Usage forecast (headend/forecast.py): the model's arithmetic by hand, its error on simulated
consumers held out from the fit, and the low-credit alert it raises ahead of time.

Simulated consumers use the simulator's own load profiles (simulator/consumers.py:
class x weekday x month tables, a per-consumer scale) with the fleet's noise
(simulator/fleet.py: day factor U(0.9, 1.1), interval factor U(0.6, 1.4)).
The season table is fitted on consumers with seeds 0..39; the error is
measured on consumers with seeds 1000..1059, never seen by the fit.
"""
import json
import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import localtime as LT
from headend import alerts
from headend import channel as CH
from headend import forecast as F
from headend import migrations
from headend import models as M
from headend import notify
from headend.db import Base, make_engine
from headend.tests.conftest import wait_until
from simulator import consumers as SC

IST = LT.IST_OFFSET_S
DAY = LT.DAY_S
IVL = 1800
NOW = 1795737600            # 2026-11-27 00:00 UTC = 05:30 IST
RATE = (7, 1)               # 7 paise per Wh (Rs 7/kWh), flat: the price scales out of days-left


def simulate(kind, seed, first_day, n_days):
    """(start_t, Wh) per half hour of local days first_day .. first_day + n_days - 1."""
    rnd = random.Random(seed)
    scale = SC.draw_scale(rnd, kind)
    out = []
    for d in range(first_day, first_day + n_days):
        wd, month = LT.weekday_of_day(d), LT.civil_from_days(d)[1]
        tab = SC.base_table(kind, wd, month, IVL)
        f = scale * (0.9 + 0.2 * rnd.random())
        t0 = LT.local_midnight_utc(d, IST)
        for slot, pulses in enumerate(tab):
            p = int(pulses * f * (0.6 + 0.8 * rnd.random()) + 0.5)
            out.append((t0 + slot * IVL, int(p / SC.ELEC_PULSES_PER_WH)))
    return out


def actual_hours_left(balance_paise, intervals, now):
    """Hours until the real (simulated) use from ``now`` costs ``balance_paise``."""
    spent = 0
    for t, wh in intervals:
        if t < now:
            continue
        spent += wh * RATE[0] // RATE[1]
        if spent >= balance_paise:
            return (t + IVL - now) / 3600
    return None


# --- the model, by hand --------------------------------------------------------------------

def test_flat_use_gives_balance_over_daily_spend():
    # 4000 Wh/day at 2 paise/Wh = 8000 paise/day; Rs 1000 = 100000 paise -> 12.5 days = 300 h
    assert F.hours_left(100000, F.UsageModel([4000] * 7), NOW, 2, 1) == 300


def test_no_balance_is_zero_hours_and_a_big_one_is_beyond_the_horizon():
    m = F.UsageModel([4000] * 7)
    assert F.hours_left(0, m, NOW, 2, 1) == 0
    assert F.hours_left(-500, m, NOW, 2, 1) == 0
    # 121 days * 8000 paise > 120-day horizon
    assert F.hours_left(121 * 8000, m, NOW, 2, 1) is None


def test_weekday_profile_is_kept():
    # 4 weeks: weekdays 2000 Wh, Saturday 5000, Sunday 8000 (level: last 7 days match -> 1.0)
    today = LT.local_day(NOW, IST)
    daily = {}
    for d in range(today - 28, today):
        wd = LT.weekday_of_day(d)
        daily[d] = 8000 if wd == 6 else 5000 if wd == 5 else 2000
    m = F.UsageModel.fit(daily, today)
    assert [round(m.predict(d)) for d in range(today, today + 7)] == \
        [daily[d - 7] for d in range(today, today + 7)]


def test_recent_level_scales_the_profile():
    # 21 days at 3000 Wh, then 7 days at 6000: weekday means = (3*3000 + 6000)/4 = 3750,
    # level = 7*6000 / (7*3750) = 1.6 -> 6000 predicted
    today = LT.local_day(NOW, IST)
    daily = {d: 3000 if d < today - 7 else 6000 for d in range(today - 28, today)}
    assert round(F.UsageModel.fit(daily, today).predict(today)) == 6000


def test_season_table_moves_the_forecast_into_the_next_month():
    # March factor 1.0, April 2.0: 3000 Wh days in March predict 6000 Wh on 1 April
    season = {m: 1.0 for m in range(1, 13)}
    season[4] = 2.0
    apr1 = LT.days_from_civil(2026, 4, 1)
    daily = {d: 3000 for d in range(apr1 - 28, apr1)}
    m = F.UsageModel.fit(daily, apr1, season=season)
    assert round(m.predict(apr1 - 1)) == 3000 and round(m.predict(apr1)) == 6000


def test_no_readings_is_a_forecast_error():
    with pytest.raises(F.ForecastError):
        F.UsageModel.fit({}, 100)


# --- error on held-out simulated consumers --------------------------------------------------

FIT_SEEDS = range(0, 40)
HELD_OUT = range(1000, 1060)
MAE_BOUND_DAYS = 0.5   # balances worth ~10 days; measured 0.325 d (no season 0.461, naive 0.455)


def kind_of(seed):
    return "commercial" if seed % 4 == 3 else "residential"


def test_days_left_error_on_held_out_consumers_is_below_the_bound(capsys):
    year0 = LT.days_from_civil(2025, 1, 1)
    season = F.fit_season([F.daily_use(simulate(kind_of(s), s, year0, 365), IST)
                           for s in FIT_SEEDS])
    # evaluate on the 24th of every month of 2026: ~10 days ahead crosses into the next month
    errs = {"model+season": [], "model": [], "mean of last 7 days": []}
    for seed in HELD_OUT:
        for month in range(1, 13):
            day = LT.days_from_civil(2026, month, 24)
            data = simulate(kind_of(seed), seed, day - 28, 28 + 40)
            now = LT.local_midnight_utc(day, IST) + 9 * 3600   # 09:00 IST
            daily = F.daily_use([r for r in data if r[0] < LT.local_midnight_utc(day, IST)], IST)
            # a balance worth 10 of the last 28 days' average days
            balance = 10 * sum(daily.values()) // 28 * RATE[0]
            truth = actual_hours_left(balance, data, now)
            for name, s in (("model+season", season), ("model", None)):
                h = F.hours_left(balance, F.UsageModel.fit(daily, day, season=s), now, *RATE)
                errs[name].append(abs(h - truth) / 24)
            last7 = sum(daily[d] for d in range(day - 7, day)) / 7
            errs["mean of last 7 days"].append(abs(balance / (last7 * RATE[0]) * 24 - truth) / 24)
    mae = {k: sum(v) / len(v) for k, v in errs.items()}
    with capsys.disabled():
        print("\ndays-left MAE over %d held-out cases (balance ~10 days): %s" % (
            len(errs["model"]), ", ".join("%s %.3f d" % kv for kv in mae.items())))
    assert mae["model+season"] < MAE_BOUND_DAYS
    assert mae["model+season"] < mae["model"]          # the season table earns its place
    assert mae["model+season"] < mae["mean of last 7 days"]


# --- the alert ahead of time ------------------------------------------------------------------

@pytest.fixture
def db(engine):
    Base.metadata.create_all(engine, checkfirst=True)
    today = LT.local_day(NOW, IST)
    with Session(engine) as s:
        t = M.Tenant(code="PMC", name="Pune")
        s.add(t)
        s.flush()
        for mid, balance in (("UJ-LOW", 12000), ("UJ-OK", 120000)):
            s.add(M.Meter(id=mid, tenant_id=t.id, service="electricity"))
            s.flush()
            for d in range(today - 28, today):      # 4800 Wh a day, 100 Wh per half hour
                for slot in range(48):
                    s.add(M.Reading(meter_id=mid, start_t=LT.local_midnight_utc(d, IST)
                                    + slot * IVL, energy=100, span_s=IVL, received_at=NOW))
            s.add(M.MeterBalance(meter_id=mid, seq=1, t=NOW, balance_paise=balance,
                                 credit_paise=balance, emergency_paise=0, debt_paise=0,
                                 state="OK", relay_closed=True, limiter="off", tariff_version=1,
                                 topups_total_paise=0, charges_total_paise=0))
        s.commit()
    return engine


def test_forecast_meter_from_stored_readings(db):
    # 4800 Wh/day at 1 paisa/Wh = 4800 paise/day; 12000 / 4800 = 2.5 days = 60 h
    with Session(db) as s:
        f = F.forecast_meter(s, "UJ-LOW", NOW, rate=(1, 1))
    assert (f.hours_left, f.days_left, f.next_day_use) == (60, 2, 4800)


def test_low_credit_forecast_alert_is_raised_only_for_the_meter_running_out(db):
    # UJ-LOW lasts 60 h < 3 days; UJ-OK 120000 / 4800 = 25 days.  No status history
    # to price the use, so pass the rate the way a flat tariff would.
    with Session(db) as s:
        outs = []
        for mid in ("UJ-LOW", "UJ-OK"):
            f = F.forecast_meter(s, mid, NOW, rate=(1, 1))
            outs.append((mid, f.days_left))
        assert outs == [("UJ-LOW", 2), ("UJ-OK", 25)]


def test_check_low_credit_forecast_raises_the_new_alert_kind(db):
    with Session(db) as s:
        for mid in ("UJ-LOW", "UJ-OK"):     # status history: charged 1 paisa/Wh over the window
            since = LT.local_midnight_utc(LT.local_day(NOW, IST) - 28, IST)
            for seq, (t, c) in enumerate(((since, 0), (NOW - 1, 28 * 4800)), 10):
                s.add(M.StatusRecord(meter_id=mid, seq=seq, t=t, balance_paise=0,
                                     credit_paise=0, emergency_paise=0, debt_paise=0,
                                     state="OK", relay_closed=True, limiter="off",
                                     tariff_version=1, topups_total_paise=0,
                                     charges_total_paise=c))
        s.commit()
        outs = F.check_low_credit_forecast(s, NOW, threshold_days=3)
        s.commit()
        assert [(o.alert.meter_id, o.alert.kind, o.alert.detail, o.notify) for o in outs] == \
            [("UJ-LOW", F.LOW_CREDIT_FORECAST, "60 h", True)]
        # a second run inside the alert window folds into the open alert, no second message
        again = F.check_low_credit_forecast(s, NOW + 600, threshold_days=3)
        assert [(o.notify, o.suppressed, o.alert.count) for o in again] == [(False, True, 2)]
        assert F.LOW_CREDIT_FORECAST in alerts.KINDS


# --- the periodic job: raises the alert and tells the consumer by itself -------------------

def price_use(s, now):
    """Status history charging UJ-LOW and UJ-OK 1 paisa per Wh over the fit window."""
    since = LT.local_midnight_utc(LT.local_day(now, IST) - 28, IST)
    for mid in ("UJ-LOW", "UJ-OK"):
        for seq, (t, c) in enumerate(((since, 0), (now - 1, 28 * 4800)), 10):
            s.add(M.StatusRecord(meter_id=mid, seq=seq, t=t, balance_paise=0, credit_paise=0,
                                 emergency_paise=0, debt_paise=0, state="OK", relay_closed=True,
                                 limiter="off", tariff_version=1, topups_total_paise=0,
                                 charges_total_paise=c))


def give_consumer(s, meter_id, phone, language):
    meter = s.get(M.Meter, meter_id)
    c = M.Consumer(tenant_id=meter.tenant_id, account_no="ACC-" + meter_id, name="Asha",
                   phone=phone, language=language)
    s.add(c)
    s.flush()
    meter.consumer_id = c.id


def sent_lines(path):
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def test_periodic_job_raises_the_alert_and_tells_the_consumer_once(db, tmp_path):
    with Session(db) as s:
        price_use(s, NOW)
        give_consumer(s, "UJ-LOW", "98000 00001", "hi")
        give_consumer(s, "UJ-OK", "98000 00002", "en")
        s.commit()
    out = tmp_path / "sms.jsonl"
    job = F.LowCreditForecastJob(db, threshold_days=3, interval_s=0.05, clock=lambda: NOW,
                                 consumer=notify.LogNotifier(str(out))).start()
    try:
        wait_until(lambda: job.runs >= 3, 30, "three runs of the job")
    finally:
        job.stop()
    # UJ-LOW: 12000 p at 4800 p/day = 60 h < 3 days -> one Hindi SMS, though the job ran 3
    # times (the alert window folds the repeats); UJ-OK (25 days) gets nothing
    assert [(m["to"], m["kind"], m["text"]) for m in sent_lines(out)] == [
        ("98000 00001", F.LOW_CREDIT_FORECAST,
         "ऊर्जा: हाल की खपत पर मीटर UJ-LOW का बैलेंस (₹120.00) लगभग 2 दिन (60 घंटे) चलेगा। "
         "कनेक्शन कटने से बचने के लिए कृपया समय पर रिचार्ज करें।")]
    with Session(db) as s:
        [alert] = s.scalars(select(alerts.Alert)).all()
        assert (alert.meter_id, alert.kind, alert.count, alert.notified) == (
            "UJ-LOW", F.LOW_CREDIT_FORECAST, job.runs, True)


def test_periodic_job_skips_a_number_that_sent_stop(db, tmp_path):
    with Session(db) as s:
        price_use(s, NOW)
        give_consumer(s, "UJ-LOW", "+919800000001", "en")
        s.add(CH.Subscriber(phone="+919800000001", opted_out=True, updated_at=NOW - 10))
        s.commit()
    out = tmp_path / "sms.jsonl"
    job = F.LowCreditForecastJob(db, 3, 3600, clock=lambda: NOW,
                                 consumer=notify.LogNotifier(str(out)))
    result = job.step()
    assert result["alerts"] == 1
    assert [(m.to, d.ok, d.error) for m, d in result["sent"]] == [
        ("+919800000001", False, "opted out (sent STOP)")]
    assert sent_lines(out) == []


def test_forecast_alert_without_a_consumer_phone_tells_nobody(db, tmp_path):
    # operators see it on the dashboard's alert list; no operator message per meter
    with Session(db) as s:
        price_use(s, NOW)
        s.commit()
    out = tmp_path / "ops.jsonl"
    job = F.LowCreditForecastJob(db, 3, 3600, clock=lambda: NOW,
                                 consumer=notify.LogNotifier(str(out)),
                                 operator=notify.LogNotifier(str(out)))
    assert job.step()["alerts"] == 1 and sent_lines(out) == []


def test_serve_runs_the_forecast_job_in_the_service(tmp_path):
    """``urja-headend serve`` (a real process, real clock) sends the forecast SMS by itself."""
    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    now = int(time.time())
    today = LT.local_day(now, IST)
    with Session(engine) as s:
        t = M.Tenant(code="PMC", name="Pune")
        s.add(t)
        s.flush()
        c = M.Consumer(tenant_id=t.id, account_no="A-1", name="Asha", phone="+919800000001",
                       language="en")
        s.add(c)
        s.flush()
        s.add(M.Meter(id="UJ-LOW", tenant_id=t.id, consumer_id=c.id, service="electricity"))
        s.flush()
        for d in range(today - 28, today):      # 4800 Wh a day
            s.add(M.Reading(meter_id="UJ-LOW", start_t=LT.local_midnight_utc(d, IST),
                            energy=4800, span_s=DAY, received_at=now))
        for seq, (t_, charges) in enumerate(((LT.local_midnight_utc(today - 28, IST), 0),
                                             (now - 1, 28 * 4800)), 1):
            s.add(M.StatusRecord(meter_id="UJ-LOW", seq=seq, t=t_, balance_paise=0,
                                 credit_paise=0, emergency_paise=0, debt_paise=0, state="OK",
                                 relay_closed=True, limiter="off", tariff_version=1,
                                 topups_total_paise=0, charges_total_paise=charges))
        s.add(M.MeterBalance(meter_id="UJ-LOW", seq=2, t=now, balance_paise=3000,
                             credit_paise=3000, emergency_paise=0, debt_paise=0, state="OK",
                             relay_closed=True, limiter="off", tariff_version=1,
                             topups_total_paise=0, charges_total_paise=28 * 4800))
        s.commit()
    engine.dispose()
    out = tmp_path / "sms.jsonl"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, URJA_NOTIFY_LOG=str(out), URJA_FORECAST_INTERVAL_S="1",
               URJA_FORECAST_ALERT_DAYS="3")
    for key in ("URJA_SMS_URL", "URJA_WHATSAPP_URL", "URJA_CONFIG"):
        env.pop(key, None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "headend.cli", "--database-url", url,
                             "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT,
                            cwd=pathlib.Path(__file__).resolve().parents[2])
    try:
        lines = wait_until(lambda: sent_lines(out), 60, "the forecast SMS from the service")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    # Rs 30.00 at 4800 p a day: 3000 / 4800 * 24 h = 15 h (14 on a float's bad day)
    assert [(m["to"], m["kind"], m["meter_id"]) for m in lines] == [
        ("+919800000001", F.LOW_CREDIT_FORECAST, "UJ-LOW")]
    assert re.search(r"\(Rs 30\.00\) lasts about 0 day\(s\) \(1[45] h\)", lines[0]["text"])
