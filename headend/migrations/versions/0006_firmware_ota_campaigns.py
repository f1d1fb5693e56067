"""firmware images, OTA jobs, campaigns

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 08:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('firmware_images',
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('ota_jobs',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('meter_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('next_chunk', sa.Integer(), nullable=False),
    sa.Column('command_id', sa.String(length=64), nullable=True),
    sa.Column('sends', sa.Integer(), nullable=False),
    sa.Column('resumes', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('installed_at', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], ),
    sa.ForeignKeyConstraint(['version'], ['firmware_images.version'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ota_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ota_jobs_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ota_jobs_command_id'), ['command_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ota_jobs_meter_id'), ['meter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ota_jobs_state'), ['state'], unique=False)

    op.create_table('campaigns',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('tenant_id', BIG_ID, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('args', sa.Text(), nullable=False),
    sa.Column('stages', sa.String(length=200), nullable=False),
    sa.Column('success_pct', sa.Integer(), nullable=False),
    sa.Column('failure_pct', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('decided_by', sa.String(length=64), nullable=True),
    sa.Column('decided_at', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('campaign_targets',
    sa.Column('campaign_id', BIG_ID, nullable=False),
    sa.Column('meter_id', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('command_id', sa.String(length=64), nullable=True),
    sa.Column('ota_job_id', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], ),
    sa.PrimaryKeyConstraint('campaign_id', 'meter_id')
    )
    with op.batch_alter_table('campaign_targets', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_targets_stage', ['campaign_id', 'stage'], unique=False)


def downgrade():
    with op.batch_alter_table('campaign_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_targets_stage')
    op.drop_table('campaign_targets')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_campaigns_state'))
    op.drop_table('campaigns')
    with op.batch_alter_table('ota_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ota_jobs_state'))
        batch_op.drop_index(batch_op.f('ix_ota_jobs_meter_id'))
        batch_op.drop_index(batch_op.f('ix_ota_jobs_command_id'))
        batch_op.drop_index(batch_op.f('ix_ota_jobs_campaign_id'))
    op.drop_table('ota_jobs')
    op.drop_table('firmware_images')
