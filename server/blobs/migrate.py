"""`kinwire blobs migrate`: copy the folder stores (photos, recordings) into the configured S3
store and prove every copy by its SHA-256.

For each file under a folder (names beginning with `.` are work in progress, `.partial/`, and
`*.part` an interrupted write of the old photo store: both skipped), in key order:
- the store has no blob under its key: the file is copied to a scratch file (a `put` takes
  its file over; the folder is left as it was), put, then read back whole and hashed;
- the store has one: it is read back and hashed, never replaced (blobs are immutable). The
  same checksum means an earlier run copied it: skipped, which makes the command resumable.
A checksum that differs is a mismatch: reported by key, left for an operator to look at, and
the command exits 1 after going through everything else. Nothing is deleted from either side.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.blobs import BlobExists, BlobStore, check_key


@dataclass
class Tally:
    copied: int = 0
    present: int = 0
    mismatched: int = 0
    copied_bytes: int = 0


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _sha256_blob(store: BlobStore, key: str, size: int) -> str:
    digest = hashlib.sha256()
    async for chunk in store.read(key, 0, size):
        digest.update(chunk)
    return digest.hexdigest()


def keys(root: Path) -> tuple[list[str], list[str]]:
    """The folder's blob keys, and the names of files that cannot be keys (never stored by
    Kinwire: reported, not copied)."""
    if not root.is_dir():
        return [], []
    found, strays = [], []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if not path.is_file() or any(p.startswith(".") for p in relative.parts) \
                or path.name.endswith(".part"):
            continue
        try:
            found.append(check_key(relative.as_posix()))
        except ValueError:
            strays.append(relative.as_posix())
    return sorted(found), sorted(strays)


async def copy_verified(root: Path, store: BlobStore, say: Callable[[str], None],
                        tally: Tally, label: str) -> None:
    names, strays = await asyncio.to_thread(keys, root)
    for stray in strays:
        say(f"[{label}] {stray!r}: skipped, not a blob key (not a file Kinwire stored)")
    scratch = Path(tempfile.mkdtemp(prefix="kinwire-migrate-"))
    try:
        for n, key in enumerate(names, start=1):
            source = root / key
            want = await asyncio.to_thread(_sha256_file, source)
            size = await store.size(key)
            outcome = "already there"
            if size is None:
                copy = scratch / "blob"
                await asyncio.to_thread(shutil.copyfile, source, copy)
                try:
                    size = await store.put(key, copy)
                    outcome = "copied"
                except BlobExists:  # another run put it meanwhile: checked like any other
                    size = await store.size(key) or 0
                finally:
                    copy.unlink(missing_ok=True)
            got = await _sha256_blob(store, key, size)
            if got != want:
                tally.mismatched += 1
                say(f"[{label} {n}/{len(names)}] {key}: MISMATCH: the store's copy has SHA-256 "
                    f"{got}, the file {want} ({outcome})")
                continue
            if outcome == "copied":
                tally.copied += 1
                tally.copied_bytes += size
            else:
                tally.present += 1
            say(f"[{label} {n}/{len(names)}] {key}: {outcome}, SHA-256 verified ({size} bytes)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def migrate(pairs: list[tuple[str, Path, BlobStore]],
                  say: Callable[[str], None]) -> Tally:
    """Copy each (label, folder, store) in turn; returns the counts (module docstring)."""
    tally = Tally()
    for label, root, store in pairs:
        say(f"{label}: {root} -> {store!r}")
        await copy_verified(root, store, say, tally, label)
    say(f"done: {tally.copied} copied ({tally.copied_bytes} bytes), {tally.present} already "
        f"there, {tally.mismatched} mismatched")
    return tally
