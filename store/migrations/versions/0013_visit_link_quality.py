"""visits.link_quality, link_reason: the kiosk's view of the call's link (issue 21 item 4)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds the columns without rewriting the table.
    with op.batch_alter_table("visits") as batch:
        batch.add_column(sa.Column("link_quality", sa.String(8), nullable=True))
        batch.add_column(sa.Column("link_reason", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("visits") as batch:
        batch.drop_column("link_reason")
        batch.drop_column("link_quality")
