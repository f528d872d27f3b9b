"""The read-only sqlite3 connection behind `Statement.point_read` (store/statement.py): one-row
lookups by a unique key on SQLite, run on the event loop, for the per-socket hot path.

Why: profiling the connect benchmark (docs/BENCHMARKS.md, "Connect") put most of a connect's
CPU in the store's read path rather than in SQLite: each read transaction through SQLAlchemy
and aiosqlite is a BEGIN, the SELECT and a COMMIT, about nine hand-offs to aiosqlite's thread
and back, while SQLite answers a lookup by a unique key in microseconds. A point read runs one
such SELECT straight on this connection of the process, in autocommit: a single statement
reads one consistent snapshot, and the statement is finished before returning, so no read
transaction stays open. Only lookups by a unique key belong there (they cannot hold the loop);
anything bigger keeps using `Store.read()`.

The connection never waits: its busy timeout is 0, so in the rare cases where a WAL reader
must wait (recovery after a crash) or on any other error, the point read goes through
`Store.read()` instead, which waits off the loop and reports a fault as it always did.
PostgreSQL stores, and in-memory SQLite ones, have no such connection: they keep their pool.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from store import Store

log = logging.getLogger("kinwire.store")


def connection(store: Store) -> sqlite3.Connection | None:
    """The store's quick-read connection, opened on first use; None where there is none."""
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

