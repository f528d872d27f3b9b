"""Consistent snapshots of a store's database, for `kinwire backup` (server/backup.py, which
decides what goes with them). The caller names what to read from the snapshot as SQLAlchemy
Core selects of one column; each comes back as that column's values, read in the same
snapshot as the copy, so the blobs a backup takes are exactly those its database references.

- SQLite: `sqlite_copy` copies every page in one step of SQLite's online backup API (one
  read transaction: one snapshot, whatever writers do meanwhile) into one self-contained file
  (rollback journal, not WAL), then reads from the copy. `sqlite_read` reads a copy read-only,
  with SQLite's integrity check.
- PostgreSQL: `postgresql_exported` holds a REPEATABLE READ transaction open, reads in it and
  exports its snapshot for pg_dump (`--snapshot`) to dump the same state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Select, text
from sqlalchemy.dialects import sqlite

from store import Store


class NoDatabase(Exception):
    """There is no database file to copy."""


def _sql(read: Select[Any]) -> str:
    return str(read.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


def _values(conn: sqlite3.Connection, read: Select[Any]) -> list[Any] | None:
    """The read's one column; None when its table is not there (a database from before)."""
    try:
        return [row[0] for row in conn.execute(_sql(read))]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise


def sqlite_copy(source: Path, target: Path, busy_ms: int,
                reads: Sequence[Select[Any]]) -> list[list[Any] | None]:
    """Copy the database at `source` into `target` in one snapshot; the reads, from the copy."""
    if not source.exists():
        raise NoDatabase(f"there is no database at {source}")
    src = sqlite3.connect(source)
    try:
        src.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            found = [_values(dst, read) for read in reads]
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    return found


def sqlite_read(path: Path, reads: Sequence[Select[Any]]) -> tuple[str, list[list[Any] | None]]:
    """SQLite's integrity check of the file at `path` ("ok" when sound) and the reads, opened
    read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return check, [_values(conn, read) for read in reads]
    finally:
        conn.close()


@asynccontextmanager
async def postgresql_exported(store: Store, reads: Sequence[Select[Any]]
                              ) -> AsyncIterator[tuple[str, list[list[Any]]]]:
    """(the exported snapshot's id, the reads in it), the transaction open until the block
    ends: pg_dump must import the snapshot inside the block."""
    async with store.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
            found = [list((await conn.execute(read)).scalars()) for read in reads]
            yield snapshot, found
