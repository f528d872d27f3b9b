"""visits.media_server, media_room: where a relay-mode visit's room is on the Janus fleet;
janus_handles: the Janus servers' handles of Kinwire's parties, shared by every process that
receives the servers' events (issue 16)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 20:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds the columns without rewriting the table.
    with op.batch_alter_table("visits") as batch:
        batch.add_column(sa.Column("media_server", sa.String(300), nullable=True))
        batch.add_column(sa.Column("media_room", sa.String(64), nullable=True))
    op.create_table(
        "janus_handles",
        sa.Column("server", sa.String(length=256), nullable=False),
        sa.Column("handle_id", sa.BigInteger(), nullable=False),
        sa.Column("visit_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("server", "handle_id"),
    )
    with op.batch_alter_table("janus_handles", schema=None) as batch_op:
        batch_op.create_index("ix_janus_handles_visit", ["server", "visit_id"], unique=False)
        batch_op.create_index("ix_janus_handles_session", ["server", "session_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("janus_handles", schema=None) as batch_op:
        batch_op.drop_index("ix_janus_handles_session")
        batch_op.drop_index("ix_janus_handles_visit")
    op.drop_table("janus_handles")
    with op.batch_alter_table("visits") as batch:
        batch.drop_column("media_room")
        batch.drop_column("media_server")
