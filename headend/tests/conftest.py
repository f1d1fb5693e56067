"""Fixtures for head-end tests: a migrated database (SQLite and PostgreSQL), a
private Mosquitto configured for ingest, an in-process ingest worker, and a
paho publisher playing the meters.

PostgreSQL: ``postgresql+psycopg://postgres@127.0.0.1:5432/test`` unless
``URJA_TEST_POSTGRES_URL`` says otherwise.  Every test gets its own schema
(created, migrated with Alembic, dropped afterwards) so parallel runs and
other work streams never collide.  An unreachable PostgreSQL is a failure
that says how to start one, never a skip.
"""
import asyncio
import os
import shutil
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from sqlalchemy import create_engine, text

from firmware.protocol import messages
from firmware.tests.host.conftest import Broker
from headend import migrations
from headend import models as M
from headend.db import make_engine
from headend.ingest import MOSQUITTO_INGEST_CONF, IngestWorker

POSTGRES_URL = os.environ.get("URJA_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")

HOW_TO_START_POSTGRES = """PostgreSQL is not reachable at %s (%s).
The head-end tests run against SQLite *and* PostgreSQL. Start one, e.g.:
  docker run -d --name urja-pg -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16
  docker exec urja-pg createdb -U postgres test
or on Debian/Ubuntu: apt-get install postgresql && sudo -u postgres createdb test
(and allow trust/password login for 127.0.0.1), or point URJA_TEST_POSTGRES_URL
at a database you may create schemas in."""


def _postgres_admin_engine():
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure means the same thing here
        engine.dispose()
        pytest.fail(HOW_TO_START_POSTGRES % (POSTGRES_URL, str(err).splitlines()[0]),
                    pytrace=False)
    return engine


def _with_search_path(url, schema):
    sep = "&" if "?" in url else "?"
    return "%s%soptions=-csearch_path%%3D%s" % (url, sep, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """URL of an empty, migrated database: a temp SQLite file, or a private PostgreSQL schema.

    The PostgreSQL URL carries ``options=-csearch_path=<schema>``, so any engine
    or subprocess given this URL works inside that schema.
    """
    if request.param == "sqlite":
        url = "sqlite:///%s" % (tmp_path / "urja.db")
        migrations.upgrade(url)
        yield url
        return
    admin = _postgres_admin_engine()
    schema = "urja_test_%s" % uuid.uuid4().hex[:12]
    with admin.connect() as conn:
        conn.execute(text('CREATE SCHEMA "%s"' % schema))
    url = _with_search_path(POSTGRES_URL, schema)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def register_meters(engine, meter_ids, service="electricity", tenant_code="T1"):
    """Put a tenant and ``meter_ids`` in the registry (the ingest refuses unknown meters)."""
    from sqlalchemy.orm import Session
    with Session(engine) as s:
        tenant = s.query(M.Tenant).filter_by(code=tenant_code).one_or_none()
        if tenant is None:
            tenant = M.Tenant(code=tenant_code, name="Tenant " + tenant_code)
            s.add(tenant)
            s.flush()
        for mid in meter_ids:
            s.add(M.Meter(id=mid, tenant_id=tenant.id, service=service))
        s.commit()


@pytest.fixture
def broker():
    """A private Mosquitto with the ingest settings (headend.ingest.MOSQUITTO_INGEST_CONF)."""
    workdir = tempfile.mkdtemp(prefix="urja-headend-mqtt-")
    b = Broker(workdir, extra_config=MOSQUITTO_INGEST_CONF)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def make_broker(extra_config):
    """A started Broker with ``extra_config`` (caller stops it); for loss tests with tiny queues."""
    workdir = tempfile.mkdtemp(prefix="urja-headend-mqtt-")
    b = Broker(workdir, extra_config=extra_config)
    b.start()
    return b


class WorkerThread:
    """An IngestWorker running its own asyncio loop in a thread, for in-process tests."""

    def __init__(self, engine, broker, client_id="ingest-0", group="ingest", **kwargs):
        kwargs.setdefault("batch_ms", 20)
        kwargs.setdefault("gap_scan_s", 0.2)
        self.worker = IngestWorker(engine, broker.host, broker.port, client_id, group, **kwargs)
        self._loop = None
        self._stop = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self.error = None

    def _run(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.worker.connected = asyncio.Event()

            async def signal_ready():
                await self.worker.connected.wait()
                self._ready.set()
            asyncio.ensure_future(signal_ready())
            await self.worker.run(self._stop)
        try:
            asyncio.run(main())
        except BaseException as err:  # surfaced by start()/stop()
            self.error = err
            self._ready.set()

    @property
    def counters(self):
        return self.worker.counters

    def start(self, timeout_s=10.0):
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.error:
            raise AssertionError("ingest worker did not subscribe: %r" % (self.error,))
        return self

    def stop(self, timeout_s=15.0):
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError("ingest worker did not stop")
        if self.error:
            raise self.error


@pytest.fixture
def start_worker(engine, broker):
    """Start in-process ingest workers: ``w = start_worker(client_id="ingest-0")``."""
    started = []

    def start(**kwargs):
        w = WorkerThread(engine, broker, **kwargs).start()
        started.append(w)
        return w
    yield start
    for w in started:
        w.stop()


class Meters:
    """A paho MQTT 3.1.1 client publishing uplinks the way meters do (QoS 1)."""

    def __init__(self, broker, client_id=None):
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or "meters-" + uuid.uuid4().hex[:8],
                                  protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish_raw(self, topic, payload):
        return self.client.publish(topic, payload, qos=1)

    def publish(self, kind, meter_id, seq, t, fields):
        body = messages.encode_uplink(kind, meter_id, seq, t, fields)
        return self.publish_raw(messages.topic(meter_id, kind), body)

    def wait(self, infos, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError("publish not acknowledged by the broker in time")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def meters(broker):
    m = Meters(broker)
    yield m
    m.close()


def wait_until(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout_s, what))


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM %s" % table)).scalar()
