"""Visits in bulk for the signalling, meters and cluster scenarios, and a small WS client.

Booking 10,000 visits through the API would measure the booking rules and argon2, not what the
scenarios are about; so a facility, n family/person pairs with an approved connection and one
visit each are written straight to the store, with the server's own account, session and
ledger functions (bench.common.bulk_users) and the same visit columns the booking route fills
(as tests/integration/test_visit_calls.py's book_now does). Credits are bought through the ledger's
purchase
path, so check_invariants holds afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench import common, load_ws

JSON_PROTOCOL = "kinwire.v1.json"


@dataclass
class Pair:
    visit_id: str
    family: common.User
    person: common.User


async def make_visits(database_url: str, n: int, *, credits: int = 0, minutes: int = 30,
                      started_s: float = 30, price: int = 1, status: str = "scheduled",
                      live_at: datetime | None = None) -> list[Pair]:
    """n visits whose window began `started_s` ago and lasts `minutes`, one pair each.

    status "live" writes both parties as connected since `live_at` (the state the visit row has
    after both report `visit.media connected`), so a meter takes the visit as live."""
    from server import facilities
    from server.schema import connections, utcnow, visits
    from store import Store
    from store.ids import new_id

    store = Store(database_url, pool_size=2)
    try:
        now = utcnow()
        async with store.write() as conn:
            facility = await facilities.create(conn, name="Bench facility", timezone="UTC",
                                               settings={}, now=now)
    finally:
        await store.close()
    families = await fast_users(database_url, n, "family", credits=credits)
    persons = await fast_users(database_url, n, "person", facility_id=facility.id)
    start = now - timedelta(seconds=started_s)
    live = status == "live"
    con_rows, visit_rows, pairs = [], [], []
    for fam, per in zip(families, persons, strict=True):
        con_id, visit_id = new_id("con"), new_id("vis")
        con_rows.append(dict(id=con_id, facility_id=facility.id, family_id=fam.account_id,
                             person_id=per.account_id, status="approved", blocked_by=None,
                             privileged=False, created_at=now, updated_at=now))
        visit_rows.append(dict(
            id=visit_id, facility_id=facility.id, connection_id=con_id,
            family_id=fam.account_id, person_id=per.account_id, booked_by=fam.account_id,
            start_at=start, end_at=start + timedelta(minutes=minutes), blocks=1,
            minute_price=price, media="direct", record=False, status=status,
            created_at=now, updated_at=now, ended_at=None, end_reason=None, meter=None,
            family_media="connected" if live else "absent",
            person_media="connected" if live else "absent",
            media_changed_at=(live_at or now) if live else None))
        pairs.append(Pair(visit_id, fam, per))
    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            await conn.execute(connections.insert(), con_rows)
            await conn.execute(visits.insert(), visit_rows)
    finally:
        await store.close()
    return pairs


async def fast_users(database_url: str, n: int, role: str, *, credits: int = 0,
                     facility_id: str | None = None, ttl_s: int = 86_400) -> list[common.User]:
    """n accounts with a session each (and `credits`), in a few multi-row statements.

    The rows are the ones accounts.create, ledger.open_account, auth.open_session and a credit
    purchase's ledger transfer write (same tables, ids from new_id, the same token hash), so
    ledger.check_invariants holds; bench.common.bulk_users does it row by row through those
    functions, which takes minutes for 20,000 accounts."""
    import secrets

    from billing.ledger import SystemAccount
    from billing.tables import ledger_accounts, ledger_transfers
    from server.accounts import HOLDERS
    from server.auth import token_hash
    from server.schema import accounts, sessions, utcnow
    from store import Store
    from store.ids import new_id

    now = utcnow()
    users, rows = [], {accounts: [], ledger_accounts: [], sessions: [], ledger_transfers: []}
    for i in range(n):
        account_id = new_id({"family": "fam", "person": "per"}[role])
        token = secrets.token_urlsafe(32)
        rows[accounts].append(dict(
            id=account_id, role=role, name=f"Bench {role} {i}", facility_id=facility_id,
            email=f"b-{secrets.token_hex(6)}@example.test" if role == "family" else None,
            inmate_number=f"B{secrets.token_hex(5)}" if role == "person" else None,
            password_hash=None, pin_hash=None, created_at=now, disabled=False))
        if role in HOLDERS:
            rows[ledger_accounts].append(dict(id=account_id, owner_id=account_id, kind="user",
                                              balance=credits))
        rows[sessions].append(dict(id=new_id("ses"), token_hash=token_hash(token),
                                   account_id=account_id, device_id=None, created_at=now,
                                   expires_at=now + timedelta(seconds=ttl_s)))
        if credits:
            rows[ledger_transfers].append(dict(
                id=secrets.token_hex(12), idempotency_key=f"bench-grant-{account_id}",
                debit_account=SystemAccount.CARD_SALES, credit_account=account_id,
                amount=credits, kind="purchase", ref=None, at=now))
        users.append(common.User(account_id, token, role, facility_id))
    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            for table, values in rows.items():
                for start in range(0, len(values), 1000):
                    await conn.execute(table.insert(), values[start:start + 1000])
    finally:
        await store.close()
    return users


async def set_live(database_url: str, visit_ids: list[str], at: datetime) -> None:
    """Mark visits live as of `at`, both parties connected (what two `visit.media connected`
    reports leave on the row)."""
    from server.schema import visits
    from store import Store

    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            await conn.execute(visits.update().where(visits.c.id.in_(visit_ids)).values(
                status="live", family_media="connected", person_media="connected",
                media_changed_at=at, updated_at=at))
    finally:
        await store.close()


class Socket:
    """A JSON-codec Kinwire socket: commands with replies, pushes handed to `on_push`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 1
        self.waiting: dict[int, Any] = {}
        self.on_push: Any = None

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, token: str) -> Socket:
        ws = await http.ws_connect(url, protocols=(JSON_PROTOCOL,), heartbeat=None,
                                   max_msg_size=0)
        sock = cls(ws)
        await ws.send_str(json.dumps({"id": 0, "op": "auth", "args": {"token": token}}))
        async with asyncio.timeout(30):
            await load_ws.reply_to(ws, 0, "auth")
        return sock

    def send(self, op: str, **args: Any) -> Any:
        """Send a command: (future of its reply frame, the coroutine writing it); the reply
        needs `reader()` running."""
        command_id = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[command_id] = fut
        return fut, self.ws.send_str(json.dumps({"id": command_id, "op": op, "args": args}))

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        fut, sending = self.send(op, **args)
        await sending
        frame = await fut
        if "ok" not in frame:
            raise RuntimeError(f"{op} refused: {frame.get('error')}")
        return frame["ok"]

    async def reader(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            received = time.time()
            frame = json.loads(msg.data)
            fut = self.waiting.pop(frame.get("id"), None) if "id" in frame else None
            if fut is not None:
                if not fut.done():
                    fut.set_result(frame)
            elif self.on_push is not None:
                self.on_push(frame, received)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError("socket closed"))


@asynccontextmanager
async def redis_server(workdir: Path) -> AsyncIterator[tuple[str, subprocess.Popen]]:
    """A private redis-server pinned to SERVER_CPU (no persistence): (url, process)."""
    port = common.free_port()
    proc = common.spawn([shutil.which("redis-server") or "redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", str(workdir)], log=workdir / f"redis-{port}.log")
    try:
        await common.wait_tcp(port)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        common.stop(proc)


@asynccontextmanager
async def kinwire_pair(database_url: str, workdir: Path,
                       **settings: Any) -> AsyncIterator[tuple[common.Server, common.Server]]:
    """Two `kinwire serve` processes (A, B) on one database, started side by side."""
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(*(
            stack.enter_async_context(common.kinwire(database_url, workdir / name, **settings))
            for name in ("a", "b")), return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield started[0], started[1]


def http_session() -> aiohttp.ClientSession:
    """A client session for many sockets: aiohttp's default pool of 100 connections would
    hold the 101st WebSocket back until another closes."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
