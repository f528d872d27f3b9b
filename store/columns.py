"""The one SQLAlchemy MetaData every table registers on, and the column types both databases
share. Each layer defines its own tables on it (billing/tables.py, signalling/tables.py,
server/schema.py); server/schema.py assembles the whole schema, which is what the migrations
create. The store itself knows no table."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, MetaData
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigSeq = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on both databases (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        # SQLite stores text. SQLAlchemy's own SQLite DATETIME writes "YYYY-MM-DD
        # HH:MM:SS.ffffff" by formatting a dict of the fields, which made it a send's costliest
        # bound value (every ledger transfer and event has one); isoformat writes the same text
        # in C (tests/unit/test_columns.py holds them equal).
        bind = self.process_bind_param

        def process(value):
            value = bind(value, dialect)
            return None if value is None else value.isoformat(" ", "microseconds")
        return process

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
