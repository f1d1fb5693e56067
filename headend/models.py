"""Head-end tables: the meter registry and everything meters send us.

Units as on the wire (docs/protocol.md): money integer paise, energy integer
Wh (water and gas: integer litres), time integer seconds UTC (BigInteger so
2038 is no issue).  Uplink tables are keyed by what makes a row unique in
the domain, so a redelivered or replayed message collides instead of
duplicating: (meter, s) for every uplink, (meter, interval start) for
readings, (meter, event_seq) for events.

Meter keys (the downlink HMAC key) are encrypted at rest with AES-256-GCM
under a master key from ``URJA_MASTER_KEY`` (64 hex digits; keep it in a
secret store, never in the database).  The meter id and key version are the
associated data, so a ciphertext copied onto another meter's row fails to
open.

>>> master = bytes(32)
>>> row = MeterKey.seal(master, "UJ-1", b"k" * 32)
>>> row.open(master) == b"k" * 32
True
"""
import binascii
import os

from Crypto.Cipher import AES
from sqlalchemy import (BigInteger, Boolean, ForeignKey, Integer, LargeBinary, String,
                        Text, UniqueConstraint, event, inspect, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from headend.db import Base

# BIGINT on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there)
BigId = BigInteger().with_variant(Integer(), "sqlite")

# A meter id: VARCHAR(64) COLLATE "C" on PostgreSQL, so the ingest's B-tree and foreign-key
# lookups compare bytes instead of calling strcoll (docs/SCALING.md).  No ordering changes:
# meter ids are ASCII, which C.UTF-8 and C order the same.  SQLite has no "C" and compares
# bytes anyway.  ForeignKey("meters.id") columns declared without a type take it from Meter.id.
MeterId = String(64).with_variant(String(64, collation="C"), "postgresql")

SERVICES = ("electricity", "water", "gas")
UNIT_OF_SERVICE = {"electricity": "Wh", "water": "L", "gas": "L"}

MASTER_KEY_ENV = "URJA_MASTER_KEY"


class MeterKeyError(ValueError):
    """A master key or sealed meter key that cannot be used (wrong length, tampered, wrong key)."""


def master_key_from_env(environ=None):
    """The 32-byte master key from ``URJA_MASTER_KEY`` (64 hex digits).

    >>> len(master_key_from_env({"URJA_MASTER_KEY": "00" * 32}))
    32
    """
    text = (environ if environ is not None else os.environ).get(MASTER_KEY_ENV, "")
    try:
        key = binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError):
        raise MeterKeyError("%s must be 64 hex digits" % MASTER_KEY_ENV)
    if len(key) != 32:
        raise MeterKeyError("%s must be 64 hex digits (32 bytes), got %d bytes" % (MASTER_KEY_ENV, len(key)))
    return key


class Tenant(Base):
    """A utility or urban body that owns meters; the unit of data isolation."""
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))

    meters = relationship("Meter", back_populates="tenant")


class Consumer(Base):
    """A person or business billed for one or more meters of a tenant."""
    __tablename__ = "consumers"
    __table_args__ = (UniqueConstraint("tenant_id", "account_no"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    account_no: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32), default=None)
    language: Mapped[str] = mapped_column(String(8), default="hi")


class Meter(Base):
    """A meter in the registry; ``id`` is the id in its MQTT topics (``urja/v1/<id>/...``)."""
    __tablename__ = "meters"
    id: Mapped[str] = mapped_column(MeterId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    consumer_id: Mapped[int | None] = mapped_column(ForeignKey("consumers.id"), default=None,
                                                    index=True)
    service: Mapped[str] = mapped_column(String(16), default="electricity")  # SERVICES
    installed_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    tenant = relationship("Tenant", back_populates="meters")

    @property
    def unit(self):
        """Unit of the meter's quantity: ``Wh`` for electricity, ``L`` for water and gas."""
        return UNIT_OF_SERVICE[self.service]


class MeterKey(Base):
    """The meter's downlink HMAC key, AES-256-GCM encrypted under the master key."""
    __tablename__ = "meter_keys"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary(64))
    tag: Mapped[bytes] = mapped_column(LargeBinary(16))

    @staticmethod
    def _aad(meter_id, version):
        return ("urja-meter-key|%s|%d" % (meter_id, version)).encode()

    @classmethod
    def seal(cls, master, meter_id, key, version=1):
        """A new row holding ``key`` encrypted for ``meter_id`` (fresh random nonce)."""
        if len(master) != 32:
            raise MeterKeyError("master key must be 32 bytes")
        nonce = os.urandom(12)
        cipher = AES.new(master, AES.MODE_GCM, nonce=nonce)
        cipher.update(cls._aad(meter_id, version))
        ct, tag = cipher.encrypt_and_digest(key)
        return cls(meter_id=meter_id, version=version, nonce=nonce, ciphertext=ct, tag=tag)

    def open(self, master):
        """The plain key; MeterKeyError if the master key is wrong or the row was altered/moved."""
        cipher = AES.new(master, AES.MODE_GCM, nonce=self.nonce)
        cipher.update(self._aad(self.meter_id, self.version))
        try:
            return cipher.decrypt_and_verify(self.ciphertext, self.tag)
        except ValueError:
            raise MeterKeyError("meter key of %s does not open: wrong master key or altered row"
                            % self.meter_id)


# --- uplinks -------------------------------------------------------------

class UplinkSeen(Base):
    """Every accepted uplink's (meter, s): the dedupe key and the source for gap detection.

    A reading uplink's register (``cum`` at its last record, and its
    ``interval_s``) lives here too, NULL for other kinds: it is one value per
    uplink, and a table of its own cost PostgreSQL a heap row, a primary-key
    entry and a foreign-key check per reading (docs/SCALING.md).
    """
    __tablename__ = "uplinks_seen"
    meter_id: Mapped[str] = mapped_column(MeterId, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    t: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger, index=True)  # /metrics rate window
    interval_s: Mapped[int | None] = mapped_column(Integer, default=None)  # readings only
    cum: Mapped[int | None] = mapped_column(BigInteger, default=None)  # readings only


class SeqGap(Base):
    """A run of missing uplink sequence numbers [first_seq, last_seq] of one meter.

    ``closed_at`` is set when the missing messages arrived after all (late or
    redelivered, or re-sent by the meter for a ``backfill`` command).  A gap
    still open after the ingest's grace period gets a ``backfill`` command
    (``backfill_command_id``, the latest of ``backfill_attempts``;
    ``headend.store.request_backfills`` asks again, up to a limit, when a
    finished one did not fill it); the meter's ack says how many uplinks it
    re-queued (``backfill_n``) and the oldest ``s`` it still holds
    (``held_from``).  When that is above the gap
    the data is gone for good: ``unrecoverable_at`` is set, the gap stays
    unfilled (``closed_at`` NULL) and is never requested again.
    """
    __tablename__ = "seq_gaps"
    __table_args__ = (UniqueConstraint("meter_id", "first_seq", "last_seq"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(MeterId, index=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    detected_at: Mapped[int] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    backfill_command_id: Mapped[str | None] = mapped_column(String(64), default=None,
                                                             index=True)
    backfill_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    backfill_n: Mapped[int | None] = mapped_column(BigInteger, default=None)
    held_from: Mapped[int | None] = mapped_column(BigInteger, default=None)
    unrecoverable_at: Mapped[int | None] = mapped_column(BigInteger, default=None)

    @property
    def missing(self):
        return self.last_seq - self.first_seq + 1


class Reading(Base):
    """One block load profile interval of one meter (energy in Wh, or litres for water/gas)."""
    __tablename__ = "readings"
    # No foreign key to meters.id: on the ingest's hot path its check cost PostgreSQL ~3.5 us
    # of backend CPU per reading (plus a row lock on meters, with a WAL record, when a batch
    # spans many meters).  Instead the ingest dead-letters uplinks of meters not in the
    # registry, and a trigger refuses to delete a meter that has readings or change its id
    # (KEEP_READINGS_DDL below; migration 0009).
    meter_id: Mapped[str] = mapped_column(MeterId, primary_key=True)
    start_t: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    energy: Mapped[int] = mapped_column(BigInteger)
    avg_mv: Mapped[int | None] = mapped_column(BigInteger, default=None)
    avg_ma: Mapped[int | None] = mapped_column(BigInteger, default=None)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    span_s: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    seq: Mapped[int | None] = mapped_column(BigInteger, default=None)  # uplink that carried it
    received_at: Mapped[int] = mapped_column(BigInteger)


# What readings' foreign key did on the rare side: a meter that has readings is never deleted
# (one out of service is deactivated: ``active`` false) and never changes its id.  Migration
# 0009 makes these triggers in migrated databases; the listener below makes them in schemas
# built by ``Base.metadata.create_all``, once both tables exist.  SQLite's RAISE takes only
# a literal message, so it cannot name the meter.
KEEP_READINGS_DDL = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION meters_keep_readings() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
                RETURN NEW;
            END IF;
            IF EXISTS (SELECT 1 FROM readings WHERE meter_id = OLD.id) THEN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION
                        'meter % has readings and cannot be deleted: deactivate it (active = false)',
                        OLD.id USING ERRCODE = 'foreign_key_violation';
                END IF;
                RAISE EXCEPTION 'meter % has readings: its id cannot change', OLD.id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            RETURN NEW;
        END $$""",
        "DROP TRIGGER IF EXISTS meters_keep_readings ON meters",
        """CREATE TRIGGER meters_keep_readings BEFORE DELETE OR UPDATE OF id ON meters
        FOR EACH ROW EXECUTE FUNCTION meters_keep_readings()""",
    ],
    "sqlite": [
        """CREATE TRIGGER IF NOT EXISTS meters_keep_readings_delete BEFORE DELETE ON meters
        WHEN EXISTS (SELECT 1 FROM readings WHERE meter_id = OLD.id)
        BEGIN
            SELECT RAISE(ABORT,
                'meter has readings and cannot be deleted: deactivate it (active = 0)');
        END""",
        """CREATE TRIGGER IF NOT EXISTS meters_keep_readings_id BEFORE UPDATE OF id ON meters
        WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM readings WHERE meter_id = OLD.id)
        BEGIN
            SELECT RAISE(ABORT, 'meter has readings: its id cannot change');
        END""",
    ],
}


def _create_keep_readings_guard(_table, connection, **_kw):
    """after_create of meters or of readings: the guard, once both tables exist."""
    statements = KEEP_READINGS_DDL.get(connection.dialect.name)
    tables = set(inspect(connection).get_table_names())
    if statements and {"meters", "readings"} <= tables:
        for statement in statements:
            connection.execute(text(statement))


event.listen(Meter.__table__, "after_create", _create_keep_readings_guard)
event.listen(Reading.__table__, "after_create", _create_keep_readings_guard)


class EventRecord(Base):
    """A meter event (code table in docs/protocol.md), unique by the meter's event_seq."""
    __tablename__ = "events"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    event_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger)
    code: Mapped[int] = mapped_column(Integer)
    value: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)  # uplink that carried it
    lost_total: Mapped[int | None] = mapped_column(BigInteger, default=None)


class _StatusFields:
    """The balance fields of a status uplink, as stored (history and latest)."""
    balance_paise: Mapped[int] = mapped_column(BigInteger)
    credit_paise: Mapped[int] = mapped_column(BigInteger)
    emergency_paise: Mapped[int] = mapped_column(BigInteger)
    debt_paise: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(24))
    relay_closed: Mapped[bool] = mapped_column(Boolean)
    limiter: Mapped[str] = mapped_column(String(16))
    tariff_version: Mapped[int] = mapped_column(Integer)
    topups_total_paise: Mapped[int] = mapped_column(BigInteger)
    charges_total_paise: Mapped[int] = mapped_column(BigInteger)


class StatusRecord(_StatusFields, Base):
    """Balance history: every status uplink as received."""
    __tablename__ = "status_history"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger, index=True)


class MeterBalance(_StatusFields, Base):
    """The latest status per meter (highest uplink seq wins, so a late old status never rolls back)."""
    __tablename__ = "meter_balances"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    t: Mapped[int] = mapped_column(BigInteger)


class Heartbeat(Base):
    """Meter health as reported (free heap, RSSI, outbox depth and drops, firmware)."""
    __tablename__ = "heartbeats"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger, index=True)
    uptime_s: Mapped[int] = mapped_column(BigInteger)
    heap_free: Mapped[int | None] = mapped_column(BigInteger, default=None)
    rssi_dbm: Mapped[int | None] = mapped_column(Integer, default=None)
    outbox_depth: Mapped[int | None] = mapped_column(Integer, default=None)
    outbox_dropped: Mapped[int | None] = mapped_column(BigInteger, default=None)
    firmware: Mapped[str | None] = mapped_column(String(64), default=None)
    journal_writes: Mapped[int | None] = mapped_column(Integer, default=None)


class AckRecord(Base):
    """A meter's answer to a downlink command; the command queue (headend/commands.py) reads these."""
    __tablename__ = "command_acks"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger)
    command_id: Mapped[str] = mapped_column(String(64), index=True)
    counter: Mapped[int] = mapped_column(BigInteger)
    result: Mapped[int] = mapped_column(Integer)
    result_name: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[int] = mapped_column(BigInteger)


class Snapshot(Base):
    """A daily or monthly billing snapshot, unique per (meter, kind, key)."""
    __tablename__ = "snapshots"
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # daily | monthly
    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # YYYYMMDD | month index
    at: Mapped[int] = mapped_column(BigInteger)
    cum: Mapped[int] = mapped_column(BigInteger)
    balance_paise: Mapped[int] = mapped_column(BigInteger)
    max_demand_w: Mapped[int | None] = mapped_column(BigInteger, default=None)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    seq: Mapped[int] = mapped_column(BigInteger)


class DeadLetter(Base):
    """An uplink we could not accept, kept byte for byte with the reason."""
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[int] = mapped_column(BigInteger, index=True)



# --- firmware images (OTA) -------------------------------------------------

class FirmwareImage(Base):
    """A firmware image the head-end can send over the air (``ota`` / ``ota_chunk`` commands).

    ``version`` is what the meter reports in its heartbeat's ``fw`` once the
    image booted and confirmed; ``chunk_count`` chunks of ``ceil(size /
    chunk_count)`` bytes (at most ``firmware.app.downlinks.OTA_MAX_CHUNK``).
    The bytes live in the row, so every head-end node sends the same image.
    """
    __tablename__ = "firmware_images"
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_count: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str | None] = mapped_column(String(64), default=None)

    @property
    def chunk_size(self):
        return (self.size + self.chunk_count - 1) // self.chunk_count

    def chunk(self, index):
        """Bytes of chunk ``index`` (0-based; the last one holds the rest)."""
        return self.data[index * self.chunk_size:(index + 1) * self.chunk_size]

    def manifest_fields(self):
        """The ``ota`` command's fields after the id: [version, size, sha256_hex, chunk_count]."""
        return [self.version, self.size, self.sha256, self.chunk_count]

    def as_dict(self):
        return {"version": self.version, "size": self.size, "sha256": self.sha256,
                "chunk_count": self.chunk_count, "chunk_size": self.chunk_size,
                "created_at": self.created_at, "created_by": self.created_by}
