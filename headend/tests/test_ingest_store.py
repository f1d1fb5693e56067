"""The data layer without MQTT: idempotent batches, latest balance, keys at rest, migrations."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headend import models as M
from headend.db import make_engine
from headend.store import UplinkStore, open_gaps, scan_gaps
from headend.tests.conftest import count, register_meters

T0 = 1795737600


def body(kind, m, s, t, **fields):
    b = {"v": 1, "m": m, "s": s, "t": t, "kind": kind}
    b.update(fields)
    return b


def status(m, s, bal):
    return body("status", m, s, T0 + s, bal=bal, cr=max(bal, 0), em=0, dt=0, st="OK", rl=True,
                ld="NORMAL", tv=1, tt=10000, tc=10000 - bal)


def reading(m, s, start_t, energy):
    return body("reading", m, s, start_t + 900, iv=900, u="Wh", cum=energy,
                r=[[start_t, energy, None, None, 0, 900]])


def test_a_replayed_batch_stores_nothing_new(engine):
    register_meters(engine, ["UJ-1"])
    store = UplinkStore(engine)
    batch = [reading("UJ-1", s, T0 + 900 * s, 10) for s in range(1, 6)]
    first = store.write(batch, now=T0)
    again = store.write(batch, now=T0 + 60)
    assert (first.uplinks, first.readings, first.duplicates) == (5, 5, 0)
    assert (again.uplinks, again.readings, again.duplicates) == (0, 0, 5)
    assert count(engine, "readings") == 5


def test_meter_ids_with_array_syntax_characters_are_stored_exactly(engine):
    # PostgreSQL's hot path sends columns as array literals: quoting must hold
    ids = ['UJ,"{1}"', "UJ\\x", "UJ-NULL", "NULL", "UJ'q"]
    register_meters(engine, ids)
    result = UplinkStore(engine).write([reading(m, 1, T0, 7) for m in ids], now=T0)
    assert (result.uplinks, result.readings) == (5, 5)
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT meter_id FROM readings")).scalars()) == \
            sorted(ids)
        assert sorted(conn.execute(text("SELECT meter_id FROM uplinks_seen")).scalars()) == \
            sorted(ids)


def test_a_duplicate_inside_one_batch_is_counted_and_stored_once(engine):
    register_meters(engine, ["UJ-1"])
    r = reading("UJ-1", 1, T0, 10)
    result = UplinkStore(engine).write([r, dict(r)], now=T0)
    assert (result.uplinks, result.duplicates) == (1, 1)
    assert count(engine, "readings") == 1
    # a conflicting copy (same meter and s, other content) in one batch: the first one wins
    first, second = reading("UJ-1", 2, T0 + 900, 11), reading("UJ-1", 2, T0 + 900, 99)
    result = UplinkStore(engine).write([first, second, dict(first)], now=T0)
    assert (result.uplinks, result.duplicates) == (1, 2)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT energy FROM readings WHERE start_t = :t"),
                            {"t": first["r"][0][0]}).scalar() == first["r"][0][1]


def test_a_batch_mixing_replayed_and_new_uplinks_stores_only_the_new_ones(engine):
    # dedupe is by (meter, s): a replayed s is dropped even if it carries another
    # interval, while the rest of its batch (readings, registers, a heartbeat) lands
    register_meters(engine, ["UJ-1", "UJ-2"])
    store = UplinkStore(engine)
    store.write([reading("UJ-1", 1, T0, 10), reading("UJ-1", 2, T0 + 900, 20)], now=T0)
    mixed = store.write([reading("UJ-1", 2, T0 + 1800, 99), reading("UJ-1", 3, T0 + 2700, 30),
                         reading("UJ-2", 1, T0, 5), body("heartbeat", "UJ-1", 4, T0, up=60)],
                        now=T0 + 60)
    assert (mixed.uplinks, mixed.duplicates, mixed.readings) == (3, 1, 2)
    assert sorted(mixed.stored_keys) == [("UJ-1", 3), ("UJ-1", 4), ("UJ-2", 1)]
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT meter_id, start_t, energy, received_at FROM "
                                        "readings")).all()) == [
            ("UJ-1", T0, 10, T0), ("UJ-1", T0 + 900, 20, T0), ("UJ-1", T0 + 2700, 30, T0 + 60),
            ("UJ-2", T0, 5, T0 + 60)]
        assert sorted(conn.execute(text("SELECT meter_id, seq, cum FROM uplinks_seen "
                                        "WHERE kind = 'reading'"))
                      .all()) == [("UJ-1", 1, 10), ("UJ-1", 2, 20), ("UJ-1", 3, 30), ("UJ-2", 1, 5)]
        assert conn.execute(text("SELECT interval_s, cum FROM uplinks_seen "
                                 "WHERE kind = 'heartbeat'")).all() == [(None, None)]
    assert count(engine, "heartbeats") == 1


def test_an_interval_resent_under_a_new_sequence_is_not_stored_twice(engine):
    register_meters(engine, ["UJ-1"])
    store = UplinkStore(engine)
    store.write([reading("UJ-1", 1, T0, 10)], now=T0)
    resent = store.write([reading("UJ-1", 2, T0, 10)], now=T0)  # backfill of the same interval
    assert (resent.uplinks, resent.readings) == (1, 0)
    assert count(engine, "readings") == 1


def test_latest_balance_is_the_highest_sequence_even_when_an_old_status_arrives_late(engine):
    register_meters(engine, ["UJ-1"])
    store = UplinkStore(engine)
    store.write([status("UJ-1", 5, 4200)], now=T0)
    store.write([status("UJ-1", 3, 9900)], now=T0)                # late, older
    with engine.connect() as conn:
        latest = conn.execute(select(M.MeterBalance.seq, M.MeterBalance.balance_paise)).all()
    assert [tuple(r) for r in latest] == [(5, 4200)]
    assert count(engine, "status_history") == 2


def test_the_newest_status_in_one_batch_wins(engine):
    register_meters(engine, ["UJ-1"])
    UplinkStore(engine).write([status("UJ-1", 8, -150), status("UJ-1", 6, 300)], now=T0)
    with engine.connect() as conn:
        assert conn.execute(select(M.MeterBalance.balance_paise)).scalar() == -150


def test_events_are_unique_by_event_sequence_across_uplinks(engine):
    register_meters(engine, ["UJ-1"])
    store = UplinkStore(engine)
    store.write([body("event", "UJ-1", 1, T0, e=[[41, T0, 3, 0], [42, T0 + 5, 4, 0]])], now=T0)
    store.write([body("event", "UJ-1", 2, T0, e=[[42, T0 + 5, 4, 0], [43, T0 + 9, 5, 0]])], now=T0)
    with engine.connect() as conn:
        seqs = conn.execute(text("SELECT event_seq FROM events ORDER BY event_seq")).scalars().all()
    assert seqs == [41, 42, 43]


def test_dead_letters_keep_topic_payload_and_reason(engine):
    UplinkStore(engine).write([], dead=[("urja/v1/X/up/reading", b"\x00\xff", "body: bad")], now=T0)
    with engine.connect() as conn:
        row = conn.execute(select(M.DeadLetter.topic, M.DeadLetter.payload, M.DeadLetter.reason,
                                  M.DeadLetter.received_at)).one()
    assert (row.topic, bytes(row.payload), row.reason, row.received_at) == (
        "urja/v1/X/up/reading", b"\x00\xff", "body: bad", T0)


def test_gap_scan_reads_only_what_was_stored(engine):
    register_meters(engine, ["UJ-1"])
    UplinkStore(engine).write([body("heartbeat", "UJ-1", s, T0, up=s) for s in (10, 11, 14, 20)],
                              now=T0)
    assert scan_gaps(engine, ["UJ-1"], T0) == (2, 0)
    # stored 10, 11, 14, 20 -> missing 12..13 and 15..19
    assert open_gaps(engine) == [("UJ-1", 12, 13), ("UJ-1", 15, 19)]


def test_a_partly_filled_gap_is_replaced_by_what_is_still_missing(engine):
    register_meters(engine, ["UJ-1"])
    store = UplinkStore(engine)
    marks = {}
    store.write([body("heartbeat", "UJ-1", s, T0, up=s) for s in (1, 7)], now=T0)
    scan_gaps(engine, ["UJ-1"], T0, marks)
    store.write([body("heartbeat", "UJ-1", 4, T0, up=4)], now=T0)
    assert scan_gaps(engine, ["UJ-1"], T0 + 1, marks) == (2, 1)
    # 2..6 with 4 arrived -> 2..3 and 5..6
    assert open_gaps(engine) == [("UJ-1", 2, 3), ("UJ-1", 5, 6)]


def test_gap_scan_in_chunks_keeps_each_meters_gaps_and_marks_apart(engine, monkeypatch):
    # several meters per statement, and more meters than one statement takes: each
    # meter's gaps, closures and low mark are its own
    from headend import store as store_mod
    monkeypatch.setattr(store_mod, "GAP_SCAN_CHUNK", 2)
    ids = ["UJ-%d" % i for i in range(1, 6)]
    register_meters(engine, ids)
    store = UplinkStore(engine)
    stored = {"UJ-1": (1, 3), "UJ-2": (1, 2, 3), "UJ-3": (5, 9, 10, 12), "UJ-4": (7,),
              "UJ-5": (2, 4)}
    store.write([body("heartbeat", m, s, T0, up=s) for m, seqs in stored.items() for s in seqs],
                now=T0)
    marks = {}
    assert scan_gaps(engine, ids, T0, marks) == (4, 0)
    assert open_gaps(engine) == [("UJ-1", 2, 2), ("UJ-3", 6, 8), ("UJ-3", 11, 11),
                                 ("UJ-5", 3, 3)]
    assert marks == {"UJ-1": 3, "UJ-2": 3, "UJ-3": 12, "UJ-4": 7, "UJ-5": 4}
    store.write([body("heartbeat", "UJ-3", 11, T0, up=11), body("heartbeat", "UJ-5", 3, T0, up=3),
                 body("heartbeat", "UJ-4", 9, T0, up=9)], now=T0)
    assert scan_gaps(engine, ids, T0 + 1, marks) == (1, 2)
    assert open_gaps(engine) == [("UJ-1", 2, 2), ("UJ-3", 6, 8), ("UJ-4", 8, 8)]
    assert marks["UJ-4"] == 9


# --- keys at rest -----------------------------------------------------------

MASTER = bytes(range(32))
KEY = b"meter-hmac-key-0123456789abcdef!"  # 32 bytes


def test_meter_key_is_stored_encrypted_and_opens_with_the_master_key(engine):
    register_meters(engine, ["UJ-1"])
    with Session(engine) as s:
        s.add(M.MeterKey.seal(MASTER, "UJ-1", KEY))
        s.commit()
    with engine.connect() as conn:
        raw = conn.execute(select(M.MeterKey.nonce, M.MeterKey.ciphertext, M.MeterKey.tag)).one()
    assert KEY not in bytes(raw.ciphertext)
    # an independent AES-GCM (pyca/cryptography) opens it with the documented AAD
    plain = AESGCM(MASTER).decrypt(bytes(raw.nonce), bytes(raw.ciphertext) + bytes(raw.tag),
                                   b"urja-meter-key|UJ-1|1")
    assert plain == KEY
    with Session(engine) as s:
        assert s.get(M.MeterKey, "UJ-1").open(MASTER) == KEY


def test_meter_key_does_not_open_with_another_master_key():
    row = M.MeterKey.seal(MASTER, "UJ-1", KEY)
    with pytest.raises(M.MeterKeyError):
        row.open(bytes(32))


def test_meter_key_copied_onto_another_meter_does_not_open():
    row = M.MeterKey.seal(MASTER, "UJ-1", KEY)
    moved = M.MeterKey(meter_id="UJ-2", version=1, nonce=row.nonce, ciphertext=row.ciphertext,
                       tag=row.tag)
    with pytest.raises(M.MeterKeyError):
        moved.open(MASTER)


def test_master_key_must_be_64_hex_digits():
    with pytest.raises(M.MeterKeyError):
        M.master_key_from_env({"URJA_MASTER_KEY": "abcd"})
    assert M.master_key_from_env({"URJA_MASTER_KEY": "0f" * 32}) == b"\x0f" * 32


# --- migrations -------------------------------------------------------------

def test_alembic_head_builds_exactly_the_models(engine):
    # every module with tables, as headend/migrations/env.py imports them
    import headend.alerts, headend.auth, headend.commands, headend.guardrails  # noqa: F401
    import headend.channel, headend.ledger, headend.reconcile, headend.tokens, headend.vee  # noqa: F401
    assert set(M.Base.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), M.Base.metadata)
    assert diff == []


def test_migration_0007_moves_reading_registers_into_uplinks_seen_and_back(db_url):
    from headend import migrations
    migrations.downgrade(db_url, "0006")
    eng = make_engine(db_url)
    try:
        register_meters(eng, ["UJ-1"])
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO uplinks_seen (meter_id, seq, kind, t, received_at) "
                              "VALUES ('UJ-1', 1, 'reading', 10, 11), "
                              "('UJ-1', 2, 'heartbeat', 20, 21), ('UJ-1', 3, 'reading', 30, 31)"))
            conn.execute(text("INSERT INTO reading_registers (meter_id, seq, t, interval_s, cum) "
                              "VALUES ('UJ-1', 1, 10, 900, 1234), ('UJ-1', 3, 30, 1800, 5678)"))
        migrations.upgrade(db_url)
        with eng.connect() as conn:
            assert conn.execute(text("SELECT seq, kind, interval_s, cum FROM uplinks_seen "
                                     "ORDER BY seq")).all() == [
                (1, "reading", 900, 1234), (2, "heartbeat", None, None), (3, "reading", 1800, 5678)]
            assert "reading_registers" not in inspect(conn).get_table_names()
        migrations.downgrade(db_url, "0006")
        with eng.connect() as conn:
            assert conn.execute(text("SELECT seq, interval_s, cum FROM reading_registers "
                                     "ORDER BY seq")).all() == [(1, 900, 1234), (3, 1800, 5678)]
        migrations.upgrade(db_url)
    finally:
        eng.dispose()


def _meter_id_collations(conn):
    """{(table, column): collation or None} of every string column holding a meter id."""
    if conn.dialect.name == "postgresql":
        return {(t, c): coll for t, c, coll in conn.execute(text(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND (column_name = 'meter_id' "
            "OR (table_name = 'meters' AND column_name = 'id'))"))}
    # SQLite: a collation would show in the table's CREATE statement
    return {(t, c["name"]): ("C" if 'COLLATE "C"' in sql else None)
            for t, sql in conn.execute(text("SELECT name, sql FROM sqlite_master "
                                            "WHERE type = 'table'"))
            for c in inspect(conn).get_columns(t)
            if c["name"] == "meter_id" or (t, c["name"]) == ("meters", "id")}


def test_migrated_meter_id_collations_match_the_models(engine):
    # compare_metadata does not compare collations: check them here
    import headend.alerts, headend.auth, headend.campaigns, headend.channel  # noqa: F401
    import headend.commands, headend.guardrails, headend.ledger, headend.ota  # noqa: F401
    import headend.payments, headend.reconcile, headend.tokens, headend.vee  # noqa: F401
    expected = {(t.name, c.name): ("C" if 'COLLATE "C"' in str(c.type.compile(engine.dialect))
                                   else None)
                for t in M.Base.metadata.tables.values() for c in t.columns
                if c.name == "meter_id" or (t.name, c.name) == ("meters", "id")}
    with engine.connect() as conn:
        assert _meter_id_collations(conn) == expected
    if engine.dialect.name == "postgresql":
        assert expected[("meters", "id")] == expected[("readings", "meter_id")] == \
            expected[("uplinks_seen", "meter_id")] == expected[("seq_gaps", "meter_id")] == "C"
    else:
        assert set(expected.values()) == {None}


def test_migration_0008_collates_meter_ids_c_on_postgresql_and_back(db_url):
    from headend import migrations
    eng = make_engine(db_url)
    try:
        register_meters(eng, ["UJ-2", "UJ-10", "UJ-1"])
        UplinkStore(eng).write([reading(m, 1, T0, 7) for m in ("UJ-2", "UJ-10", "UJ-1")],
                               now=T0)
        with eng.connect() as conn:
            at_head = _meter_id_collations(conn)
        migrations.downgrade(db_url, "0007")
        with eng.connect() as conn:
            before = _meter_id_collations(conn)
            assert before.keys() == at_head.keys()
            assert set(before.values()) == {None}
            assert conn.execute(text("SELECT meter_id FROM readings ORDER BY meter_id")
                                ).scalars().all() == ["UJ-1", "UJ-10", "UJ-2"]
        migrations.upgrade(db_url)
        with eng.connect() as conn:
            assert _meter_id_collations(conn) == at_head
            # byte order, as before: meter ids are ASCII
            assert conn.execute(text("SELECT meter_id FROM readings ORDER BY meter_id")
                                ).scalars().all() == ["UJ-1", "UJ-10", "UJ-2"]
            assert conn.execute(text("SELECT COUNT(*) FROM readings r JOIN meters m "
                                     "ON m.id = r.meter_id")).scalar() == 3
        if eng.dialect.name == "postgresql":
            changed = {k for k, v in at_head.items() if v == "C"}
            assert {("meters", "id"), ("readings", "meter_id"), ("uplinks_seen", "meter_id"),
                    ("seq_gaps", "meter_id"), ("meter_keys", "meter_id")} <= changed
            assert at_head[("audit_log", "meter_id")] is None
        else:
            assert set(at_head.values()) == {None}
        # the foreign keys to meters.id survived both ways (readings has none since 0009)
        with pytest.raises(Exception, match="(?i)foreign key"):
            with eng.begin() as conn:
                conn.execute(text("INSERT INTO events (meter_id, event_seq, t, code, value, seq) "
                                  "VALUES ('UJ-404', 1, 1, 1, 0, 1)"))
    finally:
        eng.dispose()


# --- readings without a foreign key (migration 0009) ---------------------------

def _delete_meter(engine, meter_id):
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM meters WHERE id = :m"), {"m": meter_id})


def _orphan_reading(conn):
    conn.execute(text("INSERT INTO readings (meter_id, start_t, energy, flags, span_s, "
                      "estimated, received_at) VALUES ('UJ-404', 1, 1, 0, 900, false, 1)"))


def _keep_readings_guard(conn):
    """Names of the triggers on meters and of the guard's function (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return set(conn.execute(text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'meters'::regclass "
            "AND NOT tgisinternal UNION SELECT proname || '()' FROM pg_proc "
            "WHERE pronamespace = current_schema()::regnamespace "
            "AND proname = 'meters_keep_readings'")).scalars())
    return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                 "AND tbl_name = 'meters'")).scalars())


GUARD = {"postgresql": {"meters_keep_readings", "meters_keep_readings()"},
         "sqlite": {"meters_keep_readings_delete", "meters_keep_readings_id"}}


def test_a_meter_with_readings_cannot_be_deleted_and_both_rows_stay(engine):
    register_meters(engine, ["UJ-1", "UJ-2"])
    UplinkStore(engine).write([reading("UJ-1", 1, T0, 7)], now=T0)
    with pytest.raises(IntegrityError, match="has readings and cannot be deleted: deactivate"):
        _delete_meter(engine, "UJ-1")
    if engine.dialect.name == "postgresql":  # SQLite's RAISE message cannot name it
        with pytest.raises(IntegrityError, match="meter UJ-1 has readings"):
            _delete_meter(engine, "UJ-1")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM meters ORDER BY id")).scalars().all() == [
            "UJ-1", "UJ-2"]
        assert conn.execute(text("SELECT meter_id, energy FROM readings")).all() == [("UJ-1", 7)]


def test_a_meter_without_readings_can_be_deleted(engine):
    register_meters(engine, ["UJ-1", "UJ-2"])
    UplinkStore(engine).write([reading("UJ-1", 1, T0, 7)], now=T0)
    _delete_meter(engine, "UJ-2")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM meters")).scalars().all() == ["UJ-1"]


def test_a_meter_with_readings_keeps_its_id_and_can_be_deactivated(engine):
    register_meters(engine, ["UJ-1", "UJ-2"])
    UplinkStore(engine).write([reading("UJ-1", 1, T0, 7)], now=T0)
    with pytest.raises(IntegrityError, match="has readings: its id cannot change"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE meters SET id = 'UJ-9' WHERE id = 'UJ-1'"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE meters SET id = 'UJ-9' WHERE id = 'UJ-2'"))  # no readings
        conn.execute(text("UPDATE meters SET id = id, active = false WHERE id = 'UJ-1'"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, active FROM meters ORDER BY id")).all() == [
            ("UJ-1", False), ("UJ-9", True)]
        assert conn.execute(text("SELECT meter_id FROM readings")).scalars().all() == ["UJ-1"]


def test_migration_0009_drops_the_readings_foreign_key_for_a_trigger_and_back(db_url):
    from headend import migrations
    eng = make_engine(db_url)
    try:
        register_meters(eng, ["UJ-1"])
        UplinkStore(eng).write([reading("UJ-1", 1, T0, 7)], now=T0)
        guard = GUARD[eng.dialect.name]
        with eng.connect() as conn:
            assert _keep_readings_guard(conn) == guard
            _orphan_reading(conn)  # no foreign key: only the ingest keeps these out
            conn.rollback()
        migrations.downgrade(db_url, "0008")
        with eng.connect() as conn:
            assert _keep_readings_guard(conn) == set()
        with pytest.raises(IntegrityError, match="(?i)foreign key"):
            with eng.begin() as conn:
                _orphan_reading(conn)
        with pytest.raises(IntegrityError, match="(?i)foreign key"):
            _delete_meter(eng, "UJ-1")
        migrations.upgrade(db_url)
        with eng.connect() as conn:
            assert _keep_readings_guard(conn) == guard
            _orphan_reading(conn)
            conn.rollback()
            assert conn.execute(text("SELECT meter_id, energy FROM readings")).all() == [
                ("UJ-1", 7)]
        with pytest.raises(IntegrityError, match="has readings and cannot be deleted"):
            _delete_meter(eng, "UJ-1")
    finally:
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    """An empty database (no migrations): a temp SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield "sqlite:///%s" % (tmp_path / "empty.db")
        return
    import uuid
    from headend.tests.conftest import POSTGRES_URL, _postgres_admin_engine, _with_search_path
    admin = _postgres_admin_engine()
    schema = "urja_test_%s" % uuid.uuid4().hex[:12]
    with admin.connect() as conn:
        conn.execute(text('CREATE SCHEMA "%s"' % schema))
    try:
        yield _with_search_path(POSTGRES_URL, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema))
        admin.dispose()


def test_create_all_builds_the_same_guard_as_the_migrations(empty_db_url):
    eng = make_engine(empty_db_url)
    try:
        M.Base.metadata.create_all(eng)
        M.Base.metadata.create_all(eng)  # tables exist: nothing to do, no error
        with eng.connect() as conn:
            assert _keep_readings_guard(conn) == GUARD[eng.dialect.name]
        register_meters(eng, ["UJ-1"])
        UplinkStore(eng).write([reading("UJ-1", 1, T0, 7)], now=T0)
        with pytest.raises(IntegrityError, match="has readings and cannot be deleted"):
            _delete_meter(eng, "UJ-1")
    finally:
        eng.dispose()


def test_a_large_batch_half_replayed_stores_the_new_half_with_joins(engine):
    """A reconnecting worker can get up to 65,535 redelivered uplinks in one batch, part of
    them stored before.  The claim statement must then join, not test ``IN (SELECT ...)``
    per row: once the claimed set outgrew work_mem that became a scan per row (a
    70,000-uplink batch took 152 s, 0.65 s with joins).  On PostgreSQL the plan is
    checked with work_mem so small that no hashed subplan fits: joins spill to disk, a
    per-row SubPlan would remain."""
    from headend import store as store_module
    ids = ["UJ-%d" % k for k in range(100)]
    register_meters(engine, ids)
    batch = [reading(m, s, T0 + 900 * s, s) for s in range(1, 41) for m in ids]  # 4,000
    store = UplinkStore(engine)
    store.write(batch[:2000], now=T0)
    result = store.write(batch, now=T0 + 60)
    assert (result.uplinks, result.duplicates, result.readings) == (2000, 2000, 2000)
    assert count(engine, "readings") == 4000 and count(engine, "uplinks_seen") == 4000
    if engine.dialect.name != "postgresql":
        return  # the statement below is PostgreSQL's
    unique = {(b["m"], b["s"]): b for b in batch}
    params = store_module._claim_params(list(unique.values()), T0)
    raw = engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        cur.execute("SET work_mem = '64kB'")
        plan = "\n".join(row[0] for row in cur.execute(
            "EXPLAIN " + store_module._PG_CLAIM_READINGS, params).fetchall())
        raw.rollback()
    finally:
        raw.close()
    assert "SubPlan" not in plan, plan  # hash or merge joins (both spill), never a scan per row
    assert "Anti Join" in plan and plan.count(" Join") >= 2, plan
