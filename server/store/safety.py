"""Checks made before a process serves from a database: is a commit durable.

Durability (docs/operations.md, "Durability"): an acknowledgement promises the change survives
a power cut. SQLite keeps that promise by itself (`synchronous=FULL`, set by the store). On
PostgreSQL it rests on the server: `fsync` must be on, and `synchronous_commit` anything but
`off` for this process's sessions (a role's or a database's default counts, which is why it is
read from a session of the store rather than from the server's configuration).
"""

from __future__ import annotations

from server.store import Store


class UnsafeStart(RuntimeError):
    """The process must not serve from this database; the message says why and what to do."""


async def durability_problems(store: Store) -> list[str]:
    """What would let an acknowledged commit be lost on a power cut; empty when nothing."""
    async with store.write() as conn:  # the writer's session: it makes the commits
        if store.dialect == "sqlite":
            level = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
            return [] if level >= 2 else [f"SQLite synchronous={level} (FULL is 2)"]
        problems = []
        commit = (await conn.exec_driver_sql("SHOW synchronous_commit")).scalar_one()
        if commit == "off":
            problems.append("PostgreSQL synchronous_commit=off for this role and database")
        if (await conn.exec_driver_sql("SHOW fsync")).scalar_one() != "on":
            problems.append("PostgreSQL fsync=off on the server")
        return problems


async def check_durability(store: Store, log) -> None:
    """Refuse to start on a database that would lose acknowledged commits, unless the store
    was made with `durable=False` (KINWIRE_DB_DURABLE_COMMITS=false): then warn, loudly."""
    problems = await durability_problems(store)
    if store.durable and problems:
        raise UnsafeStart(
            "acknowledged commits would not be durable: " + "; ".join(problems) + ". Turn "
            "it on (e.g. ALTER DATABASE <db> SET synchronous_commit = on, or for the role), or "
            "set KINWIRE_DB_DURABLE_COMMITS=false to accept losing acknowledged payments and "
            "messages on a power cut (docs/operations.md, \"Durability\").")
    if not store.durable:
        log.warning("NOT DURABLE: KINWIRE_DB_DURABLE_COMMITS=false. A power cut or OS crash may "
                    "lose purchases, gifts and messages already acknowledged%s "
                    "(docs/operations.md, \"Durability\").",
                    ": " + "; ".join(problems) if problems else "")
