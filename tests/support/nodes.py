"""Several `kinwire serve` processes on one PostgreSQL and a private redis-server, and what the
tests do through them: sign-ups, a connected pair, live peers on the socket."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from tests.support.processes import free_port, wait_ready

VISA = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123",
        "name": "Cluster"}


class RedisServer:
    """A private redis-server on a free port, so a test may stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Node:
    def __init__(self, port: int, proc: subprocess.Popen | None,
                 env: dict[str, str] | None = None) -> None:
        self.port, self.proc, self.env = port, proc, env  # env: to restart it the same way
        self.base = f"http://127.0.0.1:{port}"


@asynccontextmanager
async def cluster(db: str, redis_url: str, tmp_path: Path, n: int = 2,
                  ports: list[int] | None = None, **settings: str) -> AsyncIterator[list[Node]]:
    """`n` `kinwire serve` processes; `ports`: theirs, chosen by the caller (a service that
    must know where to reach them before they start: Janus's event handler)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINWIRE_")}
    env.update(DATABASE_URL=db, REDIS_URL=redis_url, KINWIRE_DATA_DIR=str(tmp_path),
               KINWIRE_ARGON2_MEMORY_KIB="1024", KINWIRE_ARGON2_TIME_COST="1",
               KINWIRE_LOG_LEVEL="WARNING", **settings)
    nodes = []
    try:
        for index in range(n):
            port = ports[index] if ports else free_port()
            proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            nodes.append(Node(port, proc, env))
            await wait_ready(nodes[-1].base, proc)
        yield nodes
    finally:
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            try:
                out, _ = node.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                out, _ = node.proc.communicate()
            print(f"--- node {node.port} ---\n{out}")  # shown by pytest when a test fails


class Peer:
    """A user with a socket on one node, in one codec, keeping every pushed event."""

    def __init__(self, http: aiohttp.ClientSession, node: Node, token: str, codec: str):
        self.http, self.node, self.token, self.codec = http, node, token, codec
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: dict[int, dict[str, Any]] = {}
        self.duplicates = 0
        self.next_id = 1
        self.replies: dict[int, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.node.base + "/ws", protocols=(self.codec,))
        self.reader = asyncio.create_task(self._read())
        reply = await self.call("auth", token=self.token)
        self.account_id = reply["ok"]["account_id"]

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT \
                else msgpack.unpackb(msg.data)
            if "id" in frame and frame["id"] in self.replies:
                future = self.replies.pop(frame["id"])
                if not future.done():  # the caller may have stopped waiting
                    future.set_result(frame)
            elif "seq" in frame:
                self.keep(frame)

    def keep(self, event: dict[str, Any]) -> None:
        if event["seq"] in self.events:
            self.duplicates += 1
        self.events[event["seq"]] = event

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        command_id = self.next_id
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.replies[command_id] = future
        frame = {"id": command_id, "op": op, "args": args}
        if self.codec.endswith("json"):
            await self.ws.send_str(json.dumps(frame))
        else:
            await self.ws.send_bytes(msgpack.packb(frame))
        return await asyncio.wait_for(future, 10)

    async def sync(self) -> None:
        since = 0
        while True:
            reply = (await self.call("sync", since=since))["ok"]
            assert not reply.get("reset")
            for event in reply["events"]:
                self.events.setdefault(event["seq"], event)
            since = reply["seq"]
            if not reply["more"]:
                return

    def bodies(self) -> list[str]:
        """Bodies of the messages this peer received, in its stream's order."""
        return [self.events[s]["data"].get("body") for s in sorted(self.events)
                if self.events[s]["type"] == "message.new"
                and self.events[s]["data"]["to"] == self.account_id]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def post(http: aiohttp.ClientSession, node: Node, path: str, token: str | None = None,
               body: Any = None, **headers: str) -> tuple[int, Any]:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(node.base + "/api/v1" + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def make_pair(http: aiohttp.ClientSession, a: Node, b: Node, db: str) -> tuple[str, str]:
    """A connected family (logs in on A) and person (a session of their own); returns their
    tokens."""
    from server import accounts
    from server.auth import open_session
    from server.schema import utcnow
    from store import Store

    store = Store(db)
    try:
        async with store.write() as conn:
            admin_email = f"admin-{secrets.token_hex(3)}@x.test"
            from argon2 import PasswordHasher

            hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
            await accounts.create(conn, role="admin", name="A", email=admin_email,
                                  password_hash=hasher.hash("admin pass"), now=utcnow())
    finally:
        await store.close()
    _, r = await post(http, a, "/auth/login", body={"email": admin_email,
                                                    "password": "admin pass"})
    admin = r["token"]
    _, r = await post(http, a, "/facilities", admin, {"name": "F", "timezone": "UTC"})
    facility = r["facility"]["id"]
    _, r = await post(http, a, f"/facilities/{facility}/people", admin,
                      {"name": "Pat", "inmate_number": "C1", "pin": "1234"})
    person_id = r["account"]["id"]
    # The person's session is opened in the store, not bound to a kiosk device: these tests
    # are about processes, sockets and visits; a kiosk login (bound to its device, which
    # every call must then carry) is tested in tests/browser/test_kiosk_device.py.
    store = Store(db)
    try:
        async with store.write() as conn:
            person = await open_session(conn, account_id=person_id, ttl_s=7200, now=utcnow())
    finally:
        await store.close()
    email = f"fam-{secrets.token_hex(3)}@x.test"
    await post(http, a, "/auth/signup", body={"email": email, "password": "family pass",
                                              "name": "Fam"})
    _, r = await post(http, a, "/auth/login", body={"email": email, "password": "family pass"})
    family = r["token"]
    status, r = await post(http, a, "/purchases", family, {"credits": 50_000, "card": VISA},
                           **{"Idempotency-Key": "buy"})
    assert status == 201, r
    _, r = await post(http, a, "/connections", family, {"person_id": person_id})
    status, _ = await post(http, b, f"/connections/{r['connection']['id']}/approve", person)
    assert status == 200
    status, r = await post(http, a, "/gifts", family, {"to": person_id, "credits": 20_000},
                           **{"Idempotency-Key": "gift"})
    assert status == 201, r
    return family, person
