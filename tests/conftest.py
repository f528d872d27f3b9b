"""Fixtures shared by the suite. Every store-backed test runs twice: on SQLite (a fresh copy of
a migrated file) and on PostgreSQL (a database made for this run, emptied before each test)."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing import ledger
from server.app import create_app
from server.schema import metadata
from server.settings import Settings
from store import Store
from store.migrate import migrate
from tests.support.helpers import Api
from tests.support.seaweed import Seaweed, private_seaweed

# The order in which `make test`'s processes (pytest-xdist, a module each at a time, in this
# order: the Makefile turns off xdist's own reordering by test count, which started the
# 5-minute test_wall_clock.py last) take the modules:
# - the two longest first, so that no process is left with a long module at the end;
# - then the heavy modules (two Chromiums with fake cameras, or media through aiortc, or many
#   processes) spread evenly among the light ones: started together, as in name order, they
#   starved the timing tests beside them (3 failed in such a run, 2026-12-06);
# - the unit modules last: seconds in all, they fill the gaps at the end.
LONG_FIRST = ("test_browser_links.py",  # ~150 s in a full run
              "test_wall_clock.py")  # ~95 s (libfaketime under load)
HEAVY = ("test_bench_smoke.py", "test_backup.py", "test_visit_e2e.py",  # 65-115 s, longest first
         "test_meter_remote_crash.py", "test_janus_visits.py", "test_presence_crash.py",
         "test_forwarding.py", "test_visit_trust.py", "test_relay.py", "test_faults.py",
         "test_object_storage.py", "test_ledger_model.py")  # 25-35 s
# Within the browser modules and within the light ones, the longest first (seconds in full
# runs, 2026-12-07): a long module handed out near the end kept its process busy after the
# others had finished (test_relay_failover, ~50 s, was the last heavy module, and
# test_visit_calls, ~50 s, the last light one). Unlisted: SECONDS_ELSE.
SECONDS = {"test_browser_more.py": 92, "test_browser_booking.py": 68,
           "test_browser_link_quality.py": 52, "test_relay_failover.py": 51,
           "test_browser_visit.py": 49, "test_browser_endings.py": 40,
           "test_accessibility.py": 38, "test_browser.py": 37, "test_browser_stall.py": 32,
           "test_browser_spanish.py": 26, "test_browser_janus.py": 25,
           "test_browser_phone.py": 24, "test_browser_reset.py": 10,
           "test_browser_statement.py": 10,
           "test_visit_calls.py": 53, "test_booking.py": 38, "test_orphans.py": 31,
           "test_blobs.py": 29, "test_cli.py": 28, "test_cli_operator.py": 27,
           "test_blobs_migrate.py": 24, "test_login_limits.py": 23,
           "test_block_matrix.py": 22, "test_cluster_limits.py": 22, "test_auth.py": 21,
           "test_mail.py": 21, "test_cluster.py": 20, "test_doctor.py": 19}
SECONDS_ELSE = {"browser": 20, "integration": 5}


def _longest_first(path: Path) -> float:
    return -SECONDS.get(path.name, SECONDS_ELSE.get(path.parent.name, 5))


def module_order(paths: list[Path]) -> list[Path]:
    """The modules in the order above: the longest, then the heavy ones (these and the
    browser's) spread among the light ones, then the unit tests."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    long = sorted((p for p in paths if p.name in rank), key=lambda p: rank[p.name])
    rest = sorted(p for p in paths if p.name not in rank)
    unit = [p for p in rest if p.parent.name == "unit"]
    browser = sorted((p for p in rest if p.parent.name == "browser"), key=_longest_first)
    weighty = sorted((p for p in rest if p.name in HEAVY), key=lambda p: HEAVY.index(p.name))
    # Alternately one of each, the long ones early; then what is left of the longer list.
    heavy = [p for pair in itertools.zip_longest(weighty, browser) for p in pair if p]
    light = sorted((p for p in rest if p not in heavy and p not in unit), key=_longest_first)
    position = {p: float(i) for i, p in enumerate(light)}
    position |= {p: (j + 0.5) * len(light) / len(heavy) for j, p in enumerate(heavy)}
    return long + sorted(heavy + light, key=position.__getitem__) + unit


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {path: i for i, path in enumerate(module_order(list({i.path for i in items})))}
    items.sort(key=lambda item: order[item.path])  # stable: a module's tests keep their order


PG_ADMIN_URL = os.environ.get("KINWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def run_apart(coro) -> None:
    """Run a coroutine to completion on its own loop in its own thread: session fixtures may
    be set up from inside a test's running loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _migrated(url: str) -> None:
    store = Store(url)
    try:
        await migrate(store)
    finally:
        await store.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "kinwire.db"
    run_apart(_migrated(f"sqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"kinwire_test_{os.getpid()}_{secrets.token_hex(3)}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_apart(admin(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    run_apart(_migrated(url))
    run_apart(_record_layout(url))
    yield url
    run_apart(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


TABLES = ", ".join(t.name for t in metadata.sorted_tables)

# The weeks of `events` (server/event_partitions.py) as the migration made them, per database.
# An app in a test runs the elected housekeeping on the injected clock: a clock months ahead
# drops `events_before` and today's weeks and makes its own. TRUNCATE keeps partitions, so a
# later test on the real clock found this week missing, its events in events_default, and
# the week impossible to make (an ERROR logged: test_ws_fuzz failed so in CI, 2026-12-07).
_LAYOUTS: dict[str, dict[str, str]] = {}
_LAYOUT_SQL = ("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
               "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass")


async def _layout(conn: asyncpg.Connection) -> dict[str, str]:
    await conn.execute("SET TimeZone = 'UTC'")  # bounds print in the session's zone
    return dict(await conn.fetch(_LAYOUT_SQL))


async def _record_layout(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        _LAYOUTS[url] = await _layout(conn)
    finally:
        await conn.close()


async def restore_layout(conn: asyncpg.Connection, url: str) -> None:
    """Give an emptied database back the partitions of `events` it was migrated with (nothing
    to do, nearly always: one catalog read)."""
    want, have = _LAYOUTS.get(url), await _layout(conn)
    if want is None or have == want:
        return
    async with conn.transaction():
        for name in sorted(set(have) - set(want)):
            await conn.execute(f'DROP TABLE "{name}"')
        for name, bound in want.items():
            if have.get(name) != bound:
                if name in have:
                    await conn.execute(f'DROP TABLE "{name}"')
                await conn.execute(f'CREATE TABLE "{name}" PARTITION OF events {bound}')
                await conn.execute(f'ALTER TABLE "{name}" ADD PRIMARY KEY (account_id, seq)')
                if not name.startswith("events_w"):  # pruned by DELETE, by `at`
                    await conn.execute(f'CREATE INDEX ON "{name}" (at)')


async def reset_postgres(url: str) -> None:
    """Empty the worker's database. A transaction left open by an interrupted test (pytest-timeout
    raises in the middle of a run, and the task holding the connection never finishes) would
    make TRUNCATE wait for ever, and the one timeout has already fired: the whole run hung so
    once, in the ledger state machine under load. So the wait is bounded, and what blocks it
    then (an open transaction nobody is driving any more) is ended, loudly."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("SET lock_timeout = '10s'")
        try:
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        except asyncpg.exceptions.LockNotAvailableError:
            ended = await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state LIKE 'idle in transaction%'")
            # printed, not warned: the suite turns warnings into errors
            print(f"reset_postgres: ended {len(ended)} abandoned transaction(s)", file=sys.stderr)
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        await restore_layout(conn, url)
    finally:
        await conn.close()


def fresh_sqlite(template: Path, directory: Path) -> str:
    target = directory / f"kinwire-{secrets.token_hex(4)}.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
    url = request.getfixturevalue("pg_url")
    await reset_postgres(url)
    return url


@pytest.fixture
async def pg_db(request: pytest.FixtureRequest) -> str:
    """The run's PostgreSQL database, emptied: for tests of several server processes."""
    url = request.getfixturevalue("pg_url")
    await reset_postgres(url)
    return url


def test_settings(db_url: str, tmp_path: Path, **overrides) -> Settings:
    # argon2id stays argon2id in tests, at a cost that keeps hundreds of sign-ups fast.
    base = dict(database_url=db_url, data_dir=str(tmp_path), argon2_time_cost=1,
                argon2_memory_kib=64, db_pool_size=20)
    base.update(overrides)
    return Settings(**base).validate()


test_settings.__test__ = False  # a helper, not a test, wherever it is imported


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A private SeaweedFS S3 server (tests/support/seaweed.py), one per test module that asks."""
    with private_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return test_settings(db_url, tmp_path)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = Store(db_url, pool_size=20)
    async with store.write() as conn:
        await ledger.ensure_system_accounts(conn)
    yield store
    await store.close()


@asynccontextmanager
async def app_client(db_url: str, tmp_path: Path, clock=None,
                     **overrides) -> AsyncIterator[TestClient]:
    """A client of an app with some settings changed (limits shortened for a test)."""
    extra = {"clock": clock} if clock else {}
    app = create_app(test_settings(db_url, tmp_path, **overrides), run_migrations=False, **extra)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(settings, run_migrations=False)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)
