"""Janus hosts' recording folders over HTTP(S), for a fleet whose hosts share no folder with
Kinwire (issue 16; docs/deploy.md, "Janus fleet", and deploy/nginx/janus-recordings.conf).

Each Janus host serves its `rec_dir` through nginx: GET of the folder lists it (nginx's
`autoindex_format json`: name, size, mtime), GET of a file downloads it, DELETE of a file
removes it (nginx's `dav_methods DELETE`), all behind HTTP basic auth (user `kinwire`,
KINWIRE_JANUS_RECORDINGS_PASSWORD). Nothing of Kinwire runs on the Janus hosts.

server/janus_recordings.py pulls an ended visit's files from every host into its own
KINWIRE_JANUS_RECORDINGS_DIR before converting them, exactly as if the folder were shared, and
deletes on each host only the files it pulled, once the recording is kept. What a host's
listing says decides, not a guess:
- a `.mjr.tmp` changed within `settle_s` is still being written (its room's recorders closing):
  `pull` waits for it, up to `settle_s`; one older is a dead Janus's, pulled as it is, with its
  time, so that the local folder reads exactly as the host's does;
- a host that cannot be listed, refuses the password or sends a file shorter than listed fails
  the pull (`Unreachable`): no recording is made from part of a visit; the files stay on their
  hosts and housekeeping's sweep tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp

from signalling import janus_recording

log = logging.getLogger("kinwire.recording")
USER = "kinwire"
LIST_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a download's socket silent this long is a dead host
LISTING_BYTES_MAX = 8 * 1024 * 1024  # ~60k files' names: a folder nobody cleans is an error
POLL_S = 0.2
CHUNK = 256 * 1024


class Unreachable(janus_recording.ConvertError):
    """A Janus host's folder could not be listed or a file not read whole: the visit's
    recording waits (its files stay where they are)."""


@dataclass(frozen=True)
class Remote:
    base: str  # the folder's URL, ending in /
    name: str
    bytes: int
    mtime: float  # a time.time(), to the second (nginx's listing)
    room: str

    @property
    def url(self) -> str:
        return self.base + quote(self.name)

    @property
    def writing(self) -> bool:
        return self.name.endswith(".tmp")


class RemoteFolders:
    def __init__(self, urls: tuple[str, ...], password: str, *, ca_file: str = "",
                 wall: Callable[[], float] = time.time) -> None:
        self.urls = tuple(u if u.endswith("/") else u + "/" for u in urls)
        self.auth = {"Authorization": aiohttp.encode_basic_auth(USER, password)}
        # the hosts' certificates: signed by this CA (a private network's), else the system's
        self.tls = ssl.create_default_context(cafile=ca_file or None)
        self.wall = wall  # the hosts' mtimes are their clocks: compared with this machine's
        self._http: aiohttp.ClientSession | None = None  # made in the loop, on first use

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def rooms(self, *, strict: bool = False) -> set[str]:
        """The rooms that have files on the hosts. A host that does not list is logged and
        skipped (the sweep lists it again next time), or with `strict` raises Unreachable."""
        found: set[str] = set()
        for url in self.urls:
            try:
                found |= {f.room for f in await self._listing(url)}
            except Unreachable as exc:
                if strict:
                    raise
                log.warning("Janus recordings at %s not listed: %s", url, exc)
        return found

    async def pull(self, room: str, into: Path, settle_s: float) -> list[Remote]:
        """Wait (up to `settle_s`) until no host is still writing the room's files, then copy
        every file of it into `into` (module docstring); returns what was pulled."""
        deadline = time.monotonic() + settle_s
        while True:
            listed = await self.files(room)
            fresh = [f for f in listed if f.writing and f.mtime >= self.wall() - settle_s]
            if not fresh or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_S)
        cutoff = self.wall() - settle_s
        taken = [f for f in listed if not f.writing or f.mtime < cutoff]
        for remote in taken:
            await self._download(remote, into)
        return taken

    async def files(self, room: str) -> list[Remote]:
        """The room's files on every host; Unreachable when a host does not list."""
        found = []
        for url in self.urls:
            found += [f for f in await self._listing(url) if f.room == room]
        return found

    async def delete(self, pulled: list[Remote]) -> None:
        """Remove files on their hosts (gone already is fine); a failure is logged: the file
        stays, and the next sweep finds its visit kept and deletes it then."""
        for remote in pulled:
            try:
                async with self.http.delete(remote.url, headers=self.auth, timeout=_timeout(
                        LIST_TIMEOUT_S)) as r:
                    if r.status not in (200, 204, 404):
                        log.warning("Janus file %s not deleted on its host: HTTP %d",
                                    remote.name, r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("Janus file %s not deleted on its host: %s", remote.name, exc)

    async def _listing(self, base: str) -> list[Remote]:
        try:
            async with self.http.get(base, headers=self.auth,
                                     timeout=_timeout(LIST_TIMEOUT_S)) as r:
                if r.status != 200:
                    raise Unreachable(f"{base}: HTTP {r.status}")
                if (r.content_length or 0) > LISTING_BYTES_MAX:
                    raise Unreachable(f"{base}: a listing of {r.content_length} bytes")
                entries = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unreachable(f"{base}: {exc or type(exc).__name__}") from None
        found = []
        for entry in entries if isinstance(entries, list) else ():
            match = janus_recording.NAME.match(str(entry.get("name", "")))
            if match is None or entry.get("type") != "file":
                continue
            try:
                mtime = parsedate_to_datetime(entry["mtime"]).timestamp()
                size = int(entry["size"])
            except (KeyError, TypeError, ValueError):
                raise Unreachable(f"{base}: an entry without size or time: {entry}") from None
            found.append(Remote(base, entry["name"], size, mtime, match["room"]))
        return found

    async def _download(self, remote: Remote, into: Path) -> None:
        """The file into `into` under its own name and time, whole or not at all."""
        target = into / remote.name
        if await asyncio.to_thread(_same, target, remote):
            return  # pulled before (a finish that failed later): not again
        part = target.with_name(target.name + ".part")
        got = 0
        try:
            async with self.http.get(remote.url, headers=self.auth,
                                     timeout=_timeout(None)) as r:
                if r.status != 200:
                    raise Unreachable(f"{remote.url}: HTTP {r.status}")
                with part.open("wb") as out:
                    async for chunk in r.content.iter_chunked(CHUNK):
                        got += len(chunk)
                        await asyncio.to_thread(out.write, chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            part.unlink(missing_ok=True)
            raise Unreachable(f"{remote.url}: {exc or type(exc).__name__}") from None
        if got < remote.bytes:  # a closed .mjr does not shrink: the transfer was cut
            part.unlink(missing_ok=True)
            raise Unreachable(f"{remote.url}: {got} bytes of {remote.bytes}")
        os.utime(part, (remote.mtime, remote.mtime))
        part.replace(target)


def parts(folder: Path, room: str) -> list[Path]:
    """The room's downloads a stopped process left half-done in `folder` (`<name>.part`): a
    later pull writes them again, but once the visit is kept nothing would."""
    return [path for path in folder.glob("videoroom-*.part")
            if (match := janus_recording.NAME.match(path.name[:-len(".part")])) is not None
            and match["room"] == room]


def _same(path: Path, remote: Remote) -> bool:
    try:
        return path.stat().st_size >= remote.bytes and not remote.writing
    except FileNotFoundError:
        return False


def _timeout(total_s: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s, sock_connect=LIST_TIMEOUT_S,
                                 sock_read=READ_TIMEOUT_S)
