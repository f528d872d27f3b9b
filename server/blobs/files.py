"""The blob store on a local folder (the contract is in server/blobs/__init__.py).

`put` links the file into place (a hard link fails if the name exists, so no blob is ever
replaced, even by two processes at once) after fsyncing it, fsyncs the folder, then unlinks the
source. The source must be on the same filesystem as the root (the relay writes recordings
under the root's `.partial/`); otherwise it is copied first.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from server.blobs import CHUNK_BYTES, BlobExists, BlobMissing, Listed, check_key


class FileBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, path: Path) -> int:
        return await asyncio.to_thread(self._put, self._path(key), path)

    @staticmethod
    def _put(target: Path, source: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(source, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(source, target)
        except FileExistsError:
            raise BlobExists(str(target.name)) from None
        except OSError as exc:  # another filesystem: copy beside the target, then link that
            if exc.errno != errno.EXDEV:
                raise
            staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, staged)
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(staged, target)
            except FileExistsError:
                raise BlobExists(str(target.name)) from None
            finally:
                staged.unlink()
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        source.unlink()
        return target.stat().st_size

    async def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return None

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if not 0 <= start <= end:
            raise ValueError("read needs 0 <= start <= end")
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        try:
            await asyncio.to_thread(f.seek, start)
            position = start
            while position < end:
                chunk = await asyncio.to_thread(f.read, min(CHUNK_BYTES, end - position))
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def listing(self) -> AsyncIterator[Listed]:
        for listed in await asyncio.to_thread(self._listing):
            yield listed

    def _listing(self) -> list[Listed]:
        """Every file whose relative name is a key (names beginning with `.`, the
        `.partial/` folder and staged copies, are never keys)."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(folder) / name
                try:
                    key = check_key(path.relative_to(self.root).as_posix())
                    info = path.stat()
                except (ValueError, FileNotFoundError):
                    continue
                found.append(Listed(key, info.st_size,
                                    datetime.fromtimestamp(info.st_mtime, UTC)))
        return found
