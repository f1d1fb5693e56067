"""The queue's ``time``, ``config``, ``ota`` and ``ota_chunk`` kinds, the time-sync rule,
and one meter's OTA job driven through acks (``commands.handle_ack``), without MQTT.

Runs on SQLite and PostgreSQL.  The meter side of authentication is the
firmware's own ``DownlinkGuard``; ack texts are the ones docs/protocol.md
("ota", "ota_chunk") and ``firmware/app/downlinks.py`` give.
"""
import base64
import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import auth, events as fw_events
from firmware.core import meter as fw_meter
from firmware.protocol import messages
from headend import commands as C
from headend import ota
from headend.store import UplinkStore
from headend.tests.conftest import register_meters

T0 = 1795737600  # 2026-11-27 00:00:00 UTC
KEY = bytes(range(32))
POLICY = C.RetryPolicy(puback_timeout_s=30, ack_timeout_s=120, max_ack_timeout_s=600,
                       late_ack_grace_s=300)
# 3 chunks of ceil(10000 / 3) = 3334 bytes, the last one 3332 (docs/protocol.md "ota")
IMAGE = bytes((i * 7 + 3) % 256 for i in range(10000))


@pytest.fixture
def db(engine):
    register_meters(engine, ["UJ-1", "UJ-2"])
    with Session(engine, expire_on_commit=False) as s:
        yield s


def send(db, cmd, now):
    payload = C.prepare_send(db, cmd, KEY, now, POLICY)
    db.commit()
    return messages.decode_command(payload)


def ack(db, cmd, result, detail=None, now=T0, counter=None):
    body = {"id": cmd.id, "c": cmd.counter if counter is None else counter, "r": result,
            "rn": C.RESULT_NAMES[result]}
    if detail is not None:
        body["d"] = detail
    out = C.handle_ack(db, cmd.meter_id, body, now)
    db.commit()
    return out


def heartbeat(engine, meter_id, seq, t, received_at, fw="1.0.0"):
    body = messages.decode_uplink(messages.topic(meter_id, "heartbeat"), messages.encode_uplink(
        "heartbeat", meter_id, seq, t, {"up": 60, "fw": fw}))
    UplinkStore(engine).write([body], now=received_at)


# --- enqueue checks -----------------------------------------------------------------------

@pytest.mark.parametrize("kind,args,message", [
    ("time", [T0], "utc_s is filled in when it is sent"),
    ("time", ["now"], "bad fields for time"),
    ("config", ["heartbeat_s"], "config needs [setting, value]"),
    ("config", ["heartbeat_s", 600], "config needs [setting, value]"),
    ("config", ["nope", "1"], "nope: unknown setting"),
    ("config", ["key_hex", "00" * 16], "key_hex is set over the commissioning CLI only"),
    ("config", ["tariff", "{}"], "tariff is set over the commissioning CLI only"),
    ("config", ["heartbeat_s", "5"], "heartbeat_s: must be a whole number in 60..86400"),
    ("config", ["energy_source", "solar"], "energy_source: one of pulses, sdm, dlms"),
    ("ota", ["9.9.9"], "no firmware image '9.9.9'"),
    ("ota_chunk", [0, "9.9.9"], "no firmware image '9.9.9'"),
    ("ota_chunk", ["0", "1.1.0"], "ota_chunk needs [index, version]"),
])
def test_enqueue_refuses_what_the_meter_would_refuse(db, kind, args, message):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    with pytest.raises(C.CommandError) as err:
        C.enqueue(db, "UJ-1", kind, args, T0)
    assert message in str(err.value)


def test_config_is_queued_under_the_settings_canonical_name(db):
    cmd = C.enqueue(db, "UJ-1", "config", ["port", "8883"], T0, command_id="CF-1")
    assert cmd.fields == ["CF-1", "broker_port", "8883"]
    assert C.enqueue(db, "UJ-1", "config", ["heartbeat_s", "600"], T0).state == C.QUEUED


def test_ota_manifest_comes_from_the_stored_image(db):
    image = ota.add_image(db, "1.1.0", IMAGE, T0)
    cmd = C.enqueue(db, "UJ-1", "ota", ["1.1.0"], T0, command_id="OT-1")
    assert cmd.fields == ["OT-1", "1.1.0", 10000, hashlib.sha256(IMAGE).hexdigest(), 3]
    assert image.chunk_size == 3334
    with pytest.raises(C.CommandError, match="does not match"):
        C.enqueue(db, "UJ-1", "ota", ["1.1.0", 10000, "ab" * 32, 3], T0)
    with pytest.raises(C.CommandError, match="index 3 outside 0..2"):
        C.enqueue(db, "UJ-1", "ota_chunk", [3, "1.1.0"], T0)


def test_an_image_is_stored_once_per_version(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    with pytest.raises(ota.OtaError, match="already stored"):
        ota.add_image(db, "1.1.0", b"other", T0)
    with pytest.raises(ota.OtaError, match="version"):
        ota.add_image(db, "1.1|0", b"x", T0)


def test_a_chunk_goes_out_as_base64_of_its_bytes_and_the_payload_is_dropped_when_done(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    cmd = C.enqueue(db, "UJ-1", "ota_chunk", [2, "1.1.0"], T0, command_id="CH-2")
    wire = send(db, cmd, T0)
    assert wire["fields"][:2] == ["CH-2", 2]
    assert base64.b64decode(wire["fields"][2]) == IMAGE[6668:]
    assert auth.DownlinkGuard("UJ-1").check(KEY, wire, T0) == auth.OK
    ack(db, cmd, auth.OK, "chunk 2/3")
    assert cmd.state == C.APPLIED and cmd.payload is None


# --- time: the clock of the send, not of the queue -----------------------------------------

def test_time_carries_the_head_end_clock_of_the_send(db):
    cmd = C.enqueue(db, "UJ-1", "time", [], T0, command_id="TS-1")
    db.commit()
    wire = send(db, cmd, T0 + 5000)  # the meter was offline for 83 minutes
    assert wire["fields"] == ["TS-1", T0 + 5000]
    assert wire["expires_at"] == T0 + 5000 + C.TIME_WIRE_LIFETIME_S
    assert fw_meter.clock_sync_time(wire["fields"]) == T0 + 5000
    assert auth.DownlinkGuard("UJ-1").check(KEY, wire, T0 + 5001) == auth.OK


def test_forced_time_keeps_force_after_the_clock(db):
    cmd = C.enqueue(db, "UJ-1", "time", ["force"], T0, command_id="TS-F")
    assert send(db, cmd, T0 + 7)["fields"] == ["TS-F", T0 + 7, "force"]


def test_time_resend_is_re_signed_with_the_same_counter_and_replayed_once_applied(db):
    cmd = C.enqueue(db, "UJ-1", "time", [], T0, command_id="TS-1")
    first = send(db, cmd, T0)
    second = send(db, cmd, T0 + 200)     # the retry schedule re-sends it
    assert second["counter"] == first["counter"]
    assert second["fields"] == ["TS-1", T0 + 200] and second["mac"] != first["mac"]
    meter = auth.DownlinkGuard("UJ-1")
    assert meter.check(KEY, first, T0 + 1) == auth.OK
    meter.accept(first)
    assert meter.check(KEY, second, T0 + 201) == auth.REPLAYED   # moves nothing
    # a meter that never got the first copy applies the second with the fresh clock
    assert auth.DownlinkGuard("UJ-1").check(KEY, second, T0 + 201) == auth.OK


def test_an_old_copy_waiting_in_the_broker_expires_on_the_meter(db):
    cmd = C.enqueue(db, "UJ-1", "time", [], T0, command_id="TS-1")
    stale = send(db, cmd, T0)
    # delivered 3 hours later to a meter whose clock is right: refused, clock untouched
    assert auth.DownlinkGuard("UJ-1").check(KEY, stale, T0 + 3 * 3600) == auth.EXPIRED


def test_expired_answer_to_an_old_time_copy_keeps_the_command_open(db):
    cmd = C.enqueue(db, "UJ-1", "time", [], T0, command_id="TS-1")
    send(db, cmd, T0)
    send(db, cmd, T0 + 4000)
    ack(db, cmd, auth.EXPIRED, now=T0 + 4001)     # the copy of T0
    assert cmd.state == C.SENT and cmd.result_name is None
    ack(db, cmd, auth.OK, "clock %d step 3" % (T0 + 4000), now=T0 + 4002)  # the fresh one
    assert cmd.state == C.APPLIED


def test_expired_answer_to_other_kinds_still_fails_them(db):
    cmd = C.enqueue(db, "UJ-1", "relay", ["connect"], T0, command_id="R-1")
    send(db, cmd, T0)
    ack(db, cmd, auth.EXPIRED)
    assert cmd.state == C.FAILED


def test_time_lifetime_covers_a_meter_clock_known_to_run_ahead(db, engine):
    heartbeat(engine, "UJ-1", 1, T0 + 3000, T0)      # meter 50 minutes ahead
    cmd = C.enqueue(db, "UJ-1", "time", [], T0, command_id="TS-1")
    wire = send(db, cmd, T0 + 10)
    assert wire["expires_at"] == T0 + 10 + C.TIME_WIRE_LIFETIME_S + 3000
    assert auth.DownlinkGuard("UJ-1").check(KEY, wire, T0 + 3010) == auth.OK


# --- the time-sync rule -------------------------------------------------------------------

def time_commands(db, meter_id="UJ-1"):
    return list(db.scalars(select(C.Command).where(C.Command.meter_id == meter_id,
                                                   C.Command.kind == "time")))


def test_a_meter_clock_off_by_more_than_the_threshold_gets_one_time(db, engine):
    heartbeat(engine, "UJ-1", 1, T0 - 900, T0)       # 15 minutes behind
    heartbeat(engine, "UJ-2", 1, T0 - 100, T0)       # within 300 s
    queued = C.queue_time_syncs(db, T0 + 5, threshold_s=300, window_s=2700)
    db.commit()
    assert [c.meter_id for c in queued] == ["UJ-1"]
    heartbeat(engine, "UJ-1", 2, T0 - 300, T0 + 600)
    assert C.queue_time_syncs(db, T0 + 605, threshold_s=300, window_s=2700) == []
    assert len(time_commands(db)) == 1                # never two open


def test_after_a_sync_only_a_heartbeat_received_later_counts(db, engine):
    heartbeat(engine, "UJ-1", 1, T0 + 900, T0)        # 15 minutes ahead
    cmd = C.queue_time_syncs(db, T0, 300, 2700)[0]
    db.commit()
    send(db, cmd, T0 + 10)
    ack(db, cmd, auth.OK, now=T0 + 20)
    assert C.queue_time_syncs(db, T0 + 30, 300, 2700) == []   # the old heartbeat again
    heartbeat(engine, "UJ-1", 2, T0 + 2000, T0 + 900)         # drifted again
    assert len(C.queue_time_syncs(db, T0 + 905, 300, 2700)) == 1


def test_a_refused_sync_is_not_repeated_before_the_retry_wait(db, engine):
    heartbeat(engine, "UJ-1", 1, T0 + 3 * 86400, T0)   # a step the meter refuses unforced
    cmd = C.queue_time_syncs(db, T0, 300, 2700)[0]
    db.commit()
    send(db, cmd, T0)
    ack(db, cmd, fw_meter.BAD_VALUE, "time: step -259200 s exceeds 86400 s", now=T0 + 5)
    heartbeat(engine, "UJ-1", 2, T0 + 3 * 86400 + 900, T0 + 900)
    assert C.queue_time_syncs(db, T0 + 905, 300, 2700) == []
    assert len(C.queue_time_syncs(db, T0 + 5 + C.TIME_SYNC_RETRY_S, 300,
                                  C.TIME_SYNC_RETRY_S)) == 1


# --- one meter's OTA job ---------------------------------------------------------------------

def open_command(db, job):
    db.refresh(job)
    return db.get(C.Command, job.command_id) if job.command_id else None


def step(db, job, result, detail, now):
    """Send the job's open command and answer it as the meter would; returns the wire dict."""
    cmd = open_command(db, job)
    wire = send(db, cmd, now)
    ack(db, cmd, result, detail, now=now + 1)
    return wire


def test_ota_job_sends_manifest_then_each_chunk_after_the_previous_ack(db, engine):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    job = ota.start(db, "UJ-1", "1.1.0", T0)
    db.commit()
    manifest = step(db, job, auth.OK, "ota 1.1.0 next chunk 0", T0)
    assert manifest["kind"] == "ota"
    assert manifest["fields"][1:] == ["1.1.0", 10000, hashlib.sha256(IMAGE).hexdigest(), 3]
    got = b""
    for i in range(3):
        cmd = open_command(db, job)
        assert (cmd.kind, cmd.fields[1]) == ("ota_chunk", i)
        # only one of the job's commands is ever open (the meter queues at most 8)
        assert db.scalars(select(C.Command).where(C.Command.meter_id == "UJ-1",
                                                  C.Command.state.in_(C.OPEN_STATES))).all() \
            == [cmd]
        detail = "ota 1.1.0 installed: restarting" if i == 2 else "chunk %d/3" % i
        wire = step(db, job, auth.OK, detail, T0 + 10 * (i + 1))
        got += base64.b64decode(wire["fields"][2])
    assert got == IMAGE
    assert job.state == ota.INSTALLED and job.command_id is None
    heartbeat(engine, "UJ-1", 1, T0 + 100, T0 + 100, fw="1.1.0")
    assert ota.check_confirmations(db, T0 + 101) == [job]
    assert job.state == ota.CONFIRMED


def test_ota_manifest_resume_starts_at_the_chunk_the_meter_names(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    job = ota.start(db, "UJ-1", "1.1.0", T0)
    db.commit()
    step(db, job, auth.OK, "ota 1.1.0 next chunk 2", T0)
    assert open_command(db, job).fields[1] == 2


def test_ota_out_of_order_resumes_from_the_meters_next_chunk(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    job = ota.start(db, "UJ-1", "1.1.0", T0)
    db.commit()
    step(db, job, auth.OK, "ota 1.1.0 next chunk 0", T0)
    step(db, job, auth.OK, "chunk 0/3", T0 + 10)
    step(db, job, fw_meter.REFUSED, "ota OUT_OF_ORDER: next chunk 0", T0 + 20)  # chunk 1
    cmd = open_command(db, job)
    assert cmd.fields[1] == 0 and job.resumes == 1 and job.state == ota.RUNNING
    step(db, job, auth.OK, "chunk 0 already written", T0 + 30)
    assert open_command(db, job).fields[1] == 1


def test_ota_bad_hash_fails_the_job_and_sends_nothing_more(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    job = ota.start(db, "UJ-1", "1.1.0", T0)
    db.commit()
    step(db, job, auth.OK, "ota 1.1.0 next chunk 0", T0)
    step(db, job, auth.OK, "chunk 0/3", T0 + 10)
    step(db, job, auth.OK, "chunk 1/3", T0 + 20)
    step(db, job, fw_meter.BAD_VALUE, "ota BAD_HASH", T0 + 30)
    assert job.state == ota.FAILED and "BAD_HASH" in job.reason
    assert job.command_id is None
    assert db.scalars(select(C.Command).where(C.Command.state.in_(C.OPEN_STATES))).all() == []


def test_ota_rolled_back_image_fails_the_job(db, engine):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    job = ota.start(db, "UJ-1", "1.1.0", T0)
    db.commit()
    step(db, job, auth.OK, "ota 1.1.0 next chunk 2", T0)
    step(db, job, auth.OK, "ota 1.1.0 installed: restarting", T0 + 10)
    ev = messages.decode_uplink(messages.topic("UJ-1", "event"), messages.encode_uplink(
        "event", "UJ-1", 5, T0 + 60, {"e": [[1, T0 + 60, fw_events.FW_ROLLED_BACK, 10100]]}))
    UplinkStore(engine).write([ev], now=T0 + 60)
    assert ota.check_confirmations(db, T0 + 61) == [job]
    assert job.state == ota.FAILED and "FW_ROLLED_BACK" in job.reason


def test_one_ota_job_per_meter_at_a_time(db):
    ota.add_image(db, "1.1.0", IMAGE, T0)
    ota.start(db, "UJ-1", "1.1.0", T0)
    with pytest.raises(ota.OtaError, match="already has OTA job"):
        ota.start(db, "UJ-1", "1.1.0", T0)
