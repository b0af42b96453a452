"""exports: the fake-quantized checkpoint built by a job (a third job kind, the analyses' lifecycle columns)

A new table only, so SQLite and PostgreSQL take the same plain CREATE TABLE (no batch mode needed).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("plan_id", sa.String(32), sa.ForeignKey("plans.id"), nullable=False, index=True),
        sa.Column("format", sa.String(30), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("filename", sa.String(200)),
        sa.Column("media_type", sa.String(100)),
        sa.Column("warnings", sa.JSON),
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
    )


def downgrade() -> None:
    op.drop_table("exports")
