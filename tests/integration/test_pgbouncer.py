"""Kinwire behind PgBouncer in transaction mode (Debian's `pgbouncer`, started privately on a
free loopback port in front of the tests' PostgreSQL).

Adversary: the pooler itself. In transaction mode it hands each transaction whichever server
connection is free, fewer of them than the clients hold, so a statement prepared under a name
in one transaction is missing (or its name taken) in the next. DATABASE_URL's
`?pool_mode=transaction` makes the store prepare nothing across transactions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

from billing import ledger
from billing.tables import ledger_accounts
from store import Store
from tests.integration.test_visit_e2e import (
    account_id,
    client,
    debits,
    stack,
    start_both,
    visit_now,
)
from tests.support.nodes import Peer, RedisServer, cluster, make_pair, post
from tests.support.pgbouncer import private_pgbouncer


async def _many_transactions(url: str) -> list[BaseException]:
    """Six tasks, 20 short transactions each, on a pool of six connections; the errors."""
    store = Store(url, pool_size=6)
    errors: list[BaseException] = []

    async def work(i: int) -> None:
        for j in range(20):
            try:
                async with store.write() as conn:
                    n = (await conn.execute(select(func.count()).select_from(ledger_accounts)
                                            .where(ledger_accounts.c.balance >= i))).scalar()
                    assert n is not None
                    await conn.execute(select(ledger_accounts.c.id).where(
                        ledger_accounts.c.id == f"nobody-{j}"))
            except Exception as exc:
                errors.append(exc)

    try:
        await asyncio.gather(*(work(i) for i in range(6)))
    finally:
        await store.close()
    return errors


async def _statement_on_another_server(url: str) -> BaseException | None:
    """Connection `a` runs a statement in one transaction; then, while another client holds the
    server connection that ran it, `a` runs it again in a new transaction (so on the other of the
    pooler's two server connections). The error that second run raised, or None.

    Left to chance (many concurrent clients), the pooler often hands a client the same server
    connection each time, and the collision did not come: this makes it certain."""
    store = Store(url, pool_size=3)
    query = select(ledger_accounts.c.id).where(ledger_accounts.c.id == "nobody")
    backend = select(func.pg_backend_pid())
    try:
        async with store.engine.connect() as a, store.engine.connect() as b, \
                store.engine.connect() as c:
            async with a.begin():
                await a.execute(query)
                home = (await a.execute(backend)).scalar()
            tb, tc = await b.begin(), await c.begin()  # both server connections taken
            held = {(await b.execute(backend)).scalar(): tb,
                    (await c.execute(backend)).scalar(): tc}
            assert home in held, (home, held)
            for pid, tx in held.items():
                if pid != home:
                    await tx.commit()
            try:
                async with a.begin():
                    await a.execute(query)
            except Exception as exc:
                return exc
            finally:
                await held[home].commit()
            return None
    finally:
        await store.close()


async def test_the_store_needs_pool_mode_transaction_behind_pgbouncer(pg_db: str) -> None:
    async with private_pgbouncer(pg_db, server_pool_size=2) as bouncer:
        plain = await _statement_on_another_server(bouncer.url(pg_db, pool_mode=None))
        assert plain is not None, "a named prepared statement is missing on the other server"
        assert "prepared statement" in str(plain), str(plain)
        assert await _statement_on_another_server(bouncer.url(pg_db)) is None
        assert await _many_transactions(bouncer.url(pg_db)) == []


async def test_two_processes_exchange_messages_through_pgbouncer(pg_db: str,
                                                                 tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with private_pgbouncer(pg_db) as bouncer:
            via = bouncer.url(pg_db)
            async with cluster(via, redis.url, tmp_path) as (a, b), \
                    aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                family_token, person_token = await make_pair(http, a, b, via)
                family = Peer(http, a, family_token, "kinwire.v1.json")
                person = Peer(http, b, person_token, "kinwire.v1.msgpack")
                await family.connect()
                await person.connect()
                # Sent all at once from both sides, on both processes.
                sends = [post(http, who.node, "/messages", who.token,
                              {"to": other.account_id, "body": f"hello {i}"},
                              **{"Idempotency-Key": f"m{i}"})
                         for i, (who, other) in enumerate(
                             [(family, person), (person, family)] * 10)]
                for status, r in await asyncio.gather(*sends):
                    assert status == 201, r
                deadline = asyncio.get_running_loop().time() + 10
                while len(person.bodies()) < 10 or len(family.bodies()) < 10:
                    assert asyncio.get_running_loop().time() < deadline, "not delivered live"
                    await asyncio.sleep(0.05)
                await family.sync()
                await person.sync()
                assert sorted(person.bodies()) == sorted(f"hello {i}" for i in range(0, 20, 2))
                assert sorted(family.bodies()) == sorted(f"hello {i}" for i in range(1, 20, 2))
                assert family.duplicates == person.duplicates == 0
                await family.close()
                await person.close()
            assert "login attempt" in bouncer.log(), "the processes went through PgBouncer"
    finally:
        redis.stop()
    store = Store(pg_db)
    try:
        async with store.read() as conn:
            assert await ledger.check_invariants(conn) == []
    finally:
        await store.close()


async def test_a_metered_visit_through_pgbouncer(pg_db: str, tmp_path: Path) -> None:
    async with private_pgbouncer(pg_db) as bouncer:
        via = bouncer.url(pg_db)
        async with stack(via, tmp_path) as ((a, b), _turn, http):
            family_token, person_token = await make_pair(http, a, b, via)
            family_id = await account_id(http, a, family_token)
            person_id = await account_id(http, b, person_token)
            async with http.get(a.base + "/api/v1/me",
                                headers={"Authorization": f"Bearer {family_token}"}) as r:
                spare = (await r.json())["balance"] - 120  # leave two minutes at 50, and 20
            status, _ = await post(http, a, "/gifts", family_token,
                                   {"to": person_id, "credits": spare},
                                   **{"Idempotency-Key": "leave-120"})
            assert status == 201
            visit_id, _ = await visit_now(via, family_id)
            family = client(a, family_token, visit_id, "json")
            person = client(b, person_token, visit_id, "msgpack")
            try:
                await start_both(family, person)
                async with asyncio.timeout(30):
                    ended = await family.wait_event("visit.ended")
            finally:
                await family.close()
                await person.close()
            assert ended["reason"] == "balance_exhausted"
            charged = await debits(via, visit_id)  # also checks the ledger's invariants
            assert [t.key for t in charged] == [f"visit:{visit_id}:minute:{k}"
                                                for k in (1, 2)]
            assert sum(t.amount for t in charged) == 100



def test_a_lost_prepared_statement_is_reported_as_the_pooler() -> None:
    """What `kinwire serve` said through PgBouncer without `?pool_mode=transaction` (seen in
    the two tests above with the parameter removed): the fix, not just the error."""
    import asyncpg

    from server.startup import DATABASE_FIX, reason

    _why, kind = reason(asyncpg.exceptions.DuplicatePreparedStatementError(
        'prepared statement "__asyncpg_stmt_1__" already exists'), 10)
    assert kind == "pooler" and "?pool_mode=transaction" in DATABASE_FIX[kind]
