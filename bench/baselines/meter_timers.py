"""Baseline for the meters scenario: a bare asyncio loop of timers doing the same ledger debit.

One process, the same store code (store.Store on the same database) and the same debit
(billing.ledger.transfer under the minute's key, then the balance, in one write transaction), but
none of the meter's machinery: no lease, no visit-row reads, no persisted state, no pushes, no
events. It polls the visits listed in --visits (a file of ids) every --scan-s seconds and gives
each one that has gone live a timer: a debit at once, then one minute_s after each debit's
stamp, which is the schedule the meter keeps. Lateness is read back from the transfers' `at`.

    python -m bench.baselines.meter_timers --database URL --visits FILE --minute-s 5 --run-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from sqlalchemy import select

from billing import ledger
from billing.ledger import SystemAccount
from billing.meter import minute_key
from server.schema import utcnow
from signalling.tables import visits
from store import Store


async def meter(store: Store, visit_id: str, family_id: str, price: int, minute_s: float,
                until: float) -> None:
    minute = 0
    due = time.monotonic()
    while due < until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        minute += 1
        stamp, now = time.monotonic(), utcnow()  # as the meter: the stamp before the write
        async with store.write() as conn:
            await ledger.transfer(conn, key=minute_key(visit_id, minute), debit=family_id,
                                  credit=SystemAccount.VISIT_REVENUE, amount=price,
                                  kind="visit_minute", ref=visit_id, at=now)
            await ledger.balance(conn, family_id)
        due = stamp + minute_s


async def main(database: str, visits_file: Path, minute_s: float, run_s: float,
               scan_s: float) -> None:
    wanted = set(visits_file.read_text().split())
    store = Store(database)
    until = time.monotonic() + run_s
    started: set[str] = set()
    tasks = []
    try:
        while time.monotonic() < until:
            async with store.read() as conn:
                rows = (await conn.execute(select(
                    visits.c.id, visits.c.family_id, visits.c.minute_price)
                    .where(visits.c.status == "live"))).all()
            for row in rows:
                if row.id in wanted and row.id not in started:
                    started.add(row.id)
                    tasks.append(asyncio.create_task(meter(
                        store, row.id, row.family_id, row.minute_price, minute_s, until)))
            await asyncio.sleep(scan_s)
        await asyncio.gather(*tasks)
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--visits", type=Path, required=True)
    parser.add_argument("--minute-s", type=float, required=True)
    parser.add_argument("--run-s", type=float, required=True)
    parser.add_argument("--scan-s", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.database, args.visits, args.minute_s, args.run_s, args.scan_s))
