"""visits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:03:08.354098
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "visits",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("facility_id", sa.String(length=32), nullable=False),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("family_id", sa.String(length=32), nullable=False),
        sa.Column("person_id", sa.String(length=32), nullable=False),
        sa.Column("booked_by", sa.String(length=32), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocks", sa.Integer(), nullable=False),
        sa.Column("minute_price", sa.Integer(), nullable=False),
        sa.Column("media", sa.String(length=8), nullable=False),
        sa.Column("record", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("end_reason", sa.String(length=24), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("family_media", sa.String(length=12), nullable=False),
        sa.Column("person_media", sa.String(length=12), nullable=False),
        sa.Column("media_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("meter", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('scheduled', 'open', 'live', 'paused', 'ended', 'cancelled', 'missed')",
            name="ck_visits_status",
        ),
        sa.CheckConstraint("blocks >= 1", name="ck_visits_blocks"),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
        ),
        sa.ForeignKeyConstraint(
            ["facility_id"],
            ["facilities.id"],
        ),
        sa.ForeignKeyConstraint(
            ["family_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.create_index("ix_visits_facility_start", ["facility_id", "start_at"], unique=False)
        batch_op.create_index("ix_visits_family_start", ["family_id", "start_at"], unique=False)
        batch_op.create_index("ix_visits_person_start", ["person_id", "start_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.drop_index("ix_visits_person_start")
        batch_op.drop_index("ix_visits_family_start")
        batch_op.drop_index("ix_visits_facility_start")

    op.drop_table("visits")
