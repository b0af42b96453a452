"""input signatures: what a model takes and a dataset's largest token id, for the submit-time check

Rows from before stay NULL and are not checked (service.core.compat).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("inputs", sa.JSON, nullable=True))
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("max_token_id", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("max_token_id")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("inputs")
