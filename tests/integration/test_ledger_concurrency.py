"""The ledger under concurrent transactions, on SQLite and PostgreSQL: each task below runs its
transfer in its own `store.write()` transaction, all at once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import delete, func, select

from billing import ledger
from billing.ledger import LedgerError, SystemAccount, Transfer
from billing.tables import ledger_accounts, ledger_transfers
from store import Store

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def fund(store: Store, account: str, credits: int) -> None:
    """Open a user account holding `credits`, bought through the card-sales account."""
    async with store.write() as conn:
        await ledger.open_account(conn, account)
        await ledger.transfer(conn, key=f"fund:{account}", debit=SystemAccount.CARD_SALES,
                              credit=account, amount=credits, kind="purchase", at=AT)


async def attempt(store: Store, **transfer) -> Transfer | str:
    """One transfer in its own transaction: the Transfer, or the refusal's code."""
    try:
        async with store.write() as conn:
            return await ledger.transfer(conn, at=AT, **transfer)
    except LedgerError as exc:
        return exc.code


async def rows_for(store: Store, key: str) -> int:
    async with store.read() as conn:
        return (await conn.execute(select(func.count()).select_from(ledger_transfers)
                                   .where(ledger_transfers.c.idempotency_key == key))
                ).scalar_one()


async def assert_sound(store: Store) -> dict[str, int]:
    async with store.read() as conn:
        assert await ledger.check_invariants(conn) == []
        derived = await ledger.derived_balances(conn)
    assert sum(derived.values()) == 0
    return derived


async def test_concurrent_debits_never_overdraw(store: Store) -> None:
    await fund(store, "fam_a", 500)
    results = await asyncio.gather(*(
        attempt(store, key=f"msg:{i}", debit="fam_a", credit=SystemAccount.MESSAGE_REVENUE,
                amount=50, kind="message") for i in range(100)))

    moved = [r for r in results if isinstance(r, Transfer)]
    assert len(moved) == 10
    assert not any(t.duplicate for t in moved)
    assert Counter(r for r in results if isinstance(r, str)) == {"insufficient_credits": 90}
    async with store.read() as conn:
        assert await ledger.balance(conn, "fam_a") == 0
        assert (await conn.execute(select(func.count()).select_from(ledger_transfers)
                                   .where(ledger_transfers.c.kind == "message"))
                ).scalar_one() == 10
    derived = await assert_sound(store)
    assert derived["fam_a"] == 0
    assert derived[SystemAccount.MESSAGE_REVENUE] == 500


async def test_opposite_gifts_do_not_deadlock(store: Store) -> None:
    await fund(store, "fam_a", 1000)
    await fund(store, "fam_b", 1000)
    tasks = []
    for i in range(60):  # interleaved A->B and B->A, so opposite transactions overlap
        tasks.append(attempt(store, key=f"ab:{i}", debit="fam_a", credit="fam_b", amount=10,
                             kind="gift"))
        tasks.append(attempt(store, key=f"ba:{i}", debit="fam_b", credit="fam_a", amount=7,
                             kind="gift"))
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=45)

    assert all(isinstance(r, Transfer) and not r.duplicate for r in results), [
        r for r in results if not isinstance(r, Transfer)]
    async with store.read() as conn:
        assert await ledger.balance(conn, "fam_a") == 1000 - 60 * 10 + 60 * 7
        assert await ledger.balance(conn, "fam_b") == 1000 + 60 * 10 - 60 * 7
    derived = await assert_sound(store)
    assert derived["fam_a"] + derived["fam_b"] == 2000


async def test_opposite_gifts_near_empty_conserve_credits(store: Store) -> None:
    """Balances too small for every gift: whichever succeed, nothing is created or lost and
    neither side goes negative."""
    await fund(store, "fam_a", 100)
    await fund(store, "fam_b", 30)
    tasks = []
    for i in range(40):
        tasks.append(attempt(store, key=f"ab:{i}", debit="fam_a", credit="fam_b", amount=40,
                             kind="gift"))
        tasks.append(attempt(store, key=f"ba:{i}", debit="fam_b", credit="fam_a", amount=25,
                             kind="gift"))
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=45)

    assert {r for r in results if isinstance(r, str)} <= {"insufficient_credits"}
    ab = sum(1 for r in results if isinstance(r, Transfer) and r.debit == "fam_a")
    ba = sum(1 for r in results if isinstance(r, Transfer) and r.debit == "fam_b")
    async with store.read() as conn:
        a = await ledger.balance(conn, "fam_a")
        b = await ledger.balance(conn, "fam_b")
    assert (a, b) == (100 - 40 * ab + 25 * ba, 30 + 40 * ab - 25 * ba)
    assert a >= 0 and b >= 0 and a + b == 130
    await assert_sound(store)


async def test_one_key_used_concurrently_moves_credits_once(store: Store) -> None:
    await fund(store, "fam_a", 500)
    results = await asyncio.gather(*(
        attempt(store, key="photo:m1", debit="fam_a", credit=SystemAccount.PHOTO_REVENUE,
                amount=100, kind="photo") for _ in range(20)))

    assert all(isinstance(r, Transfer) for r in results), results
    assert sum(1 for r in results if not r.duplicate) == 1
    assert len({r.id for r in results}) == 1  # every replay returns the first transfer
    assert await rows_for(store, "photo:m1") == 1
    async with store.read() as conn:
        assert await ledger.balance(conn, "fam_a") == 400
    derived = await assert_sound(store)
    assert derived[SystemAccount.PHOTO_REVENUE] == 100


async def test_one_key_used_concurrently_with_different_amounts(store: Store) -> None:
    """Racing the same key with two different transfers: exactly one wins, every other
    attempt is a replay of the winner or refused as a different transfer."""
    await fund(store, "fam_a", 500)
    results = await asyncio.gather(*(
        attempt(store, key="visit:v1:1", debit="fam_a", credit=SystemAccount.VISIT_REVENUE,
                amount=50 + 50 * (i % 2), kind="visit_minute") for i in range(20)))

    won = [r for r in results if isinstance(r, Transfer) and not r.duplicate]
    assert len(won) == 1
    winner = won[0]
    for r in results:
        if isinstance(r, Transfer):
            assert (r.id, r.amount) == (winner.id, winner.amount)
        else:
            assert r == "exists_with_different_amount"
    assert sum(1 for r in results if isinstance(r, Transfer)) == 10  # the winner's half
    assert await rows_for(store, "visit:v1:1") == 1
    async with store.read() as conn:
        assert await ledger.balance(conn, "fam_a") == 500 - winner.amount
    await assert_sound(store)


async def test_concurrent_key_after_refusal_runs_afresh(store: Store) -> None:
    """A refused transfer rolls back its key: a concurrent retry of it, once the account is
    funded, succeeds exactly once."""
    await fund(store, "fam_a", 10)

    async def top_up() -> None:
        async with store.write() as conn:
            await ledger.transfer(conn, key="topup", debit=SystemAccount.CARD_SALES,
                                  credit="fam_a", amount=500, kind="purchase", at=AT)

    first = await attempt(store, key="msg:late", debit="fam_a",
                          credit=SystemAccount.MESSAGE_REVENUE, amount=50, kind="message")
    assert first == "insufficient_credits"
    assert await rows_for(store, "msg:late") == 0
    await top_up()
    results = await asyncio.gather(*(
        attempt(store, key="msg:late", debit="fam_a", credit=SystemAccount.MESSAGE_REVENUE,
                amount=50, kind="message") for _ in range(10)))
    assert all(isinstance(r, Transfer) for r in results), results
    assert sum(1 for r in results if not r.duplicate) == 1
    async with store.read() as conn:
        assert await ledger.balance(conn, "fam_a") == 460
    await assert_sound(store)


async def test_processes_starting_side_by_side_both_find_the_system_accounts(pg_db: str) -> None:
    """Adversary: two processes starting at once on an empty PostgreSQL, each finding the system
    accounts missing and inserting them (a restarted node's start failed on the primary key in
    test_meter_remote_crash). The second waits on the first's uncommitted rows, then must skip
    them, not fail. (On SQLite writers take turns, so the two cannot interleave.)"""
    store = Store(pg_db, pool_size=2)
    try:
        async with store.write() as conn:
            await conn.execute(delete(ledger_accounts).where(ledger_accounts.c.kind == "system"))
        async with store.engine.connect() as a, store.engine.connect() as b:
            first = await a.begin()
            await ledger.ensure_system_accounts(a)
            second = await b.begin()
            racing = asyncio.create_task(ledger.ensure_system_accounts(b))
            await asyncio.sleep(0.3)  # b has found them missing and waits on a's inserts
            await first.commit()
            await racing
            await second.commit()
        async with store.read() as conn:
            ids = set((await conn.execute(select(ledger_accounts.c.id).where(
                ledger_accounts.c.kind == "system"))).scalars())
        assert ids == set(SystemAccount.ALL)
    finally:
        await store.close()


async def test_an_audit_while_transfers_commit_sees_a_sound_ledger(store: Store) -> None:
    """The adversary: transfers committing while the audit reads. On PostgreSQL each statement
    reads its own snapshot: an audit that read the transfers and then the balances in two
    statements saw a debit committed between them as 'holds X but its transfers give Y'
    (seen in test_visit_trust under load); the audit reads both in one statement."""
    await fund(store, "fam_a", 10_000)
    stop = asyncio.Event()
    moved = [0]

    async def spend(who: int) -> None:
        n = 0
        while not stop.is_set():
            result = await attempt(store, key=f"msg:{who}:{n}", debit="fam_a",
                                   credit=SystemAccount.MESSAGE_REVENUE, amount=1,
                                   kind="message")
            assert isinstance(result, Transfer), result
            n += 1
            moved[0] += 1

    async def audit() -> list[str]:
        """At least 100 audits, and on until 30 transfers committed beside them (SQLite's
        one writer under a loaded machine commits slowly), 30 s at most."""
        seen, audits, deadline = [], 0, time.monotonic() + 30
        while (audits < 100 or moved[0] < 30) and time.monotonic() < deadline:
            async with store.read() as conn:
                seen += await ledger.check_invariants(conn)
            audits += 1
            await asyncio.sleep(0)
        stop.set()
        return seen

    spenders = [asyncio.create_task(spend(who)) for who in range(3)]
    problems = await audit()
    await asyncio.gather(*spenders)
    assert problems == [], problems[:3]
    assert moved[0] >= 30, moved  # the audits really ran beside commits
