"""The migrations create exactly what server/schema.py describes, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.schema import metadata
from store import Store


def _diff(sync_conn):
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
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
