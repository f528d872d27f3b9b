"""recording_segments: a recording is one record per visit, in one or more segments (the relay
moved to another process mid-visit: issue 15 item 5); each segment's file is its own blob with
its own SHA-256. Existing recordings become their own first segment.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recording_segments",
        sa.Column("recording_id", sa.String(length=32), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("location", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["recording_id"], ["recordings.id"]),
        sa.PrimaryKeyConstraint("recording_id", "segment"),
    )
    op.create_index("ix_recording_segments_location", "recording_segments", ["location"])
    op.execute(
        "INSERT INTO recording_segments (recording_id, segment, started_at, ended_at, "
        "duration_ms, bytes, sha256, content_type, location, created_at) "
        "SELECT id, 1, started_at, ended_at, duration_ms, bytes, sha256, content_type, "
        "location, created_at FROM recordings")


def downgrade() -> None:
    op.drop_table("recording_segments")
