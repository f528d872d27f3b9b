"""Network faults between a running server and its services (docs/operations.md, "Faults and
crashes"). A FaultProxy sits between the app and PostgreSQL, another between the app and a
private Redis; while two clients send messages (WS and HTTP, retrying with their idempotency
keys) and a visit is metered, one proxy adds latency, stalls or cuts. Afterwards: every
acknowledged message is stored, every message is charged exactly once, the ledger is sound,
both clients hold every message once after a sync, /readyz said 503 during the outage and 200
soon after, and the meter bills again after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select
from sqlalchemy.engine import make_url

from billing import ledger
from billing.tables import ledger_transfers
from server.app import create_app
from server.schema import connections, messages, utcnow
from signalling.tables import visits
from store import Store
from store.ids import new_id
from tests.conftest import test_settings
from tests.support.faultproxy import FaultProxy
from tests.support.loop_lag import LoopLag
from tests.support.nodes import Node, Peer, RedisServer, make_pair, post

MINUTE_S = 0.5  # a billed visit minute
LEASE_S = 1.5  # the meter's lease
DB_TIMEOUT_S = 1.5  # KINWIRE_DB_TIMEOUT_S: a stalled database fails a request after this
FAULT_S = 4.0
# Each direction. A message send makes some 25 round trips to PostgreSQL, so 25 ms each way
# makes it about 1.3 s slower; a Redis publish makes one.
LATENCY_MS = {"pg": 25, "redis": 100}
MINUTE_PRICE = 5
RETRY_S = 0.2
STARVED_S = 0.5  # the loop this late during a readiness probe: the host's delay, not ours


def proxied(url: str, proxy: FaultProxy) -> str:
    return make_url(url).set(host=proxy.host, port=proxy.port).render_as_string(
        hide_password=False)


async def book_live_visit(db: str, family: Peer, person: Peer,
                          price: int = MINUTE_PRICE) -> str:
    """A visit under way, joined by both parties with media connected: the meter bills it."""
    store = Store(db)
    now = utcnow()
    visit_id = new_id("vis")
    try:
        async with store.write() as conn:
            con = (await conn.execute(connections.select().where(
                connections.c.family_id == family.account_id))).first()
            await conn.execute(visits.insert().values(
                id=visit_id, facility_id=con.facility_id, connection_id=con.id,
                family_id=family.account_id, person_id=person.account_id,
                booked_by=family.account_id, start_at=now - timedelta(seconds=60),
                end_at=now + timedelta(minutes=30), blocks=1, minute_price=price,
                media="direct", record=False, status="scheduled", created_at=now,
                updated_at=now))
    finally:
        await store.close()
    for peer in (family, person):
        assert "ok" in await peer.call("visit.join", visit_id=visit_id)
    for peer in (family, person):
        reply = await peer.call("visit.media", visit_id=visit_id, state="connected")
        assert "ok" in reply, reply
    return visit_id


async def metered_pair(http: aiohttp.ClientSession, family_node: Node, person_node: Node,
                       db: str) -> tuple[Peer, Peer, str]:
    """A connected family (JSON socket on `family_node`) and person (msgpack socket on
    `person_node`) in a visit the meter bills: (family, person, visit id)."""
    family_token, person_token = await make_pair(http, family_node, person_node, db)
    family = Peer(http, family_node, family_token, "kinwire.v1.json")
    person = Peer(http, person_node, person_token, "kinwire.v1.msgpack")
    await family.connect()
    await person.connect()
    return family, person, await book_live_visit(db, family, person)


@dataclass
class Sender:
    """A party sending numbered messages the way a client does: each one under its own
    idempotency key, retried with that key (after a pause) until it is acknowledged. Over the
    socket (`peer`) or over HTTP to one of `nodes` (the next one after a failure)."""

    name: str
    http: aiohttp.ClientSession
    peer: Peer
    to: str
    nodes: list[Node]
    via_ws: bool
    reply_s: float = 5.0
    acked: dict[str, str] = field(default_factory=dict)  # key -> message id
    ack_times: list[float] = field(default_factory=list)
    failures: int = 0
    unavailable: int = 0  # of the failures, those the server answered 503 `unavailable`
    node_index: int = 0

    async def send_one(self, key: str, body: str) -> str:
        while True:
            try:
                message_id = await asyncio.wait_for(self._attempt(key, body), self.reply_s)
                if message_id is not None:
                    return message_id
                self.unavailable += 1
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            self.failures += 1
            self.node_index += 1  # HTTP: a load balancer would try another process
            await asyncio.sleep(RETRY_S)

    async def _attempt(self, key: str, body: str) -> str | None:
        if self.via_ws:
            if self.peer.ws is None or self.peer.ws.closed:
                await self.peer.connect()
            reply = await self.peer.call("message.send", key=key, to=self.to, body=body)
            if "ok" in reply:
                return reply["ok"]["message"]["id"]
            assert reply["error"]["code"] == "unavailable", reply  # a fault, not a bug
            return None
        node = self.nodes[self.node_index % len(self.nodes)]
        status, reply = await post(self.http, node, "/messages", self.peer.token,
                                   {"to": self.to, "body": body}, **{"Idempotency-Key": key})
        if status == 201:
            return reply["message"]["id"]
        assert (status, reply["error"]["code"]) == (503, "unavailable"), (status, reply)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        number = 0
        while not stop.is_set():
            key = f"{self.name}-{number}"
            self.acked[key] = await self.send_one(key, f"{self.name} says {number}")
            self.ack_times.append(time.monotonic())
            number += 1
            self.node_index += 1  # HTTP: spread over the processes
            await asyncio.sleep(0.1)


async def until(condition, limit_s: float, failure: str) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.05)


async def readiness(http: aiohttp.ClientSession, node: Node) -> int:
    try:
        async with http.get(node.base + "/readyz",
                            timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def until_ready(http: aiohttp.ClientSession, node: Node, limit_s: float) -> float:
    started = time.monotonic()
    while await readiness(http, node) != 200:
        assert time.monotonic() - started < limit_s, f"not ready {limit_s} s after healing"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def minute_debits(db: str, visit_id: str) -> list[Any]:
    store = Store(db)
    try:
        async with store.read() as conn:
            return list(await conn.execute(select(ledger_transfers).where(
                ledger_transfers.c.kind == "visit_minute", ledger_transfers.c.ref == visit_id)
                .order_by(ledger_transfers.c.seq)))
    finally:
        await store.close()


async def until_billed_after(db: str, visit_id: str, moment, limit_s: float) -> float:
    """Seconds until a minute debited at or after `moment` (a UTC datetime) is on record."""
    started = time.monotonic()
    while not any(row.at >= moment for row in await minute_debits(db, visit_id)):
        assert time.monotonic() - started < limit_s, \
            f"no visit minute billed within {limit_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def check_books(db: str, senders: list[Sender], visit_id: str) -> dict[str, int]:
    """Every acknowledged message stored; every message charged once, at its price; minutes
    billed once each, in order; the ledger sound. Returns counts for the report."""
    store = Store(db)
    try:
        # One snapshot for every query: under READ COMMITTED a meter still billing could
        # commit between two of them and make sound books look unsound.
        async with store.engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="REPEATABLE READ")
            await conn.begin()
            stored = {(row.sender_id, row.client_key): row for row in
                      await conn.execute(select(messages))}
            charges: dict[str, list[Any]] = {}
            for row in await conn.execute(select(ledger_transfers).where(
                    ledger_transfers.c.kind == "message")):
                charges.setdefault(row.ref, []).append(row)
            problems = await ledger.check_invariants(conn)
    finally:
        await store.close()
    for sender in senders:
        mine = {key for (sender_id, key) in stored if sender_id == sender.peer.account_id}
        assert mine == set(sender.acked), "a message was stored that its sender never learnt of"
        for key, message_id in sender.acked.items():
            row = stored.get((sender.peer.account_id, key))
            assert row is not None, f"acknowledged message {key} was lost"
            assert row.id == message_id, f"{key} acknowledged as two different messages"
    assert {row.id for row in stored.values()} == set(charges), \
        "a message was stored without its charge, or charged without being stored"
    for row in stored.values():
        assert len(charges[row.id]) == 1, f"message {row.id} charged {len(charges[row.id])}x"
        (charge,) = charges[row.id]
        assert (charge.debit_account, charge.amount) == (row.sender_id, row.price)
        assert charge.idempotency_key == f"msg:{row.id}:text"
    assert problems == []
    minutes = await minute_debits(db, visit_id)
    numbers = [int(row.idempotency_key.rsplit(":", 1)[1]) for row in minutes]
    assert sorted(numbers) == list(range(1, len(numbers) + 1)), "a minute skipped or repeated"
    assert all(row.amount == MINUTE_PRICE for row in minutes)
    return {"messages": len(stored), "minutes": len(minutes)}


async def check_clients_recover(peers: list[Peer], db: str) -> None:
    """Each party, after a sync, holds every message sent to it exactly once."""
    store = Store(db)
    try:
        async with store.read() as conn:
            rows = list(await conn.execute(select(messages.c.id, messages.c.recipient_id)))
    finally:
        await store.close()
    for peer in peers:
        if peer.ws is None or peer.ws.closed:
            await peer.connect()
        await peer.sync()
        got = [e["data"]["id"] for e in peer.events.values()
               if e["type"] == "message.new" and e["data"]["to"] == peer.account_id]
        assert len(got) == len(set(got)), "a message reached a client twice"
        assert set(got) == {r.id for r in rows if r.recipient_id == peer.account_id}
        assert peer.duplicates == 0


@asynccontextmanager
async def rig(pg_db: str, tmp_path: Path) -> AsyncIterator[tuple]:
    """The app (in this process, on a real port) reaching PostgreSQL and a private Redis only
    through fault proxies; a connected family and person with sockets; a metered visit."""
    redis = RedisServer(tmp_path)
    await redis.start()
    pg_target = make_url(pg_db)
    proxies = {"pg": await FaultProxy(pg_target.host, pg_target.port or 5432).start(),
               "redis": await FaultProxy("127.0.0.1", redis.port).start()}
    settings = test_settings(proxied(pg_db, proxies["pg"]), tmp_path,
                             redis_url=proxies["redis"].url("redis://{host}:{port}/0"),
                             visit_minute_s=MINUTE_S, meter_lease_s=LEASE_S,
                             db_timeout_s=DB_TIMEOUT_S, argon2_memory_kib=1024)
    server = TestServer(create_app(settings, run_migrations=False))
    try:
        await server.start_server()
        node = Node(server.port, None)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            family, person, visit_id = await metered_pair(http, node, node, pg_db)
            yield proxies, http, node, family, person, visit_id
            await family.close()
            await person.close()
    finally:
        await server.close()
        for proxy in proxies.values():
            await proxy.close()
        redis.stop()


def inject(proxy: FaultProxy, service: str, fault: str) -> None:
    if fault == "latency":
        proxy.latency(LATENCY_MS[service])
    elif fault == "stall":
        proxy.stall()
    else:
        proxy.cut(refuse_s=FAULT_S)


@pytest.mark.parametrize("fault", ["latency", "stall", "cut"])
@pytest.mark.parametrize("service", ["pg", "redis"])
async def test_a_fault_loses_nothing_and_charges_once(pg_db: str, tmp_path: Path,
                                                      service: str, fault: str) -> None:
    async with rig(pg_db, tmp_path) as (proxies, http, node, family, person, visit_id):
        senders = [Sender("family", http, family, person.account_id, [node], via_ws=True),
                   Sender("person", http, person, family.account_id, [node], via_ws=False)]
        stop = asyncio.Event()
        sending = [asyncio.create_task(s.run(stop)) for s in senders]
        try:
            await until(lambda: all(len(s.acked) >= 3 for s in senders), 10,
                        "no traffic before the fault")

            inject(proxies[service], service, fault)
            fault_at = time.monotonic()
            statuses, starved = [], []
            async with LoopLag() as lag:
                while time.monotonic() - fault_at < FAULT_S:
                    lag.mark()
                    status = await readiness(http, node)
                    # /readyz gives each check 2 s: a probe during which this process (app,
                    # proxies and clients alike) had no turn for STARVED_S timed the host
                    if fault == "latency" and status != 200 and lag.worst_s >= STARVED_S:
                        starved.append(round(lag.worst_s, 2))
                    else:
                        statuses.append(status)
                    await asyncio.sleep(0.2)
            proxies[service].heal()
            healed, healed_at = time.monotonic(), utcnow()
            if fault == "latency":
                assert set(statuses) == {200} and len(statuses) >= 3, \
                    f"slow is not down: {statuses}, set aside (loop late by, s): {starved}"
                assert all(any(fault_at < t < healed for t in s.ack_times) for s in senders), \
                    "nothing was acknowledged while the service was slow"
            else:
                assert 503 in statuses, f"/readyz never reported the outage: {statuses}"
            if (service, fault) == ("pg", "stall"):
                # Answered within KINWIRE_DB_TIMEOUT_S rather than held for the whole stall.
                assert all(s.unavailable for s in senders), [s.unavailable for s in senders]
            ready_s = await until_ready(http, node, limit_s=10)
            acked = {s.name: len(s.acked) for s in senders}
            billed_s = await until_billed_after(pg_db, visit_id, healed_at,
                                                limit_s=LEASE_S * 1.5 + MINUTE_S + 4)
            await until(lambda: all(len(s.acked) >= acked[s.name] + 3 for s in senders), 10,
                        "sending did not resume after healing")
            first_ack_s = min(t for s in senders for t in s.ack_times if t > healed) - healed
            stop.set()
            await asyncio.wait_for(asyncio.gather(*sending), 15)
        finally:
            for task in sending:
                task.cancel()

        counts = await check_books(pg_db, senders, visit_id)
        await check_clients_recover([family, person], pg_db)
        print(f"{service} {fault}: ready {ready_s:.2f} s and first ack {first_ack_s:.2f} s "
              f"after healing, billed again after {billed_s:.2f} s; {counts}, "
              f"failed attempts {[s.failures for s in senders]}")
