"""readings lose their foreign key to meters; a trigger keeps meters that have readings

On PostgreSQL the foreign key's check cost the ingest ~3.5 us of backend CPU
per reading (15.0 with it, 11.2-11.6 without), and for a real fleet, where
every reading of a batch is a different meter, a row lock on ``meters`` with
its WAL record each (docs/SCALING.md).  What it guarded is kept otherwise:

- a reading of a meter not in the registry: the ingest dead-letters it
  (``IngestWorker.classify``: "meter ... is not registered"; the C scanner
  only accepts registered meters);
- a meter deleted, or its id changed, under its readings: ``meters_keep_readings``
  triggers refuse it.  Nothing in the code base deletes a meter or changes
  its id (checked with grep -i delete / update over the repository when
  this was written: outside tests no code deletes or renames a row of
  ``meters``); a meter leaves service by ``active`` false.

Unlike the foreign key, the trigger does not see readings another
transaction has not committed yet: deleting a meter while the ingest is
still storing its readings could leave those orphaned.  SQLite's triggers
vanish with their table: a later migration that rebuilds ``meters`` in batch
mode must make them again (and one that rebuilds ``readings`` must drop them
first, or SQLite's rename check finds them pointing at a missing table).
``headend.models.KEEP_READINGS_DDL`` makes the same guard for schemas built
by ``create_all``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 10:00:00
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# PostgreSQL named it; SQLite's is unnamed until a downgrade made it again, so batch mode
# names it by this convention (a named one keeps its name, the same).
PG_FK_NAME = 'readings_meter_id_fkey'
SQLITE_FK_NAMING = {'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s'}
SQLITE_FK_NAME = 'fk_readings_meter_id_meters'

PG_GUARD = [
    """CREATE FUNCTION meters_keep_readings() RETURNS trigger
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
    """CREATE TRIGGER meters_keep_readings BEFORE DELETE OR UPDATE OF id ON meters
    FOR EACH ROW EXECUTE FUNCTION meters_keep_readings()""",
]
PG_GUARD_DROP = [
    "DROP TRIGGER meters_keep_readings ON meters",
    "DROP FUNCTION meters_keep_readings()",
]

# SQLite's RAISE takes only a literal message, so it cannot name the meter.
SQLITE_GUARD = [
    """CREATE TRIGGER meters_keep_readings_delete BEFORE DELETE ON meters
    WHEN EXISTS (SELECT 1 FROM readings WHERE meter_id = OLD.id)
    BEGIN
        SELECT RAISE(ABORT,
            'meter has readings and cannot be deleted: deactivate it (active = 0)');
    END""",
    """CREATE TRIGGER meters_keep_readings_id BEFORE UPDATE OF id ON meters
    WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM readings WHERE meter_id = OLD.id)
    BEGIN
        SELECT RAISE(ABORT, 'meter has readings: its id cannot change');
    END""",
]
SQLITE_GUARD_DROP = [
    "DROP TRIGGER meters_keep_readings_delete",
    "DROP TRIGGER meters_keep_readings_id",
]


def _postgresql():
    return op.get_bind().dialect.name == 'postgresql'


def upgrade():
    if _postgresql():
        op.drop_constraint(PG_FK_NAME, 'readings', type_='foreignkey')
        guard = PG_GUARD
    else:
        with op.batch_alter_table('readings', naming_convention=SQLITE_FK_NAMING) as batch:
            batch.drop_constraint(SQLITE_FK_NAME, type_='foreignkey')
        guard = SQLITE_GUARD
    for statement in guard:
        op.execute(statement)


def downgrade():
    # fails, as it should, if readings of meters not in the registry got in meanwhile
    if _postgresql():
        for statement in PG_GUARD_DROP:
            op.execute(statement)
        op.create_foreign_key(PG_FK_NAME, 'readings', 'meters', ['meter_id'], ['id'])
    else:
        for statement in SQLITE_GUARD_DROP:
            op.execute(statement)
        with op.batch_alter_table('readings') as batch:
            batch.create_foreign_key(SQLITE_FK_NAME, 'meters', ['meter_id'], ['id'])
