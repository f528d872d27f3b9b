"""store/raw.py runs PostgreSQL statements straight on asyncpg inside the transaction
SQLAlchemy manages, reading private names of SQLAlchemy's asyncpg adapter and Connection. The
adversary is an upgrade: one that moved them must be refused loudly at the store's start."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Connection

from store.raw import check_asyncpg_adapter


def test_the_installed_sqlalchemy_is_one_raw_was_written_for() -> None:
    check_asyncpg_adapter()


def test_an_adapter_that_begins_its_transaction_otherwise_is_refused() -> None:
    class Moved(AsyncAdapt_asyncpg_connection):
        __slots__ = ()
        _start_transaction = None  # renamed upstream, say

    with pytest.raises(RuntimeError, match="_start_transaction"):
        check_asyncpg_adapter(Moved)


def test_an_adapter_without_its_transaction_slot_is_refused() -> None:
    class Flat:  # an adapter rewritten without the slots read
        async def _start_transaction(self) -> None: ...
        def _handle_exception(self, error: Exception) -> None: ...

    with pytest.raises(RuntimeError, match="_transaction"):
        check_asyncpg_adapter(Flat)


def test_a_connection_without_its_error_handling_is_refused() -> None:
    class NoHandler(Connection):
        _handle_dbapi_exception = None

    with pytest.raises(RuntimeError, match="_handle_dbapi_exception"):
        check_asyncpg_adapter(connection=NoHandler)
