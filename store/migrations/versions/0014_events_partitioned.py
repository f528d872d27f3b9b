"""events partitioned by week on PostgreSQL (issue 18 item 4); SQLite unchanged

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 16:40:00

Events were one table pruned by DELETE (every send writes three rows; 30 days kept). On
PostgreSQL `events` becomes a table partitioned by range of `at`, one partition a week, so that
retention drops a whole week instead of deleting its rows (server/event_partitions.py). The
existing table is kept in place, not copied: it becomes the partition `events_before`, of every
row before the first week, which starts on the Monday (00:00 UTC) at least a day after this
migration runs; writes go on landing in it until then.

Without a scan under lock: a CHECK (at < first week) is added NOT VALID (a brief lock) and
validated outside the transaction (a lock that lets writes through), so that ATTACH PARTITION
knows the rows fit without reading them. Each partition has its own primary key (account_id,
seq); the parent has none (a partitioned table's unique keys must include `at`).
"""

from datetime import UTC, datetime, timedelta

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

WEEKS_AHEAD = 4  # server/event_partitions.py WEEKS_AHEAD (housekeeping keeps it so)


def _literal(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S+00")


def _first_week() -> datetime:
    # A real clock: a migration runs at deploy time, and the first week must start after the
    # running version's writes (which go to events_before until then).
    day = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)
    return day + timedelta(days=(7 - day.weekday()) % 7)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    first = _first_week()
    # Run again after a lock timeout below, the bound is made afresh (a later first week).
    op.execute("ALTER TABLE events DROP CONSTRAINT IF EXISTS events_before_bound")
    op.execute(f"ALTER TABLE events ADD CONSTRAINT events_before_bound "
               f"CHECK (at < '{_literal(first)}') NOT VALID")
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE events VALIDATE CONSTRAINT events_before_bound")
    op.execute("ALTER TABLE events RENAME TO events_before")
    op.execute("ALTER INDEX events_pkey RENAME TO events_before_pkey")
    op.execute("ALTER INDEX ix_events_at RENAME TO ix_events_before_at")
    op.execute("CREATE TABLE events (LIKE events_before INCLUDING DEFAULTS) "
               "PARTITION BY RANGE (at)")
    op.execute(f"ALTER TABLE events ATTACH PARTITION events_before "
               f"FOR VALUES FROM (MINVALUE) TO ('{_literal(first)}')")
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute("ALTER TABLE events_default ADD PRIMARY KEY (account_id, seq)")
    op.execute("CREATE INDEX ix_events_default_at ON events_default (at)")
    for week in range(WEEKS_AHEAD + 1):
        start = first + timedelta(days=7 * week)
        name = f"events_w{start:%Y%m%d}"
        op.execute(f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM "
                   f"('{_literal(start)}') TO ('{_literal(start + timedelta(days=7))}')")
        op.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (account_id, seq)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Maintenance, not a deploy step: the rows are copied back into one table.
    op.execute("CREATE TABLE events_plain (LIKE events INCLUDING DEFAULTS)")
    op.execute("INSERT INTO events_plain SELECT * FROM events")
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_plain RENAME TO events")
    op.execute("ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (account_id, seq)")
    op.execute("CREATE INDEX ix_events_at ON events (at)")
