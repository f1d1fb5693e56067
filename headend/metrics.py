"""Prometheus metrics for ``/metrics``: ingest rate and lag, command queue depth, comm health.

Two sources, because ingest workers are separate processes:

- ``FleetCollector`` reads the database at scrape time, so any API replica
  shows the same fleet-wide numbers whatever worker stored the data:
  uplinks stored per second and ingest lag (``received_at - t``) p50/p99
  over the last ``metrics_window_s``; command queue depth by state; meters
  communicating vs silent for ``comm_loss_after_s`` per tenant; dead letters;
  open sequence gaps (and those the meter can no longer backfill); requests
  waiting for a second approver.
  Percentiles use ORDER BY ... LIMIT 1 OFFSET k, one row per query, the same
  SQL on SQLite and PostgreSQL.
- ``IngestCountersCollector`` exposes an in-process ``headend.ingest.Counters``
  (a worker run inside the API process, or a worker's own exporter) as
  ``urja_ingest_*_total`` counters.

>>> registry = build_registry(engine, settings, clock=lambda: 1795737600)   # doctest: +SKIP
>>> render(registry)[:60]                                                   # doctest: +SKIP
b'# HELP urja_ingest_uplinks_per_second Uplinks stored per second'
"""
import importlib

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from headend import models as M

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# the downlink lifecycle (docs/STYLE.md section 2, headend/commands.py): every state is
# exported, zeros included, so a dashboard's series never vanish
COMMAND_STATES = ("QUEUED", "SENT", "DELIVERED", "APPLIED", "FAILED", "EXPIRED", "CANCELLED")


def _optional_model(module, name):
    """A model from a head-end module that may not exist in this build (None if absent)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return None


def lag_percentile_s(conn, since, pct):
    """The ``pct`` percentile (nearest rank) of received_at - t over uplinks received after ``since``."""
    seen = M.UplinkSeen
    n = conn.scalar(select(func.count()).select_from(seen).where(seen.received_at > since))
    if not n:
        return None, 0
    # nearest-rank: the ceil(pct/100 * n)-th smallest value, 1-based
    rank = max(1, -(-pct * n // 100))
    lag = seen.received_at - seen.t
    value = conn.scalar(select(lag).where(seen.received_at > since).order_by(lag)
                        .limit(1).offset(rank - 1))
    return value, n


class FleetCollector:
    """Fleet-wide gauges computed from the database at scrape time."""

    def __init__(self, engine, settings, clock):
        self.engine, self.settings, self.clock = engine, settings, clock

    def collect(self):
        now = int(self.clock())
        window = self.settings.metrics_window_s
        with self.engine.connect() as conn:
            yield from self._ingest(conn, now, window)
            yield from self._commands(conn)
            yield from self._comm_health(conn, now)
            yield from self._approvals(conn)

    def _ingest(self, conn, now, window):
        p50, n = lag_percentile_s(conn, now - window, 50)
        p99, _ = lag_percentile_s(conn, now - window, 99)
        rate = GaugeMetricFamily("urja_ingest_uplinks_per_second",
                                 "Uplinks stored per second over the metrics window")
        rate.add_metric([], n / window)
        yield rate
        lag = GaugeMetricFamily("urja_ingest_lag_seconds",
                                "Ingest lag (received_at - t) over the metrics window",
                                labels=["quantile"])
        for q, v in (("0.5", p50), ("0.99", p99)):
            lag.add_metric([q], float("nan") if v is None else float(v))
        yield lag
        last = conn.scalar(select(func.max(M.UplinkSeen.received_at)))
        g = GaugeMetricFamily("urja_ingest_last_received_timestamp_seconds",
                              "When the newest stored uplink was received (0: never)")
        g.add_metric([], float(last or 0))
        yield g
        dead = conn.scalar(select(func.count()).select_from(M.DeadLetter)
                           .where(M.DeadLetter.received_at > now - window))
        g = GaugeMetricFamily("urja_ingest_dead_letters_window",
                              "Uplinks dead-lettered within the metrics window")
        g.add_metric([], dead)
        yield g
        gaps = dict(conn.execute(
            select(M.SeqGap.unrecoverable_at.is_not(None), func.count())
            .where(M.SeqGap.closed_at.is_(None))
            .group_by(M.SeqGap.unrecoverable_at.is_not(None))).all())
        g = GaugeMetricFamily("urja_ingest_open_sequence_gaps",
                              "Runs of missing uplink sequence numbers not yet filled")
        g.add_metric([], sum(gaps.values()))
        yield g
        g = GaugeMetricFamily("urja_ingest_unrecoverable_sequence_gaps",
                              "Unfilled gaps the meter no longer holds (backfill answered lo "
                              "above them)")
        g.add_metric([], gaps.get(True, 0))
        yield g

    def _commands(self, conn):
        g = GaugeMetricFamily("urja_command_queue_depth", "Downlink commands by lifecycle state",
                              labels=["state"])
        counts = dict.fromkeys(COMMAND_STATES, 0)
        command = _optional_model("headend.commands", "Command")
        if command is not None and hasattr(command, "state"):
            for state, n in conn.execute(select(command.state, func.count())
                                         .group_by(command.state)):
                counts[str(getattr(state, "value", state))] = n
        for state, n in counts.items():
            g.add_metric([state], n)
        yield g

    def _comm_health(self, conn, now):
        since = now - self.settings.comm_loss_after_s
        recent = select(M.UplinkSeen.meter_id).where(M.UplinkSeen.received_at > since)
        active = dict(conn.execute(
            select(M.Tenant.code, func.count(M.Meter.id)).join(M.Meter)
            .where(M.Meter.active.is_(True)).group_by(M.Tenant.code)).all())
        talking = dict(conn.execute(
            select(M.Tenant.code, func.count(M.Meter.id)).join(M.Meter)
            .where(M.Meter.active.is_(True), M.Meter.id.in_(recent))
            .group_by(M.Tenant.code)).all())
        g_active = GaugeMetricFamily("urja_meters_active", "Active meters in the registry",
                                     labels=["tenant"])
        g_ok = GaugeMetricFamily("urja_meters_communicating",
                                 "Active meters heard from within comm_loss_after_s",
                                 labels=["tenant"])
        g_silent = GaugeMetricFamily("urja_meters_silent",
                                     "Active meters not heard from within comm_loss_after_s",
                                     labels=["tenant"])
        for code in sorted(active):
            g_active.add_metric([code], active[code])
            g_ok.add_metric([code], talking.get(code, 0))
            g_silent.add_metric([code], active[code] - talking.get(code, 0))
        yield g_active
        yield g_ok
        yield g_silent

    def _approvals(self, conn):
        from headend.guardrails import PENDING_APPROVAL, CommandRequest
        n = conn.scalar(select(func.count()).select_from(CommandRequest)
                        .where(CommandRequest.state == PENDING_APPROVAL))
        g = GaugeMetricFamily("urja_commands_awaiting_approval",
                              "Command requests held for a second approver")
        g.add_metric([], n)
        yield g


class IngestCountersCollector:
    """An in-process ``headend.ingest.Counters`` as Prometheus counters."""

    TOTALS = ("received", "stored", "readings", "duplicates", "dead_lettered", "batches",
              "commit_errors", "gaps_opened", "gaps_closed", "backfills_requested",
              "gaps_unrecoverable")

    def __init__(self, counters, worker="0"):
        self.counters, self.worker = counters, worker

    def collect(self):
        snap = self.counters.snapshot()
        for name in self.TOTALS:
            c = CounterMetricFamily("urja_ingest_%s" % name, "Ingest worker: %s" % name.replace(
                "_", " "), labels=["worker"])
            c.add_metric([self.worker], snap.get(name, 0))
            yield c
        c = CounterMetricFamily("urja_broker_dropped", "Mosquitto's dropped-message counter "
                                "($SYS/broker/publish/messages/dropped)", labels=["worker"])
        c.add_metric([self.worker], snap.get("broker_dropped", 0))
        yield c


def build_registry(engine, settings, clock, ingest_counters=None):
    """A private CollectorRegistry (never the global one: several apps may live in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(engine, settings, clock))
    if ingest_counters is not None:
        registry.register(IngestCountersCollector(ingest_counters))
    return registry


def render(registry):
    """The Prometheus text exposition of ``registry`` (bytes)."""
    return generate_latest(registry)
