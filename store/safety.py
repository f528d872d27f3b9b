"""Checks made before a process serves from a database: is a commit durable, and is this the
database the data directory belongs to.

Durability (docs/operations.md, "Durability"): an acknowledgement promises the change survives
a power cut. SQLite keeps that promise by itself (`synchronous=FULL`, set by the store). On
PostgreSQL it rests on the server: `fsync` must be on, and `synchronous_commit` anything but
`off` for this process's sessions (a role's or a database's default counts, which is why it is
read from a session of the store rather than from the server's configuration).

The copied-file trap: while the server runs, recent commits live in `kinwire.db-wal` until a
checkpoint copies them into `kinwire.db`. A copy of `kinwire.db` alone can hold no tables at
all; migrated, it becomes a new empty database next to the old photos, and every account and
balance is gone. A database without tables next to a blob folder holding files is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from store import Store


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


def _files(folders: Iterable[Path]) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.is_file() and p.suffix in
                      (".jpg", ".mkv")]
    return found


def _has_tables(sync_conn) -> bool:
    return bool(inspect(sync_conn).get_table_names())


def _sqlite_file_tables(path: Path) -> int:
    """Tables in the main file alone, read without creating a -wal or -shm beside it."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    finally:
        db.close()


async def check_not_copied_file(store: Store, blob_folders: Iterable[Path]) -> None:
    """Refuse to migrate an empty database when the data directory holds photos or
    recordings: it is not the database they belong to (see the module docstring)."""
    blobs = _files(blob_folders)
    if not blobs:
        return
    path = wal = Path()
    if store.dialect == "sqlite":
        path = Path(make_url(store.url).database or "")
        wal = path.with_name(path.name + "-wal")
    wal_missing = store.dialect == "sqlite" and not wal.exists()
    if wal_missing:  # nothing to recover: the main file is the whole database
        if path.exists() and _sqlite_file_tables(path):
            return
    else:
        async with store.read() as conn:
            if await conn.run_sync(_has_tables):
                return
    where = ", ".join(sorted({str(p.parent) for p in blobs}))
    if wal_missing and not path.exists():
        how = f"there is no database at {path}. "
    elif wal_missing:
        how = (f"{path} has no tables and there is no {wal.name} beside it: it looks like a "
               f"copy of {path.name} taken while the server ran, without its WAL, which held "
               "the data. ")
    elif store.dialect == "sqlite":
        how = f"{path} has no tables. "
    else:
        how = "the database has no tables. "
    raise UnsafeStart(
        f"refusing to start: {how}{where} holds {len(blobs)} photo or recording files, so this "
        "is not the database they belong to, and migrating it would serve an empty service "
        "with no accounts or balances. Restore with `kinwire restore` from a `kinwire backup` "
        "(or copy the database together with its -wal file from a stopped server); to start "
        "a new service, move the blob and recordings folders away (docs/operations.md, "
        "\"Backup and restore\").")
