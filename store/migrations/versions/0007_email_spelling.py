"""accounts.email: stored in its one spelling (NFKC, lower case), as sign-up now writes it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 07:05:00

An address that folds onto another account's is left as it is (and reported): which of the
two is the person's is for an administrator to decide, not a migration. An address holding a
format character (a zero-width space) is left too; it can no longer be typed at login.
"""

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _spelling(email: str) -> str:
    return unicodedata.normalize("NFKC", email.strip()).lower()


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, email FROM accounts WHERE email IS NOT NULL")).all()
    taken = {email for _, email in rows}
    for account_id, email in rows:
        spelled = _spelling(email)
        if spelled == email:
            continue
        if spelled in taken:
            log.warning("account %s: its email folds onto another account's; left as it is",
                        account_id)
            continue
        bind.execute(sa.text("UPDATE accounts SET email = :e WHERE id = :id"),
                     {"e": spelled, "id": account_id})
        taken.discard(email)
        taken.add(spelled)


def downgrade() -> None:
    pass  # the old spellings are not kept; the new ones are valid under the old rules
