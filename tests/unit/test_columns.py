"""UTCDateTime's quick SQLite binding writes exactly the text SQLAlchemy's own SQLite DATETIME
writes (store/columns.py), so rows written through either compare and sort alike.

The adversary: a value whose text could differ in form, not in time: whole seconds (the
fraction must still be written), a year before 1000 (padded), a zone other than UTC, and
the last microsecond of a day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects.sqlite import DATETIME
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

from store.columns import UTCDateTime

DIALECT = SQLiteDialect_aiosqlite()
CHICAGO_WINTER = timezone(timedelta(hours=-6))


@pytest.mark.parametrize("value", [
    datetime(2026, 12, 6, 19, 0, tzinfo=UTC),
    datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2026, 3, 8, 1, 30, 0, 1, tzinfo=CHICAGO_WINTER),
])
def test_quick_sqlite_binding_writes_what_sqlalchemy_writes(value: datetime) -> None:
    quick = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
    core = DATETIME().bind_processor(DIALECT)
    assert quick(value) == core(value.astimezone(UTC).replace(tzinfo=None))
    assert quick(None) is None


def test_a_naive_datetime_is_still_refused() -> None:
    quick = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
    with pytest.raises(ValueError, match="naive"):
        quick(datetime(2026, 12, 6, 19, 0))
