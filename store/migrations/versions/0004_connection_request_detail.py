"""connection request detail: who the family says they are, and when they last asked

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 07:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("relationship", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("requested_at", sa.DateTime(timezone=True),
                                      nullable=True))
    # A pending request was last asked for at its last change (a re-request after a denial
    # sets updated_at); any other row at its first request.
    op.execute("UPDATE connections SET requested_at = CASE WHEN status = 'requested' "
               "THEN updated_at ELSE created_at END")


def downgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("requested_at")
        batch_op.drop_column("relationship")
