"""owners: every model, dataset, analysis, plan, frontier and evaluation belongs to a token (owned_by)

Existing rows get the best owner the data can tell: a job's submitting token (analyses and evaluations
recorded it), a model's or dataset's first analysis's token, a plan's or frontier's analysis's owner;
rows with no token behind them (auth was off) belong to the one local owner, "local", which admins
and servers without auth see.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("models", "datasets", "analyses", "plans", "frontiers", "evaluations")

BACKFILL = (
    "UPDATE analyses SET owned_by = token_id WHERE token_id IS NOT NULL",
    "UPDATE evaluations SET owned_by = token_id WHERE token_id IS NOT NULL",
    *(f"""UPDATE {table} SET owned_by = COALESCE((
            SELECT a.token_id FROM analyses a WHERE a.{column} = {table}.id AND a.token_id IS NOT NULL
            ORDER BY a.created_at LIMIT 1), 'local')"""
      for table, column in (("models", "model_id"), ("datasets", "dataset_id"))),
    *(f"""UPDATE {table} SET owned_by = (SELECT a.owned_by FROM analyses a WHERE a.id = {table}.analysis_id)"""
      for table in ("plans", "frontiers")),
)


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owned_by", sa.String(32), nullable=False, server_default="local"))
            batch.create_index(f"ix_{table}_owned_by", ["owned_by"])
    for statement in BACKFILL:
        op.execute(sa.text(statement))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_owned_by")
            batch.drop_column("owned_by")
