"""visits.first_stop_at: the first moment the call stopped being live since the meter's last
pass read the row (the meter clears it), so a stop and a return between two passes are not
billed as one connected stretch (signalling/meters.py, "moved")

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 23:35:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("visits") as batch:
        batch.add_column(sa.Column("first_stop_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("visits") as batch:
        batch.drop_column("first_stop_at")
