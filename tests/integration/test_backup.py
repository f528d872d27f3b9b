"""`kinwire backup`, `backup verify` and `restore`, on real processes, on SQLite and PostgreSQL.

Adversaries: traffic that keeps writing while the snapshot is taken (purchases, photo uploads
and messages carrying them, from a client that never pauses for the backup); a blob changed or
lost after the backup was taken; an operator who copies `kinwire.db` alone while the server
runs (the copied-file trap) or restores over a live data directory.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from PIL import Image

from billing import ledger
from server.backup import backup, read_manifest, restore, verify
from server.blobs.files import FileBlobs
from server.settings import from_env
from store import Store
from tests.conftest import PG_ADMIN_URL
from tests.integration.test_object_storage import bucket_keys
from tests.support.helpers import VISA
from tests.support.processes import cli_env, free_port, wait_ready
from tests.support.seaweed import Seaweed

pytestmark = pytest.mark.timeout(240)
FAMILY = {"email": "family@demo.kinwire.test", "password": "family-demo-pass"}


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def databases(request: pytest.FixtureRequest) -> AsyncIterator[list[dict[str, str]]]:
    """Environment extras for three installations: the source and two restore targets."""
    if request.param == "sqlite":
        yield [{}, {}, {}]
        return
    names = [f"kinwire_bk_{secrets.token_hex(4)}" for _ in range(3)]
    for name in names:
        await _admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield [{"DATABASE_URL": f"{base}/{name}"} for name in names]
    finally:
        for name in names:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    return cli_env(home, KINWIRE_PHOTO_UPLOADS_PER_HOUR_MAX="100000", **extra)


def kinwire(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], env=env,
                          capture_output=True, text=True, timeout=120)


async def kinwire_async(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    return proc.returncode, out


@asynccontextmanager
async def serving(env: dict[str, str], *args: str) -> AsyncIterator[str]:
    port = free_port()
    log = Path(env["KINWIRE_DATA_DIR"]).parent / f"serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # A file: a pipe that nobody reads would fill up under load and stall the server.
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        os.close(out)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            await wait_ready(base, proc)
        except (AssertionError, AttributeError):  # it exited: its log says why
            raise AssertionError(log.read_text()) from None
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Family:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.headers: dict[str, str] = {}
        self.person = ""

    async def login(self) -> Family:
        async with self.http.post("/api/v1/auth/login", json=FAMILY) as r:
            assert r.status == 200
            self.headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
        async with self.http.get("/api/v1/connections", headers=self.headers) as r:
            self.person = (await r.json())["connections"][0]["person_id"]
        return self

    async def get(self, path: str):
        async with self.http.get("/api/v1" + path, headers=self.headers) as r:
            assert r.status == 200, (path, r.status)
            return await r.json() if r.content_type == "application/json" else await r.read()

    async def buy(self, key: str) -> str:
        async with self.http.post("/api/v1/purchases", json={"credits": 500, "card": VISA},
                                  headers={**self.headers, "Idempotency-Key": key}) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["purchase"]["id"]

    async def send_photo(self, key: str) -> str:
        picture = io.BytesIO()
        Image.new("RGB", (64, 48), tuple(secrets.token_bytes(3))).save(picture, "PNG")
        form = aiohttp.FormData()
        form.add_field("file", picture.getvalue(), filename="p.png", content_type="image/png")
        async with self.http.post("/api/v1/photos", data=form, headers=self.headers) as r:
            assert r.status == 201, await r.text()
            photo = (await r.json())["photo_id"]
        body = {"to": self.person, "body": "a photo", "photo_ids": [photo]}
        async with self.http.post("/api/v1/messages", json=body,
                                  headers={**self.headers, "Idempotency-Key": key}) as r:
            assert r.status == 201, await r.text()
        return photo

    async def seen(self) -> dict:
        """What this family is served: balance, sent messages, every photo's bytes."""
        balance = (await self.get("/me"))["balance"]
        sent = (await self.get("/messages?folder=sent&limit=100"))["messages"]
        photos = {pid: await self.get(f"/photos/{pid}")
                  for m in sent for pid in m.get("photo_ids", [])}
        return {"balance": balance, "messages": sent, "photos": photos}


async def _restored_facts(env: dict[str, str]) -> tuple[set[str], list[str]]:
    """The purchase ids in a restored database (no server on it), and what its ledger check
    finds."""
    url = env.get("DATABASE_URL") or f"sqlite:///{Path(env['KINWIRE_DATA_DIR']) / 'kinwire.db'}"
    store = Store(url, pool_size=1)
    try:
        async with store.read() as conn:
            ids = set((await conn.exec_driver_sql("SELECT id FROM purchases")).scalars())
            problems = await ledger.check_invariants(conn)
    finally:
        await store.close()
    return ids, problems


async def _event_heads(env: dict[str, str]) -> dict[str, int]:
    """Each user's last event number in an installation's database."""
    url = env.get("DATABASE_URL") or f"sqlite:///{Path(env['KINWIRE_DATA_DIR']) / 'kinwire.db'}"
    store = Store(url, pool_size=1)
    try:
        async with store.read() as conn:
            rows = await conn.exec_driver_sql("SELECT account_id, last_seq FROM event_heads")
            return {account: seq for account, seq in rows}
    finally:
        await store.close()


async def test_backup_under_load_restores_acknowledged_money_and_photos(
        tmp_path: Path, databases: list[dict[str, str]]) -> None:
    await _backup_under_load(tmp_path, databases)


async def test_backup_with_photos_in_s3_restores_them_into_an_empty_bucket(
        tmp_path: Path, seaweed: Seaweed) -> None:
    """The same on a real S3 store (SeaweedFS): the backup copies exactly the photos its
    snapshot references out of the bucket, and the restore puts them under another, empty
    prefix (a fresh bucket), not on the target's disk. Adversaries: uploads racing the
    snapshot; a backup blob changed afterwards (verify fails, restore refuses)."""
    prefixes = [f"bk-{name}-{secrets.token_hex(3)}" for name in ("src", "dst")]
    # The quiet backup's exact round trip is the store-independent half: the SQLite and
    # PostgreSQL runs above show it (here it cost ~12 s of a loaded run for nothing new).
    dest = await _backup_under_load(tmp_path, [seaweed.env(prefix=p) for p in prefixes],
                                    quiet_round_trip=False)
    files = read_manifest(dest)["files"]
    photos = sorted(name.removeprefix("blobs/") for name in files if name.startswith("blobs/"))
    assert photos and sorted(k.removeprefix(f"{prefixes[1]}/photos/")
                             for k in bucket_keys(seaweed, prefixes[1])) == photos
    assert not [p for p in (tmp_path / "target").rglob("*.jpg")], "photos on the target's disk"

    tampered = tmp_path / "tampered"
    shutil.copytree(dest, tampered)
    victim = tampered / "blobs" / photos[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    env = _env(tmp_path / "fresh", seaweed.env(prefix=f"bk-fresh-{secrets.token_hex(3)}"))
    result = kinwire("backup", "verify", str(tampered), env=env)
    assert result.returncode == 1 and f"blobs/{photos[0]}: checksum" in result.stdout
    refused = kinwire("restore", str(tampered), env=env)
    assert refused.returncode == 1 and "does not verify" in refused.stderr, refused.stderr


async def _backup_under_load(tmp_path: Path, extras: list[dict[str, str]], *,
                             quiet_round_trip: bool = True) -> Path:
    """A backup taken while purchases and photo uploads run, restored into a fresh data
    directory (and database, and blob store, per `extras`: source, target, quiet target):
    every purchase acknowledged before the snapshot is there and every photo opens; with
    `quiet_round_trip`, a second backup taken once the load stopped restores to exactly what
    the source serves. Returns the backup's folder."""
    databases = extras
    source = _env(tmp_path / "source", databases[0])
    target = _env(tmp_path / "target", databases[1])
    dest, quiet = tmp_path / "backup", tmp_path / "backup-quiet"
    acked: list[tuple[float, str]] = []  # (when acknowledged, purchase id)
    stop = asyncio.Event()
    # The deploy step (on PostgreSQL `serve` does not migrate; the targets stay empty for restore).
    assert kinwire("migrate", env=source).returncode == 0
    async with serving(source, "--demo") as base, aiohttp.ClientSession(base_url=base) as http:
        family = await Family(http).login()

        async def buying() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                acked.append((time.monotonic(), await family.buy(f"buy-{n}")))

        async def photographing() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await family.send_photo(f"msg-{n}")

        load = [asyncio.create_task(buying()), asyncio.create_task(photographing())]
        await asyncio.sleep(1.0)
        started = time.monotonic()
        code, out = await kinwire_async("backup", str(dest), env=source)
        assert code == 0, out
        await asyncio.sleep(0.5)  # the load goes on after the snapshot too
        stop.set()
        await asyncio.gather(*load)
        before = {pid for at, pid in acked if at < started}
        assert len(before) >= 3 and len(acked) > len(before), (len(before), len(acked))

        # Quiet now: a second backup must serve exactly what the source serves.
        if quiet_round_trip:
            code, out = await kinwire_async("backup", str(quiet), env=source)
            assert code == 0, out
        served = await family.seen()
        seen_heads = await _event_heads(source)  # what the apps may have synced up to
    assert served["photos"], "the load sent photos"

    verified = kinwire("backup", "verify", str(dest), env=source)
    assert verified.returncode == 0 and "backup verify: ok" in verified.stdout, verified.stdout
    restored = kinwire("restore", str(dest), env=target)
    assert restored.returncode == 0, restored.stdout + restored.stderr

    # The restore took back what came after the snapshot; new events must not reuse those
    # numbers (an app that synced past them would skip the new ones).
    restored_heads = await _event_heads(target)
    reused = {a: (restored_heads.get(a), seq) for a, seq in seen_heads.items()
              if restored_heads.get(a) is not None and restored_heads[a] <= seq}
    assert not reused, f"event numbers the apps saw would be used again: {reused}"
    ids, problems = await _restored_facts(target)
    assert before <= ids, f"acknowledged before the snapshot but not restored: {before - ids}"
    assert len(ids - {pid for _, pid in acked}) == 1  # only the demo's own, made at seeding
    assert problems == []
    async with serving(target) as base, aiohttp.ClientSession(base_url=base) as http:
        seen = await (await Family(http).login()).seen()
    assert seen["messages"] and len(seen["photos"]) == sum(
        len(m.get("photo_ids", [])) for m in seen["messages"])
    for data in seen["photos"].values():
        Image.open(io.BytesIO(data)).verify()  # every referenced photo opens

    if quiet_round_trip:
        quiet_target = _env(tmp_path / "quiet", databases[2])
        assert kinwire("restore", str(quiet), env=quiet_target).returncode == 0
        async with serving(quiet_target) as base, aiohttp.ClientSession(base_url=base) as http:
            assert await (await Family(http).login()).seen() == served

    # Restoring over a data directory in use is refused, and changes nothing there.
    again = kinwire("restore", str(dest), env=target)
    assert again.returncode == 1 and "restore into an empty" in again.stderr, again.stderr
    return dest


async def test_verify_finds_a_changed_or_lost_blob_and_restore_refuses_it(
        tmp_path: Path) -> None:
    source = _env(tmp_path / "source", {})
    dest = tmp_path / "backup"
    async with serving(source, "--demo") as base, aiohttp.ClientSession(base_url=base) as http:
        family = await Family(http).login()
        await family.send_photo("one")
        await family.send_photo("two")
    assert kinwire("backup", str(dest), env=source).returncode == 0
    assert kinwire("backup", "verify", str(dest), env=source).returncode == 0

    blobs = sorted((dest / "blobs").iterdir())
    assert len(blobs) == 4  # two photos, each full size and thumbnail
    tampered = tmp_path / "tampered"
    shutil.copytree(dest, tampered)
    data = bytearray((tampered / "blobs" / blobs[0].name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "blobs" / blobs[0].name).write_bytes(bytes(data))
    (tampered / "blobs" / blobs[3].name).unlink()
    result = kinwire("backup", "verify", str(tampered), env=source)
    assert result.returncode == 1
    assert f"blobs/{blobs[0].name}: checksum" in result.stdout, result.stdout
    assert f"blobs/{blobs[3].name}: missing" in result.stdout, result.stdout

    refused = kinwire("restore", str(tampered), env=_env(tmp_path / "target", {}))
    assert refused.returncode == 1 and "does not verify" in refused.stderr, refused.stderr
    assert not (tmp_path / "target" / "data" / "kinwire.db").exists()


def _tables(path: Path) -> int:
    """Counted without creating a -wal beside the file (immutable), as an operator's look would
    not either."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    finally:
        db.close()


async def test_a_database_copied_without_its_wal_is_refused_with_its_reason(
        tmp_path: Path) -> None:
    """The copied-file trap: `kinwire.db` copied alone while the server runs holds no tables
    (they are still in kinwire.db-wal); migrated, it would serve an empty service beside the
    old photos."""
    source = _env(tmp_path / "source", {})
    copy = tmp_path / "copy" / "data"
    async with serving(source, "--demo") as base, aiohttp.ClientSession(base_url=base) as http:
        family = await Family(http).login()
        await family.send_photo("one")
        copy.mkdir(parents=True)
        shutil.copyfile(tmp_path / "source" / "data" / "kinwire.db", copy / "kinwire.db")
        shutil.copytree(tmp_path / "source" / "data" / "blobs", copy / "blobs")
    assert _tables(copy / "kinwire.db") == 0, "precondition: SQLite checkpointed the WAL first"

    env = _env(tmp_path / "copy", {})
    for args in (["--port", str(free_port())], ["migrate"]):
        result = kinwire(*args, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "refusing to start" in result.stderr and "without its WAL" in result.stderr \
            and "kinwire restore" in result.stderr, result.stderr
    assert _tables(copy / "kinwire.db") == 0, "the copy was migrated"
    assert os.listdir(copy / "blobs")


async def test_a_backup_holds_the_recordings_its_database_lists_and_restores_them(
        tmp_path: Path, sqlite_template: Path) -> None:
    """Recordings are kept in the blob store under `<facility>/<recording>.webm` (relay mode):
    the backup copies the file of each `recordings` row, and only those, and restore puts it
    back under its key. Adversary: a recording blob the database does not list (one whose row
    never committed) must stay out of the backup. The row is written with plain SQL (no relayed
    visit is run; sqlite3 does not enforce the row's foreign keys unless asked)."""
    source, target = tmp_path / "source" / "data", tmp_path / "target" / "data"
    source.mkdir(parents=True)
    shutil.copyfile(sqlite_template, source / "kinwire.db")
    settings = from_env({"KINWIRE_DATA_DIR": str(source)})
    key, stray = "fac_1/rec_1.webm", "fac_1/rec_stray.webm"
    blobs = FileBlobs(settings.resolved_recordings_dir)
    for name, data in ((key, b"webm bytes " * 1000), (stray, b"no row")):
        staged = tmp_path / name.replace("/", "_")
        staged.write_bytes(data)
        await blobs.put(name, staged)
    db = sqlite3.connect(source / "kinwire.db")
    db.execute(
        "INSERT INTO recordings (id, visit_id, segment, facility_id, family_id, person_id,"
        " started_at, ended_at, duration_ms, bytes, sha256, content_type, location,"
        " retain_until, created_at) VALUES ('rec_1', 'vis_1', 1, 'fac_1', 'acc_f', 'acc_p',"
        " '2026-12-01 10:00:00', '2026-12-01 10:01:00', 60000, 11000, 'x', 'video/webm', ?,"
        " '2027-03-01 10:00:00', '2026-12-01 10:01:00')", (key,))
    db.commit()
    db.close()

    dest = tmp_path / "backup"
    manifest = await backup(settings, dest)
    assert manifest["recordings"] == [key] and manifest["missing"] == []
    assert sorted(n for n in manifest["files"] if n.startswith("recordings/")) == [
        f"recordings/{key}"]
    assert verify(dest) == []
    (dest / "recordings" / key).write_bytes(b"webm bytes " * 999 + b"webm bytez ")
    assert verify(dest) == [f"recordings/{key}: checksum or size differs from the manifest "
                            "(changed)"]
    (dest / "recordings" / key).write_bytes(b"webm bytes " * 1000)

    restored = from_env({"KINWIRE_DATA_DIR": str(target)})
    await restore(restored, dest)
    assert (restored.resolved_recordings_dir / key).read_bytes() == b"webm bytes " * 1000
    assert not (restored.resolved_recordings_dir / stray).exists()
