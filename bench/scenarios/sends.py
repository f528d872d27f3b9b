"""Scenario 2, durable sends: `message.send` over /ws at rising offered load, SQLite and PG.

Each send is the real thing: authenticated socket, idempotency key, debit of the sender's
credits, the message row, three events (balance and message.new to the sender, message.new to
the recipient), the ack, and the push to the recipient's open socket. The load is open-loop:
a fixed rate of sends per second, spread round-robin over many sender sockets, sent on
schedule whether or not earlier sends were acknowledged; a latency counts from the scheduled
send time, so a late generator cannot hide a slow server. The ladder stops at the first step
the server cannot sustain (acked < 90% of offered, or ack p99 over a second).

The baseline is the database's own insert rate with the same driver, measured in the same run
by bench/baselines/raw_insert.py pinned like the server: one commit per row and K rows per
commit (K = the server's send batch). Method and figures: docs/BENCHMARKS.md, "Durable sends".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import common, load_ws

SIZES = {
    # senders (= recipients), [(rate/s, seconds)], credits each
    # tiny (the test suite's smoke run) is SQLite only: the same scenario code, in seconds
    "tiny": {"pairs": 8, "steps": [(40, 1.0)], "kinds": ("sqlite",)},
    # full: each database once; SQLite served twice (inline writes, then aiosqlite's thread)
    "full": {"pairs": 150, "steps": [(100, 2.0), (250, 2.0), (500, 2.0), (750, 2.0), (1000, 2.0),
                                     (1500, 2.0), (2000, 2.0), (3000, 2.0)],
             "kinds": ("sqlite", "postgresql")},
}
PRICE = 50  # the default facility price of a message
BATCH = 64  # the server's send_batch_max in this run (also the baseline's K)
BODY = "bench message " + "x" * 100
# Server configurations per database: SQLite with the default writer (inline on the loop,
# store/inline.py), with KINWIRE_DB_DURABLE_COMMITS=false (synchronous=NORMAL: the "before" of
# issue 22's durable acknowledgements, in the same run) and with
# KINWIRE_DB_SQLITE_INLINE_WRITES=false (aiosqlite's thread); group commit on all.
VARIANTS = {"sqlite": ("sqlite", "sqlite not durable", "sqlite thread"),
            "postgresql": ("postgresql",)}
# Variants reported beside the default for comparison, not held to the targets.
COMPARED = ("sqlite not durable", "sqlite thread")


# --- setup: a facility, families with credits, people, approved connections -------------

@dataclass
class Pair:
    family: common.User
    person: common.User


async def make_pairs(database_url: str, n: int, credits: int) -> list[Pair]:
    """n families (with credits) each connected to their own person in one facility, written
    through the server's own functions (no argon2 sign-ups, no HTTP)."""
    from server import facilities
    from server.schema import connections, utcnow
    from store import Store
    from store.ids import new_id

    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            facility = await facilities.create(conn, name="Bench Facility",
                                               timezone="America/Chicago", settings={},
                                               now=utcnow())
    finally:
        await store.close()
    families = await common.bulk_users(database_url, n, credits=credits)
    people = await common.bulk_users(database_url, n, role="person", facility_id=facility.id)
    store = Store(database_url, pool_size=2)
    try:
        now = utcnow()
        async with store.write() as conn:
            for family, person in zip(families, people, strict=True):
                await conn.execute(connections.insert().values(
                    id=new_id("con"), facility_id=facility.id, family_id=family.account_id,
                    person_id=person.account_id, status="approved", privileged=False,
                    created_at=now, updated_at=now))
    finally:
        await store.close()
    return [Pair(f, p) for f, p in zip(families, people, strict=True)]


# --- the load generator ---------------------------------------------------------------

@dataclass
class Tally:
    scheduled: dict[int, float] = field(default_factory=dict)  # command id -> due time
    acks: dict[int, float] = field(default_factory=dict)  # command id -> ack latency (s)
    errors: dict[str, int] = field(default_factory=dict)
    pushes: dict[int, float] = field(default_factory=dict)  # command id -> push latency (s)
    last_ack_at: float = 0.0


async def open_socket(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    ws = await http.ws_connect(url, max_msg_size=0, heartbeat=None)
    await ws.send_str(json.dumps({"id": 0, "op": "auth", "args": {"token": token}}))
    async with asyncio.timeout(30):
        await load_ws.reply_to(ws, 0, "auth")
    return ws


async def read_sender(ws: Any, tally: Tally) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        if not msg.data.startswith('{"id":'):
            continue  # the sender's own pushes (balance, message.new): not measured here
        now = time.perf_counter()
        frame = json.loads(msg.data)
        due = tally.scheduled.get(frame["id"])
        if due is None:
            continue
        if "ok" in frame:
            tally.acks[frame["id"]] = now - due
            tally.last_ack_at = now
        else:
            code = frame["error"]["code"]
            tally.errors[code] = tally.errors.get(code, 0) + 1


async def read_recipient(ws: Any, tally: Tally) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        frame = json.loads(msg.data)
        if frame.get("type") != "message.new":
            continue
        body = frame["data"].get("body", "")
        with contextlib.suppress(ValueError, IndexError):
            command_id = int(body.split(" ", 1)[0])
            due = tally.scheduled.get(command_id)
            if due is not None:
                tally.pushes[command_id] = time.perf_counter() - due


async def offer(senders: list[tuple[Any, str]], tally: Tally, rate: int, seconds: float,
                first_id: int, run_key: str) -> int:
    """Send `rate` per second for `seconds`, on schedule; returns the next free command id.
    Keys carry `run_key`: a later ladder on the same database must not replay earlier keys."""
    total = int(rate * seconds)
    start = time.perf_counter() + 0.01
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0.002:
            await asyncio.sleep(delay)
        command_id = first_id + i
        ws, to = senders[command_id % len(senders)]
        tally.scheduled[command_id] = due
        await ws.send_str(json.dumps({"id": command_id, "op": "message.send", "args": {
            "to": to, "body": f"{command_id} {BODY}", "key": f"{run_key}-{command_id}"}}))
    return first_id + total


async def drain(tally: Tally, ids: range, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        answered = sum(1 for i in ids if i in tally.acks) + sum(tally.errors.values())
        pushed = sum(1 for i in ids if i in tally.pushes)
        if answered >= len(ids) and pushed >= sum(1 for i in ids if i in tally.acks):
            return
        await asyncio.sleep(0.05)


async def ladder(server: common.Server, pairs: list[Pair], steps: list[tuple[int, float]],
                 kind: str) -> list[dict[str, Any]]:
    tally = Tally()
    run_key = secrets.token_hex(4)
    rows: list[dict[str, Any]] = []
    spans: list[list[int]] = []  # per step: the sends acked within it
    # limit=0: aiohttp's default of 100 connections a session would queue the 101st socket.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        senders = list(await asyncio.gather(
            *(open_socket(http, server.ws_url, p.family.token) for p in pairs)))
        recipients = list(await asyncio.gather(
            *(open_socket(http, server.ws_url, p.person.token) for p in pairs)))
        readers = [asyncio.create_task(read_sender(ws, tally)) for ws in senders]
        readers += [asyncio.create_task(read_recipient(ws, tally)) for ws in recipients]
        targets = [(ws, p.person.account_id) for ws, p in zip(senders, pairs, strict=True)]
        next_id = 1
        try:
            for rate, seconds in steps:
                errors_before = sum(tally.errors.values())
                cpu_before = common.cpu_seconds(server.proc.pid)
                load_before = time.process_time()
                started = time.perf_counter()
                first = next_id
                next_id = await offer(targets, tally, rate, seconds, first, run_key)
                ids = range(first, next_id)
                await drain(tally, ids, timeout_s=max(10.0, seconds * 4))
                acked = [tally.acks[i] for i in ids if i in tally.acks]
                pushed = [tally.pushes[i] for i in ids if i in tally.pushes]
                took = max(tally.last_ack_at - started, seconds)
                row = {"case": f"{kind} {rate}/s", "system": "kinwire", "offered_per_s": rate,
                       "sends": len(ids), "acked": len(acked),
                       "errors": sum(tally.errors.values()) - errors_before,
                       "sends_per_s": round(len(acked) / took, 1),
                       **(common.summary_ms(acked) if acked else
                          {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}),
                       "pushed": len(pushed),
                       "push_p99_ms": common.summary_ms(pushed)["p99_ms"] if pushed else 0.0,
                       "server_cpu_s": round(common.cpu_seconds(server.proc.pid)
                                             - cpu_before, 2),
                       # this process alone on its core: near 100 means the generator, not
                       # the server, set the rate
                       "loadgen_cpu_pct": round(100 * (time.process_time() - load_before)
                                                / (time.perf_counter() - started), 1)}
                # Server CPU per acked send: the capacity of one quiet core is ~1000 / this.
                row["server_cpu_ms_per_send"] = round(
                    1000 * row["server_cpu_s"] / max(1, len(acked)), 2)
                if tally.errors:
                    row["error_codes"] = ",".join(f"{k}:{v}" for k, v in tally.errors.items())
                rows.append(row)
                spans.append([i for i in ids if i in tally.acks])
                if len(acked) < 0.9 * len(ids) or row["sends_per_s"] < 0.9 * rate \
                        or row["p99_ms"] > 1000:
                    break  # saturated: higher steps would only queue
            # A saturated step ends with pushes still queued behind the backlog: wait for them,
            # then count per step every push that arrived (`pushed` == `acked` when none is lost).
            await drain(tally, range(1, next_id), timeout_s=15.0)
            for row, acked_ids in zip(rows, spans, strict=True):
                row["pushed"] = sum(1 for i in acked_ids if i in tally.pushes)
        finally:
            for ws in senders + recipients:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return rows


# --- the baseline -----------------------------------------------------------------------

async def raw_insert(database_url: str, batch: int, seconds: float) -> float:
    proc = await asyncio.create_subprocess_exec(
        *(["taskset", "-c", str(common.SERVER_CPU)] if common.cpus() > 1 else []),
        sys.executable, "-m", "bench.baselines.raw_insert", "--url", database_url,
        "--seconds", str(seconds), "--batch", str(batch), cwd=common.ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"raw_insert failed: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])["rows_per_s"]


# --- the scenario -----------------------------------------------------------------------

async def one_backend(kind: str, size: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    plan = SIZES[size]
    sends_each = sum(int(rate * s) for rate, s in plan["steps"]) // plan["pairs"] + 10
    with common.workdir(f"sends-{kind}") as work:
        async with common.database(kind, work) as url:
            credits = -(-PRICE * sends_each * 3 // 500) * 500  # bought in blocks of 500
            pairs = await make_pairs(url, plan["pairs"], credits=credits)
            rows = []
            for variant in VARIANTS[kind][:1 if size == "tiny" else None]:
                async with common.kinwire(url, work / "data", ws_commands_per_s=100_000,
                                          ws_send_queue_max=100_000,
                                          db_group_commit_max=BATCH,
                                          db_sqlite_inline_writes=variant != "sqlite thread",
                                          db_durable_commits=variant != "sqlite not durable"
                                          ) as server:
                    rows += await ladder(server, pairs, plan["steps"], variant)
            seconds = 0.3 if size == "tiny" else 2.0
            raw = {"per_row": await raw_insert(url, 1, seconds),
                   "batched": await raw_insert(url, BATCH, seconds)}
            await check_books(url, rows)
    return rows, raw


async def check_books(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Every acked send is one stored message and the ledger still balances."""
    from sqlalchemy import func, select

    from billing import ledger
    from server.schema import messages
    from store import Store

    store = Store(database_url, pool_size=1)
    try:
        async with store.read() as conn:
            stored = (await conn.execute(select(func.count()).select_from(messages))).scalar()
            problems = await ledger.check_invariants(conn)
    finally:
        await store.close()
    acked = sum(r["acked"] for r in rows)
    if stored < acked or problems:
        raise RuntimeError(f"books: {stored} messages for {acked} acks; {problems[:3]}")


def variant_targets(variant: str, rows: list[dict[str, Any]],
                    raw: dict[str, float]) -> list[dict[str, Any]]:
    # The rate sustained is the highest offered rate the server kept up with: every send of the
    # step acked (none refused), acks keeping pace, ack p99 <= 50 ms. (`sends_per_s`, acks over
    # the time to the last ack, reads ~1% under the offered rate even then: a 2 s step's last
    # ack comes its latency after the last send.)
    best = max((r["offered_per_s"] for r in rows
                if r["p99_ms"] <= 50 and r["acked"] == r["sends"] and not r["errors"]
                and r["sends_per_s"] >= 0.95 * r["offered_per_s"]), default=0.0)
    peak = max(r["sends_per_s"] for r in rows)
    found = []
    # The COMPARED variants are not how Kinwire runs (it writes inline, durably): their figures
    # show what inline writes and durability cost or buy, beside the targets, not held to them.
    held = variant not in COMPARED

    def target(what: str, value: float, limit: str, met: bool) -> dict[str, Any]:
        return common.target(what, value, limit if held else "reported (not the default)",
                             met if held else True)

    if variant.startswith("sqlite"):
        found.append(target(f"{variant}: sends/s sustained with ack p99 <= 50 ms",
                            best, ">= 2000", best >= 2000))
    # Against the raw rate under the commit policy the server uses: SQLite sends are
    # group-committed (K rows a commit), PostgreSQL sends commit one by one.
    raw_rate = raw["batched"] if variant.startswith("sqlite") else raw["per_row"]
    ratio = raw_rate / peak if peak else 1e9
    found.append(target(f"{variant}: raw insert rate / peak sends/s", ratio, "<= 2",
                        ratio <= 2))
    found.append(common.target(f"{variant}: every acked send pushed to its recipient",
                               float(sum(r["pushed"] for r in rows)), "== acked",
                               all(r["pushed"] == r["acked"] for r in rows)))
    return found


async def run(size: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    notes = [
        "message.send over /ws, JSON codec, one socket per sender and per recipient; "
        f"{SIZES[size]['pairs']} families each connected to their own person; open-loop "
        "ladder of offered rates, latency from the scheduled send time to the ack.",
        "sends_per_s = acked sends / time to the step's last ack; the ladder stops at the "
        "first step acked < 90% of offered or with ack p99 > 1 s.",
        "pushed = recipient sockets that received the message.new push; push_p99_ms from the "
        "scheduled send time.",
        f"raw insert baseline: bench/baselines/raw_insert.py, same driver, pinned to the "
        f"server core, message-sized rows, 1 row per commit and {BATCH} rows per commit "
        "(PostgreSQL: 10 concurrent writers, as the server's pool).",
        "server variants: 'sqlite' = defaults (group commit of 64, inline writer), "
        "'sqlite not durable' = KINWIRE_DB_DURABLE_COMMITS=false (synchronous=NORMAL: "
        "acknowledgements before the disk has them, issue 22's 'before'; full size only), "
        "'sqlite thread' = KINWIRE_DB_SQLITE_INLINE_WRITES=false (full size only), "
        "'postgresql' = a transaction per send on the pool. server_cpu_ms_per_send = the "
        "server's CPU over the step / acked sends.",
    ]
    for kind in SIZES[size]["kinds"]:
        backend_rows, raw = await one_backend(kind, size)
        rows += backend_rows
        rows.append({"case": f"{kind} raw insert", "system": "baseline",
                     "per_row_commit_per_s": raw["per_row"],
                     f"batch{BATCH}_commit_per_s": raw["batched"]})
        for variant in VARIANTS[kind]:
            mine = [r for r in backend_rows if r["case"].rsplit(" ", 1)[0] == variant]
            if not mine:
                continue
            targets += variant_targets(variant, mine, raw)
    return {"scenario": "sends", "size": size, "rows": rows, "targets": targets,
            "notes": notes}
