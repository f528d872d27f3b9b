"""visit presence: the process holding each party, the kiosk's outbound media, the relay's view

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 07:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("family_node", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("person_node", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("person_sending", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column("server_media", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("server_node", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("visits", schema=None) as batch_op:
        batch_op.drop_column("server_node")
        batch_op.drop_column("server_media")
        batch_op.drop_column("person_sending")
        batch_op.drop_column("person_node")
        batch_op.drop_column("family_node")
