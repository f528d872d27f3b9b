"""One-statement point reads on SQLite, run on the event loop, for the per-socket hot path.

Why: profiling the connect benchmark (docs/BENCHMARKS.md, "Connect") put most of a connect's
CPU in the store's read path rather than in SQLite: each read transaction through SQLAlchemy
and aiosqlite is a BEGIN, the SELECT and a COMMIT, about nine hand-offs to aiosqlite's thread
and back, while SQLite answers a lookup by a unique key in microseconds. A `Lookup` runs one
such SELECT straight on a read-only sqlite3 connection of this process, in autocommit: a single
statement reads one consistent snapshot, and the statement is finished before returning, so no
read transaction stays open. Only lookups by a unique key belong here (they cannot hold the
loop); anything bigger keeps using `Store.read()`.

The connection never waits: its busy timeout is 0, so in the rare cases where a WAL reader
must wait (recovery after a crash) or on any other error, `row` returns NOT_SERVED and the
caller reads through `Store.read()` as before, which waits off the loop and reports a fault as
it always did. PostgreSQL stores are NOT_SERVED too: they keep their pool.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url

from store import Store
from store.raw import Query

log = logging.getLogger("kinwire.store")
NOT_SERVED: Any = object()
_DIALECT = SQLiteDialect_aiosqlite()  # the store's SQLite driver: same SQL, same type handling


def _connection(store: Store) -> sqlite3.Connection | None:
    if store.quick_reader is not None:
        return store.quick_reader or None
    db = None
    url = make_url(store.url)
    if store.dialect == "sqlite" and url.database not in (None, "", ":memory:") and not url.query:
        try:
            db = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=0")
            db.execute("PRAGMA query_only=ON")
        except sqlite3.Error:
            log.warning("no quick reads on %s; reads go through the pool", url.database)
            db = None
        else:
            weakref.finalize(store, db.close)
    store.quick_reader = db if db is not None else False
    return db


class Lookup:
    """A SELECT built with SQLAlchemy Core, compiled once for SQLite (store/raw.py
    `Query`: values bound and read back through the columns' own types, as Core would)."""

    def __init__(self, statement: Select) -> None:
        self.query = Query(statement)

    def row(self, store: Store, params: dict[str, Any]) -> Any:
        """The first row (a named tuple), None if there is none, or NOT_SERVED: read through
        the store."""
        db = _connection(store)
        if db is None:
            return NOT_SERVED
        sql = self.query.plan(_DIALECT)[0]
        values = self.query.values(_DIALECT, params)
        try:
            rows = db.execute(sql, values).fetchall()  # all: the statement ends here
        except sqlite3.Error as exc:
            log.debug("quick read not served (%s); through the pool", exc)
            return NOT_SERVED
        return self.query.row(_DIALECT, rows[0]) if rows else None
