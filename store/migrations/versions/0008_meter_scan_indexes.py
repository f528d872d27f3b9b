"""meter scan indexes: partial indexes for the meters' scans of visits in a call or scheduled

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 07:40:00.000000

signalling/meters.py scans `visits` every half lease on every process: the visits in a call
(`status IN ('open', 'live', 'paused') AND end_at > now - 1 day`) and the scheduled ones past
their end (`status = 'scheduled' AND end_at <= now`, marked missed). Without an index each
scan read the whole table (a parallel sequential scan of 200-260 ms at 1M visit rows). These
partial indexes hold only the few rows in those states, so they stay small however many
visits are history (docs/BENCHMARKS.md, "Meter scans").
"""

from alembic import op

from store.migrate import create_index_concurrently

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

IN_CALL = "status IN ('open', 'live', 'paused')"
SCHEDULED = "status = 'scheduled'"


def upgrade() -> None:
    create_index_concurrently("ix_visits_in_call_end", "visits", ["end_at"], where=IN_CALL)
    create_index_concurrently("ix_visits_scheduled_end", "visits", ["end_at"], where=SCHEDULED)


def downgrade() -> None:
    # A plain DROP INDEX (a brief lock), not CONCURRENTLY: a downgrade is maintenance, and it
    # may run inside a caller's transaction, where CONCURRENTLY cannot
    # (tests/integration/test_oracles.py).
    op.drop_index("ix_visits_scheduled_end", table_name="visits")
    op.drop_index("ix_visits_in_call_end", table_name="visits")
