"""plans: the solver's proof tolerance and bound, so a stored plan says how optimal it is

Rows from before stay NULL (shown as unknown).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("tolerance", sa.Float, nullable=True))
        batch.add_column(sa.Column("bound", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("bound")
        batch.drop_column("tolerance")
