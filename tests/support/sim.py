"""The billing simulator: many visits on a virtual clock, through billing/meter.py, against the
real ledger code, with faults from a seed; every visit judged by tests/support/sim_check.py.

    python -m tests.support.sim --seed 42 --visits 10000     # exit 1 on the first failing visit
    python -m tests.support.sim --seed 42 --only 1234        # replay one visit, trace printed

A failure prints the seed, the visit and its trace; the same seed replays it exactly (each
visit draws from its own generator, seeded by (seed, visit)). One SQLite store, migrated by
the project's migrations, holds every visit of a run: each visit has its own family account,
funded from card sales. The ledger's coroutines run on a plain synchronous connection (see
SyncConn): same SQL, same database, without aiosqlite's thread hop per statement, which made
a transfer six times slower.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, event, select, text

from billing import ledger, meter
from billing.ledger import LedgerError, SystemAccount
from billing.tables import ledger_transfers
from tests.support.sim_check import check_visit
from tests.support.sim_visit import Plan, Run, VisitSim, draw_plan

BASE = datetime(2026, 1, 1, tzinfo=UTC)
GIVER = "sim_giver"  # a relative with endless credits, for gifts
INVARIANTS_EVERY = 250  # visits between whole-ledger checks (each reads every transfer)


def stamp(t: float) -> datetime:
    return BASE + timedelta(seconds=t)


class SyncConn:
    """Enough of AsyncConnection for billing.ledger, over a synchronous SQLAlchemy connection:
    `await conn.execute(...)` then never suspends, so `drive` runs a ledger coroutine to the
    end without an event loop."""

    def __init__(self, sync) -> None:
        self._sync = sync
        self.dialect = sync.dialect

    @property
    def sync_connection(self):
        return self._sync

    async def execute(self, statement, *args):
        return self._sync.execute(statement, *args)

    async def exec_driver_sql(self, sql, params):  # store.Statement runs its SQL so
        return self._sync.exec_driver_sql(sql, params)


def drive(coro):
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a ledger call tried to wait for something")


class SimLedger:
    def __init__(self, path: Path) -> None:
        self.engine = create_engine(f"sqlite:///{path}")
        event.listen(self.engine, "connect", _pragmas)
        with self.engine.begin() as sync:
            conn = SyncConn(sync)
            drive(ledger.ensure_system_accounts(conn))
            drive(ledger.open_account(conn, GIVER))
            drive(ledger.transfer(conn, key="sim:giver", debit=SystemAccount.CARD_SALES,
                                  credit=GIVER, amount=10**15, kind="purchase", at=BASE))

    def close(self) -> None:
        self.engine.dispose()

    def open(self, plan: Plan) -> None:
        with self.engine.begin() as sync:
            conn = SyncConn(sync)
            drive(ledger.open_account(conn, plan.account))
            if plan.funds:
                drive(ledger.transfer(conn, key=f"sim:{plan.account}:funds", amount=plan.funds,
                                      debit=SystemAccount.CARD_SALES, credit=plan.account,
                                      kind="purchase", at=BASE))

    def debit(self, plan: Plan, action: meter.Debit, t: float) -> tuple[str, int, int]:
        """(ok | duplicate | a LedgerError code, balance before, balance after)."""
        balance = None
        try:
            with self.engine.begin() as sync:  # a refusal rolls back the claimed key too
                conn = SyncConn(sync)
                try:
                    done = drive(ledger.transfer(
                        conn, key=action.key, debit=plan.account, amount=action.amount,
                        credit=SystemAccount.VISIT_REVENUE, kind="visit_minute", at=stamp(t),
                        ref=plan.config.visit_id))
                finally:
                    balance = drive(ledger.balance(conn, plan.account))
        except LedgerError as refused:
            return refused.code, balance, balance
        before = balance if done.duplicate else balance + action.amount
        return ("duplicate" if done.duplicate else "ok"), before, balance

    def move(self, plan: Plan, kind: str, amount: int, t: float, tag: str) -> str:
        """A purchase or gift arriving, or a message paid for, in the middle of the visit."""
        debit, credit, what = {
            "purchase": (SystemAccount.CARD_SALES, plan.account, "purchase"),
            "gift": (GIVER, plan.account, "gift"),
            "spend": (plan.account, SystemAccount.MESSAGE_REVENUE, "message")}[kind]
        try:
            with self.engine.begin() as sync:
                drive(ledger.transfer(SyncConn(sync), key=f"sim:{plan.account}:{tag}",
                                      debit=debit, credit=credit, amount=amount, kind=what,
                                      at=stamp(t)))
        except LedgerError as refused:
            return refused.code
        return "ok"

    def minute_rows(self, plan: Plan) -> list[tuple]:
        t = ledger_transfers
        with self.engine.connect() as sync:
            rows = sync.execute(select(t.c.idempotency_key, t.c.debit_account, t.c.credit_account,
                                       t.c.amount, t.c.ref, t.c.at)
                                .where(t.c.debit_account == plan.account,
                                       t.c.kind == "visit_minute")).all()
        return [(*row[:5], (row[5] - BASE).total_seconds()) for row in rows]

    def account(self, plan: Plan) -> tuple[int, int]:
        """The account's stored balance and the balance its transfers give."""
        with self.engine.connect() as sync:
            return tuple(sync.execute(ACCOUNT_SQL, {"account": plan.account}).one())

    def invariants(self) -> list[str]:
        with self.engine.connect() as sync:
            return drive(ledger.check_invariants(SyncConn(sync)))


ACCOUNT_SQL = text("""
    SELECT (SELECT balance FROM ledger_accounts WHERE id = :account),
           (SELECT coalesce(sum(amount), 0) FROM ledger_transfers WHERE credit_account = :account)
         - (SELECT coalesce(sum(amount), 0) FROM ledger_transfers WHERE debit_account = :account)
""")


def _pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=OFF")  # a scratch database: speed over durability
    cursor.close()


@dataclass
class Result:
    seed: int
    visits: int = 0
    stats: Counter = field(default_factory=Counter)
    last: tuple[Plan, Run] | None = None  # the last visit run: the failing one, if any
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def simulate(seed: int, visits: int, db_path: Path, *, step: Callable = meter.step,
             only: int | None = None, judge: Callable = check_visit) -> Result:
    """Run visits until the first failure. `db_path` is a migrated SQLite file. Each visit's
    own account is checked after it; the whole ledger (ledger.check_invariants, which reads
    every transfer) every INVARIANTS_EVERY visits and at the end."""
    result = Result(seed)
    store = SimLedger(db_path)
    try:
        for index in range(visits) if only is None else [only]:
            plan = draw_plan(seed, index)
            store.open(plan)
            run = VisitSim(plan, store, step).go()
            result.last, result.visits = (plan, run), result.visits + 1
            result.stats.update(run.stats)
            result.stats[f"ended {run.ended}"] += 1
            result.problems = judge(plan, run, store.minute_rows(plan), store.account(plan))
            if result.visits % INVARIANTS_EVERY == 0:
                result.problems += store.invariants()
            if result.problems:
                return result
        result.problems = store.invariants()
    finally:
        store.close()
    return result


def describe(result: Result, *, trace: bool = False) -> str:
    stats = ", ".join(f"{k} {v}" for k, v in sorted(result.stats.items()))
    if result.ok and not trace:
        return f"ok: seed {result.seed}, {result.visits} visits ({stats})"
    plan, run = result.last
    lines = [f"{'ok' if result.ok else 'FAILED'}: seed {result.seed}, visit {plan.index} "
             f"(replay: python -m tests.support.sim --seed {result.seed} --only {plan.index})",
             *(f"  problem: {p}" for p in result.problems),
             f"  config: {plan.config}", f"  funds {plan.funds}, faults {plan.faults}",
             "  trace:", *(f"    {_line(record)}" for record in run.trace)]
    return "\n".join(lines)


def _line(record: tuple) -> str:
    kind, t, *rest = record
    if kind == "step":
        gen, ev, actions = rest
        return f"{t:10.4f} [{gen}] {ev} -> {', '.join(_short(a) for a in actions) or '-'}"
    if kind == "persisted":
        return f"{t:10.4f} [{rest[0]}] persisted {rest[1]}"
    return f"{t:10.4f} {kind} {' '.join(map(str, rest))}"


def _short(action) -> str:
    if isinstance(action, meter.Persist):
        return f"Persist(paid={action.state.paid_minutes}, pending={action.state.pending})"
    return str(action)


async def _migrate(url: str) -> None:
    from store import Store
    from store.migrate import migrate

    store = Store(url)
    try:
        await migrate(store)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.sim",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    parser.add_argument("--visits", type=int, default=1000)
    parser.add_argument("--only", type=int, default=None,
                        help="replay this visit alone and print its trace")
    args = parser.parse_args(argv)
    seed = secrets.randbelow(2**32) if args.seed is None else args.seed
    print(f"seed {seed}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sim.db"
        asyncio.run(_migrate(f"sqlite:///{path}"))
        started, cpu = time.perf_counter(), time.process_time()
        result = simulate(seed, args.visits, path, only=args.only)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(describe(result, trace=args.only is not None))
    print(f"{result.visits} visits in {elapsed:.1f} s ({cpu:.1f} s of CPU)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
