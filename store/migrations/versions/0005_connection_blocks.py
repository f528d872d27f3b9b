"""connection_blocks: one block per blocker (family, person, staff), lifted only by its owner

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 07:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connection_blocks",
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("blocked_by", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("side IN ('family', 'person', 'staff')",
                           name="ck_connection_blocks_side"),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id", "side"),
    )
    # A block made before this revision had one slot: keep it as its blocker's own row.
    op.execute(
        "INSERT INTO connection_blocks (connection_id, side, blocked_by, at) "
        "SELECT c.id, CASE WHEN a.role IN ('staff', 'admin') THEN 'staff' "
        "WHEN c.blocked_by = c.person_id THEN 'person' ELSE 'family' END, "
        "c.blocked_by, c.updated_at "
        "FROM connections c LEFT JOIN accounts a ON a.id = c.blocked_by "
        "WHERE c.blocked_by IS NOT NULL")


def downgrade() -> None:
    op.drop_table("connection_blocks")
