"""Periodic jobs that ``urja-headend serve`` runs next to the API.

Each job is one ``step`` (a short transaction, all state in the database, so
a restarted service just carries on) repeated every ``interval_s`` in a
daemon thread; a failing step is logged and tried again next round.
"""
import logging
import threading
import time

from sqlalchemy.orm import Session

log = logging.getLogger("urja.jobs")


class PeriodicJob:
    """Call ``step()`` every ``interval_s`` seconds until ``stop()``."""

    name = "job"

    def __init__(self, interval_s):
        self.interval_s = interval_s
        self.runs = 0
        self.failures = 0
        self.last = None  # what the last successful step returned
        self._stop = threading.Event()
        self._thread = None

    def step(self):
        raise NotImplementedError

    def run(self):
        while not self._stop.is_set():
            try:
                self.last = self.step()
                self.runs += 1
                log.info("%s: %s", self.name, self.last)
            except Exception:  # database down: next round tries again, nothing is lost
                self.failures += 1
                log.exception("%s failed; retrying in %ss", self.name, self.interval_s)
            self._stop.wait(self.interval_s)

    def start(self):
        self._thread = threading.Thread(target=self.run, name="urja-" + self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s=30.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


class AlertChecksJob(PeriodicJob):
    """The detectors of ``headend.alerts.run_checks`` (credit, tamper, comm loss,
    leak), then the notifications their outcomes ask for.  An alert already open
    is folded by ``raise_alert``, so running often does not repeat messages."""

    name = "alert-checks"

    def __init__(self, engine, interval_s=300, clock=time.time, policy=None,
                 consumer=None, operator=None):
        super().__init__(interval_s)
        self.engine, self.clock, self.policy = engine, clock, policy
        self.consumer, self.operator = consumer, operator

    def step(self):
        from headend import alerts, notify
        now = int(self.clock())
        with Session(self.engine) as session:
            outcomes = alerts.run_checks(session, now, self.policy)
            session.flush()
            sent = notify.notify_outcomes(session, outcomes, consumer=self.consumer,
                                          operator=self.operator)
            session.commit()
        return {"at": now, "alerts": len(outcomes), "sent": len(sent)}


class TimeSyncJob(PeriodicJob):
    """Queue a ``time`` downlink for meters whose heartbeat clock is off by more than
    ``threshold_s`` (``headend.commands.queue_time_syncs``; heartbeats received within
    ``window_s``, by default the comm-loss window)."""

    name = "time-sync"

    def __init__(self, engine, threshold_s, interval_s=600, window_s=2700, clock=time.time):
        super().__init__(interval_s)
        self.engine, self.clock = engine, clock
        self.threshold_s, self.window_s = threshold_s, window_s

    def step(self):
        from headend import commands
        now = int(self.clock())
        with Session(self.engine) as session:
            queued = commands.queue_time_syncs(session, now, self.threshold_s, self.window_s)
            session.commit()
        return {"at": now, "queued": len(queued)}


class CampaignJob(PeriodicJob):
    """Advance running campaigns (``headend.campaigns.advance``): confirm OTA jobs,
    count each stage's outcomes, then halt, start the next stage or complete."""

    name = "campaigns"

    def __init__(self, engine, interval_s=60, clock=time.time):
        super().__init__(interval_s)
        self.engine, self.clock = engine, clock

    def step(self):
        from headend import campaigns
        now = int(self.clock())
        with Session(self.engine) as session:
            moved = campaigns.advance(session, now)
            session.commit()
        return {"at": now, "moved": moved}


def jobs_from_settings(engine, settings, clock=time.time):
    """Every periodic job ``serve`` runs, as configured (switched-off ones left out)."""
    from headend import forecast, notify
    jobs = []
    fc = forecast.job_from_settings(engine, settings, clock)
    if fc is not None:
        jobs.append(fc)
    if settings.alert_checks_interval_s:
        jobs.append(AlertChecksJob(engine, settings.alert_checks_interval_s, clock,
                                   consumer=notify.consumer_notifier_from_env(),
                                   operator=notify.operator_notifier_from_env()))
    if settings.time_sync_interval_s:
        jobs.append(TimeSyncJob(engine, settings.time_sync_threshold_s,
                                settings.time_sync_interval_s, settings.comm_loss_after_s, clock))
    if settings.campaign_interval_s:
        jobs.append(CampaignJob(engine, settings.campaign_interval_s, clock))
    return jobs
