"""Apply Alembic migrations programmatically, on the store's own async engine.

SQLite (one process, the embedded default): every pending migration in one transaction on the
write connection, whose BEGIN IMMEDIATE keeps other writers out; `kinwire serve` does it at
start.

PostgreSQL: `kinwire migrate` is the deploy step (`kinwire serve` refuses to start on a schema
that is behind: `schema_behind`). It runs on a connection of its own, under a session advisory
lock (several deploy steps at once apply the migrations one after another; the later ones find
nothing to do), each migration in its own transaction, so that an index is built
CONCURRENTLY outside any transaction (`create_index_concurrently`) without blocking the
writes of the processes still serving. `lock_timeout_ms` bounds each wait for a table lock: a
migration that would queue behind a long transaction, and so block every statement queued
behind it, fails instead, and is safe to run again.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import column, select, table, text

from store import Store, pool_mode

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only when a migration runs or the schema is behind: a process starting
# on a database already at head (every start but the first) reads the version row and the
# revision files itself. Importing Alembic (and Mako, Pygments through it) took 0.33 s of the
# 1.6 s a `kinwire serve` spent importing, at every start of every process.
MIGRATIONS = Path(__file__).parent / "migrations"
_VERSION = table("alembic_version", column("version_num"))
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(None|"([^"]*)")', re.M)


class MigrateRefused(Exception):
    """The migrations must not run through this URL; the message is the one line to print
    (the command line prints it like server/startup.py's StartError)."""

_LOCK_ID = 0x6B696E77  # "kinw"


@functools.cache
def heads_on_disk() -> frozenset[str]:
    """The head revisions of the migration files (a revision no other names as its
    down_revision), read from the files as Alembic reads them (tests/unit checks they agree)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, _, value in _REVISION.findall(path.read_text()):
            (revisions if name == "revision" else parents).add(value or None)
    return frozenset(revisions - parents - {None})


async def _at_head(store: Store) -> bool:
    """Whether the database's recorded revisions are the files' heads, without Alembic; an
    empty database (no version table) is not."""
    try:
        async with store.read() as conn:
            current = set((await conn.execute(select(_VERSION.c.version_num))).scalars())
    except Exception:  # no alembic_version yet; Alembic's own path decides
        return False
    return current == heads_on_disk()


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn, cfg: Config, revision: str) -> None:
    from alembic import command

    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def migrate(store: Store, revision: str = "head", *,
                  lock_timeout_ms: int | None = None) -> None:
    if store.dialect == "postgresql" and pool_mode(store.url) == "transaction":
        # Through PgBouncer in transaction mode the session advisory lock and lock timeout
        # would land on whichever server connection is free: nothing to do is fine, else no.
        if await schema_behind(store) is None:
            return
        raise MigrateRefused("kinwire: migrations cannot run through a transaction pooler "
                         "(DATABASE_URL has pool_mode=transaction): run `kinwire migrate` with "
                         "DATABASE_URL pointing at PostgreSQL itself (docs/deploy.md).")
    if store.dialect == "postgresql":
        # A migration (or the wait for another process's) may take longer than the store
        # lets a request wait: it runs on its own connection with the default bounds.
        own = Store(store.url, pool_size=1)
        try:
            await _migrate_postgresql(own, revision, lock_timeout_ms)
        finally:
            await own.close()
        return
    if revision == "head" and await _at_head(store):
        return
    cfg = alembic_config()
    async with store.write() as conn:
        await conn.run_sync(_upgrade, cfg, revision)


async def _migrate_postgresql(store: Store, revision: str, lock_timeout_ms: int | None) -> None:
    cfg = alembic_config()
    cfg.attributes["transaction_per_migration"] = True
    async with store.engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
        if lock_timeout_ms is not None:
            await conn.execute(text(f"SET lock_timeout = {int(lock_timeout_ms)}"))
        await conn.commit()
        try:
            await conn.run_sync(_upgrade, cfg, revision)
        finally:
            await conn.rollback()  # a failed migration's transaction, if any
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
            await conn.commit()


def _revisions(sync_conn) -> tuple[set[str], set[str]]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = set(MigrationContext.configure(sync_conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    return current, heads


async def schema_behind(store: Store) -> str | None:
    """None when the database's schema is at this version's head; otherwise what it is at
    (`none` for an empty database)."""
    if await _at_head(store):
        return None
    async with store.read() as conn:
        current, heads = await conn.run_sync(_revisions)
    if current == heads:
        return None
    return ", ".join(sorted(current)) or "none"


def create_index_concurrently(name: str, table: str, columns: list[str], *,
                              where: str | None = None) -> None:
    """In a migration: build an index without blocking writes. On PostgreSQL CONCURRENTLY,
    outside the migration's transaction (which is committed first); a build that failed half
    way (a lock timeout, a cancelled deploy) leaves an invalid index, dropped here before the
    new build. Elsewhere (SQLite) a plain CREATE INDEX in the migration's transaction."""
    from alembic import op

    bind = op.get_bind()
    condition = {} if where is None else {f"{bind.dialect.name}_where": text(where)}
    if bind.dialect.name != "postgresql":
        op.create_index(name, table, columns, **condition)
        return
    with op.get_context().autocommit_block():
        # No lock timeout for the build itself: CONCURRENTLY waits for the transactions
        # running when it starts (a few seconds at most: KINWIRE_DB_TIMEOUT_S bounds them),
        # while blocking nobody.
        kept = bind.execute(text("SHOW lock_timeout")).scalar()
        op.execute("SET lock_timeout = 0")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        op.create_index(name, table, columns, postgresql_concurrently=True, **condition)
        op.execute(f"SET lock_timeout = '{kept}'")

