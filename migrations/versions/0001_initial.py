"""models, datasets, analyses, plans

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("format", sa.String(20), nullable=False),
        sa.Column("architecture", sa.String(50)),
        sa.Column("hyperparams", sa.JSON),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("input_shape", sa.JSON, nullable=False),
        sa.Column("input_dtype", sa.String(20), nullable=False),
        sa.Column("has_targets", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "analyses",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), index=True),
        sa.Column("candidates", sa.JSON, nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("table", sa.JSON),
        sa.Column("problem", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("heartbeat_at", TS),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("analysis_id", sa.String(32), sa.ForeignKey("analyses.id"), nullable=False, index=True),
        sa.Column("budget", sa.JSON, nullable=False),
        sa.Column("assignment", sa.JSON, nullable=False),
        sa.Column("total_bytes", sa.Float, nullable=False),
        sa.Column("average_bits", sa.Float, nullable=False),
        sa.Column("predicted_damage", sa.Float, nullable=False),
        sa.Column("costs", sa.JSON, nullable=False),
        sa.Column("solver_status", sa.String(20), nullable=False),
        sa.Column("gap", sa.Float, nullable=False),
        sa.Column("backend", sa.String(20), nullable=False),
        sa.Column("solve_seconds", sa.Float, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for name in ("plans", "analyses", "datasets", "models"):
        op.drop_table(name)
