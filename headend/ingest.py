"""MQTT ingest worker: uplinks in, batched idempotent commits, PUBACK only after commit.

Run N of these with distinct, *stable* client ids; they split the load
through the MQTT v5 shared subscription ``$share/<group>/urja/v1/+/up/#``.

    python -m headend.ingest --host 127.0.0.1 --port 1883 --client-id ingest-0
    python -m headend.ingest --print-mosquitto-conf     # broker settings we rely on

Delivery guarantee (at-least-once in, exactly-once stored):
- QoS 1 with manual acknowledgement (``mqtt_fast.FastSubscriber.ack_all`` after the
  commit; gmqtt: ``optimistic_acknowledgement=False``): a message's PUBACK goes
  out only after the batch holding it committed.  Acks of a batch read on a
  connection that has since dropped are not sent on the new one; the broker
  re-sends those messages there and dedupe absorbs them.
- The worker subscribes again on every (re)connect: Mosquitto 2.0.11 keeps
  the persistent session over a restart but loses its shared subscription.
  A crash before the commit leaves it unacknowledged in our persistent
  session (clean start off, session expiry 7 days), so Mosquitto redelivers
  it when a worker with the same client id reconnects.  Committed but not
  yet acknowledged messages come back too and are deduplicated on (m, s)
  by ``headend.store``.  A worker that is retired for good must be brought
  back once with the same id to drain its session, or its unacked messages
  wait until the session expires.
- The client asks for Receive Maximum 65535, so up to that many messages
  can wait for one commit; batches are cut every ``batch_max`` messages or
  ``batch_ms`` milliseconds, whichever comes first.
- Loss is detected, not assumed away: per-meter sequence gaps are written
  to ``seq_gaps`` (headend/store.py) and Mosquitto's own drop counter
  ``$SYS/broker/publish/messages/dropped`` is exported as ``broker_dropped``.
- ... and repaired where the meter still can: a gap still open
  ``backfill_grace_s`` after it was seen gets an authenticated ``backfill``
  downlink through the durable command queue (``store.request_backfills``,
  asked again up to 3 times while the gap stays open;
  the dispatcher sends it, the meter re-publishes the held uplinks, dedupe
  makes that idempotent).  The meter's ack says which part is gone for good
  (``commands.handle_ack``: unrecoverable gap + ``data_lost`` alert).

Client choice, measured on this 2-core machine (Mosquitto 2, loopback,
QoS 1, 71-byte CBOR readings, ``bench/headend_ingest.py``): the default is
``headend.mqtt_fast`` (our own asyncio.Protocol subscriber: one parse loop
per socket read, one PUBACK write per committed batch); gmqtt (one task and
one PUBACK write per message) stays selectable with ``client="gmqtt"``.  In
the same runs the worker spent ~60 us less CPU per reading with mqtt_fast
(see BARE_RATES and docs/SCALING.md).  Decoding goes through
``headend.fastdecode`` (cbor2, with firmware.protocol.messages deciding
every doubtful payload); paho-mqtt is for tools and tests.  Invalid uplinks
(bad CBOR, schema, topic/body mismatch, unknown meter, wrong unit) go to
``dead_letters`` byte for byte with the reason.

Ingest lag = commit time - the message's ``t`` (whole seconds on the wire,
so the lag carries up to 1 s of rounding).
"""
import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import signal
import sys
import time

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from firmware.protocol import messages
from headend.db import make_engine
from headend import fastscan
from headend.fastdecode import decode_uplink
from headend.mqtt_fast import FastSubscriber, FrameReader
from headend.store import UplinkStore, known_meters, open_gaps, request_backfills, scan_gaps

log = logging.getLogger("urja.ingest")

# Bare broker rate (4 QoS 1 publisher connections -> one discarding MQTT v5 subscriber,
# same run, same 2 cores), msgs/s, bench/headend_ingest.py.  Earlier quiet runs: gmqtt
# 42334 / 47252, paho-mqtt 13257 / 18509.  2026-11-27, machine shared with other
# jobs (load average 4-6): mqtt_fast 6047 / 5374 / 13409, gmqtt 4910 / 4666 / 15737 in
# the same runs: the load generator, not the subscriber, sets the bare rate then.
BARE_RATES = {"gmqtt": (42334, 47252), "paho": (13257, 18509)}

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
CLIENTS = ("fast", "gmqtt")  # headend.mqtt_fast (default) or gmqtt
# "fast" client's frame reader: "c" decodes reading uplinks in C (headend.fastscan),
# "python" the reference path; "auto" takes C when it is built
SCANNERS = ("auto", "c", "python")
# fast client: after a small socket read, wait this long before the next one (fewer
# wake-ups per message; adds at most this to the lag, against batch_ms of 50 ms)
READ_COALESCE_S = 0.002
# A gap may close by itself: another worker's batch holding the missing uplink
# is still uncommitted, or the meter's outbox is still re-sending after a
# reconnect.  Only a gap open this long is worth a backfill downlink.
DEFAULT_BACKFILL_GRACE_S = 300

# Mosquitto settings the ingest relies on.  Defaults would silently drop: Mosquitto
# keeps at most max_queued_messages (1000) QoS 1 messages per offline or slow
# client beyond the in-flight window and discards the rest.
MOSQUITTO_INGEST_CONF = """\
# --- Urja head-end ingest: never drop QoS 1 silently ---
# Queue per client beyond the in-flight window.  A stopped or slow ingest worker
# (persistent session) accumulates here; size it for the longest outage you
# accept (131k meters x 96 readings = 12.6M messages for a day offline) and cap
# it by memory with max_queued_bytes instead.  Drops that still happen are
# counted in $SYS/broker/publish/messages/dropped and show as sequence gaps.
max_queued_messages 20000000
max_queued_bytes 0
# In-flight window for MQTT 3.1.1 clients (meters); v5 ingest workers send
# Receive Maximum 65535 in CONNECT, which Mosquitto honours instead.
max_inflight_messages 20
# Keep sessions of workers that crash; they come back with the same client id.
persistent_client_expiration 7d
# Publish $SYS counters (dropped messages) every 2 s.
sys_interval 2
"""


class Counters:
    """Ingest counters and a window of recent lags; ``snapshot()`` is what /metrics shows."""

    def __init__(self, lag_window=50000):
        self.received = 0
        self.stored = 0          # uplinks newly stored
        self.readings = 0        # reading records newly stored
        self.duplicates = 0
        self.dead_lettered = 0
        self.batches = 0
        self.commit_errors = 0
        self.gaps_opened = 0
        self.gaps_closed = 0
        self.backfills_requested = 0
        self.gaps_unrecoverable = 0
        self.broker_dropped = 0
        self.subscribes = 0      # SUBACKs: one per (re)connect
        self.lags_s = collections.deque(maxlen=lag_window)

    def lag_percentile_ms(self, p):
        if not self.lags_s:
            return None
        ordered = sorted(self.lags_s)
        i = min(len(ordered) - 1, int(p / 100.0 * len(ordered)))
        return int(ordered[i] * 1000)

    def snapshot(self):
        return {"received": self.received, "stored": self.stored, "readings": self.readings,
                "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
                "batches": self.batches, "commit_errors": self.commit_errors,
                "gaps_opened": self.gaps_opened, "gaps_closed": self.gaps_closed,
                "backfills_requested": self.backfills_requested,
                "gaps_unrecoverable": self.gaps_unrecoverable,
                "broker_dropped": self.broker_dropped, "subscribes": self.subscribes,
                "lag_p50_ms": self.lag_percentile_ms(50), "lag_p99_ms": self.lag_percentile_ms(99)}


class _Batch:
    __slots__ = ("bodies", "dead", "done", "opened", "acks")

    def __init__(self):
        self.bodies = []
        self.dead = []
        self.done = asyncio.get_running_loop().create_future()
        self.opened = time.monotonic()
        self.acks = {}  # mqtt_fast connection -> QoS 1 packet ids to PUBACK after the commit

    def __len__(self):
        return len(self.bodies) + len(self.dead)


class IngestWorker:
    """One ingest process: subscribe, decode, batch, commit, then acknowledge.

    >>> worker = IngestWorker(make_engine(url), "127.0.0.1", 1883, "ingest-0")   # doctest: +SKIP
    >>> asyncio.run(worker.run(stop_event))                                     # doctest: +SKIP
    """

    def __init__(self, engine, host, port, client_id, group="ingest", batch_max=5000,
                 batch_ms=50, gap_scan_s=1.0, session_expiry_s=7 * 86400, clock=time.time,
                 after_commit=None, backfill_grace_s=None, client="fast", scanner="auto",
                 read_coalesce_s=READ_COALESCE_S):
        self.engine = engine
        self.store = UplinkStore(engine)
        self.host, self.port, self.client_id, self.group = host, port, client_id, group
        self.batch_max, self.batch_ms = batch_max, batch_ms
        self.gap_scan_s = gap_scan_s
        # None (the default for embedders such as the simulator): never ask meters to
        # backfill; the ``python -m headend.ingest`` program defaults to
        # DEFAULT_BACKFILL_GRACE_S
        self.backfill_grace_s = backfill_grace_s
        if client not in CLIENTS:
            raise ValueError("client must be one of %s, got %r" % (", ".join(CLIENTS), client))
        self.client_kind = client
        self.read_coalesce_s = read_coalesce_s
        if scanner not in SCANNERS:
            raise ValueError("scanner must be one of %s, got %r" % (", ".join(SCANNERS), scanner))
        if scanner == "c" and not fastscan.available():
            raise RuntimeError("scanner 'c': headend._fastingest is not built (reinstall with a "
                               "C compiler: pip install -e .), or use scanner 'python'")
        self.scanner = ("c" if fastscan.available() else "python") if scanner == "auto" else scanner
        if scanner == "auto" and self.scanner == "python" and client == "fast":
            log.warning("headend._fastingest is not built (no C compiler at install?): the "
                        "ingest runs its Python path, ~3x the CPU per reading; pip install -e . "
                        "with gcc and the Python headers builds it")
        self.session_expiry_s = session_expiry_s
        self.clock = clock
        self.after_commit = after_commit  # called with (WriteResult, bodies, commit_time)
        self.counters = Counters()
        self.connected = None  # asyncio.Event, set once subscribed
        self._meters = {}
        self._meters_loaded = 0.0
        self._batch = None
        self._wake = None
        self._touched = set()
        self._low_marks = {}
        self._client = None

    @property
    def subscription(self):
        return "$share/%s/%s" % (self.group, messages.INGEST_FILTER)

    # --- receiving -----------------------------------------------------------

    def _meter_unit(self, meter_id):
        unit = self._meters.get(meter_id)
        if unit is None and time.monotonic() - self._meters_loaded > 2.0:
            # a meter registered after we started: reload, at most every 2 s
            self._meters = known_meters(self.engine)
            self._meters_loaded = time.monotonic()
            unit = self._meters.get(meter_id)
        return unit

    def classify(self, topic, payload):
        """(body, None) for a good uplink, (None, reason) for a dead letter."""
        try:
            body = decode_uplink(topic, payload)  # cbor2 fast path, reference verdicts
        except messages.MessageError as err:
            return None, str(err)
        unit = self._meter_unit(body["m"])
        if unit is None:
            return None, "meter: %r is not registered" % (body["m"],)
        if body["kind"] == messages.READING and body["u"] != unit:
            return None, "reading.u: meter %r counts in %s, message says %r" % (
                body["m"], unit, body["u"])
        return body, None

    def _on_messages(self, conn, pubs):
        """mqtt_fast: every PUBLISH of one socket read, in one call; acks wait for the commit."""
        batch = self._batch
        was_empty = not len(batch)
        classify = self.classify
        ids = batch.acks.get(conn)
        if ids is None:
            ids = batch.acks[conn] = []
        received = 0
        for p in pubs:
            if type(p) is fastscan.Readings:  # decoded and classified in C
                batch.bodies.extend(p.bodies)
                ids.extend(p.ids)
                received += len(p.bodies)
                continue
            if p.topic == DROPPED_TOPIC:
                try:
                    self.counters.broker_dropped = int(p.payload)
                except ValueError:
                    pass
                continue
            received += 1
            body, reason = classify(p.topic, p.payload)
            if body is not None:
                batch.bodies.append(body)
            else:
                batch.dead.append((p.topic, p.payload, reason))
            if p.qos:
                ids.append(p.packet_id)
        self.counters.received += received
        if (was_empty and len(batch)) or len(batch) >= self.batch_max:
            self._wake.set()

    async def _on_message(self, client, topic, payload, qos, properties):
        if topic == DROPPED_TOPIC:
            try:
                self.counters.broker_dropped = int(payload)
            except ValueError:
                pass
            return 0
        self.counters.received += 1
        body, reason = self.classify(topic, payload)
        batch = self._batch
        if body is not None:
            batch.bodies.append(body)
        else:
            batch.dead.append((topic, payload, reason))
        if len(batch) == 1 or len(batch) >= self.batch_max:
            self._wake.set()
        await batch.done  # resolves after the commit; only then gmqtt sends PUBACK
        return 0

    # --- committing ----------------------------------------------------------

    async def _flusher(self, stop):
        while True:
            if not len(self._batch):
                if stop.is_set():
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            age = time.monotonic() - self._batch.opened
            if len(self._batch) < self.batch_max and age * 1000 < self.batch_ms and not stop.is_set():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.batch_ms / 1000.0 - age)
                except asyncio.TimeoutError:
                    pass
                continue
            batch, self._batch = self._batch, _Batch()
            await self._commit(batch)

    async def _commit(self, batch):
        delay = 0.1
        while True:
            now = self.clock()
            try:
                result = await asyncio.to_thread(self.store.write, batch.bodies, batch.dead,
                                                 int(now))
                break
            except Exception:  # database down or overloaded: keep the batch, do not ack
                self.counters.commit_errors += 1
                log.exception("commit of %d uplinks failed; retrying in %.1fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        committed = self.clock()
        c = self.counters
        c.batches += 1
        c.stored += result.uplinks
        c.readings += result.readings
        c.duplicates += result.duplicates
        c.dead_lettered += result.dead
        c.lags_s.extend([committed - b["t"] for b in batch.bodies])
        self._touched.update([m for m, _s in result.stored_keys])
        batch.done.set_result(True)
        for conn, ids in batch.acks.items():  # mqtt_fast: one write per batch
            self._client.ack_all(conn, ids)
        if self.after_commit is not None:
            self.after_commit(result, batch.bodies, committed)

    async def scan_gaps_now(self):
        """Record/close sequence gaps for meters touched since the last scan.

        Meters with open gaps are re-checked too, whoever touched them: with
        several workers in the group, a gap opened while another worker's batch
        holding the missing message was still uncommitted must close when that
        batch lands, even if this worker never sees the meter again.
        """
        touched, self._touched = self._touched, set()
        touched |= await asyncio.to_thread(
            lambda: {meter_id for meter_id, _first, _last
                     in open_gaps(self.engine, unrecoverable=False)})
        if touched:
            opened, closed = await asyncio.to_thread(scan_gaps, self.engine, sorted(touched),
                                                     int(self.clock()), self._low_marks)
            self.counters.gaps_opened += opened
            self.counters.gaps_closed += closed
        if self.backfill_grace_s is not None:
            requested, lost = await asyncio.to_thread(
                request_backfills, self.engine, int(self.clock()), self.backfill_grace_s)
            self.counters.backfills_requested += requested
            self.counters.gaps_unrecoverable += lost

    async def _gap_scanner(self, stop):
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.gap_scan_s)
            except asyncio.TimeoutError:
                pass
            try:
                await self.scan_gaps_now()
            except Exception:
                log.exception("gap scan failed")

    # --- lifecycle -----------------------------------------------------------

    def _subscribed(self):
        self.counters.subscribes += 1
        self.connected.set()

    async def _connect_fast(self):
        # subscribes again on every (re)connect (see mqtt_fast's module doc)
        self._client = FastSubscriber(
            self.host, self.port, self.client_id,
            [(self.subscription, 1), (DROPPED_TOPIC, 0)], self._on_messages, self._subscribed,
            keepalive_s=30, session_expiry_s=self.session_expiry_s, receive_maximum=65535,
            reader_factory=(self._reading_reader if self.scanner == "c" else FrameReader),
            read_coalesce_s=self.read_coalesce_s)
        await self._client.start()

    def _reading_reader(self):
        return fastscan.ReadingReader(lambda: self._meters)

    async def _connect_gmqtt(self):
        client = gmqtt.Client(self.client_id, clean_session=False,
                              optimistic_acknowledgement=False,
                              session_expiry_interval=self.session_expiry_s,
                              receive_maximum=65535)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        client.on_message = self._on_message

        def on_connect(cl, session_present, rc, properties):
            # Subscribe on every (re)connect, even when the broker says the session is
            # present: Mosquitto 2.0.11 restores a persistent session after a restart
            # but not its shared subscriptions ($share/...), so trusting
            # session_present would leave this worker connected and deaf
            # (headend/tests/test_ingest_restart.py, broker restart test).
            cl.subscribe([gmqtt.Subscription(self.subscription, qos=1),
                          gmqtt.Subscription(DROPPED_TOPIC, qos=0)])

        client.on_connect = on_connect
        client.on_subscribe = lambda cl, mid, qos, properties: self._subscribed()
        self._client = client
        await client.connect(self.host, self.port, version=MQTTv50, keepalive=30)


    async def run(self, stop):
        """Run until ``stop`` (an asyncio.Event) is set; then commit what is pending and leave."""
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self.connected = self.connected or asyncio.Event()
        self._meters = await asyncio.to_thread(known_meters, self.engine)
        self._meters_loaded = time.monotonic()
        if self.client_kind == "fast":
            await self._connect_fast()
        else:
            await self._connect_gmqtt()
        flusher = asyncio.ensure_future(self._flusher(stop))
        scanner = asyncio.ensure_future(self._gap_scanner(stop))
        try:
            await stop.wait()
            await flusher
        finally:
            scanner.cancel()
            flusher.cancel()
            await asyncio.sleep(0)  # let PUBACKs of the last batch go out
            try:
                if self.client_kind == "fast":
                    await self._client.stop()
                else:
                    await self._client.disconnect()
            except Exception:
                log.exception("disconnect failed")
        await self.scan_gaps_now()


GC_GEN0_THRESHOLD = 10000


def settle_gc(gen0_threshold=GC_GEN0_THRESHOLD):
    """Garbage-collector settings for a long-running ingest process; call once after start-up.

    Every uplink leaves a dict and lists (tracked by the cyclic GC) in the batch
    until its commit; with the defaults (gen0 at 700) that meant ~350 young and
    3 full collections per 60,000 readings, each full one walking the ~115,000
    objects start-up left (the bench process): 0.24-0.26 s, ~4 us of the
    worker's CPU per reading (bench/headend_ingest.py, gc callbacks).  ``gc.freeze()`` moves what
    start-up built out of the collector's sight (it lives as long as the process
    anyway) and a larger gen0 threshold cuts the young collections: ~1 us per
    reading left.  Reference counting still frees every body right after its
    commit; only cycles wait a little longer.  The program calls this; embedders
    (the simulator) keep their own settings.
    """
    gc.collect()
    gc.freeze()
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(g0, gen0_threshold), g1, g2)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m headend.ingest",
        description="Urja ingest worker (MQTT v5 shared subscription -> database).",
        epilog="example: URJA_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/urja "
               "python -m headend.ingest --port 1883 --client-id ingest-0")
    p.add_argument("--host", default=os.environ.get("URJA_MQTT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("URJA_MQTT_PORT", "1883")))
    p.add_argument("--client-id", default=os.environ.get("URJA_INGEST_ID", "ingest-0"),
                   help="stable per worker: a restarted worker must reuse it to drain its session")
    p.add_argument("--group", default="ingest", help="shared subscription group")
    p.add_argument("--db", default=None, help="database URL (default URJA_DATABASE_URL)")
    p.add_argument("--db-schema", default=None, help="PostgreSQL schema (search_path)")
    p.add_argument("--batch-max", type=int, default=5000)
    p.add_argument("--batch-ms", type=int, default=50)
    p.add_argument("--backfill-grace-s", type=int,
                   default=int(os.environ.get("URJA_BACKFILL_GRACE_S",
                                              str(DEFAULT_BACKFILL_GRACE_S))),
                   help="queue a backfill command for a sequence gap still open this many "
                        "seconds after it was seen (default %(default)s; -1: never)")
    p.add_argument("--client", choices=CLIENTS, default="fast",
                   help="MQTT client: fast (headend.mqtt_fast, default) or gmqtt")
    p.add_argument("--scanner", choices=SCANNERS, default="auto",
                   help="fast client's reader: c (reading uplinks decoded in C, "
                        "headend/_fastingest.c), python (the reference path), or auto "
                        "(default: c when it is built)")
    p.add_argument("--stats-s", type=float, default=0.0,
                   help="print counters as one JSON line every N seconds (0: only at exit)")
    p.add_argument("--print-mosquitto-conf", action="store_true",
                   help="print the Mosquitto settings the ingest relies on and exit")
    return p.parse_args(argv)


def engine_for(url, schema=None):
    """Engine for ``url``; ``schema`` pins PostgreSQL's search_path (tests, multi-tenant installs)."""
    kwargs = {}
    if schema:
        kwargs["connect_args"] = {"options": "-csearch_path=%s" % schema}
    return make_engine(url, **kwargs)


async def _main(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = IngestWorker(engine_for(args.db, args.db_schema), args.host, args.port,
                          args.client_id, args.group, args.batch_max, args.batch_ms,
                          backfill_grace_s=(None if args.backfill_grace_s < 0
                                            else args.backfill_grace_s),
                          client=args.client, scanner=args.scanner)
    worker.connected = asyncio.Event()
    settle_gc()

    async def report():
        await worker.connected.wait()
        print(json.dumps({"subscribed": worker.client_id, "client": worker.client_kind,
                          "scanner": worker.scanner}), flush=True)
        while args.stats_s > 0 and not stop.is_set():
            await asyncio.sleep(args.stats_s)
            print(json.dumps(worker.counters.snapshot()), flush=True)

    reporter = asyncio.ensure_future(report())
    await worker.run(stop)
    reporter.cancel()
    print(json.dumps(worker.counters.snapshot()), flush=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.print_mosquitto_conf:
        print(MOSQUITTO_INGEST_CONF, end="")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
