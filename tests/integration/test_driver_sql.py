"""Named statements run as driver SQL on the caller's transaction (store/raw.py): on
PostgreSQL straight on asyncpg, inside the transaction SQLAlchemy began and ends.

Adversaries: a statement that is the first of its transaction, whose block then fails (run
outside the transaction, autocommitted, it would stay); a statement the database refuses; the
server ending the connection mid-transaction (it must read as `unavailable`, and the pool of
one must hand out a working connection after); a caller cancelled mid-statement (its
connection must not be handed out again half-way through a query)."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy import exc as sqlalchemy_exc

from billing.tables import ledger_accounts
from store import Statement, Store, is_unavailable

_ADD = Statement(insert(ledger_accounts).values(
    id=bindparam("id"), owner_id=None, kind="user", balance=bindparam("balance")))
_BALANCE = Statement(select(ledger_accounts.c.balance).where(
    ledger_accounts.c.id == bindparam("id")))
_PID = Statement(select(func.pg_backend_pid().label("pid")))
_SLEEP = Statement(select(func.pg_sleep(bindparam("s")).label("slept")))


class Undo(Exception):
    pass


def new_id() -> str:
    return f"acct_test_{secrets.token_hex(6)}"


async def test_a_statement_runs_in_its_transaction_and_rolls_back_with_it(db_url: str) -> None:
    store = Store(db_url, pool_size=1)
    kept, undone = new_id(), new_id()
    try:
        async with store.write() as conn:
            assert await _ADD.run(conn, {"id": kept, "balance": 5}) == 1
            # the same transaction: a Core read sees it, as does the next statement
            assert (await conn.execute(select(ledger_accounts.c.balance).where(
                ledger_accounts.c.id == kept))).scalar_one() == 5
        with pytest.raises(Undo):
            async with store.write() as conn:
                assert await _ADD.run(conn, {"id": undone, "balance": 7}) == 1  # the first
                assert (await _BALANCE.first(conn, {"id": undone})).balance == 7
                raise Undo
        async with store.read() as conn:
            assert (await _BALANCE.first(conn, {"id": kept})).balance == 5
            assert await _BALANCE.first(conn, {"id": undone}) is None, "autocommitted"
    finally:
        await store.close()


async def test_a_refused_statement_raises_as_sqlalchemy_s_own_do(db_url: str) -> None:
    store = Store(db_url, pool_size=1)
    twice = new_id()
    try:
        async with store.write() as conn:
            await _ADD.run(conn, {"id": twice, "balance": 1})
        with pytest.raises(sqlalchemy_exc.IntegrityError) as refused:
            async with store.write() as conn:
                await _ADD.run(conn, {"id": twice, "balance": 1})
        assert not is_unavailable(refused.value), "a refusal is not an outage"
        with pytest.raises(sqlalchemy_exc.IntegrityError):  # below the balance floor
            async with store.write() as conn:
                await _ADD.run(conn, {"id": new_id(), "balance": -1})
        async with store.write() as conn:  # the one connection is fine after both
            assert (await _BALANCE.first(conn, {"id": twice})).balance == 1
    finally:
        await store.close()


async def test_a_connection_the_server_ends_reads_as_unavailable_then_recovers(
        pg_db: str) -> None:
    store, admin = Store(pg_db, pool_size=1), Store(pg_db, pool_size=1)
    try:
        with pytest.raises(sqlalchemy_exc.DBAPIError) as ended:
            async with store.write() as conn:
                pid = (await _PID.first(conn, {})).pid
                async with admin.write() as other:
                    await other.execute(select(func.pg_terminate_backend(pid)))
                await _ADD.run(conn, {"id": new_id(), "balance": 1})
        assert is_unavailable(ended.value), ended.value
        async with store.write() as conn:  # a fresh connection from the pool of one
            assert (await _PID.first(conn, {})).pid != pid
    finally:
        await store.close()
        await admin.close()


async def test_a_caller_cancelled_mid_statement_leaves_no_half_used_connection(
        pg_db: str) -> None:
    store = Store(pg_db, pool_size=1)
    try:
        async def sleeps() -> None:
            async with store.write() as conn:
                await _SLEEP.first(conn, {"s": 5.0})

        task = asyncio.create_task(sleeps())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        kept = new_id()
        async with asyncio.timeout(3.0):  # not behind the 5 s sleep, not refused
            async with store.write() as conn:
                await _ADD.run(conn, {"id": kept, "balance": 3})
            async with store.read() as conn:
                assert (await _BALANCE.first(conn, {"id": kept})).balance == 3
    finally:
        await store.close()
