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

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
