"""Apply Alembic migrations programmatically, on the store's own async engine.

Several processes may start at once against one PostgreSQL: an advisory lock taken inside the
migration transaction makes them apply the migrations one after another (the later ones find
nothing to do). On SQLite the BEGIN IMMEDIATE of the write connection does the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from server.store import Store

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x6B696E77  # "kinw"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn, cfg: Config, revision: str) -> None:
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def migrate(store: Store, revision: str = "head") -> None:
    if store.dialect == "postgresql" and store.timeout_s is not None:
        # A migration (or the wait for another process's) may take longer than the store
        # lets a request wait: it runs on its own connection with the default bounds.
        own = Store(store.url, pool_size=1)
        try:
            await _migrate(own, revision)
        finally:
            await own.close()
        return
    await _migrate(store, revision)


async def _migrate(store: Store, revision: str) -> None:
    cfg = alembic_config()
    async with store.write() as conn:
        if store.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        await conn.run_sync(_upgrade, cfg, revision)
