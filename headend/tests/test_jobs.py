"""The periodic jobs ``urja-headend serve`` runs: the alert detectors on a schedule."""
import json
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import events as ev
from headend import alerts, jobs, notify
from headend.config import Settings
from headend.tests.test_alerts import T0, body, prepared, with_consumer, write


def test_alert_job_raises_a_tamper_alert_and_tells_the_operators_once(engine, tmp_path):
    prepared(engine, ["UJ-J"])
    with_consumer(engine, "UJ-J", "+919800000001", "hi")
    write(engine, [body("event", "UJ-J", 1, T0, {"e": [[1, T0 - 30, ev.COVER_OPEN, 0]]})], T0)
    log_path = tmp_path / "notify.jsonl"
    sink = notify.LogNotifier(str(log_path))
    clock = [T0 + 60]
    job = jobs.AlertChecksJob(engine, 300, clock=lambda: clock[0], consumer=sink, operator=sink)

    first = job.step()
    clock[0] += 300
    second = job.step()  # nothing new: the open alert is not raised or sent again

    assert first["alerts"] >= 1 and first["sent"] >= 1
    assert second["sent"] == 0
    with Session(engine) as s:
        tampers = s.scalars(select(alerts.Alert).where(alerts.Alert.kind == alerts.TAMPER)).all()
    assert [(a.meter_id, a.count) for a in tampers] == [("UJ-J", 1)]
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    # tamper is for the utility's operators (webhook), never the consumer's phone
    assert [(x["to"], x["kind"], x["meter_id"]) for x in lines] == [(None, alerts.TAMPER, "UJ-J")]


def test_alert_job_runs_in_its_thread_until_stopped_and_survives_a_failing_step(engine):
    prepared(engine, ["UJ-K"])
    calls = []

    class Flaky(jobs.AlertChecksJob):
        def step(self):
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RuntimeError("database restarting")
            return super().step()

    job = Flaky(engine, 0.05, clock=lambda: T0).start()
    deadline = time.monotonic() + 10
    while job.runs < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    job.stop()
    assert job.failures == 1 and job.runs >= 2
    n = len(calls)
    time.sleep(0.2)
    assert len(calls) == n  # stopped means stopped


def test_serve_starts_both_jobs_by_default_and_zero_switches_them_off(engine):
    names = [j.__class__.__name__ for j in jobs.jobs_from_settings(engine, Settings())]
    assert names == ["LowCreditForecastJob", "AlertChecksJob", "TimeSyncJob", "CampaignJob"]
    off = Settings(forecast_alert_days=0, alert_checks_interval_s=0, time_sync_interval_s=0,
                   campaign_interval_s=0)
    assert jobs.jobs_from_settings(engine, off) == []
