"""Durable before acknowledged: a reply that says "done" may leave the process only after the
commit behind it is on disk.

The adversary is a power cut (or an OS crash) just after a family was told "done": anything
not yet fsynced is gone, while the card was charged and the family believes it. This cannot be
staged on this machine, so the tests watch what the server does instead: a real `kinwire serve`
runs under `strace -f`, and for a purchase, a gift, a photo upload (HTTP) and a message send
(WebSocket, the group-commit path) the trace must show, in this order: the commit's last write
to the WAL, a completed fsync/fdatasync of the WAL, and only then the reply's first write to the
socket (with no write to a client's socket in between); a photo's folder is synced too. On
PostgreSQL the server itself syncs; what this process can do is refuse to run on a database
whose sessions commit with `synchronous_commit=off` (set here per database, never for the
shared server).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from PIL import Image

from tests.conftest import PG_ADMIN_URL, _migrated
from tests.support.helpers import VISA
from tests.support.processes import cli_env, free_port, wait_ready

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace missing: run scripts/system-deps.sh")

SYSCALLS = "write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync"
_LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>|(\w+)\((\d+)<([^>]*)>)(.*)$")
SYNCS = {"fsync", "fdatasync"}


@dataclass
class Call:
    name: str
    path: str  # the fd's path as strace -yy shows it (`TCP:[a:p->b:q]` for a TCP socket)
    text: str
    done: bool  # the call has returned (a sync counts only then)


def parse(trace: str) -> list[Call]:
    """strace -f -yy lines, in the order they were printed; a call split by another thread's
    (`<unfinished ...>` ... `<... x resumed>`) counts as done where it resumed."""
    calls: list[Call] = []
    pending: dict[str, Call] = {}
    for line in trace.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, resumed, name, _fd, path, rest = m.groups()
        if resumed:
            started = pending.pop(pid, None)
            if started is not None:
                calls.append(Call(started.name, started.path, started.text + rest, True))
            continue
        call = Call(name, path, rest, "<unfinished ...>" not in rest)
        if call.done:
            calls.append(call)
        else:
            pending[pid] = call
    return calls


def _client(call: Call) -> bool:
    """A write to a TCP socket: to a client. (asyncio's wake-up socketpair, written when a
    worker thread's COMMIT returns, is a UNIX socket.)"""
    return call.path.startswith(("TCP:", "TCPv6:")) and call.name not in SYNCS


def violations(calls: list[Call], markers: dict[str, str], wal: str) -> dict[str, str]:
    """For each operation (marker: a string only its reply carries), what went wrong, if
    anything, between its commit and its reply."""
    found = {}
    since = 0
    for what, marker in markers.items():
        reply = next((i for i in range(since, len(calls)) if _client(calls[i])
                      and marker in calls[i].text), None)
        if reply is None:
            found[what] = "its reply was not found in the trace"
            continue
        writes = [i for i in range(since, reply) if calls[i].path == wal
                  and calls[i].name not in SYNCS]
        if not writes:
            found[what] = "no write to the WAL before its reply"
        else:
            after = calls[writes[-1] + 1:reply]
            first = next((c for c in after if _client(c)
                          or (c.name in SYNCS and c.path == wal)), None)
            if first is None:
                found[what] = "no fsync/fdatasync of the WAL between its last write and the reply"
            elif first.name not in SYNCS:
                found[what] = f"a socket write ({first.name}) before the WAL was synced"
        since = reply + 1
    return found


def _stop_traced(proc: subprocess.Popen) -> None:
    """SIGTERM to the server, not to strace (which would detach and leave the server running);
    strace exits with it."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    for pid in pids:
        os.kill(int(pid), signal.SIGTERM)
    if not pids:
        proc.terminate()


async def _traced_operations(tmp_path: Path, **env: str) -> tuple[list[Call], dict, str, str]:
    """A demo server under strace; a purchase, a gift and a message send, one after another.
    Returns the parsed trace, the markers of the three replies, the WAL's path and the log."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    trace = tmp_path / "trace.txt"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-yy", "-s", "512", "-e", f"trace={SYSCALLS}", "-o", str(trace),
         sys.executable, "-m", "server", "--port", str(port), "--demo"],
        env=cli_env(tmp_path, KINWIRE_LOG_FORMAT="text", **env), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    tag = secrets.token_hex(4)
    markers = {"purchase": f"dur-purchase-{tag}", "gift": f"dur-gift-{tag}",
               "photo": f"dur-photo-{tag}", "send": str(700_000 + secrets.randbelow(99_999))}
    try:
        await wait_ready(base, proc)
        async with aiohttp.ClientSession(base_url=base) as http:
            async with http.post("/api/v1/auth/login", json={
                    "email": "family@demo.kinwire.test", "password": "family-demo-pass"}) as r:
                assert r.status == 200
                token = (await r.json())["token"]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.get("/api/v1/connections", headers=auth) as r:
                person = (await r.json())["connections"][0]["person_id"]
            async with http.post("/api/v1/purchases", json={"credits": 500, "card": VISA},
                                 headers={**auth, "Idempotency-Key": f"p-{tag}",
                                          "X-Request-Id": markers["purchase"]}) as r:
                assert r.status == 201, await r.text()
            async with http.post("/api/v1/gifts", json={"to": person, "credits": 100},
                                 headers={**auth, "Idempotency-Key": f"g-{tag}",
                                          "X-Request-Id": markers["gift"]}) as r:
                assert r.status == 201, await r.text()
            picture = io.BytesIO()
            Image.new("RGB", (32, 24), (200, 40, 40)).save(picture, "PNG")
            form = aiohttp.FormData()
            form.add_field("file", picture.getvalue(), filename="p.png",
                           content_type="image/png")
            async with http.post("/api/v1/photos", data=form,
                                 headers={**auth, "X-Request-Id": markers["photo"]}) as r:
                assert r.status == 201, await r.text()
            ws = await http.ws_connect("/ws", protocols=("kinwire.v1.json",))
            await ws.send_str(json.dumps({"id": 1, "op": "auth", "args": {"token": token}}))
            assert "ok" in json.loads((await ws.receive(timeout=10)).data)
            await ws.send_str(json.dumps({"id": int(markers["send"]), "op": "message.send",
                                          "args": {"to": person, "body": "durable?",
                                                   "key": f"m-{tag}"}}))
            while True:
                frame = json.loads((await ws.receive(timeout=10)).data)
                if frame.get("id") == int(markers["send"]):
                    assert "ok" in frame, frame
                    break
            await ws.close()
    finally:
        _stop_traced(proc)
        out, _ = proc.communicate(timeout=30)
    wal = str((tmp_path / "data" / "kinwire.db-wal").resolve())
    return parse(trace.read_text()), markers, wal, out


def synced_before_reply(calls: list[Call], marker: str, path: str) -> bool:
    """Whether `path` (a folder) was fsynced, and the call returned, before the reply that
    carries `marker` and after the reply before it."""
    reply = next(i for i, c in enumerate(calls) if _client(c) and marker in c.text)
    since = max((i for i in range(reply) if _client(calls[i])), default=-1)
    return any(c.name in SYNCS and c.path == path for c in calls[since + 1:reply])


@pytest.mark.timeout(180)
async def test_sqlite_syncs_the_wal_before_each_acknowledgement(tmp_path: Path) -> None:
    calls, markers, wal, log = await _traced_operations(tmp_path)
    assert any(c.path == wal for c in calls), "the trace shows no WAL writes at all"
    assert violations(calls, markers, wal) == {}
    # A photo's file is renamed into place before its row commits: the folder must be synced
    # too, or a power cut could keep the row and lose the file.
    blobs = str((tmp_path / "data" / "blobs").resolve())
    assert synced_before_reply(calls, markers["photo"], blobs), "blob folder never synced"
    assert "NOT DURABLE" not in log


@pytest.mark.timeout(180)
async def test_relaxed_sqlite_acknowledges_before_the_sync_and_says_so(tmp_path: Path) -> None:
    """The same trace with KINWIRE_DB_DURABLE_COMMITS=false: the check above sees it (so it
    can fail), and the server warned at start."""
    calls, markers, wal, log = await _traced_operations(
        tmp_path, KINWIRE_DB_DURABLE_COMMITS="false")
    found = violations(calls, markers, wal)
    assert set(found) == {"purchase", "gift", "photo", "send"}, found
    assert all("no fsync/fdatasync" in why for why in found.values()), found
    assert "NOT DURABLE" in log


async def _pg_database(sync_commit: str) -> str:
    name = f"kinwire_dur_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        # Per database, as a role's or a database's default would be: never ALTER SYSTEM.
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {sync_commit}')
    finally:
        await conn.close()
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    await _migrated(url)  # on PostgreSQL `kinwire migrate` is the deploy step, not `serve`
    return url


async def _drop(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_postgresql_with_synchronous_commit_off_is_refused_at_start(tmp_path: Path) -> None:
    url = await _pg_database("off")
    try:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "--port", str(port),
            env=cli_env(tmp_path, DATABASE_URL=url, KINWIRE_LOG_FORMAT="text"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("the server started on synchronous_commit=off") from None
        assert proc.returncode == 1, out
        assert "synchronous_commit=off" in out and "KINWIRE_DB_DURABLE_COMMITS" in out, out

        # Relaxed on purpose: it serves, and warns at start.
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port)],
            env=cli_env(tmp_path, DATABASE_URL=url, KINWIRE_LOG_FORMAT="text",
                        KINWIRE_DB_DURABLE_COMMITS="false"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
        assert "NOT DURABLE" in out and "synchronous_commit=off" in out, out
    finally:
        await _drop(url)


@pytest.mark.timeout(120)
async def test_doctor_fails_a_database_that_would_lose_acknowledged_commits(
        tmp_path: Path) -> None:
    from server.doctor import database
    from server.settings import from_env

    url = await _pg_database("off")
    try:
        env = cli_env(tmp_path, DATABASE_URL=url)
        migrated = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "migrate", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(migrated.wait(), 60) == 0
        check = await database(from_env(env))
        assert check.status == "fail" and "synchronous_commit=off" in check.detail, check
        relaxed = await database(from_env({**env, "KINWIRE_DB_DURABLE_COMMITS": "false"}))
        assert relaxed.status == "warn" and "NOT DURABLE" in relaxed.detail, relaxed
    finally:
        await _drop(url)


@pytest.mark.timeout(120)
async def test_postgresql_with_synchronous_commit_on_starts_without_a_warning(
        tmp_path: Path) -> None:
    url = await _pg_database("on")
    try:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port)],
            env=cli_env(tmp_path, DATABASE_URL=url, KINWIRE_LOG_FORMAT="text"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
        assert "NOT DURABLE" not in out, out
    finally:
        await _drop(url)
