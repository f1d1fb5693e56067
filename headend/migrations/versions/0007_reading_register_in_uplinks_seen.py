"""reading registers move into uplinks_seen (interval_s, cum)

A reading uplink's register is one value per uplink, so it lives in the
uplink's dedupe row: PostgreSQL's write path loses a heap row, a primary-key
entry and a foreign-key check per reading (docs/SCALING.md has the numbers).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 11:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('uplinks_seen') as batch:
        batch.add_column(sa.Column('interval_s', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('cum', sa.BigInteger(), nullable=True))
    op.execute("""UPDATE uplinks_seen SET
        interval_s = (SELECT r.interval_s FROM reading_registers r
                      WHERE r.meter_id = uplinks_seen.meter_id AND r.seq = uplinks_seen.seq),
        cum = (SELECT r.cum FROM reading_registers r
               WHERE r.meter_id = uplinks_seen.meter_id AND r.seq = uplinks_seen.seq)
        WHERE kind = 'reading'""")
    op.drop_table('reading_registers')


def downgrade():
    op.create_table('reading_registers',
    sa.Column('meter_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('t', sa.BigInteger(), nullable=False),
    sa.Column('interval_s', sa.Integer(), nullable=False),
    sa.Column('cum', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], ),
    sa.PrimaryKeyConstraint('meter_id', 'seq')
    )
    op.execute("""INSERT INTO reading_registers (meter_id, seq, t, interval_s, cum)
        SELECT meter_id, seq, t, interval_s, cum FROM uplinks_seen
        WHERE kind = 'reading' AND cum IS NOT NULL""")
    with op.batch_alter_table('uplinks_seen') as batch:
        batch.drop_column('cum')
        batch.drop_column('interval_s')
