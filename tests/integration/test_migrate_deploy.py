"""`kinwire migrate` as the deploy step on PostgreSQL (store/migrate.py).

Adversaries: a long transaction of the running version holding a table the migration must
lock (the migration must give up after its lock timeout, not queue there and stall every query
queued behind it); writers that keep writing while an index is built (CONCURRENTLY must not
block them); a new version started on a schema nobody migrated (it must refuse to serve)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import exc as sqlalchemy_exc

from store import Store
from store.migrate import migrate, schema_behind
from tests.conftest import PG_ADMIN_URL
from tests.support.processes import cli_env, free_port, kinwire, wait_ready


@pytest.fixture
async def empty_pg() -> AsyncIterator[str]:
    """A database of its own, empty (the suite's shared one is always at head)."""
    name = f"kinwire_migrate_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def at(url: str, revision: str) -> None:
    store = Store(url)
    try:
        await migrate(store, revision)
    finally:
        await store.close()


async def version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()


async def test_serve_refuses_a_schema_behind_until_migrate_ran(empty_pg: str,
                                                               tmp_path: Path) -> None:
    await at(empty_pg, "0007")
    env = cli_env(tmp_path, DATABASE_URL=empty_pg)
    done = await asyncio.to_thread(kinwire, "serve", "--port", str(free_port()), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "schema is behind" in lines[0] and "run `kinwire migrate`" in lines[0], lines[0]
    assert await version(empty_pg) == "0007", "serve on PostgreSQL never migrates"

    done = await asyncio.to_thread(kinwire, "migrate", env=env)
    assert done.returncode == 0, done.stderr
    store = Store(empty_pg)
    try:
        assert await schema_behind(store) is None
    finally:
        await store.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def test_sqlite_serve_still_migrates_itself(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    env = cli_env(tmp_path, DATABASE_URL=f"sqlite:///{db}")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    store = Store(f"sqlite:///{db}")
    try:
        assert await schema_behind(store) is None
    finally:
        await store.close()


async def test_a_migration_gives_up_on_a_lock_held_too_long(empty_pg: str) -> None:
    await at(empty_pg, "0003")
    reader = await asyncpg.connect(empty_pg)  # the running version, mid-transaction
    tx = reader.transaction()
    await tx.start()
    await reader.execute("SELECT count(*) FROM connections")  # holds ACCESS SHARE
    store = Store(empty_pg)
    try:
        started = time.monotonic()
        # 0004 alters `connections`: it needs ACCESS EXCLUSIVE, which waits for the reader.
        with pytest.raises(sqlalchemy_exc.DBAPIError, match="lock timeout"):
            await migrate(store, "0004", lock_timeout_ms=300)
        assert time.monotonic() - started < 5, "it waited for the lock far past its timeout"
        assert await version(empty_pg) == "0003", "nothing half-applied"
        await tx.commit()
        await migrate(store, "0004", lock_timeout_ms=300)  # the rerun, once the lock is free
        assert await version(empty_pg) == "0004"
    finally:
        await store.close()
        await reader.close()


INSERT_VISIT = """
INSERT INTO visits (id, facility_id, connection_id, family_id, person_id, booked_by, start_at,
    end_at, blocks, minute_price, media, record, status, created_at, updated_at, family_media,
    person_media)
VALUES ($1, 'fac', 'con', 'fam', 'per', 'fam', now(), now() + interval '30 minutes', 1, 50,
    'direct', false, 'scheduled', now(), now(), 'absent', 'absent')
"""


async def test_index_builds_do_not_block_writers(empty_pg: str) -> None:
    await at(empty_pg, "0007")
    setup = await asyncpg.connect(empty_pg)
    await setup.execute("""
        INSERT INTO facilities VALUES ('fac', 'F', 'UTC', '{}', now(), now());
        INSERT INTO accounts (id, role, facility_id, name, created_at, disabled)
            VALUES ('fam', 'family', NULL, 'F', now(), false),
                   ('per', 'person', 'fac', 'P', now(), false);
        INSERT INTO connections (id, facility_id, family_id, person_id, status, privileged,
            created_at, updated_at)
            VALUES ('con', 'fac', 'fam', 'per', 'approved', false, now(), now());""")
    long_writer = await asyncpg.connect(empty_pg)  # a transaction open when the build starts
    tx = long_writer.transaction()
    await tx.start()
    await long_writer.execute(INSERT_VISIT, "vis_long")
    store = Store(empty_pg)
    try:
        # Lock timeout 300 ms: the build waits for the open transaction longer than that,
        # which CONCURRENTLY may (it blocks nobody meanwhile).
        building = asyncio.create_task(migrate(store, "head", lock_timeout_ms=300))
        await asyncio.sleep(1.0)
        assert not building.done(), "the build waits for the transaction open before it"
        started = time.monotonic()
        for i in range(5):  # writers carry on meanwhile
            await asyncio.wait_for(setup.execute(INSERT_VISIT, f"vis_{i}"), 2)
        assert time.monotonic() - started < 2
        await tx.commit()
        await asyncio.wait_for(building, 30)
        valid = dict(await setup.fetch(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c "
            "ON c.oid = i.indexrelid WHERE c.relname LIKE 'ix_visits_%_end'"))
        assert valid == {"ix_visits_in_call_end": True, "ix_visits_scheduled_end": True}
        assert await schema_behind(store) is None
    finally:
        await store.close()
        await long_writer.close()
        await setup.close()


async def test_migrate_through_pgbouncer_says_to_go_direct(empty_pg: str, tmp_path: Path) -> None:
    """Its session lock and lock timeout would land on any server connection: refused with the
    fix when there is work to do; nothing to do (an admin command) passes."""
    from tests.support.pgbouncer import private_pgbouncer

    await at(empty_pg, "0007")
    async with private_pgbouncer(empty_pg) as bouncer:
        env = cli_env(tmp_path, DATABASE_URL=bouncer.url(empty_pg))
        done = await asyncio.to_thread(kinwire, "migrate", env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "pointing at PostgreSQL itself" in lines[0], done.stderr
        assert await version(empty_pg) == "0007"
        await at(empty_pg, "head")
        done = await asyncio.to_thread(kinwire, "migrate", env=env)
        assert done.returncode == 0, done.stderr
