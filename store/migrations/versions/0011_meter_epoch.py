"""visits.meter_epoch: the meter holder's fencing epoch (issue 18 item 2)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("visits") as batch:
        batch.add_column(sa.Column("meter_epoch", sa.Integer(), nullable=False,
                                   server_default=sa.text("0")))


def downgrade() -> None:
    with op.batch_alter_table("visits") as batch:
        batch.drop_column("meter_epoch")
