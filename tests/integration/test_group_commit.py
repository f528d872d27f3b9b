"""Group commit (store/group.py): many sends, one transaction, each send isolated.

Real message sends (debit + message + events) queued at once through one GroupCommit, on SQLite
and PostgreSQL: a send that fails (insufficient credits, a reused key with another body, no
connection, any exception) rolls back alone; a repeated key is applied exactly once; the books
balance; results reach callers only after the commit.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from billing import ledger
from billing.ledger import SystemAccount
from common.errors import Refused
from server import accounts, facilities, messages
from server.auth import Principal
from server.events import Outbox
from server.schema import connections, events
from server.schema import messages as messages_table
from store import Store
from store.group import GroupCommit
from store.ids import new_id

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PRICE = 50  # the default facility price of a message


async def people(store: Store, credits: list[int]) -> tuple[list[str], list[str]]:
    """One family per entry of `credits` (holding that many), each connected to its own
    person; plus one person nobody is connected to (last in the second list)."""
    families, persons = [], []
    async with store.write() as conn:
        facility = await facilities.create(conn, name="F", timezone="America/Chicago",
                                           settings={}, now=AT)
        for i, amount in enumerate([*credits, None]):
            person = await accounts.create(conn, role="person", name=f"P{i}", now=AT,
                                           facility_id=facility.id, inmate_number=f"N{i}")
            persons.append(person.id)
            if amount is None:
                break
            family = await accounts.create(conn, role="family", name=f"F{i}", now=AT,
                                           email=f"f{i}-{new_id('x')}@example.test")
            families.append(family.id)
            if amount:
                await ledger.transfer(conn, key=f"fund:{family.id}", amount=amount, at=AT,
                                      debit=SystemAccount.CARD_SALES, credit=family.id,
                                      kind="purchase")
            await conn.execute(connections.insert().values(
                id=new_id("con"), facility_id=facility.id, family_id=family.id,
                person_id=person.id, status="approved", privileged=False, created_at=AT,
                updated_at=AT))
    return families, persons


async def send(group: GroupCommit, sender: str, to: str, key: str,
               body: str = "hello") -> dict | str:
    """One send through the group: the message's view, or the refusal's code."""
    me = Principal(sender, "family", None, "", "")
    draft = messages.Draft(to, body, (), False, key)
    outbox = Outbox()
    try:
        shown = await group.run(lambda conn: messages.send(conn, outbox, me, draft, AT))
    except Refused as exc:
        return exc.code
    return shown


async def test_a_failing_send_rolls_back_alone_and_keys_apply_once(store: Store) -> None:
    (poor, dup, rich), (to_poor, to_dup, to_rich, stranger) = await people(
        store, [3 * PRICE, 10 * PRICE, 100 * PRICE])
    group = GroupCommit(store, max_batch=16)

    async def boom(conn):
        raise RuntimeError("a bug in one work")

    work = ([send(group, poor, to_poor, f"p{i}") for i in range(5)]       # 3 paid, 2 refused
            + [send(group, dup, to_dup, "same") for _ in range(4)]        # one message
            + [send(group, dup, to_dup, "same", body="other")]            # key reused: 409
            + [send(group, rich, to_rich, f"r{i}") for i in range(30)]    # all pass
            + [send(group, rich, stranger, "nope")]                       # not connected
            + [group.run(boom)])
    results = await asyncio.gather(*work, return_exceptions=True)

    assert group.works == len(work) and group.batches < len(work) / 4  # they were grouped
    poor_r, dup_r, reused, rich_r, stranger_r, bug = (
        results[:5], results[5:9], results[9], results[10:40], results[40], results[41])
    assert Counter(r if isinstance(r, str) else "sent" for r in poor_r) == {
        "sent": 3, "insufficient_credits": 2}
    assert len({r["id"] for r in dup_r}) == 1  # every repeat answered with the one message
    assert reused == "idempotency_conflict"
    assert all(isinstance(r, dict) for r in rich_r)
    assert stranger_r == "not_connected"
    assert isinstance(bug, RuntimeError)

    async with store.read() as conn:
        assert await ledger.check_invariants(conn) == []
        assert await ledger.balance(conn, poor) == 0
        assert await ledger.balance(conn, dup) == 9 * PRICE  # charged once
        assert await ledger.balance(conn, rich) == 70 * PRICE
        stored = dict((await conn.execute(
            select(messages_table.c.sender_id, func.count()).group_by(
                messages_table.c.sender_id))).all())
        assert stored == {poor: 3, dup: 1, rich: 30}
        # Events exist exactly for the sends that committed: message.new to each recipient.
        pushed = dict((await conn.execute(
            select(events.c.account_id, func.count()).where(events.c.type == "message.new")
            .group_by(events.c.account_id))).all())
    assert pushed.get(to_poor) == 3 and pushed.get(to_dup) == 1 and pushed.get(to_rich) == 30
    assert stranger not in pushed


async def test_callers_hear_after_the_commit_and_a_cancelled_caller_is_skipped(
        store: Store) -> None:
    (family,), (person, _) = await people(store, [10 * PRICE])
    group = GroupCommit(store, max_batch=8)
    release = asyncio.Event()

    async def hold(conn) -> str:
        await release.wait()  # keeps the first transaction open while the sends queue
        return "held"

    async def send_then_look(key: str) -> bool:
        shown = await send(group, family, person, key)
        async with store.read() as conn:  # another connection: it sees committed rows only
            found = await conn.execute(select(messages_table.c.id)
                                       .where(messages_table.c.id == shown["id"]))
            return found.first() is not None

    holder = asyncio.create_task(group.run(hold))
    await asyncio.sleep(0.05)
    tasks = {key: asyncio.create_task(send_then_look(key)) for key in "abc"}
    await asyncio.sleep(0.05)
    tasks["c"].cancel()  # still queued behind the held transaction
    release.set()
    assert await holder == "held"
    assert await tasks["a"] and await tasks["b"]
    with pytest.raises(asyncio.CancelledError):
        await tasks["c"]
    assert group.batches == 2 and group.works == 3  # the holder, then "a" + "b" together
    async with store.read() as conn:
        keys = set((await conn.execute(select(messages_table.c.client_key))).scalars())
        assert await ledger.balance(conn, family) == 8 * PRICE
        assert await ledger.check_invariants(conn) == []
    assert keys == {"a", "b"}


@pytest.mark.parametrize("group_max", [1, 64])
async def test_store_groups_only_on_sqlite(db_url: str, group_max: int) -> None:
    store = Store(db_url, group_max=group_max)
    try:
        expected = group_max if store.dialect == "sqlite" else 1
        assert store.group.max_batch == expected
        assert await store.write_grouped(lambda conn: _one(conn)) == 1
    finally:
        await store.close()


async def _one(conn) -> int:
    return (await conn.execute(select(1))).scalar_one()


async def test_group_commit_on_the_inline_sqlite_writer(tmp_path, sqlite_template) -> None:
    """The same batch guarantees with KINWIRE_DB_SQLITE_INLINE_WRITES (store/inline.py):
    statements on the event loop, savepoints and all."""
    from tests.conftest import fresh_sqlite

    store = Store(fresh_sqlite(sqlite_template, tmp_path), sqlite_inline_writes=True,
                  group_max=16)
    try:
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        (poor, rich), (to_poor, to_rich, _) = await people(store, [2 * PRICE, 20 * PRICE])
        results = await asyncio.gather(
            *[send(store.group, poor, to_poor, f"p{i}") for i in range(4)],
            *[send(store.group, rich, to_rich, "same") for _ in range(3)],
            *[send(store.group, rich, to_rich, f"r{i}") for i in range(10)])
        assert store.group.batches < len(results)
        assert Counter(r if isinstance(r, str) else "sent" for r in results[:4]) == {
            "sent": 2, "insufficient_credits": 2}
        assert len({r["id"] for r in results[4:7]}) == 1
        async with store.read() as conn:  # a reader thread sees what the loop committed
            assert await ledger.check_invariants(conn) == []
            assert await ledger.balance(conn, rich) == 9 * PRICE
            count = (await conn.execute(select(func.count()).select_from(messages_table))
                     ).scalar_one()
        assert count == 2 + 1 + 10
    finally:
        await store.close()


def _temp_files() -> list[str]:
    """SQLite's temporary files this process holds open (`etilqs_*`, unlinked at open)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (listdir's own fd)
        if "etilqs_" in target:
            found.append(target)
    return found


async def test_a_batch_of_sends_keeps_its_savepoint_journal_in_memory(
        tmp_path, sqlite_template) -> None:
    """Adversary: sends all at once, so that one transaction holds 64 of them, each in its
    savepoint. SQLite journals the pages a savepoint changes; on a temporary file (its default
    past 64 KiB) that was two pwrite() calls a page on every send (docs/BENCHMARKS.md, "Sends
    after the merges"). The writer keeps it in memory: no temporary file is open while the
    batch runs, and the batch still commits every send (and rolls back a failing one alone)."""
    from tests.conftest import fresh_sqlite

    store = Store(fresh_sqlite(sqlite_template, tmp_path), sqlite_inline_writes=True,
                  group_max=128)
    try:
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        families, persons = await people(store, [100 * PRICE] * 8)
        seen: list[list[str]] = []

        async def probe(conn) -> None:  # the batch's last work: every send's savepoint is done
            seen.append(_temp_files())

        batches = store.group.batches
        results = await asyncio.gather(
            *[send(store.group, families[i % 8], persons[i % 8], f"k{i}", "x" * 120)
              for i in range(64)],
            send(store.group, families[0], persons[-1], "stranger"),
            store.group.run(probe))
        assert store.group.batches == batches + 1  # one transaction
        assert all(isinstance(r, dict) for r in results[:64])
        assert results[64] == "not_connected"
        assert seen == [[]]
        async with store.read() as conn:
            assert await ledger.check_invariants(conn) == []
            assert (await conn.execute(select(func.count()).select_from(messages_table))
                    ).scalar_one() == 64
    finally:
        await store.close()
