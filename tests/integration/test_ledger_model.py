"""The ledger against a model, on SQLite and PostgreSQL.

A hypothesis state machine buys credits (good and declined cards), gives them between users,
debits them to revenue, refunds debits and retries idempotency keys, each operation in its own
write transaction; after every step the store must agree with the model and keep the ledger's
invariants. Hypothesis's state machines are synchronous, so the machine drives the async store
on an event loop of its own, and every example gets a fresh database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from billing.gateway import Card, CardError, SandboxGateway
from billing.ledger import LedgerError, SystemAccount
from billing.pricing import quote_purchase
from billing.purchases import Purchase, buy_credits
from billing.tables import ledger_accounts, ledger_transfers, purchases
from server import audit
from server.schema import audit_log
from store import Store
from tests.conftest import fresh_sqlite, reset_postgres

USERS = ("fam_alice", "fam_bob", "per_carol")
ACCOUNTS = USERS + SystemAccount.ALL
GOOD_CARD = Card("4242424242424242", 12, 2031, "123", "Test Family")
DECLINED_CARD = Card("4000000000000002", 12, 2031, "123", "Test Family")
# What a user can be charged for: (revenue account, kind, price per item, most items).
ITEMS = {
    "message": (SystemAccount.MESSAGE_REVENUE, "message", 50, 1),
    "photo": (SystemAccount.PHOTO_REVENUE, "photo", 100, 5),
    "visit_minute": (SystemAccount.VISIT_REVENUE, "visit_minute", 50, 1),
}
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    """One transfer as the caller asks for it."""

    debit: str
    credit: str
    amount: int
    kind: str
    ref: str | None = None

    def same_effect(self, other: Spec) -> bool:
        return (self.debit, self.credit, self.amount, self.kind) == (
            other.debit, other.credit, other.amount, other.kind)


@dataclass(frozen=True)
class BoughtModel:
    account: str
    credits: int
    fee: int
    purchase_id: str


class LedgerMachine(RuleBasedStateMachine):
    """Set `new_database` on a subclass: it gets the machine's loop and returns a fresh URL."""

    new_database: ClassVar[Callable[[asyncio.AbstractEventLoop], str]]

    transfers = Bundle("transfers")  # keys of transfers that happened (for retries)
    debits = Bundle("debits")  # keys of user -> revenue debits not yet refunded
    failed = Bundle("failed")  # keys of transfers that were refused (and so rolled back)
    bought = Bundle("bought")  # keys of purchases that happened

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store | None = None
        try:
            url = type(self).new_database(self.loop)
            self.store = Store(url, pool_size=2)
            self.run(self._setup)
        except BaseException:
            self.teardown()
            raise
        self.gateway = SandboxGateway()
        self.balances = dict.fromkeys(ACCOUNTS, 0)
        self.specs: dict[str, Spec] = {}  # every key ever attempted -> what was asked
        self.done: dict[str, str] = {}  # keys that moved credits -> the transfer id
        self.purchases: dict[str, BoughtModel] = {}
        self.serial = 0
        self.now = START
        self._snapshot: Snapshot | None = None

    @staticmethod
    async def _setup(conn: AsyncConnection) -> None:
        await ledger.ensure_system_accounts(conn)
        for user in USERS:
            await ledger.open_account(conn, user)

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.loop.run_until_complete(self.store.close())
                self.store = None
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    # --- driving the store ----------------------------------------------------------------

    def run(self, operation: Callable[[AsyncConnection], Any]) -> Any:
        """Run `operation(conn)` in its own write transaction; an exception rolls it back."""
        assert self.store is not None
        store = self.store

        async def go() -> Any:
            async with store.write() as conn:
                return await operation(conn)

        self._snapshot = None
        return self.loop.run_until_complete(go())

    def read(self, operation: Callable[[AsyncConnection], Any]) -> Any:
        assert self.store is not None
        store = self.store

        async def go() -> Any:
            async with store.read() as conn:
                return await operation(conn)

        return self.loop.run_until_complete(go())

    def fresh_key(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}:{self.serial}"

    def tick(self) -> datetime:
        self.now += timedelta(seconds=7)
        return self.now

    def expected_refusal(self, key: str, spec: Spec) -> str | None:
        """What the ledger must answer, from the model alone: None for success or replay."""
        if key in self.done:
            return None if spec.same_effect(self.specs[key]) else "exists_with_different_amount"
        if spec.debit in USERS and self.balances[spec.debit] < spec.amount:
            return "insufficient_credits"
        return None

    def attempt(self, key: str, spec: Spec) -> ledger.Transfer | None:
        """Ask the ledger for `spec` under `key`, check the answer against the model and apply
        it to the model. Returns the transfer, or None when it was refused."""
        refusal = self.expected_refusal(key, spec)
        replay = key in self.done and refusal is None
        at = self.tick()

        async def op(conn: AsyncConnection) -> ledger.Transfer:
            return await ledger.transfer(conn, key=key, debit=spec.debit, credit=spec.credit,
                                         amount=spec.amount, kind=spec.kind, at=at,
                                         ref=spec.ref)

        try:
            result = self.run(op)
        except LedgerError as exc:
            assert exc.code == refusal, (key, spec, exc.code, refusal)
            self.specs.setdefault(key, spec)
            return None
        assert refusal is None, f"{key} {spec} succeeded; expected {refusal}"
        assert result.duplicate is replay, (key, result)
        assert (result.key, result.debit, result.credit, result.amount, result.kind) == (
            key, spec.debit, spec.credit, spec.amount, spec.kind)
        if replay:
            assert result.id == self.done[key]
            return result
        self.specs[key] = spec
        self.done[key] = result.id
        self.balances[spec.debit] -= spec.amount
        self.balances[spec.credit] += spec.amount
        return result

    # --- purchases ------------------------------------------------------------------------

    def purchase(self, key: str, account: str, credits: int, fee: int,
                 card: Card) -> Purchase:
        quote = quote_purchase(credits, block=500, fee_cents=fee, credits_max=50_000)
        at = self.tick()

        async def op(conn: AsyncConnection) -> Purchase:
            return await buy_credits(conn, self.gateway, account_id=account, quote=quote,
                                     card=card, key=key, now=at)

        return self.run(op)

    def buy_good(self, account: str, credits: int, fee: int) -> str:
        """A purchase with a good card, checked and applied to the model; returns its key."""
        key = self.fresh_key("purchase")
        bought = self.purchase(key, account, credits, fee, GOOD_CARD)
        assert (bought.credits, bought.price_cents, bought.fee_cents, bought.total_cents) == (
            credits, credits, fee, credits + fee)
        assert (bought.card_brand, bought.card_last4) == ("visa", "4242")
        self.specs[f"{key}:credits"] = Spec(SystemAccount.CARD_SALES, account, credits,
                                            "purchase")
        self.done[f"{key}:credits"] = "(purchase)"
        self.balances[SystemAccount.CARD_SALES] -= credits
        self.balances[account] += credits
        if fee:
            self.specs[f"{key}:fee"] = Spec(SystemAccount.CARD_SALES, SystemAccount.FEES, fee,
                                            "purchase_fee")
            self.done[f"{key}:fee"] = "(purchase fee)"
            self.balances[SystemAccount.CARD_SALES] -= fee
            self.balances[SystemAccount.FEES] += fee
        self.purchases[key] = BoughtModel(account, credits, fee, bought.id)
        return key

    @initialize(target=bought, credits=st.lists(st.sampled_from([0, 500, 1000]),
                                                min_size=len(USERS), max_size=len(USERS)))
    def fund_users(self, credits: list[int]):
        """Most examples start with some users holding credits, so that gifts and debits
        succeed as often as they are refused."""
        return multiple(*(self.buy_good(user, amount, 150)
                          for user, amount in zip(USERS, credits, strict=True) if amount))

    @rule(target=bought, account=st.sampled_from(USERS), blocks=st.integers(1, 3),
          fee=st.sampled_from([150, 0]), declined=st.sampled_from([False, False, True]))
    def buy(self, account: str, blocks: int, fee: int, declined: bool):
        credits = blocks * 500
        if not declined:
            return self.buy_good(account, credits, fee)
        with pytest.raises(CardError) as refused:
            self.purchase(self.fresh_key("purchase"), account, credits, fee, DECLINED_CARD)
        assert refused.value.code == "card_declined"
        return multiple()

    @rule(key=bought, how=st.sampled_from(["same", "same", "more_credits", "other_account",
                                           "declined_card"]))
    def buy_again(self, key: str, how: str):
        """A purchase retried under its key: the same purchase again moves nothing and returns
        the first; anything else is refused and moves nothing."""
        first = self.purchases[key]
        account, credits, card = first.account, first.credits, GOOD_CARD
        if how == "same":
            again = self.purchase(key, account, credits, first.fee, card)
            assert (again.id, again.credits, again.fee_cents) == (
                first.purchase_id, first.credits, first.fee)
            return
        if how == "declined_card":
            with pytest.raises(CardError):
                self.purchase(key, account, credits, first.fee, DECLINED_CARD)
            return
        if how == "other_account":
            account = USERS[(USERS.index(account) + 1) % len(USERS)]
        else:
            credits += 500
        with pytest.raises(LedgerError) as refused:
            self.purchase(key, account, credits, first.fee, card)
        assert refused.value.code == "exists_with_different_amount"

    # --- gifts, debits, refunds -----------------------------------------------------------

    @rule(target=transfers, data=st.data(), amount=st.integers(1, 400))
    def gift(self, data: st.DataObject, amount: int):
        giver, receiver = data.draw(st.permutations(USERS))[:2]
        key = self.fresh_key("gift")
        done = self.attempt(key, Spec(giver, receiver, amount, "gift"))
        return key if done else multiple()

    @rule(targets=(transfers, debits), account=st.sampled_from(USERS),
          item=st.sampled_from(sorted(ITEMS)), data=st.data())
    def debit(self, account: str, item: str, data: st.DataObject):
        revenue, kind, price, most = ITEMS[item]
        amount = price * data.draw(st.integers(1, most))
        key = self.fresh_key(kind)
        done = self.attempt(key, Spec(account, revenue, amount, kind))
        return key if done else multiple()

    @rule(target=transfers, key=consumes(debits))
    def refund(self, key: str):
        original = self.specs[key]
        before = self.balances[original.debit]
        done = self.attempt(f"refund:{key}", Spec(original.credit, original.debit,
                                                  original.amount, "refund",
                                                  ref=self.done[key]))
        assert done is not None and not done.duplicate
        assert self.balances[original.debit] == before + original.amount
        return f"refund:{key}"

    @rule(target=failed, account=st.sampled_from(USERS), over=st.integers(1, 500))
    def overdraw(self, account: str, over: int):
        """Ask for more than the balance holds: refused, and nothing moves."""
        key = self.fresh_key("message")
        spec = Spec(account, SystemAccount.MESSAGE_REVENUE, self.balances[account] + over,
                    "message")
        assert self.attempt(key, spec) is None
        return key

    # --- retries --------------------------------------------------------------------------

    @rule(key=transfers)
    def retry_same(self, key: str):
        result = self.attempt(key, self.specs[key])
        assert result is not None and result.duplicate

    @rule(key=transfers, change=st.sampled_from(["amount", "kind", "credit"]))
    def retry_different(self, key: str, change: str):
        spec = self.specs[key]
        if change == "amount":
            other = Spec(spec.debit, spec.credit, spec.amount + 1, spec.kind)
        elif change == "kind":
            other = Spec(spec.debit, spec.credit, spec.amount, spec.kind + "_x")
        else:
            credit = next(a for a in ACCOUNTS if a not in (spec.debit, spec.credit))
            other = Spec(spec.debit, credit, spec.amount, spec.kind)
        assert self.attempt(key, other) is None

    @rule(target=transfers, key=consumes(failed))
    def retry_failed(self, key: str):
        """A refused transfer was rolled back with its key: the same key may run afresh."""
        done = self.attempt(key, self.specs[key])
        return key if done else multiple()

    @rule(account=st.sampled_from(USERS),
          bad=st.sampled_from(["zero", "negative", "same_account", "unknown_account"]))
    def invalid(self, account: str, bad: str):
        key = self.fresh_key("bad")
        args = dict(key=key, debit=account, credit=SystemAccount.MESSAGE_REVENUE, amount=50,
                    kind="message", at=self.tick())
        code = {"zero": "invalid_amount", "negative": "invalid_amount",
                "same_account": "same_account", "unknown_account": "account_not_found"}[bad]
        if bad == "zero":
            args["amount"] = 0
        elif bad == "negative":
            args["amount"] = -50
        elif bad == "same_account":
            args["credit"] = account
        else:
            args["credit"] = "fam_nobody"

        async def op(conn: AsyncConnection) -> Any:
            return await ledger.transfer(conn, **args)

        with pytest.raises(LedgerError) as refused:
            self.run(op)
        assert refused.value.code == code

    # --- invariants, after every step -----------------------------------------------------
    # All of them judge one snapshot of the store, read once per step (after the step's write).

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = self.read(Snapshot.take)
        return self._snapshot

    @invariant()
    def no_negative_user_balance(self):
        assert min(self.snapshot().stored.values()) >= 0, self.snapshot().stored

    @invariant()
    def derived_balances_sum_to_zero(self):
        derived = self.snapshot().derived
        assert sum(derived.values()) == 0, derived

    @invariant()
    def ledger_finds_nothing_wrong(self):
        assert self.snapshot().problems == []

    @invariant()
    def balances_match_the_model(self):
        snap = self.snapshot()
        assert snap.stored == {user: self.balances[user] for user in USERS}
        assert snap.balance_calls == snap.stored
        assert snap.derived == self.balances

    @invariant()
    def one_transfer_row_per_key(self):
        snap = self.snapshot()
        assert snap.repeated_keys == []
        assert snap.transfers == {key: Spec(s.debit, s.credit, s.amount, s.kind)
                                  for key, s in self.specs.items() if key in self.done}

    @invariant()
    def one_purchase_row_per_purchase(self):
        assert self.snapshot().purchases == sorted(
            (p.purchase_id, p.account, p.credits, p.fee) for p in self.purchases.values())


@dataclass
class Snapshot:
    stored: dict[str, int]  # user balance rows
    balance_calls: dict[str, int]  # ledger.balance() of each user
    derived: dict[str, int]
    problems: list[str]
    repeated_keys: list[str]
    transfers: dict[str, Spec]
    purchases: list[tuple]

    @classmethod
    async def take(cls, conn: AsyncConnection) -> Snapshot:
        t = ledger_transfers
        stored = dict((await conn.execute(
            select(ledger_accounts.c.id, ledger_accounts.c.balance)
            .where(ledger_accounts.c.kind == "user"))).all())
        repeated = list((await conn.execute(
            select(t.c.idempotency_key).group_by(t.c.idempotency_key)
            .having(func.count() > 1))).scalars())
        rows = await conn.execute(select(t.c.idempotency_key, t.c.debit_account,
                                         t.c.credit_account, t.c.amount, t.c.kind))
        bought = await conn.execute(select(purchases.c.id, purchases.c.account_id,
                                           purchases.c.credits, purchases.c.fee_cents))
        return cls(
            stored=stored,
            balance_calls={user: await ledger.balance(conn, user) for user in USERS},
            derived=await ledger.derived_balances(conn),
            problems=await ledger.check_invariants(conn),
            repeated_keys=repeated,
            transfers={row[0]: Spec(*row[1:]) for row in rows},
            purchases=sorted(tuple(row) for row in bought),
        )


# Each example is a fresh database and up to 20 write transactions, each followed by a full
# snapshot: about 10 seconds a backend. No example database: nothing is written to the tree.
MACHINE_SETTINGS = settings(
    max_examples=30, stateful_step_count=20, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])


# 30 examples take 10-30 s a backend; the suite's 60 s timeout, hit under load, raised in the
# middle of an example and left its transaction open (see reset_postgres)
@pytest.mark.timeout(240)
def test_ledger_state_machine(backend: str, request: pytest.FixtureRequest,
                              tmp_path: Path) -> None:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")

        def new_database(_loop: asyncio.AbstractEventLoop) -> str:
            for old in tmp_path.glob("kinwire-*"):  # the previous example's files
                old.unlink()
            return fresh_sqlite(template, tmp_path)
    else:
        url: str = request.getfixturevalue("pg_url")

        def new_database(loop: asyncio.AbstractEventLoop) -> str:
            loop.run_until_complete(reset_postgres(url))
            return url

    machine = type("LedgerMachineOn" + backend.title(), (LedgerMachine,),
                   {"new_database": staticmethod(new_database)})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


# --- append-only history ------------------------------------------------------------------

async def test_transfers_and_audit_log_are_append_only(store: Store) -> None:
    at = START
    async with store.write() as conn:
        await ledger.open_account(conn, "fam_alice")
        await ledger.transfer(conn, key="sale:1", debit=SystemAccount.CARD_SALES,
                              credit="fam_alice", amount=500, kind="purchase", at=at)
        await audit.record(conn, actor_id="adm_1", actor_role="admin", action="test.action",
                           at=at, details={"n": 1})

    attempts = [
        ledger_transfers.update().values(amount=1),
        ledger_transfers.update().values(credit_account=SystemAccount.FEES),
        ledger_transfers.delete(),
        audit_log.update().values(action="rewritten"),
        audit_log.delete(),
    ]
    for statement in attempts:
        with pytest.raises(DBAPIError, match="append-only"):
            async with store.write() as conn:
                await conn.execute(statement)

    async with store.read() as conn:
        transfer = (await conn.execute(select(ledger_transfers))).one()
        entry = (await conn.execute(select(audit_log))).one()
        assert (transfer.amount, transfer.credit_account) == (500, "fam_alice")
        assert entry.action == "test.action"
        assert await ledger.check_invariants(conn) == []
        assert await ledger.balance(conn, "fam_alice") == 500


async def test_unknown_account_is_refused_cleanly(store: Store) -> None:
    """The documented `account_not_found` code, not a database error, for a missing account;
    and the refusal leaves the key free."""
    async with store.write() as conn:
        await ledger.open_account(conn, "fam_alice")
    for debit, credit in (("fam_ghost", SystemAccount.FEES), ("fam_alice", "fam_ghost")):
        with pytest.raises(LedgerError) as refused:
            async with store.write() as conn:
                await ledger.transfer(conn, key="k1", debit=debit, credit=credit, amount=1,
                                      kind="gift", at=START)
        assert refused.value.code == "account_not_found"
    async with store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(ledger_transfers))
                ).scalar_one() == 0
