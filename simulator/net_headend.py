"""The real head-end for networked runs: ingest worker + command dispatcher, restartable.

``HeadEnd`` runs ``headend.ingest.IngestWorker`` (gmqtt, MQTT v5 shared
subscription, PUBACK after commit) in a thread with its own asyncio loop and
``headend.dispatcher.Dispatcher`` (paho, persistent session) in another, both
against one database and one broker, both on the simulator's clock.  The
client ids are stable, so ``stop()`` + ``start()`` is a head-end restart: what
arrived meanwhile waits in the broker's persistent sessions.

Payments go in through the real webhook handler (``headend.payments``,
signed body), which queues the top-up command the dispatcher then signs with
the meter's sealed key and publishes.

Sequence gaps: the ingest's gap scanner queues a ``backfill`` command for a
gap still open ``backfill_grace_s`` (simulated seconds; None: never) after it
saw it, as ``python -m headend.ingest`` does (networked runs pass the
scenario's, default 300 s); the dispatcher sends it like a top-up.
``lose_ingest_session()`` stops the ingest and discards its broker session
(subscription included) until ``start_ingest()``: what the meters publish
meanwhile is PUBACKed to them and reaches nobody, the loss a broker restart
causes when it forgets a shared subscription (``PlainIngestWorker``).

>>> he = HeadEnd(engine, "127.0.0.1", 1883, clock=lambda: 1795717800)   # doctest: +SKIP
>>> he.provision(meters, start_t)                                       # doctest: +SKIP
>>> he.start(); he.pay("UJ-0000001", 50000, "UPI-UJ-0000001-1", now)   # doctest: +SKIP
"""
import asyncio
import json
import socket
import threading

from sqlalchemy.orm import Session

from firmware.protocol import messages
from headend import commands as C
from headend import ledger as L  # noqa: F401 - registers the ledger's command-outcome listener
from headend import models as M
from headend import payments as P
from headend import reconcile as R
from headend.db import Base
from headend.dispatcher import Dispatcher
from headend.ingest import IngestWorker
from headend.mqtt_fast import connect_packet

TENANT = "SIM"
GATEWAY = "sim-upi"
GATEWAY_SECRET = b"urja-sim-gateway"
MASTER_KEY = bytes(range(32))  # seals meter keys at rest; a simulator-only value


class PlainIngestWorker(IngestWorker):
    """The ingest worker on a plain (not shared) subscription: for ONE worker only.

    Mosquitto 2.0.11 does not restore a persistent session's *shared*
    subscription after a broker restart (measured: simulator/tests/
    test_networked.py; cf. eclipse-mosquitto/mosquitto#769), so uplinks
    published between the restart and the worker's reconnect are PUBACKed to
    the meters and then delivered to nobody.  A plain subscription survives.
    """

    @property
    def subscription(self):
        return messages.INGEST_FILTER


class HeadEndError(RuntimeError):
    """The head-end did not come up, or a payment was refused."""


def retry_policy(interval_s):
    """Command retry timings for accelerated time (simulated seconds).

    The defaults (30 s PUBACK wait, 2 min ack wait) are a few wall
    milliseconds at x10000: every dispatcher round would re-send.  Here a
    re-send waits at least an interval; a meter offline longer gets its
    commands from the broker's persistent session and the ``online`` nudge.
    """
    return C.RetryPolicy(puback_timeout_s=interval_s, ack_timeout_s=2 * interval_s,
                         max_ack_timeout_s=8 * interval_s, late_ack_grace_s=interval_s,
                         reconnect_settle_s=interval_s // 3)


class _IngestThread:
    def __init__(self, worker):
        self.worker = worker
        self.loop = None
        self.stop_event = None
        self.error = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sim-ingest", daemon=True)

    def _run(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            self.worker.connected = asyncio.Event()

            async def ready():
                await self.worker.connected.wait()
                self.ready.set()
            asyncio.ensure_future(ready())
            await self.worker.run(self.stop_event)
        try:
            asyncio.run(main())
        except BaseException as err:  # reported by start()/stop()
            self.error = err
            self.ready.set()

    def start(self, timeout_s):
        self.thread.start()
        if not self.ready.wait(timeout_s) or self.error is not None:
            raise HeadEndError("ingest worker did not subscribe: %r" % (self.error,))

    def stop(self, timeout_s):
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise HeadEndError("ingest worker did not stop within %ss" % timeout_s)


class HeadEnd:
    """Ingest + dispatcher against ``engine`` and the broker at ``host:port``."""

    INGEST_ID = "sim-ingest-0"

    def __init__(self, engine, host, port, clock, interval_s=900, dispatch_every_s=0.05,
                 ingest_batch_ms=50, ingest_shared=True, backfill_grace_s=None):
        self.engine = engine
        self.host, self.port = host, port
        self.clock = clock
        self.policy = retry_policy(interval_s)
        self.dispatch_every_s = dispatch_every_s
        self.ingest_batch_ms = ingest_batch_ms
        self.worker_class = IngestWorker if ingest_shared else PlainIngestWorker
        self.backfill_grace_s = backfill_grace_s
        self.ingest = None
        self.dispatcher = None
        self._disp_thread = None
        self._disp_stop = None
        self.restarts = 0
        self.lags_s = []  # ingest lag samples (simulated seconds) of every worker so far
        self.ingest_totals = {"received": 0, "stored": 0, "duplicates": 0, "dead_lettered": 0}
        self.sessions_lost = 0

    # --- registry --------------------------------------------------------------------
    def provision(self, meters, opened_at):
        """Register meters: ``meters`` = [(meter_id, service, key, opening_paise, tariff dict)].

        Creates missing tables (the shadow-ledger tables are not migrated yet),
        the tenant, the meters, their sealed keys and shadow accounts.
        """
        Base.metadata.create_all(self.engine)
        with Session(self.engine) as s:
            tenant = s.query(M.Tenant).filter_by(code=TENANT).one_or_none()
            if tenant is None:
                tenant = M.Tenant(code=TENANT, name="Simulated city")
                s.add(tenant)
                s.flush()
            for meter_id, service, key, opening, tariff_dict in meters:
                s.add(M.Meter(id=meter_id, tenant_id=tenant.id, service=service,
                              installed_at=opened_at))
                s.add(M.MeterKey.seal(MASTER_KEY, meter_id, key))
                s.flush()
                R.open_account(s, meter_id, opening, opened_at, [tariff_dict])
            s.commit()

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout_s=15.0):
        self.start_ingest(timeout_s)
        self.dispatcher = Dispatcher(self.engine, self.host, self.port, MASTER_KEY,
                                     client_id="sim-dispatcher", policy=self.policy,
                                     clock=self.clock).start(timeout_s)
        self._disp_stop = threading.Event()
        self._disp_thread = threading.Thread(
            target=self.dispatcher.run, args=(self._disp_stop, self.dispatch_every_s),
            name="sim-dispatcher", daemon=True)
        self._disp_thread.start()
        return self

    def start_ingest(self, timeout_s=15.0):
        worker = self.worker_class(self.engine, self.host, self.port, self.INGEST_ID,
                                   batch_ms=self.ingest_batch_ms, gap_scan_s=1.0, clock=self.clock,
                                   backfill_grace_s=self.backfill_grace_s)
        self.ingest = _IngestThread(worker)
        self.ingest.start(timeout_s)

    @property
    def running(self):
        return self.ingest is not None

    def stop(self, timeout_s=30.0):
        """Stop both (pending ingest batch committed first); state stays in DB and broker."""
        if self._disp_thread is not None:
            self._disp_stop.set()
            self._disp_thread.join(timeout_s)
            self.dispatcher.stop()
            self._disp_thread = None
        self.stop_ingest(timeout_s)

    def stop_ingest(self, timeout_s=30.0):
        if self.ingest is not None:
            self.ingest.stop(timeout_s)
            c = self.ingest.worker.counters
            self.lags_s.extend(c.lags_s)
            for k in self.ingest_totals:
                self.ingest_totals[k] += getattr(c, k)
            self.ingest = None

    def lose_ingest_session(self, timeout_s=5.0):
        """Stop the ingest and discard its persistent session (and so its subscription).

        A clean-start MQTT v5 CONNECT with session expiry 0 under the worker's
        client id ends the stored session (MQTT 5 section 3.1.2.4); the ingest
        stays away until ``start_ingest()``.
        """
        self.stop_ingest()
        with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
            sock.sendall(connect_packet(self.INGEST_ID, clean_start=True, session_expiry_s=0))
            connack = sock.recv(64)
            if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
                raise HeadEndError("broker refused the session reset: %r" % (connack,))
            sock.sendall(b"\xe0\x00")  # DISCONNECT, normal: the session ends with it
        self.sessions_lost += 1

    def restart(self):
        self.stop()
        self.restarts += 1
        self.start()

    def counters(self):
        """Ingest totals so far, including the running worker."""
        out = dict(self.ingest_totals)
        if self.ingest is not None:
            c = self.ingest.worker.counters
            for k in out:
                out[k] += getattr(c, k)
        return out

    # --- money -----------------------------------------------------------------------
    def pay(self, meter_id, amount_paise, txn_ref, now):
        """A UPI payment through the signed webhook; returns the top-up command id."""
        raw = json.dumps({"amount_paise": amount_paise, "payer_vpa": "sim@upi",
                          "txn_ref": txn_ref, "meter_id": meter_id, "gateway": GATEWAY,
                          "delivery": "mqtt"}).encode()
        headers = {P.SIGNATURE_HEADER: P.sign_body(GATEWAY_SECRET, raw)}
        with Session(self.engine) as s:
            status, out = P.handle_payment_webhook(s, raw, headers, now=now,
                                                   secrets={GATEWAY: GATEWAY_SECRET},
                                                   master_key=MASTER_KEY)
        if status not in (200, 201):
            raise HeadEndError("payment %s refused: %s %s" % (txn_ref, status, out))
        return out["receipt"]["topup"]["command_id"]

    def open_commands(self):
        """Top-up commands not yet APPLIED/FAILED/EXPIRED."""
        with Session(self.engine) as s:
            return s.query(C.Command).filter(C.Command.state.in_(C.OPEN_STATES)).count()
