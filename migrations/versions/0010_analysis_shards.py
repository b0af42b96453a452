"""analysis_shards: the sub-jobs of a sharded analysis (options.shards), with the job lifecycle columns

A new table only, so SQLite and PostgreSQL take the same plain CREATE TABLE (no batch mode needed).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "analysis_shards",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("analysis_id", sa.String(32), sa.ForeignKey("analyses.id"), nullable=False, index=True),
        sa.Column("shard_index", sa.Integer, nullable=False),
        sa.Column("shard_count", sa.Integer, nullable=False),
        sa.Column("sums", sa.JSON),
        sa.Column("owned_by", sa.String(32), nullable=False, server_default="local", index=True),
        # the job lifecycle, as on analyses (service.storage.db.models.JobColumns)
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("heartbeat_at", TS),
        sa.Column("owner", sa.String(32)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("retry_at", TS),
        sa.Column("token_id", sa.String(32), index=True),
        sa.UniqueConstraint("analysis_id", "shard_index", name="uq_analysis_shard"),
    )


def downgrade() -> None:
    op.drop_table("analysis_shards")
