"""Firmware over the air for one meter: the manifest, then each chunk after the previous ack.

An ``OtaJob`` drives one meter through one image of ``firmware_images``
(``headend.models.FirmwareImage``) on the durable command queue
(``headend.commands``).  At most one of its commands is open at a time: the
meter holds one chunk in RAM and queues at most 8 downlinks
(docs/protocol.md "ota", "ota_chunk").

Lifecycle (``TRANSITIONS``; anything else raises ``OtaError``)::

    RUNNING --last chunk acked ("installed: restarting")--> INSTALLED
    INSTALLED --heartbeat fw == version--> CONFIRMED
    RUNNING | INSTALLED --BAD_HASH, other failure, FW_ROLLED_BACK--> FAILED

The next command is queued by a command-outcome listener
(``headend.commands.OUTCOME_LISTENERS``), in the same transaction as the ack
that finished the previous one:

- ``ota`` OK ``ota <version> next chunk <n>``: chunks from ``n`` (the meter
  resumes a download it journaled);
- ``ota_chunk`` OK (``chunk i/count``, ``chunk i already written``) or
  REPLAYED: chunk ``i + 1``; the last chunk's OK means installed;
- REFUSED ``ota OUT_OF_ORDER: next chunk <n>``: resume from ``n`` (at most
  ``MAX_RESUMES`` times);
- anything else (BAD_VALUE ``ota BAD_HASH``, EXPIRED, ...): FAILED, reason kept.

>>> job = start(session, "UJ-1", "1.1.0", now=T0)      # doctest: +SKIP
>>> job.state, job.command_id                           # doctest: +SKIP
('RUNNING', 'OTA-1-0')
"""
import hashlib
import re

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from firmware.app import downlinks as fw_downlinks
from firmware.core import events as fw_events
from headend import commands as C
from headend import models as M
from headend.db import Base

RUNNING, INSTALLED, CONFIRMED, FAILED = "RUNNING", "INSTALLED", "CONFIRMED", "FAILED"
OPEN_STATES = (RUNNING, INSTALLED)
TRANSITIONS = {
    (RUNNING, "next"): RUNNING,
    (RUNNING, "installed"): INSTALLED,
    (RUNNING, "fail"): FAILED,
    (INSTALLED, "confirmed"): CONFIRMED,
    (INSTALLED, "fail"): FAILED,           # rolled back, or never confirmed
}
MAX_RESUMES = 16
_NEXT_CHUNK = re.compile(r"next chunk (\d+)")


class OtaError(ValueError):
    """An OTA job that cannot start (no image, one already running) or an illegal move."""


class OtaJob(Base):
    """One meter's firmware update: which image, how far, and the command in flight."""
    __tablename__ = "ota_jobs"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    version: Mapped[str] = mapped_column(ForeignKey("firmware_images.version"))
    state: Mapped[str] = mapped_column(String(12), index=True)
    next_chunk: Mapped[int] = mapped_column(Integer, default=0)
    command_id: Mapped[str | None] = mapped_column(String(C.ID_MAX), default=None, index=True)
    sends: Mapped[int] = mapped_column(Integer, default=0)   # commands queued (unique ids)
    resumes: Mapped[int] = mapped_column(Integer, default=0)  # OUT_OF_ORDER resumes
    campaign_id: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    installed_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    def as_dict(self):
        return {"id": self.id, "meter_id": self.meter_id, "version": self.version,
                "state": self.state, "next_chunk": self.next_chunk,
                "command_id": self.command_id, "resumes": self.resumes,
                "campaign_id": self.campaign_id, "created_at": self.created_at,
                "installed_at": self.installed_at, "finished_at": self.finished_at,
                "reason": self.reason}


def add_image(session, version, data, now, created_by=None):
    """Store a firmware image (chunks of at most OTA_MAX_CHUNK bytes); returns it.

    >>> add_image(session, "1.1.0", b"\\x00" * 40000, now=T0).chunk_count  # doctest: +SKIP
    10
    """
    if not isinstance(version, str) or not 1 <= len(version) <= 32 or "|" in version \
            or not version.isprintable() or " " in version:
        raise OtaError("version must be 1..32 printable characters without space or '|'")
    if not data:
        raise OtaError("empty image")
    if session.get(M.FirmwareImage, version) is not None:
        raise OtaError("firmware image %s already stored" % version)
    count = (len(data) + fw_downlinks.OTA_MAX_CHUNK - 1) // fw_downlinks.OTA_MAX_CHUNK
    image = M.FirmwareImage(version=version, size=len(data),
                            sha256=hashlib.sha256(data).hexdigest(), chunk_count=count,
                            data=bytes(data), created_at=now, created_by=created_by)
    if fw_downlinks.ota_manifest(["x"] + image.manifest_fields()) is None:
        raise OtaError("image %s: the meter would refuse its manifest" % version)
    session.add(image)
    session.flush()
    return image


def _move(job, event, now, reason=None):
    new = TRANSITIONS.get((job.state, event))
    if new is None:
        raise OtaError("ota job %s: %r not allowed in state %s" % (job.id, event, job.state))
    job.state, job.updated_at = new, now
    if reason is not None:
        job.reason = reason
    if new in (CONFIRMED, FAILED):
        job.finished_at = now
    if new == INSTALLED:
        job.installed_at = now


def _queue(session, job, kind, args, now):
    cmd = C.enqueue(session, job.meter_id, kind, args, now,
                    command_id="OTA-%d-%d" % (job.id, job.sends))
    job.sends += 1
    job.command_id = cmd.id
    job.updated_at = now
    return cmd


def start(session, meter_id, version, now, campaign_id=None):
    """Begin updating ``meter_id`` to image ``version``: queue the manifest; returns the job."""
    if session.get(M.FirmwareImage, version) is None:
        raise OtaError("no firmware image %r" % (version,))
    if session.get(M.Meter, meter_id) is None:
        raise OtaError("no meter %r" % (meter_id,))
    busy = session.scalars(select(OtaJob).where(OtaJob.meter_id == meter_id,
                                                OtaJob.state.in_(OPEN_STATES))).first()
    if busy is not None:
        raise OtaError("meter %s already has OTA job %d (%s)" % (meter_id, busy.id, busy.state))
    job = OtaJob(meter_id=meter_id, version=version, state=RUNNING, next_chunk=0, sends=0,
                 resumes=0, campaign_id=campaign_id, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    _queue(session, job, C.OTA, [version], now)
    return job


def _queue_chunk(session, job, index, now):
    image = session.get(M.FirmwareImage, job.version)
    if index >= image.chunk_count:  # nothing left to send: the meter has it all
        _move(job, "installed", now)
        job.command_id = None
        return
    job.next_chunk = index
    _queue(session, job, C.OTA_CHUNK, [index, job.version], now)
    _move(job, "next", now)


def on_command_outcome(session, cmd, event, old_state, now):
    """Command-outcome listener: the next step of the OTA job that sent ``cmd``."""
    if cmd.kind not in (C.OTA, C.OTA_CHUNK):
        return
    job = session.scalars(select(OtaJob).where(OtaJob.command_id == cmd.id)).first()
    if job is None or job.state != RUNNING:
        return
    reason = cmd.reason or ""
    if cmd.state == C.APPLIED:
        if cmd.kind == C.OTA:
            found = _NEXT_CHUNK.search(reason)
            _queue_chunk(session, job, int(found.group(1)) if found else job.next_chunk, now)
            return
        index = cmd.fields[1]
        if "installed" in reason:
            job.next_chunk = index + 1
            job.command_id = None
            _move(job, "installed", now, reason=reason)
            return
        _queue_chunk(session, job, index + 1, now)
        return
    found = _NEXT_CHUNK.search(reason)
    if cmd.state == C.FAILED and cmd.result_name == "REFUSED" and "OUT_OF_ORDER" in reason \
            and found and job.resumes < MAX_RESUMES:
        job.resumes += 1
        _queue_chunk(session, job, int(found.group(1)), now)
        return
    job.command_id = None
    _move(job, "fail", now, reason="%s %s %s: %s" % (cmd.kind, cmd.id, cmd.state,
                                                     reason or cmd.result_name or "-"))


C.OUTCOME_LISTENERS.append(on_command_outcome)


def check_confirmations(session, now):
    """INSTALLED jobs: CONFIRMED when a heartbeat received after the install reports the
    new ``fw``; FAILED when a FW_ROLLED_BACK event of that version arrives.  Returns the
    jobs that moved."""
    moved = []
    for job in list(session.scalars(select(OtaJob).where(OtaJob.state == INSTALLED))):
        seen = M.UplinkSeen
        fw = session.execute(
            select(M.Heartbeat.firmware).join(seen, (seen.meter_id == M.Heartbeat.meter_id)
                                              & (seen.seq == M.Heartbeat.seq))
            .where(M.Heartbeat.meter_id == job.meter_id, seen.received_at >= job.installed_at)
            .order_by(M.Heartbeat.seq.desc()).limit(1)).scalar()
        if fw == job.version:
            _move(job, "confirmed", now, reason="heartbeat fw %s" % fw)
            moved.append(job)
            continue
        code = fw_downlinks.version_code(job.version)
        rolled = session.execute(
            select(M.EventRecord.event_seq).join(seen, (seen.meter_id == M.EventRecord.meter_id)
                                                 & (seen.seq == M.EventRecord.seq))
            .where(M.EventRecord.meter_id == job.meter_id,
                   M.EventRecord.code == fw_events.FW_ROLLED_BACK,
                   M.EventRecord.value == code, seen.received_at >= job.installed_at)
            .limit(1)).first()
        if rolled is not None:
            _move(job, "fail", now, reason="FW_ROLLED_BACK: %s did not confirm" % job.version)
            moved.append(job)
    return moved
