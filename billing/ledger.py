"""The ledger: credits move only as immutable, idempotent, double-entry transfers.

Contract
- A transfer moves `amount` (> 0) credits from `debit` to `credit`, under an idempotency key
  that is unique across the whole ledger. Repeating a transfer with the same key and the same
  accounts, amount and kind has no further effect and returns the first transfer
  (`duplicate=True`); the same key with anything else raises `exists_with_different_amount`.
- A user account's balance never goes below zero: the debit is one conditional UPDATE
  (`balance >= amount`), never a read followed by a write.
- System accounts (card sales, fees, revenue) are unbounded and keep no balance row; their
  balance is derived from transfers. The card-sales account is where money enters, so it goes
  negative; every other account ends >= 0. The sum over all accounts is always zero.
- Every function runs inside the caller's transaction (`conn`). A raised LedgerError leaves
  written rows behind in that transaction: the caller must roll it back (or use a savepoint).
  That is what makes "debit + store the message" one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Subquery, bindparam, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.tables import ledger_accounts, ledger_transfers
from common.errors import Refused
from store import Statement, insert_new
from store.ids import ordered_id


class SystemAccount:
    CARD_SALES = "sys:card_sales"
    FEES = "sys:fees"
    MESSAGE_REVENUE = "sys:message_revenue"
    PHOTO_REVENUE = "sys:photo_revenue"
    VISIT_REVENUE = "sys:visit_revenue"
    ALL = (CARD_SALES, FEES, MESSAGE_REVENUE, PHOTO_REVENUE, VISIT_REVENUE)


class LedgerError(Refused):
    """A transfer was refused; `code` is stable and shown to clients."""


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    key: str
    debit: str
    credit: str
    amount: int
    kind: str
    ref: str | None
    at: datetime
    seq: int | None = None
    duplicate: bool = False
    # The debited user account's balance right after this transfer (read by the debit's own
    # UPDATE ... RETURNING); None for a duplicate or a system debit.
    debit_balance: int | None = None


# transfer()'s statements, compiled once and run as driver SQL (store/statement.py): a send or
# a billed minute runs them on its hot path, where SQLAlchemy's per-statement machinery cost
# more CPU than the database did (docs/BENCHMARKS.md, "Durable sends").
_accounts = ledger_accounts
_KINDS = Statement(select(_accounts.c.id, _accounts.c.kind).where(
    or_(_accounts.c.id == bindparam("debit"), _accounts.c.id == bindparam("credit"))))
_CLAIM = Statement(insert_new(ledger_transfers, "idempotency_key").values(
    {name: bindparam(name) for name in ("id", "idempotency_key", "debit_account",
                                        "credit_account", "amount", "kind", "ref", "at")}))
# Conditional: a balance never goes below zero, and the UPDATE reads the balance after it.
_DEBIT = Statement(_accounts.update()
                   .where(_accounts.c.id == bindparam("account"),
                          _accounts.c.balance >= bindparam("amount"))
                   .values(balance=_accounts.c.balance - bindparam("amount"))
                   .returning(_accounts.c.balance))
_CREDIT = Statement(_accounts.update().where(_accounts.c.id == bindparam("account"))
                    .values(balance=_accounts.c.balance + bindparam("amount")))


async def open_account(conn: AsyncConnection, owner_id: str) -> None:
    """A user's balance account, id equal to the owner's account id, starting at zero."""
    await conn.execute(ledger_accounts.insert().values(
        id=owner_id, owner_id=owner_id, kind="user", balance=0))


async def ensure_system_accounts(conn: AsyncConnection) -> None:
    # Processes starting side by side (or a restarted one beside a live one) may both find an
    # account missing: the insert skips one that another created meanwhile, instead of failing
    # the start on its primary key.
    existing = set((await conn.execute(
        select(ledger_accounts.c.id).where(ledger_accounts.c.kind == "system"))).scalars())
    for account in SystemAccount.ALL:
        if account not in existing:
            await conn.execute(insert_new(ledger_accounts, "id").values(
                id=account, owner_id=None, kind="system", balance=0))


async def transfer(conn: AsyncConnection, *, key: str, debit: str, credit: str, amount: int,
                   kind: str, at: datetime, ref: str | None = None) -> Transfer:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise LedgerError("invalid_amount", "a transfer moves a positive whole number of credits")
    if debit == credit:
        raise LedgerError("same_account", "a transfer needs two different accounts")
    wanted = Transfer(ordered_id(), key, debit, credit, amount, kind, ref, at)
    # Both accounts must exist before the claim, or the claim's foreign keys would refuse it as
    # a database error instead of `account_not_found`.
    kinds = await _kinds(conn, debit, credit)
    # Claim the key first: on PostgreSQL a concurrent claim of the same key waits here for the
    # first to commit and then finds it, so a key can never have two effects.
    claimed = await _CLAIM.run(conn, {
        "id": wanted.id, "idempotency_key": key, "debit_account": debit,
        "credit_account": credit, "amount": amount, "kind": kind, "ref": ref, "at": at})
    if claimed == 0:
        return await _existing(conn, wanted)
    # Update user rows in id order so two opposite gifts cannot deadlock on PostgreSQL.
    debit_balance = None
    for account in sorted({debit, credit}):
        if kinds.get(account) != "user":
            continue
        if account == debit:
            moved = await _DEBIT.first(conn, {"account": debit, "amount": amount})
            if moved is None:
                raise LedgerError("insufficient_credits",
                                  f"the balance does not cover {amount} credits")
            debit_balance = moved.balance
        else:
            await _CREDIT.run(conn, {"account": credit, "amount": amount})
    return wanted if debit_balance is None else replace(wanted, debit_balance=debit_balance)


async def _kinds(conn: AsyncConnection, debit: str, credit: str) -> dict[str, str]:
    kinds = dict(await _KINDS.rows(conn, {"debit": debit, "credit": credit}))
    for account in (debit, credit):
        if account not in kinds:
            raise LedgerError("account_not_found", f"no ledger account {account!r}")
    return kinds


async def _existing(conn: AsyncConnection, wanted: Transfer) -> Transfer:
    row = (await conn.execute(select(ledger_transfers)
                              .where(ledger_transfers.c.idempotency_key == wanted.key))).one()
    same = (row.debit_account, row.credit_account, row.amount, row.kind) == (
        wanted.debit, wanted.credit, wanted.amount, wanted.kind)
    if not same:
        raise LedgerError("exists_with_different_amount",
                          "this idempotency key was used for a different transfer")
    return _from_row(row, duplicate=True)


def _from_row(row, duplicate: bool = False) -> Transfer:
    return Transfer(row.id, row.idempotency_key, row.debit_account, row.credit_account,
                    row.amount, row.kind, row.ref, row.at, row.seq, duplicate)


async def balance(conn: AsyncConnection, account: str) -> int:
    value = (await conn.execute(select(ledger_accounts.c.balance)
                                .where(ledger_accounts.c.id == account))).scalar_one_or_none()
    if value is None:
        raise LedgerError("account_not_found", f"no ledger account {account!r}")
    return value


async def statement(conn: AsyncConnection, account: str, *, before: int | None = None,
                    limit: int = 50) -> list[Transfer]:
    """The account's transfers, newest first; `before` is the seq of the last row seen."""
    t = ledger_transfers
    query = select(t).where((t.c.debit_account == account) | (t.c.credit_account == account))
    if before is not None:
        query = query.where(t.c.seq < before)
    rows = await conn.execute(query.order_by(t.c.seq.desc()).limit(limit))
    return [_from_row(row) for row in rows]


def _derived() -> Subquery:
    """Each account's balance computed from the transfers alone: (account, total) rows."""
    t = ledger_transfers
    legs = union_all(
        select(t.c.credit_account.label("account"), t.c.amount.label("delta")),
        select(t.c.debit_account.label("account"), (-t.c.amount).label("delta")),
    ).subquery()
    return select(legs.c.account, func.sum(legs.c.delta).label("total")) \
        .group_by(legs.c.account).subquery()


async def derived_balances(conn: AsyncConnection) -> dict[str, int]:
    """Every account's balance computed from the transfers alone (the audit view)."""
    return {account: total for account, _, _, total in await _books(conn)}


async def _books(conn: AsyncConnection) -> list[tuple[str, str, int, int]]:
    """(account, kind, stored balance, balance from its transfers) for every account, in ONE
    statement: on PostgreSQL each statement has its own snapshot, and two (the transfers,
    then the balances) could see a debit committed between them as a broken ledger."""
    derived = _derived()
    a = ledger_accounts
    rows = await conn.execute(
        select(a.c.id, a.c.kind, a.c.balance, func.coalesce(derived.c.total, 0))
        .select_from(a.outerjoin(derived, derived.c.account == a.c.id)))
    return [(account, kind, balance, int(total)) for account, kind, balance, total in rows]


async def check_invariants(conn: AsyncConnection) -> list[str]:
    """What is wrong with the ledger, if anything: [] when sound."""
    problems = []
    books = await _books(conn)
    derived = {account: total for account, _, _, total in books}
    if sum(derived.values()) != 0:
        problems.append(f"accounts sum to {sum(derived.values())}, not zero")
    stored = {account: balance for account, kind, balance, _ in books if kind == "user"}
    for account, value in stored.items():
        if value < 0:
            problems.append(f"{account} is negative: {value}")
        if derived.get(account, 0) != value:
            problems.append(f"{account} holds {value} but its transfers give {derived[account]}")
    for account, value in derived.items():
        if account != SystemAccount.CARD_SALES and value < 0:
            problems.append(f"{account} is negative: {value}")
    return problems
