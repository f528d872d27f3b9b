"""`kinwire backup DIR`, `kinwire backup verify DIR`, `kinwire restore DIR` (docs/operations.md,
"Backup and restore").

A backup is a folder:

    manifest.json        what is in it, with the size and SHA-256 of every file (written last:
                         a folder without it is an interrupted backup)
    kinwire.db           SQLite: one self-contained file (rollback journal, no -wal)
    database.dump        PostgreSQL: pg_dump's custom format
    blobs/               the photo files (full size and thumbnail) of every photo row in the
                         snapshot, and no others
    recordings/          the recording file of every `recordings` row in the snapshot, under
                         its blob key (`<facility>/<recording>.webm`)

The blobs are read through the configured blob store (server/blobs: the folders, or S3 with
KINWIRE_BLOB_URL), so a backup holds the same files whichever store the server uses, and a
restore puts them into whichever store is configured where it runs.

The database snapshot is taken first, online, and is consistent: SQLite's backup API copies
every page under one read transaction; PostgreSQL's dump runs in a snapshot exported by the
transaction that also lists the photo ids and recording keys. The blobs are copied after it.
That is safe because a blob is put (on disk and synced, or acknowledged by S3) before its row is
inserted, and is never changed, so every photo and recording in the snapshot has its blob; blobs
of photos uploaded after the snapshot are left out, and so is a recording still being written.
(A recording expired between the snapshot and the copy is reported missing.)

Restore goes into an empty data directory (or an empty PostgreSQL database): files first, the
database last, so an interrupted restore leaves blobs without a database, which `kinwire serve`
refuses to start on (store/safety.py) rather than serving an empty service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import column, inspect, select, table
from sqlalchemy.engine import make_url

from server.blobs import BlobMissing, BlobStore
from server.blobs.configured import open_blobs
from server.schema import event_heads
from server.schema import photos as photos_table
from server.schema import recordings as recordings_table
from server.settings import Settings
from store import Store, snapshot

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 1 << 20
READ_END = 1 << 50  # a read to the blob's end, whatever its size (the store stops there)


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    """Copy `src` to `dst` (fsynced), hashing on the way: the manifest's entry."""
    digest, size = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"bytes": size, "sha256": digest.hexdigest()}


def _hash(path: Path) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _empty_folder(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    """PostgreSQL's own client tools (Debian's postgresql-client, of the server's major
    version: pg_dump refuses a newer server)."""
    path = shutil.which(tool)
    if path is None:
        raise BackupError(f"{tool} not found: install postgresql-client (scripts/system-deps.sh)")
    return subprocess.run([path, *args], capture_output=True, text=True)  # noqa: S603 - our args


def libpq_url(url: str) -> str:
    """The store's URL in the form pg_dump and pg_restore read."""
    return "postgresql://" + url.split("://", 1)[1]


def _sqlite_path(store: Store) -> Path:
    return Path(make_url(store.url).database or "")


def _photo_files(photo_ids: list[str]) -> list[str]:
    return [f"{pid}{kind}.jpg" for pid in sorted(photo_ids) for kind in ("", ".thumb")]


async def _copy_out(blobs: BlobStore, key: str, dst: Path) -> dict[str, Any] | None:
    """The blob under `key` into `dst` (fsynced), hashed on the way: the manifest's entry; None
    when the store has no such blob."""
    digest, size = hashlib.sha256(), 0
    await asyncio.to_thread(dst.parent.mkdir, parents=True, exist_ok=True)
    fout = await asyncio.to_thread(open, dst, "wb")
    try:
        async for chunk in blobs.read(key, 0, READ_END):
            digest.update(chunk)
            await asyncio.to_thread(fout.write, chunk)
            size += len(chunk)
        await asyncio.to_thread(fout.flush)
        await asyncio.to_thread(os.fsync, fout.fileno())
    except BlobMissing:
        await asyncio.to_thread(dst.unlink)
        return None
    finally:
        fout.close()
    return {"bytes": size, "sha256": digest.hexdigest()}


# --- the database snapshot ------------------------------------------------------------------

# What a backup reads in its database's snapshot: the photos and recordings it references
# (their blobs go with it) and the schema's revision.
_REVISION = table("alembic_version", column("version_num"))
READS = (select(photos_table.c.id), select(recordings_table.c.location),
         select(_REVISION.c.version_num))


def _snapshot_sqlite(source: Path, target: Path, busy_ms: int) -> tuple[list[str], list[str], str]:
    try:
        photo_ids, locations, revision = snapshot.sqlite_copy(source, target, busy_ms, READS)
    except snapshot.NoDatabase as exc:
        raise BackupError(str(exc)) from None
    if photo_ids is None or locations is None or not revision:
        raise BackupError(f"{source} is not a Kinwire database (no photos, recordings or "
                          "revision)")
    return photo_ids, locations, revision[0]


async def _snapshot_postgresql(store: Store, target: Path) -> tuple[list[str], list[str], str]:
    async with snapshot.postgresql_exported(store, READS) as (exported, found):
        # The exporting transaction stays open until pg_dump has imported the snapshot.
        done = await asyncio.to_thread(
            _run, "pg_dump", "--format=custom", "--no-owner", "--no-privileges",
            f"--snapshot={exported}", f"--file={target}", f"--dbname={libpq_url(store.url)}")
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    photo_ids, locations, revision = found
    return photo_ids, locations, revision[0]


# --- backup ---------------------------------------------------------------------------------

async def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of the configured database and blobs into `dest` (absent or empty).
    Returns the manifest; its `missing` lists referenced files that were not on disk."""
    await asyncio.to_thread(_empty_folder, dest)
    store = Store(settings.resolved_database_url, pool_size=1)
    try:
        if store.dialect == "sqlite":
            db_name = "kinwire.db"
            photos, recordings, revision = await asyncio.to_thread(
                _snapshot_sqlite, _sqlite_path(store), dest / db_name,
                settings.db_busy_timeout_ms)
        else:
            db_name = "database.dump"
            photos, recordings, revision = await _snapshot_postgresql(store, dest / db_name)
    finally:
        await store.close()
    taken_at = datetime.now(UTC).isoformat(timespec="seconds")
    files = {db_name: await asyncio.to_thread(_hash, dest / db_name)}
    missing = []
    blobs = open_blobs(settings)
    try:
        wanted = [("blobs", blobs.photos, key) for key in _photo_files(photos)]
        wanted += [("recordings", blobs.recordings, key) for key in sorted(recordings)]
        for folder, store_of, key in wanted:
            entry = await _copy_out(store_of, key, dest / folder / key)
            if entry is None:
                missing.append(f"{folder}/{key}")
            else:
                files[f"{folder}/{key}"] = entry
    finally:
        await blobs.close()
    manifest = {"format": FORMAT, "taken_at": taken_at, "dialect": store.dialect,
                "database": db_name, "revision": revision, "photos": sorted(photos),
                "recordings": sorted(recordings), "files": files, "missing": missing}
    await asyncio.to_thread(_write_manifest, dest, manifest)
    return manifest


def _write_manifest(dest: Path, manifest: dict[str, Any]) -> None:
    for folder in sorted({(dest / name).parent for name in manifest["files"]}, reverse=True):
        _fsync_dir(folder)  # the deepest first, the backup folder itself last
    partial = dest / (MANIFEST + ".part")
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.replace(dest / MANIFEST)
    _fsync_dir(dest)


# --- verify ---------------------------------------------------------------------------------

def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} has no {MANIFEST}: not a backup, or an interrupted one") \
            from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: unknown backup format {manifest.get('format')!r}")
    return manifest


def verify(src: Path) -> list[str]:
    """What is wrong with the backup in `src`: [] when every file is there, unchanged, the
    database reads, and every photo in it has its files."""
    try:
        manifest = read_manifest(src)
    except BackupError as exc:
        return [str(exc)]
    problems = [f"{name}: was missing when the backup was taken"
                for name in manifest["missing"]]
    for name, want in manifest["files"].items():
        path = src / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _hash(path) != want:
            problems.append(f"{name}: checksum or size differs from the manifest (changed)")
    listed = set(manifest["files"])
    for folder in ("blobs", "recordings"):
        if (src / folder).is_dir():
            names = sorted(p.relative_to(src).as_posix() for p in (src / folder).rglob("*")
                           if p.is_file())
            problems += [f"{name}: not in the manifest" for name in names if name not in listed]
    photos = manifest["photos"]
    recordings = manifest.get("recordings", [])
    db = src / manifest["database"]
    if db.is_file() and manifest["dialect"] == "sqlite":
        check, (in_db, locations, _) = snapshot.sqlite_read(db, READS)
        photos = in_db or []
        recordings = locations or []  # None: a backup from before recordings were kept
        if check != "ok":
            problems.append(f"{db.name}: integrity check: {check}")
    elif db.is_file():
        done = _run("pg_restore", "--list", str(db))
        if done.returncode != 0:
            problems.append(f"{db.name}: pg_restore cannot read it: {done.stderr.strip()}")
    problems += [f"blobs/{name}: a photo in the database has no file in the backup"
                 for name in _photo_files(photos)
                 if f"blobs/{name}" not in listed and f"blobs/{name}" not in manifest["missing"]]
    problems += [f"recordings/{key}: a recording in the database has no file in the backup"
                 for key in recordings if f"recordings/{key}" not in listed
                 and f"recordings/{key}" not in manifest["missing"]]
    return problems


# --- restore --------------------------------------------------------------------------------

def _not_empty(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


async def restore(settings: Settings, src: Path) -> dict[str, Any]:
    """Restore the backup in `src` into the configured, empty, data directory and database."""
    problems = await asyncio.to_thread(verify, src)
    if problems:
        raise BackupError("the backup does not verify:\n  " + "\n  ".join(problems))
    manifest = read_manifest(src)
    store = Store(settings.resolved_database_url, pool_size=1)
    try:
        if store.dialect != manifest["dialect"]:
            raise BackupError(f"the backup is of a {manifest['dialect']} database; "
                              f"DATABASE_URL is {store.dialect}")
        if not settings.blob_url:
            for folder in (settings.resolved_blob_dir, settings.resolved_recordings_dir):
                if _not_empty(folder):
                    raise BackupError(
                        f"{folder} is not empty: restore into an empty data directory")
        if store.dialect == "sqlite":
            target = _sqlite_path(store)
            if target.exists() or target.with_name(target.name + "-wal").exists():
                raise BackupError(f"{target} exists: restore into an empty data directory")
        else:
            async with store.read() as conn:
                if await conn.run_sync(lambda c: inspect(c).get_table_names()):
                    raise BackupError("the database has tables: restore into an empty one")
    finally:
        await store.close()
    await _put_blobs(settings, src, manifest)
    if manifest["dialect"] == "sqlite":
        await asyncio.to_thread(_put_sqlite, src / manifest["database"], target)
    else:
        done = await asyncio.to_thread(
            _run, "pg_restore", "--exit-on-error", "--single-transaction", "--no-owner",
            "--no-privileges", f"--dbname={libpq_url(store.url)}", str(src / manifest["database"]))
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()}")
    await continue_event_numbers(settings.resolved_database_url)
    return manifest


# Added to every user's event number after a restore: more events than one user is sent
# between a backup and its restore (a busy family gets some hundreds a day).
EVENT_NUMBERS_SKIPPED = 1_000_000


async def continue_event_numbers(database_url: str) -> None:
    """After a restore to an earlier point, new events would reuse numbers the apps already
    saw, and an app that synced past them would skip the new ones (found by the point-in-time
    drill, tests/integration/test_restore_drill.py). Every stream jumps past anything seen;
    an app then gets what is new (and `reset` for what the restore took back)."""
    store = Store(database_url, pool_size=1)
    try:
        async with store.write() as conn:
            await conn.execute(event_heads.update().values(
                last_seq=event_heads.c.last_seq + EVENT_NUMBERS_SKIPPED))
    finally:
        await store.close()


async def _put_blobs(settings: Settings, src: Path, manifest: dict[str, Any]) -> None:
    """Every blob of the backup into the configured store (folders or S3), each copied to the
    store's staging folder first (a put takes its file over) and checked against the
    manifest on the way. A store that already holds one of the keys is refused before anything
    is put: a restore never mixes two services' blobs."""
    blobs = open_blobs(settings)
    homes = {"blobs": (blobs.photos, blobs.staging),
             "recordings": (blobs.recordings, blobs.recording_staging)}
    try:
        wanted = [(name, want, *name.split("/", 1)) for name, want in manifest["files"].items()
                  if name.split("/", 1)[0] in homes]
        for name, _, folder, key in wanted:
            if await homes[folder][0].size(key) is not None:
                raise BackupError(f"the blob store already holds {name}: restore into an "
                                  "empty one")
        for name, want, folder, key in wanted:
            store_of, staging = homes[folder]
            staged = staging / f"restore-{os.getpid()}-{key.replace('/', '_')}"
            if await asyncio.to_thread(_copy, src / name, staged) != want:
                await asyncio.to_thread(staged.unlink)
                raise BackupError(f"{name} changed while it was restored")
            await store_of.put(key, staged)
    finally:
        await blobs.close()


def _put_sqlite(db: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".restoring")
    _copy(db, partial)
    partial.replace(target)
    _fsync_dir(target.parent)
