"""seq_gaps: backfill command, meter's answer, unrecoverable mark

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 05:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('seq_gaps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backfill_command_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('backfill_attempts', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('backfill_n', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('held_from', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('unrecoverable_at', sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f('ix_seq_gaps_backfill_command_id'),
                              ['backfill_command_id'], unique=False)


def downgrade():
    with op.batch_alter_table('seq_gaps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_seq_gaps_backfill_command_id'))
        batch_op.drop_column('unrecoverable_at')
        batch_op.drop_column('held_from')
        batch_op.drop_column('backfill_n')
        batch_op.drop_column('backfill_attempts')
        batch_op.drop_column('backfill_command_id')
