"""The meters' and housekeeping's scans of `visits` are served by the partial indexes of
migration 0008, on both databases, as the code sends them (bound values and all).

Adversary: the planner. A partial index serves a query only when the query's WHERE provably
implies the index's: SQLite cannot prove `status IN (?, ?, ?)` implies `status IN ('open',
'live', 'paused')`, so with bound statuses it read the whole table."""

from __future__ import annotations

from server.housekeeping import missed_scan
from server.schema import utcnow
from signalling.meters import in_call_scan
from store import Store


async def plan(store: Store, statement) -> str:
    async with store.read() as conn:
        compiled = statement.compile(dialect=conn.dialect,
                                     compile_kwargs={"render_postcompile": True})
        params = tuple(compiled.params[name] for name in compiled.positiontup)
        if conn.dialect.name == "sqlite":
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params)
            return " / ".join(str(r[-1]) for r in rows)
        # Seq scans priced out: whatever index can serve the query is used; none can: a seq
        # scan. And a generic plan, as PostgreSQL caches for a prepared statement after five
        # runs when it looks no dearer: one that must serve any bound value.
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql("PREPARE scan AS " + compiled.string)
        values = ", ".join(str(v) if isinstance(v, int) else f"'{v}'" for v in params)
        rows = await conn.exec_driver_sql(f"EXPLAIN EXECUTE scan({values})")
        return " / ".join(r[0] for r in rows)


async def test_the_in_call_scan_uses_its_partial_index(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert "ix_visits_in_call_end" in await plan(store, in_call_scan(utcnow()))
    finally:
        await store.close()


async def test_the_missed_scan_uses_its_partial_index(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert "ix_visits_scheduled_end" in await plan(store, missed_scan(utcnow(), 1000))
    finally:
        await store.close()
