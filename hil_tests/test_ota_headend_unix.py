"""OTA driven by the head-end: its OTA job (headend/ota.py) and the real command dispatcher
(headend/dispatcher.py) update a unix meter booted through the A/B selector.

Same DUT and image as hil_tests/test_ota_unix.py, but nothing here hand-crafts a
command: the image goes into ``firmware_images``, ``ota.start`` queues the manifest,
the dispatcher signs and publishes over MQTT and applies the meter's acks, and each
ack queues the next chunk.  The meter's heartbeats are stored as the ingest stores
them (``UplinkStore``), so the job is CONFIRMED from the new ``fw`` after the reboot.
The dispatcher's clock is fixed at the meter's start time (the DUT runs 300x fast),
so no retry timer fires and every command goes out exactly once.
"""
import pathlib

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from boards.unix.hal import RESTART_EXIT
from headend import commands as C
from headend import migrations, ota
from headend import models as M
from headend.db import make_engine
from headend.dispatcher import Dispatcher
from headend.store import UplinkStore
from hil_tests.conftest import wait_for
from hil_tests.test_ota_unix import (FACTORY, KEY, METER, START_T, heartbeat_fw, image,  # noqa: F401
                                     meter, online, packed, up, wait_exit)

MASTER = bytes(range(100, 132))


@pytest.fixture
def headend_db(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "headend.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as s:
        tenant = M.Tenant(code="HIL", name="HIL")
        s.add(tenant)
        s.flush()
        s.add(M.Meter(id=METER, tenant_id=tenant.id))
        s.flush()
        s.add(M.MeterKey.seal(MASTER, METER, KEY))
        s.commit()
    yield engine
    engine.dispose()


def step_until(dispatcher, pred, timeout_s, what):
    def once():
        dispatcher.step()
        return pred()
    return wait_for(once, timeout_s, what)


def job_state(engine, job_id):
    with Session(engine) as s:
        return s.get(ota.OtaJob, job_id).state


def test_headend_ota_job_installs_and_confirms_a_new_image(meter, up, image, tmp_path, broker,
                                                           headend_db):
    online(meter, up)
    blob = packed(image, tmp_path, "1.1.0")
    with Session(headend_db) as s:
        count = ota.add_image(s, "1.1.0", blob, START_T).chunk_count
        job_id = ota.start(s, METER, "1.1.0", START_T).id
        s.commit()
    d = Dispatcher(headend_db, *tuple(broker), MASTER, client_id="hil-dispatcher",
                   clock=lambda: START_T).start()
    try:
        step_until(d, lambda: job_state(headend_db, job_id) != ota.RUNNING, 60,
                   "the OTA job to leave RUNNING")
        assert job_state(headend_db, job_id) == ota.INSTALLED
        meter.expect(r"urja: ota 1\.1\.0 verified and installed in slot b, restarting",
                     timeout=5)
        assert wait_exit(meter) == RESTART_EXIT
        with Session(headend_db) as s:
            sent = s.execute(select(C.Command.kind, C.Command.state, func.count())
                             .group_by(C.Command.kind, C.Command.state)).all()
        # the manifest, then each chunk once, all applied, in order
        assert sorted(sent) == [("ota", "APPLIED", 1), ("ota_chunk", "APPLIED", count)]

        mark = len(up.received)
        meter.start()  # the board's reset: the selector boots slot b on trial
        meter.expect(r"urja: firmware 1\.1\.0 confirmed in slot b", timeout=20)
        up.wait(lambda u: heartbeat_fw(u, mark), 15, "a heartbeat from the new image")
        beats = [b for b in up.received[mark:] if b["kind"] == "heartbeat"]
        UplinkStore(headend_db).write(beats, now=START_T + 1)
        with Session(headend_db) as s:
            assert [j.state for j in ota.check_confirmations(s, START_T + 2)] == [ota.CONFIRMED]
            s.commit()
        assert job_state(headend_db, job_id) == ota.CONFIRMED
        assert not up.errors, up.errors
    finally:
        d.stop()
