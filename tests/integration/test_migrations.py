"""The migrations create exactly what server/schema.py describes, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.schema import metadata
from store import Store
from store.partitions import PARTITION_NAME as PARTITION

# On PostgreSQL `events` is partitioned by week (server/event_partitions.py, migration 0014):
# its partitions are tables schema.py does not list, and the parent has no index of its own
# (each partition has its key and, for the two pruned by DELETE, an index on `at`).
PARTITIONED_INDEXES = {"ix_events_at", "ix_events_before_at", "ix_events_default_at"}


def _diff(sync_conn):
    postgres = sync_conn.dialect.name == "postgresql"

    def include(obj, name, type_, reflected, compare_to):
        if postgres and type_ == "table" and name and PARTITION.fullmatch(name):
            return False
        return not (postgres and type_ == "index" and name in PARTITIONED_INDEXES)

    context = MigrationContext.configure(sync_conn, opts={"compare_type": True,
                                                          "include_object": include})
    return compare_metadata(context, metadata)


async def test_migrated_database_matches_the_schema(db_url: str) -> None:
    store = Store(db_url)
    try:
        async with store.read() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await store.close()
    assert diff == [], f"schema.py and the migrations disagree: {diff}"


async def test_migrating_twice_changes_nothing(db_url: str) -> None:
    from store.migrate import migrate

    store = Store(db_url)
    try:
        await migrate(store)
        await migrate(store)
        async with store.read() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await store.close()
