"""notification_prefs.language: the language of a family's emails (issue 19 item 9;
server/mail_words.py). Null for every family so far: English, as before.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 20:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification_prefs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notification_prefs", schema=None) as batch_op:
        batch_op.drop_column("language")
