"""evaluations: measured plans and frontier points, a job kind with the analyses' lifecycle columns

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(20), nullable=False),
        sa.Column("analysis_id", sa.String(32), sa.ForeignKey("analyses.id"), nullable=False, index=True),
        sa.Column("plan_id", sa.String(32), sa.ForeignKey("plans.id"), index=True),
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("rank_agreement", sa.JSON),
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
    op.drop_table("evaluations")
