"""A private PostgreSQL cluster for the tests that need one of their own: initdb into a
temporary folder, a free loopback port, optionally WAL archiving into a folder; base backups
and point-in-time recovery from them (Debian's server binaries, /usr/lib/postgresql/*/bin;
scripts/system-deps.sh installs them).

PostgreSQL refuses to run as root, so as root every binary runs as the `postgres` user, in a
folder it owns (pytest's tmp_path is private to root), as tests/support/pgbouncer.py does."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from tests.support.processes import free_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]))
    if not found:
        raise AssertionError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


BIN = _bindir()


def _as_owner() -> dict:
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def run(*args: str, timeout: float = 60) -> str:
    """A PostgreSQL program, as the cluster's owner; its output, or an error carrying it."""
    done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, **_as_owner())
    if done.returncode != 0:
        raise AssertionError(f"{args[0]} failed: {done.stdout}{done.stderr}")
    return done.stdout


class Cluster:
    """One postmaster on `data`, listening on 127.0.0.1:`port` and a socket in `workdir`."""

    def __init__(self, workdir: Path, data: Path) -> None:
        self.workdir, self.data, self.port = workdir, data, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.data.name}.log"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the postmaster and wait until it accepts connections (for a recovering
        cluster: until recovery is over and it was promoted)."""
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.workdir}"],
                stdout=out, stderr=subprocess.STDOUT, **_as_owner())
        finally:
            os.close(out)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited {self.proc.returncode}:\n{self.log()}")
            try:
                conn = await asyncpg.connect(self.url(), timeout=2)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.1)
                continue
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return
            finally:
                await conn.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"postgres not ready within {timeout_s} s:\n{self.log()}")

    async def sql(self, query: str, *args: object, database: str = "postgres") -> object:
        conn = await asyncpg.connect(self.url(database), timeout=10)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    def crash(self) -> None:
        """The host dies: SIGKILL to the postmaster (its backends notice and exit), no
        shutdown checkpoint, nothing more archived."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def archive_current_wal(self, timeout_s: float = 30.0) -> str:
        """Close the current WAL segment and wait until the archiver has copied it: what was
        committed so far is then in the archive. Returns the segment's name."""
        conn = await asyncpg.connect(self.url(), timeout=10)
        try:
            segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                last = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
                if last is not None and last >= segment:
                    return segment
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        raise AssertionError(f"WAL segment {segment} not archived:\n{self.log()}")

    def base_backup(self, dest: Path) -> None:
        """pg_basebackup in plain format, with the WAL it needs to be consistent, after a fast
        checkpoint (the online backup an operator takes nightly)."""
        run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-D", str(dest), "-X", "stream", "-c", "fast", "--no-sync")


def _workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="kinwire-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    return workdir


@asynccontextmanager
async def private_postgres(*, archive: bool = False) -> AsyncIterator[Cluster]:
    """A fresh cluster (trust authentication, loopback only). With `archive`, every completed
    WAL segment is copied to `cluster.workdir / "archive"`, which outlives the cluster's data
    folder (the archive is elsewhere than the database in production too)."""
    workdir = _workdir()
    cluster = Cluster(workdir, workdir / "primary")
    try:
        run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions")
        settings = ["shared_buffers = 32MB", "max_connections = 60", "fsync = on",
                    "synchronous_commit = on", "wal_level = replica"]
        if archive:
            folder = workdir / "archive"
            _owned_dir(folder)
            settings += ["archive_mode = on",
                         f"archive_command = 'test ! -f {folder}/%f && cp %p {folder}/%f'"]
        _append(cluster.data / "postgresql.conf", "\n".join(settings) + "\n")
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _append(path: Path, text: str) -> None:
    """Appended to a file the cluster's owner already owns (its ownership stays)."""
    with open(path, "a") as f:
        f.write(text)


def _owned_dir(path: Path) -> None:
    path.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)


@asynccontextmanager
async def recovered(base: Path, archive: Path, *, target_name: str) -> AsyncIterator[Cluster]:
    """A new cluster restored from the base backup at `base` into a fresh data folder, its WAL
    replayed from `archive` up to the restore point `target_name` (not past it), then promoted
    to a primary of its own (a new timeline; it archives nothing)."""
    workdir = _workdir()
    cluster = Cluster(workdir, workdir / "restored")
    try:
        # The backup stays as it was (it may be needed again): restore a copy of it.
        subprocess.run(["cp", "-a", str(base), str(cluster.data)], check=True, **_as_owner())
        _append(cluster.data / "postgresql.auto.conf",
                f"restore_command = 'cp {archive}/%f %p'\n"
                f"recovery_target_name = '{target_name}'\n"
                "recovery_target_action = 'promote'\n"
                "archive_mode = off\n")
        (cluster.data / "recovery.signal").touch()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(cluster.data / "recovery.signal", owner.pw_uid, owner.pw_gid)
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
