"""The durable downlink command queue: one lifecycle table, per-meter counters, signing, acks.

Lifecycle (``TRANSITIONS`` is the whole of it; anything not listed raises
IllegalTransition)::

    QUEUED --send--> SENT --puback--> DELIVERED --ack OK/REPLAYED--> APPLIED
       |               |                  |      --ack EXPIRED/BAD_VALUE/...--> FAILED
       |               |                  |      --ack OUT_OF_ORDER--> QUEUED (new counter)
       +---------------+------------------+--expire--> EXPIRED (+ alert)
       +--reject (no key to sign with)--> FAILED
       +--cancel (never sent: the payment is delivered by STS token instead)--> CANCELLED

- SENT: published by the dispatcher, the broker's PUBACK not seen yet.
- DELIVERED: the broker took it (QoS 1 PUBACK) and holds it in the meter's
  persistent session; only the meter's ``ack`` uplink tells us more.
- A command stays in SENT/DELIVERED until acked or expired; the dispatcher
  re-publishes the *same signed bytes* on the ``RetryPolicy`` schedule.  A
  copy the meter already applied answers REPLAYED, which counts as applied,
  so re-sending is always safe.
- The counter is allocated and the command signed (``firmware.core.auth.
  make_command``, the meter's own code) when it is first sent, so counters
  follow send order.  OUT_OF_ORDER sends it back to QUEUED without a counter:
  the next send allocates a higher one and re-signs it (same command id, so
  the meter still applies it at most once).
- The meter is the authority on money: a late OK for a command we had
  already EXPIRED moves it to APPLIED (and raises an alert).  Duplicate acks
  (one per copy the meter received) are listed as self-loops.

Counters live in ``meter_command_counters``: ``UPDATE ... SET last = last + 1
RETURNING last`` in the caller's transaction.  The row lock serialises
concurrent allocations for one meter on PostgreSQL (SQLite has one writer),
and the value is in the database, so it survives restarts.

``time`` (clock sync) is queued as ``[id]`` or ``[id, "force"]`` and gets its
``utc_s`` at *every* send (``_wire``): a meter offline for hours must get the
head-end's clock when the command goes out, not when it was queued.  Re-sends
keep the counter and are re-signed; ``queue_time_syncs`` queues one for a
meter whose heartbeat clock is off by more than a threshold.  ``config`` is
``[id, setting, value]``, checked at enqueue with the meter's own setting
rules.  ``ota`` / ``ota_chunk`` name an image of ``firmware_images``
(``headend.models.FirmwareImage``); the chunk's bytes are put in at the first
send.  ``headend.ota`` drives one meter's update, chunk after acked chunk.

``backfill`` commands are queued by the ingest (``headend.store.
request_backfills``) for sequence gaps that stay open; an OK ack carries
``n`` and ``lo``, recorded on the gap, and ``lo`` above the gap marks it
unrecoverable (``data_lost`` alert).

Every transition is a ``command_transitions`` row (audit trail).  Outcome
listeners (``OUTCOME_LISTENERS``, e.g. the ledger) run in the same
transaction when a command reaches APPLIED, FAILED or EXPIRED.

>>> cmd = enqueue(session, "UJ-1", "topup", [50000], now=T0, command_id="TU-1")  # doctest: +SKIP
>>> cmd.state                                                                    # doctest: +SKIP
'QUEUED'
"""
import base64
import json
import logging
import secrets

from sqlalchemy import (BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        func, select, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from firmware.app import config as fw_config, downlinks as fw_downlinks
from firmware.core import auth, meter as fw_meter
from firmware.protocol import messages
from headend import models as M
from headend.db import Base

log = logging.getLogger("urja.commands")

QUEUED, SENT, DELIVERED, APPLIED, FAILED, EXPIRED, CANCELLED = (
    "QUEUED", "SENT", "DELIVERED", "APPLIED", "FAILED", "EXPIRED", "CANCELLED")
STATES = (QUEUED, SENT, DELIVERED, APPLIED, FAILED, EXPIRED, CANCELLED)
OPEN_STATES = (QUEUED, SENT, DELIVERED)
FINAL_STATES = (APPLIED, FAILED, EXPIRED, CANCELLED)

# events that drive the lifecycle
SEND, PUBACK, RESEND, ACK_APPLIED, ACK_FAILED, ACK_OUT_OF_ORDER, EXPIRE, REJECT, CANCEL = (
    "send", "puback", "resend", "ack_applied", "ack_failed", "ack_out_of_order", "expire",
    "reject", "cancel")
ACK_STALE_COPY = "ack_stale_copy"  # ``time`` only: EXPIRED for an older copy (see handle_ack)

TRANSITIONS = {
    (QUEUED, SEND): SENT,
    (QUEUED, EXPIRE): EXPIRED,
    (QUEUED, REJECT): FAILED,            # cannot be signed (no key for the meter)
    (QUEUED, CANCEL): CANCELLED,         # never sent (callers check sent_at): paid by STS token
    (QUEUED, ACK_APPLIED): APPLIED,      # an ack for a copy sent before an OUT_OF_ORDER re-queue
    (SENT, PUBACK): DELIVERED,
    (SENT, RESEND): SENT,
    (SENT, ACK_APPLIED): APPLIED,        # the ack can overtake our PUBACK handling
    (SENT, ACK_FAILED): FAILED,
    (SENT, ACK_OUT_OF_ORDER): QUEUED,
    (SENT, EXPIRE): EXPIRED,
    (DELIVERED, PUBACK): DELIVERED,      # PUBACK of an earlier copy
    (DELIVERED, RESEND): SENT,
    (DELIVERED, ACK_APPLIED): APPLIED,
    (DELIVERED, ACK_FAILED): FAILED,
    (DELIVERED, ACK_OUT_OF_ORDER): QUEUED,
    (DELIVERED, EXPIRE): EXPIRED,
    (SENT, ACK_STALE_COPY): SENT,        # ``time``: a fresher copy may still be applied
    (DELIVERED, ACK_STALE_COPY): DELIVERED,
    # duplicates: every copy in the broker gets its own ack / PUBACK
    (APPLIED, ACK_APPLIED): APPLIED,
    (APPLIED, PUBACK): APPLIED,
    (FAILED, ACK_FAILED): FAILED,
    (FAILED, PUBACK): FAILED,
    (EXPIRED, PUBACK): EXPIRED,
    (EXPIRED, ACK_FAILED): EXPIRED,      # the meter saw it too late as well
    (EXPIRED, ACK_APPLIED): APPLIED,     # the meter is the authority: the credit is there
}

# meter result code (docs/protocol.md "Result codes") -> lifecycle event
ACK_EVENTS = {
    auth.OK: ACK_APPLIED,
    auth.REPLAYED: ACK_APPLIED,
    auth.OUT_OF_ORDER: ACK_OUT_OF_ORDER,
}  # every other code (BAD_MAC, EXPIRED, WRONG_METER, MALFORMED, REFUSED, UNKNOWN_KIND, BAD_VALUE)
#    is ACK_FAILED with the result name as the reason
RESULT_NAMES = fw_meter.RESULT_NAMES

BACKFILL = "backfill"
TIME, CONFIG, OTA, OTA_CHUNK = "time", "config", "ota", "ota_chunk"
KINDS = ("topup", "relay", "tariff", "reset_lockout", BACKFILL, TIME, CONFIG, OTA, OTA_CHUNK)
DEFAULT_TTL_S = {"topup": 7 * 86400, "relay": 3600, "tariff": 7 * 86400,
                 "reset_lockout": 3600, BACKFILL: 86400, TIME: 86400, CONFIG: 7 * 86400,
                 OTA: 7 * 86400, OTA_CHUNK: 86400}
# A ``time`` command's signed expires_at: utc_s + this + how far the meter's clock is
# known to run ahead (its newest uplink's t - received_at).  A copy that waited longer
# than this in the broker (meter offline) is EXPIRED on the meter instead of setting its
# clock back by the wait; any copy the meter does apply moves it back by at most this.
TIME_WIRE_LIFETIME_S = 600
TIME_SYNC_RETRY_S = 6 * 3600  # after a failed/expired ``time``, the sync rule waits this long
ID_MAX = 64
BACKFILL_MAX_SPAN = 10000  # the meter answers BAD_VALUE for a longer range (docs/protocol.md)


class CommandError(ValueError):
    """A command that cannot be queued or sent (unknown meter, bad fields, no key)."""


class IllegalTransition(CommandError):
    """An event that the lifecycle table does not allow in the command's state."""

    def __init__(self, state, event, command_id=None):
        self.state, self.event, self.command_id = state, event, command_id
        super().__init__("command %s: %r is not allowed in state %s" % (command_id, event, state))


def next_state(state, event, command_id=None):
    """The state after ``event``; IllegalTransition when the table has no such move.

    >>> next_state("QUEUED", "send")
    'SENT'
    """
    new = TRANSITIONS.get((state, event))
    if new is None:
        raise IllegalTransition(state, event, command_id)
    return new


class RetryPolicy:
    """When to re-publish: ``puback_timeout_s`` without a PUBACK, else an ack timeout that
    doubles per attempt (``ack_timeout_s`` * 2^(attempts-1), capped at ``max_ack_timeout_s``).

    ``late_ack_grace_s``: a sent command is expired only this long after its
    ``expires_at``, so an ack of a command applied at its last valid second
    can still arrive.  ``reconnect_settle_s``: when a meter comes back online,
    its un-acked commands are re-sent after this long (the broker's queued
    copy normally gets there first).

    >>> RetryPolicy(ack_timeout_s=60, max_ack_timeout_s=200).ack_wait_s(3)
    200
    """

    def __init__(self, puback_timeout_s=30, ack_timeout_s=120, max_ack_timeout_s=3600,
                 late_ack_grace_s=300, reconnect_settle_s=30):
        for name, v in (("puback_timeout_s", puback_timeout_s), ("ack_timeout_s", ack_timeout_s),
                        ("max_ack_timeout_s", max_ack_timeout_s),
                        ("late_ack_grace_s", late_ack_grace_s),
                        ("reconnect_settle_s", reconnect_settle_s)):
            if not isinstance(v, int) or v < 0:
                raise CommandError("%s must be an int >= 0, got %r" % (name, v))
        self.puback_timeout_s = puback_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.max_ack_timeout_s = max_ack_timeout_s
        self.late_ack_grace_s = late_ack_grace_s
        self.reconnect_settle_s = reconnect_settle_s

    def ack_wait_s(self, attempts):
        wait = self.ack_timeout_s << max(0, min(attempts - 1, 30))
        return min(wait, self.max_ack_timeout_s)


class Command(Base):
    """One downlink command and where it is in its lifecycle."""
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_state_due", "state", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)  # = fields[0] on the wire
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    args: Mapped[str] = mapped_column(Text, default="[]")  # JSON: fields after the id
    expires_at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default=QUEUED)
    counter: Mapped[int | None] = mapped_column(BigInteger, default=None)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)  # signed CBOR
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # publishes of this counter
    reissues: Mapped[int] = mapped_column(Integer, default=0)  # OUT_OF_ORDER re-queues
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    result_code: Mapped[int | None] = mapped_column(Integer, default=None)
    result_name: Mapped[str | None] = mapped_column(String(24), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    @property
    def fields(self):
        return [self.id] + json.loads(self.args)

    def as_dict(self):
        return {"id": self.id, "meter_id": self.meter_id, "kind": self.kind,
                "fields": self.fields, "expires_at": self.expires_at, "state": self.state,
                "counter": self.counter, "attempts": self.attempts, "reissues": self.reissues,
                "next_attempt_at": self.next_attempt_at, "created_at": self.created_at,
                "sent_at": self.sent_at, "delivered_at": self.delivered_at,
                "finished_at": self.finished_at, "result_code": self.result_code,
                "result_name": self.result_name, "reason": self.reason}


class MeterCommandCounter(Base):
    """The last downlink counter allocated for a meter (the meter needs them strictly increasing)."""
    __tablename__ = "meter_command_counters"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    last_counter: Mapped[int] = mapped_column(BigInteger, default=0)


class CommandTransition(Base):
    """Audit trail: one row per lifecycle event applied to a command."""
    __tablename__ = "command_transitions"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(ForeignKey("commands.id"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(20))
    from_state: Mapped[str] = mapped_column(String(12))
    to_state: Mapped[str] = mapped_column(String(12))
    counter: Mapped[int | None] = mapped_column(BigInteger, default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)


class CommandAlert(Base):
    """Something an operator must look at: an expired command, a late or unexpected ack."""
    __tablename__ = "command_alerts"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    meter_id: Mapped[str] = mapped_column(String(64), index=True)
    command_id: Mapped[str | None] = mapped_column(String(ID_MAX), default=None)
    # command_expired | late_ack | unexpected_ack | data_lost (backfill: the meter no longer
    # holds the missing uplinks)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    acknowledged: Mapped[bool] = mapped_column(default=False)


# listeners(session, command, event, old_state, now), called when a command reaches a final state
OUTCOME_LISTENERS = []


def raise_alert(session, now, meter_id, command_id, kind, message, hook=None):
    """Store a CommandAlert and pass it to ``hook`` (e.g. headend.alerts / a notifier)."""
    alert = CommandAlert(at=now, meter_id=meter_id, command_id=command_id, kind=kind,
                         message=message)
    session.add(alert)
    log.warning("%s %s %s: %s", kind, meter_id, command_id, message)
    if hook is not None:
        hook(alert)
    return alert


def _insert(session, table):
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise CommandError("unsupported database %r" % name)


def allocate_counter(session, meter_id):
    """The meter's next downlink counter (1, 2, 3, ...), in the caller's transaction.

    >>> allocate_counter(session, "UJ-1"), allocate_counter(session, "UJ-1")  # doctest: +SKIP
    (1, 2)
    """
    table = MeterCommandCounter.__table__
    session.execute(_insert(session, table).values(meter_id=meter_id, last_counter=0)
                    .on_conflict_do_nothing())
    return session.execute(update(table).where(table.c.meter_id == meter_id)
                           .values(last_counter=table.c.last_counter + 1)
                           .returning(table.c.last_counter)).scalar_one()


def _check_config(args):
    """``config`` fields after the id, ``[setting, value]``: the meter's own rules
    (``firmware.app.downlinks.REMOTE_SETTINGS``, ``firmware.app.config.parse_text``), so
    what the meter would refuse is refused here.  Returns them with the setting's
    canonical name.  The meter also re-validates its whole configuration, which the
    head-end cannot see: that can still answer BAD_VALUE."""
    if len(args) != 2 or not all(isinstance(a, str) for a in args):
        raise CommandError("config needs [setting, value] (two strings, the value as the "
                           "meter CLI's text), got %r" % (args,))
    try:
        name = fw_config.canonical_name(args[0])
    except fw_config.ConfigError as err:
        raise CommandError("config: %s" % err)
    if name not in fw_downlinks.REMOTE_SETTINGS:
        raise CommandError("config: %s is set over the commissioning CLI only; a downlink may "
                           "set %s" % (name, ", ".join(fw_downlinks.REMOTE_SETTINGS)))
    try:
        fw_config.parse_text(name, args[1])
    except fw_config.ConfigError as err:
        raise CommandError("config: %s" % err)
    return [name, args[1]]


def _check_ota(session, kind, args):
    """``ota`` ``[version]`` (expanded to the image's manifest) or the full manifest
    ``[version, size, sha256_hex, chunk_count]``; ``ota_chunk`` ``[index, version]``.
    The image must be in ``firmware_images``."""
    if kind == OTA:
        if not args or not isinstance(args[0], str):
            raise CommandError("ota needs [version] or [version, size, sha256_hex, chunk_count]")
        image = session.get(M.FirmwareImage, args[0])
        if image is None:
            raise CommandError("ota: no firmware image %r (add it first)" % (args[0],))
        if len(args) != 1 and list(args) != image.manifest_fields():
            raise CommandError("ota: manifest %r does not match image %s %r" % (
                args, image.version, image.manifest_fields()))
        if fw_downlinks.ota_manifest(["x"] + image.manifest_fields()) is None:
            raise CommandError("ota: image %s has chunks the meter refuses (<= %d bytes)" % (
                image.version, fw_downlinks.OTA_MAX_CHUNK))
        return image.manifest_fields()
    if len(args) != 2 or type(args[0]) is not int or not isinstance(args[1], str):
        raise CommandError("ota_chunk needs [index, version], got %r" % (args,))
    image = session.get(M.FirmwareImage, args[1])
    if image is None:
        raise CommandError("ota_chunk: no firmware image %r" % (args[1],))
    if not 0 <= args[0] < image.chunk_count:
        raise CommandError("ota_chunk: index %d outside 0..%d of image %s" % (
            args[0], image.chunk_count - 1, image.version))
    return list(args)


def _check_args(kind, args):
    """The kind's fields after the id, checked (and normalised); CommandError otherwise."""
    if kind not in KINDS:
        raise CommandError("kind must be one of %s, got %r" % (", ".join(KINDS), kind))
    if kind == CONFIG:
        return _check_config(args)
    if kind in (OTA, OTA_CHUNK):
        return args  # needs the image table: enqueue checks it
    ok = {
        "topup": lambda: len(args) == 1 and type(args[0]) is int and args[0] > 0,
        "relay": lambda: len(args) == 1 and args[0] in ("connect", "disconnect"),
        "tariff": lambda: len(args) == 1 and isinstance(args[0], str) and bool(args[0]),
        "reset_lockout": lambda: not args,
        BACKFILL: lambda: (len(args) == 2 and all(type(a) is int and a >= 0 for a in args)
                           and args[0] <= args[1] and args[1] - args[0] < BACKFILL_MAX_SPAN),
        # utc_s is put in at send time (see _wire); only the optional "force" is queued
        TIME: lambda: args in ([], ["force"]),
    }[kind]()
    if not ok:
        hint = ' (time takes [] or ["force"]: utc_s is filled in when it is sent)' \
            if kind == TIME else ""
        raise CommandError("bad fields for %s: %r%s (docs/protocol.md, Downlink commands)"
                           % (kind, args, hint))
    return args


def enqueue(session, meter_id, kind, args, now, ttl_s=None, command_id=None):
    """Queue one downlink (``args`` = the fields after the id); returns the Command (flushed).

    ``command_id`` defaults to ``"C-<n>"``; it must be unique and may not
    contain '|'.  The meter must exist.  Expires at ``now + ttl_s`` (default
    per kind in DEFAULT_TTL_S).  ``time`` takes ``[]`` or ``["force"]`` (the
    clock value is filled in at each send); ``config`` ``[setting, value]``;
    ``ota`` ``[version]`` of a stored image; ``ota_chunk`` ``[index, version]``.

    >>> enqueue(session, "UJ-1", "relay", ["disconnect"], now=T0).state   # doctest: +SKIP
    'QUEUED'
    """
    args = _check_args(kind, list(args))
    if session.get(M.Meter, meter_id) is None:
        raise CommandError("no meter %r" % (meter_id,))
    if kind in (OTA, OTA_CHUNK):
        args = _check_ota(session, kind, args)
    if command_id is None:
        command_id = "C-" + secrets.token_hex(8)
    try:  # the wire format's rules, checked now rather than at send time
        auth.canonical(kind, meter_id, 1, now, [command_id] + args)
    except auth.AuthError as err:
        raise CommandError(str(err))
    if len(command_id) > ID_MAX:
        raise CommandError("command id longer than %d characters" % ID_MAX)
    ttl = DEFAULT_TTL_S[kind] if ttl_s is None else ttl_s
    cmd = Command(id=command_id, meter_id=meter_id, kind=kind, args=json.dumps(args),
                  expires_at=now + ttl, state=QUEUED, created_at=now, next_attempt_at=now,
                  attempts=0, reissues=0)
    session.add(cmd)
    session.flush()
    _record(session, cmd, "enqueue", QUEUED, now)
    return cmd


def _record(session, cmd, event, old, now, detail=None):
    session.add(CommandTransition(command_id=cmd.id, at=now, event=event, from_state=old,
                                  to_state=cmd.state, counter=cmd.counter, detail=detail))


def transition(session, cmd, event, now, detail=None, alert_hook=None):
    """Apply ``event`` to ``cmd`` through TRANSITIONS (IllegalTransition if not allowed)."""
    old = cmd.state
    new = next_state(old, event, cmd.id)
    cmd.state = new
    if new in FINAL_STATES and old not in FINAL_STATES or (old == EXPIRED and new == APPLIED):
        cmd.finished_at = now
        cmd.next_attempt_at = None
        if cmd.kind == OTA_CHUNK:
            cmd.payload = None  # ~5.5 KB a chunk; the image table can rebuild it
    _record(session, cmd, event, old, now, detail)
    if new in FINAL_STATES and new != old:
        for listener in OUTCOME_LISTENERS:
            listener(session, cmd, event, old, now)
    return new


# --- what the dispatcher calls ---------------------------------------------------------------

def due(session, now, limit=100):
    """Open commands whose next attempt is due and not yet expired, per meter in creation order.

    Rows are locked (PostgreSQL ``FOR UPDATE SKIP LOCKED``) so two dispatchers
    never send the same command in the same round.
    """
    return list(session.scalars(
        select(Command).where(Command.state.in_(OPEN_STATES), Command.next_attempt_at <= now,
                              Command.expires_at >= now)
        .order_by(Command.meter_id, Command.created_at, Command.id).limit(limit)
        .with_for_update(skip_locked=True)))


_IMAGES = {}  # (version, sha256) -> FirmwareImage bytes: one load per image, not per chunk


def _image_bytes(session, version):
    image = session.get(M.FirmwareImage, version)
    if image is None:
        raise CommandError("no firmware image %r" % (version,))
    key = (image.version, image.sha256)
    if key not in _IMAGES:
        if len(_IMAGES) >= 4:
            _IMAGES.clear()
        _IMAGES[key] = image
    return _IMAGES[key]


def clock_ahead_s(session, meter_id):
    """How far the meter's clock ran ahead of ours at its newest uplink (0 if behind/unknown)."""
    row = session.execute(select(M.UplinkSeen.t, M.UplinkSeen.received_at)
                          .where(M.UplinkSeen.meter_id == meter_id)
                          .order_by(M.UplinkSeen.seq.desc()).limit(1)).first()
    return max(0, row[0] - row[1]) if row is not None else 0


def _wire(session, cmd, now):
    """(fields, expires_at) as signed for this send: what the queue holds, except
    ``time`` (``utc_s`` = ``now``, short signed lifetime) and ``ota_chunk`` (the
    chunk's bytes, base64, from the stored image)."""
    if cmd.kind == TIME:
        lifetime = TIME_WIRE_LIFETIME_S + clock_ahead_s(session, cmd.meter_id)
        return [cmd.id, now] + json.loads(cmd.args), min(cmd.expires_at, now + lifetime)
    if cmd.kind == OTA_CHUNK:
        index, version = json.loads(cmd.args)
        data = _image_bytes(session, version).chunk(index)
        return [cmd.id, index, base64.b64encode(data).decode()], cmd.expires_at
    return cmd.fields, cmd.expires_at


def prepare_send(session, cmd, key, now, policy):
    """Move ``cmd`` to SENT for one publish; returns the CBOR payload to publish.

    First send (QUEUED): allocate the meter's next counter and sign with the
    meter's key using ``firmware.core.auth.make_command``.  Re-send: the same
    signed bytes again, except ``time``, which is re-signed with the *same
    counter* and the clock of this send.  Commit before publishing, so a
    crash after the publish still knows the counter.

    Why re-signing ``time`` is safe: the meter checks the MAC, then REPLAYED
    (counter equal to its last, or id already applied) before anything else
    (``DownlinkGuard.check``), so a re-signed copy of a ``time`` it already
    applied is REPLAYED and moves nothing; one it never got applies with a
    fresh clock.  Copies already waiting in the broker still carry their old
    ``utc_s``: their short signed lifetime (TIME_WIRE_LIFETIME_S) bounds how
    far such a copy can set the clock back, and ``handle_ack`` does not fail
    the command on the EXPIRED such a copy gets.
    """
    if cmd.state == QUEUED:
        cmd.counter = allocate_counter(session, cmd.meter_id)
        cmd.attempts = 0
        event = SEND
    else:
        event = RESEND
    if event == SEND or cmd.kind == TIME:
        fields, expires_at = _wire(session, cmd, now)
        signed = auth.make_command(key, cmd.kind, cmd.meter_id, cmd.counter, expires_at, fields)
        cmd.payload = messages.encode_command(signed)
    cmd.attempts += 1
    cmd.sent_at = now
    cmd.next_attempt_at = now + policy.puback_timeout_s
    transition(session, cmd, event, now, detail="attempt %d" % cmd.attempts)
    return cmd.payload


def mark_delivered(session, command_id, counter, now, policy):
    """The broker PUBACKed a publish of ``command_id`` with ``counter``; returns the Command."""
    cmd = session.get(Command, command_id)
    if cmd is None:
        return None
    if cmd.counter != counter and cmd.state in OPEN_STATES:
        return cmd  # PUBACK of a copy from before an OUT_OF_ORDER re-issue: nothing to learn
    if cmd.state in (SENT, DELIVERED):
        cmd.delivered_at = now
        cmd.next_attempt_at = now + policy.ack_wait_s(cmd.attempts)
    if cmd.state in (SENT, DELIVERED, APPLIED, FAILED, EXPIRED):
        transition(session, cmd, PUBACK, now)
    return cmd


def handle_ack(session, meter_id, ack, now, alert_hook=None):
    """Apply a meter's ``ack`` uplink (decoded body: id, c, r, rn, d) to its command.

    OK / REPLAYED -> APPLIED; OUT_OF_ORDER -> QUEUED for a new counter; any
    other result -> FAILED with the result name as reason.  A failure ack
    carrying an older counter than the command's current one answers a copy
    from before a re-issue and is ignored.  Unknown commands and acks the
    table does not allow raise an ``unexpected_ack`` alert instead of an
    exception, so one odd meter cannot stop the dispatcher.  Returns the
    Command or None.
    """
    cmd = session.get(Command, ack["id"])
    if cmd is None or cmd.meter_id != meter_id:
        raise_alert(session, now, meter_id, ack["id"], "unexpected_ack",
                    "ack for a command this meter was never sent (result %s)" % ack.get("rn"),
                    alert_hook)
        return None
    code = ack["r"]
    name = RESULT_NAMES.get(code, "R%d" % code)
    event = ACK_EVENTS.get(code, ACK_FAILED)
    if cmd.kind == TIME and code == auth.EXPIRED and cmd.state in (SENT, DELIVERED) \
            and ack["c"] == cmd.counter:
        # every send of a ``time`` is a different copy (fresh utc_s, short lifetime): an
        # EXPIRED answers an old one that waited in the broker, while a fresher copy may
        # follow.  Stay open; the retry schedule re-sends, and expiry ends it (with alert).
        transition(session, cmd, ACK_STALE_COPY, now, detail="EXPIRED: an older copy")
        return cmd
    if event != ACK_APPLIED and ack["c"] != cmd.counter:
        _record(session, cmd, "stale_ack", cmd.state, now,
                detail="%s for counter %s, current %s" % (name, ack["c"], cmd.counter))
        return cmd
    old = cmd.state
    detail = "%s%s" % (name, (": " + ack["d"]) if ack.get("d") else "")
    if (old, event) not in TRANSITIONS:
        raise_alert(session, now, meter_id, cmd.id, "unexpected_ack",
                    "%s ack while the command is %s" % (name, old), alert_hook)
        _record(session, cmd, "unexpected_ack", old, now, detail)
        return cmd
    if old not in FINAL_STATES or (old == EXPIRED and event == ACK_APPLIED):
        cmd.result_code, cmd.result_name = code, name
        cmd.reason = ack.get("d") if event == ACK_APPLIED else detail
    if event == ACK_OUT_OF_ORDER:
        cmd.counter, cmd.payload, cmd.attempts = None, None, 0
        cmd.reissues += 1
        cmd.next_attempt_at = now
    if cmd.kind == BACKFILL and event == ACK_APPLIED and code == auth.OK:
        detail += _backfill_answer(session, cmd, ack, now, alert_hook)
    transition(session, cmd, event, now, detail=detail)
    if old == EXPIRED and cmd.state == APPLIED:
        raise_alert(session, now, meter_id, cmd.id, "late_ack",
                    "the meter applied the command after we expired it", alert_hook)
    return cmd


def _backfill_answer(session, cmd, ack, now, alert_hook):
    """Record a ``backfill`` ack's ``n`` / ``lo`` on the gap it was sent for; returns detail text.

    ``lo`` is the oldest uplink sequence the meter still holds: a gap that
    ends below it is gone for good and is marked unrecoverable (never
    requested again).  A gap that ``lo`` cuts in two fills from ``lo`` up
    when the re-sent uplinks arrive; the rest becomes a new gap that
    ``headend.store.request_backfills`` marks unrecoverable from the same
    ``held_from`` without asking again.  An ack without integer ``n`` and
    ``lo`` (a meter that does not follow the spec) raises an alert and
    changes no gap.
    """
    n, lo = ack.get("n"), ack.get("lo")
    if type(n) is not int or type(lo) is not int or n < 0 or lo < 0:
        raise_alert(session, now, cmd.meter_id, cmd.id, "unexpected_ack",
                    "backfill ack without integer n and lo: n=%r lo=%r" % (n, lo), alert_hook)
        return " (no n/lo)"
    gap = session.scalars(select(M.SeqGap).where(M.SeqGap.backfill_command_id == cmd.id)).first()
    if gap is None:
        return " n=%d lo=%d" % (n, lo)
    gap.backfill_n, gap.held_from = n, lo
    if lo > gap.last_seq and gap.unrecoverable_at is None and gap.closed_at is None:
        gap.unrecoverable_at = now
        raise_alert(session, now, cmd.meter_id, cmd.id, "data_lost",
                    "uplinks s %d..%d are gone: the meter holds s >= %d only" % (
                        gap.first_seq, gap.last_seq, lo), alert_hook)
        return " n=%d lo=%d: gap %d..%d unrecoverable" % (n, lo, gap.first_seq, gap.last_seq)
    return " n=%d lo=%d" % (n, lo)


def expire_due(session, now, policy, alert_hook=None):
    """EXPIRE every open command past its expiry (+ the late-ack grace once sent); alerts each.

    Returns the expired Commands.
    """
    out = []
    rows = session.scalars(select(Command).where(Command.state.in_(OPEN_STATES),
                                                 Command.expires_at < now))
    for cmd in list(rows):
        if cmd.state != QUEUED and now <= cmd.expires_at + policy.late_ack_grace_s:
            continue
        old = cmd.state
        cmd.reason = "not acknowledged by %d" % cmd.expires_at
        transition(session, cmd, EXPIRE, now, detail="expires_at %d" % cmd.expires_at)
        raise_alert(session, now, cmd.meter_id, cmd.id, "command_expired",
                    "%s %s expired in state %s after %d attempt(s)" % (
                        cmd.kind, cmd.id, old, cmd.attempts), alert_hook)
        out.append(cmd)
    return out


def meter_online(session, meter_id, now, policy):
    """A meter reconnected: re-send its un-acked commands soon (after ``reconnect_settle_s``)."""
    soon = now + policy.reconnect_settle_s
    session.execute(update(Command)
                    .where(Command.meter_id == meter_id, Command.state.in_((SENT, DELIVERED)),
                           Command.next_attempt_at > soon)
                    .values(next_attempt_at=soon))


def queue_time_syncs(session, now, threshold_s, window_s, ttl_s=None):
    """Queue one ``time`` for every active meter whose newest heartbeat, received in
    (now - window_s, now], carried a clock (``t``) off from its receive time by more
    than ``threshold_s``.  Returns the queued Commands.

    Never more than one open ``time`` per meter; a heartbeat received before the
    meter's last ``time`` finished does not count (it shows the old clock); after
    a FAILED or EXPIRED one the rule waits TIME_SYNC_RETRY_S (a meter that refuses
    the step, e.g. above its ``clock_max_step_s``, needs a person and a "force").
    A heartbeat that waited in the meter's outbox looks behind by its wait: the
    ``time`` then steps a correct clock by about nothing (utc_s is the send time),
    so a false alarm costs one command, never a wrong clock.
    """
    seen = M.UplinkSeen
    newest = (select(seen.meter_id, func.max(seen.seq).label("seq"))
              .where(seen.kind == "heartbeat", seen.received_at > now - window_s,
                     seen.received_at <= now)
              .group_by(seen.meter_id).subquery())
    rows = session.execute(
        select(seen.meter_id, seen.t, seen.received_at)
        .join(newest, (seen.meter_id == newest.c.meter_id) & (seen.seq == newest.c.seq))
        .join(M.Meter, M.Meter.id == seen.meter_id)
        .where(M.Meter.active.is_(True),
               (seen.t - seen.received_at > threshold_s)
               | (seen.received_at - seen.t > threshold_s))
        .order_by(seen.meter_id)).all()
    out = []
    for meter_id, t, received_at in rows:
        last = session.scalars(select(Command).where(Command.meter_id == meter_id,
                                                     Command.kind == TIME)
                               .order_by(Command.created_at.desc(), Command.id.desc())
                               .limit(1)).first()
        if last is not None:
            if last.state in OPEN_STATES:
                continue
            if last.finished_at is not None and received_at <= last.finished_at:
                continue
            if last.state in (FAILED, EXPIRED) \
                    and now - (last.finished_at or 0) < TIME_SYNC_RETRY_S:
                continue
        cmd = enqueue(session, meter_id, TIME, [], now, ttl_s=ttl_s,
                      command_id="TS-" + secrets.token_hex(8))
        _record(session, cmd, "time_sync", QUEUED, now,
                detail="heartbeat t %d received %d: off by %d s" % (
                    t, received_at, t - received_at))
        out.append(cmd)
    return out
