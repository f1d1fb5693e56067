"""meter id columns COLLATE "C" on PostgreSQL

Under the database's default collation (C.UTF-8 on Debian; PostgreSQL 15
does not treat it as "C") every meter-id comparison in the ingest's B-tree
inserts and foreign-key checks goes through strcoll; "C" compares bytes
(docs/SCALING.md has the numbers).  Meter ids are ASCII, which C.UTF-8 and
C order the same, so no ordering changes.  PostgreSQL keeps the foreign keys
to meters.id through the type change by itself and rebuilds the indexes;
SQLite already compares bytes and has no "C" collation: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 14:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# (table, column) of every meter id headend.models.MeterId types at this revision: meters.id,
# the columns with a foreign key to it (they take its type), uplinks_seen and seq_gaps.
# audit_log.meter_id and command_alerts.meter_id keep the default collation (no foreign
# key, off the ingest path).
METER_ID_COLUMNS = [('meters', 'id')] + [(table, 'meter_id') for table in (
    'alert_cursors', 'alerts', 'backfill_requests', 'campaign_targets', 'channel_recharges',
    'command_acks', 'command_targets', 'commands', 'estimated_readings', 'events',
    'heartbeats', 'ledger_entries', 'meter_balances', 'meter_command_counters', 'meter_keys',
    'ota_jobs', 'payments', 'readings', 'reconciliation_results', 'seq_gaps',
    'shadow_accounts', 'snapshots', 'status_history', 'sts_meter_params', 'sts_tokens',
    'topups', 'uplinks_seen', 'vee_flags')]


def _collate(collation):
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column in METER_ID_COLUMNS:
        op.alter_column(table, column, type_=sa.String(64, collation=collation),
                        existing_type=sa.String(64))


def upgrade():
    _collate('C')


def downgrade():
    _collate('default')
