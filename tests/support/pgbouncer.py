"""A private PgBouncer in transaction mode on a free loopback port, in front of the tests'
PostgreSQL (Debian's `pgbouncer`; scripts/system-deps.sh installs it)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.processes import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    def __init__(self, upstream: str, port: int, workdir: Path) -> None:
        self.upstream, self.port, self.workdir = make_url(upstream), port, workdir
        self.proc: subprocess.Popen | None = None

    def url(self, database_url: str, *, pool_mode: str | None = "transaction") -> str:
        """`database_url` (a database on the upstream server) reached through this PgBouncer,
        with Kinwire's `pool_mode` parameter (None: without it)."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        if pool_mode is not None:
            url = url.update_query_dict({"pool_mode": pool_mode})
        return url.render_as_string(hide_password=False)

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""


@asynccontextmanager
async def private_pgbouncer(upstream: str, *, server_pool_size: int = 4,
                            ) -> AsyncIterator[PgBouncer]:
    """PgBouncer in transaction mode with `server_pool_size` server connections per database:
    fewer than the clients' pools, so that transactions hop between server connections."""
    # PgBouncer refuses to run as root: it drops to the `postgres` user, which must read its
    # files and write its log (pytest's tmp_path is private to root).
    workdir = Path(tempfile.mkdtemp(prefix="kinwire-pgbouncer-"))
    user = []
    if os.geteuid() == 0:
        user = ["-u", "postgres"]
        postgres = pwd.getpwnam("postgres")
        os.chown(workdir, postgres.pw_uid, postgres.pw_gid)
    up = make_url(upstream)
    bouncer = PgBouncer(upstream, free_port(), workdir)
    (workdir / "userlist.txt").write_text(f'"{up.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
* = host={up.host} port={up.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bouncer.port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {server_pool_size}
max_client_conn = 500
logfile = {workdir / 'pgbouncer.log'}
pidfile = {workdir / 'pgbouncer.pid'}
""")
    for name in ("userlist.txt", "pgbouncer.ini"):
        os.chmod(workdir / name, 0o644)
    bouncer.proc = subprocess.Popen([PGBOUNCER, *user, str(workdir / "pgbouncer.ini")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if bouncer.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited: {bouncer.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", bouncer.port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("pgbouncer did not start")
        yield bouncer
    finally:
        bouncer.proc.terminate()
        try:
            bouncer.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bouncer.proc.kill()
            bouncer.proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
