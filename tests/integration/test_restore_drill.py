"""The restore drill of docs/scale.md: point-in-time recovery of Kinwire's PostgreSQL from a base
backup and archived WAL, then Kinwire serving the restored database.

A private cluster archives its WAL to a folder; Kinwire is migrated and served on it; work is
done through the HTTP API before a `pg_basebackup`, between it and a recovery target (a named
restore point), across the target while purchases and messages keep arriving, and after it.
Then the disaster: the primary is SIGKILLed and its data folder lost. The base backup is
restored into a fresh folder, its WAL replayed from the archive up to the restore point, and a
new `kinwire serve` on it must serve exactly the work up to the target.

Adversaries: a disaster after acknowledged purchases, with work after the target already in
the archive: the restore must keep every purchase and message acknowledged before the target
and none started after it, whole (a charge with its message, a purchase with its credits:
the ledger's invariants hold and each balance is the sum of its statement); a restore that
used the base backup alone (the WAL replay is checked in the log and by the work done after
the base backup); a replay that ran past the target.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from billing import ledger
from store import Store
from tests.integration.test_backup import FAMILY, _env, kinwire, serving
from tests.support.helpers import VISA
from tests.support.pg_cluster import private_postgres, recovered

pytestmark = pytest.mark.timeout(180)
TARGET = "kinwire-drill"


class Client:
    """One signed-in account over HTTP; every call checked."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http, self.headers = http, {"Authorization": f"Bearer {token}"}

    @classmethod
    async def login(cls, http: aiohttp.ClientSession, creds: dict[str, str]) -> Client:
        async with http.post("/api/v1/auth/login", json=creds) as r:
            assert r.status == 200, await r.text()
            return cls(http, (await r.json())["token"])

    async def get(self, path: str) -> dict:
        async with self.http.get("/api/v1" + path, headers=self.headers) as r:
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()

    async def buy(self, key: str) -> str:
        async with self.http.post("/api/v1/purchases", json={"credits": 500, "card": VISA},
                                  headers={**self.headers, "Idempotency-Key": key}) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["purchase"]["id"]

    async def send(self, to: str, body: str) -> str:
        async with self.http.post("/api/v1/messages", json={"to": to, "body": body},
                                  headers={**self.headers, "Idempotency-Key": body}) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["message"]["id"]

    async def statement(self) -> tuple[list[dict], int]:
        """Every line of the caller's statement, and the balance it states."""
        lines: list[dict] = []
        before = ""
        while True:
            page = await self.get(f"/statement?limit=100{before}")
            lines += page["lines"]
            if page["next_before"] is None:
                return lines, page["balance"]
            before = f"&before={page['next_before']}"


async def signup(http: aiohttp.ClientSession, name: str) -> dict[str, str]:
    creds = {"email": f"{name}-{secrets.token_hex(3)}@example.test", "password": "drill pass 1"}
    async with http.post("/api/v1/auth/signup", json={**creds, "name": name}) as r:
        assert r.status == 201, await r.text()
    return creds


async def test_point_in_time_recovery_serves_exactly_the_work_up_to_the_target(
        tmp_path: Path) -> None:
    began = time.monotonic()
    async with private_postgres(archive=True) as primary:
        await primary.sql('CREATE DATABASE "kinwire"')
        source = _env(tmp_path / "source", {"DATABASE_URL": primary.url("kinwire")})
        migrated = kinwire("migrate", env=source)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        base = primary.workdir / "base"
        # (started, acknowledged, id) of every purchase and message of the load.
        purchases: list[tuple[float, float, str]] = []
        sent: list[tuple[float, float, str]] = []
        async with serving(source, "--demo") as url, aiohttp.ClientSession(base_url=url) as http:
            family = await Client.login(http, FAMILY)
            person = (await family.get("/connections"))["connections"][0]["person_id"]

            # 1. Before the base backup: in the backup itself.
            early = await signup(http, "early")
            before_base = [await family.buy(f"base-{n}") for n in range(2)]
            before_base_msg = await family.send(person, "drill: before the base backup")
            # Online: purchases go on while the base backup copies (they are before the
            # target, so kept, whether from the backup's files or from the WAL after them).
            during_base = [family.buy(f"during-base-{n}") for n in range(5)]
            _, *during = await asyncio.gather(
                asyncio.to_thread(primary.base_backup, base), *during_base)

            # 2. Between the base backup and the target: only in the archived WAL.
            middle = await signup(http, "middle")
            middle_family = await Client.login(http, middle)
            middle_buy = await middle_family.buy("middle-1")
            middle_msg = await family.send(person, "drill: after the base backup")
            middle_seen = await middle_family.statement()

            # 3. Across the target: purchases and messages keep coming while it is set.
            stop = asyncio.Event()

            async def buying() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    started = time.monotonic()
                    pid = await family.buy(f"load-{n}")
                    purchases.append((started, time.monotonic(), pid))

            async def sending() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    started = time.monotonic()
                    mid = await family.send(person, f"drill: load {n}")
                    sent.append((started, time.monotonic(), mid))

            async def until(enough: Callable[[], bool]) -> None:
                # By counts, not seconds: on a loaded machine a purchase may take a second.
                deadline = time.monotonic() + 30
                while not enough():
                    assert time.monotonic() < deadline, (len(purchases), len(sent))
                    await asyncio.sleep(0.05)

            load = [asyncio.create_task(buying()), asyncio.create_task(sending())]
            await until(lambda: len(purchases) >= 5 and len(sent) >= 5)
            target_asked = time.monotonic()
            await primary.sql("SELECT pg_create_restore_point($1)::text", TARGET)
            target_set = time.monotonic()
            await until(lambda: sum(p[0] > target_set for p in purchases) >= 5
                        and sum(m[0] > target_set for m in sent) >= 5)
            stop.set()
            await asyncio.gather(*load)

            # 4. After the target: in the archive too, and must not come back.
            late = await signup(http, "late")
            late_buy = await (await Client.login(http, late)).buy("late-1")
            late_msg = await family.send(person, "drill: after the target")
            me = (await family.get("/me"))["account"]["id"]
            # How far this family's event stream went: what its apps have seen and hold.
            seen_seq = await primary.sql("SELECT last_seq FROM event_heads WHERE account_id = $1",
                                         me, database="kinwire")
            await primary.archive_current_wal()
            # The disaster: the database host is gone, data folder and all; the archive and the
            # base backup were elsewhere.
            primary.crash()
            shutil.rmtree(primary.data)

        kept = {pid for _, acked, pid in purchases if acked < target_asked}
        dropped = {pid for started, _, pid in purchases if started > target_set}
        kept_msgs = {mid for _, acked, mid in sent if acked < target_asked}
        dropped_msgs = {mid for started, _, mid in sent if started > target_set}
        # The load straddled the target, or this test could not fail.
        assert len(kept) >= 5 and len(dropped) >= 5, (len(kept), len(dropped))
        assert len(kept_msgs) >= 5 and len(dropped_msgs) >= 5, (len(kept_msgs), len(dropped_msgs))

        async with recovered(base, primary.workdir / "archive", target_name=TARGET) as restored:
            log = restored.log()
            assert "restored log file" in log, log  # replayed from the archive
            assert f'recovery stopping at restore point "{TARGET}"' in log, log
            restored_seq = await restored.sql(
                "SELECT last_seq FROM event_heads WHERE account_id = $1", me, database="kinwire")
            # New events would reuse numbers the family's apps saw before the disaster (and a
            # sync from there would skip them): the drill's step restarts every numbering past
            # anything seen (docs/scale.md).
            assert restored_seq < seen_seq
            await restored.sql("UPDATE event_heads SET last_seq = last_seq + 1000000",
                               database="kinwire")
            target = _env(tmp_path / "target", {"DATABASE_URL": restored.url("kinwire")})
            async with serving(target) as url, aiohttp.ClientSession(base_url=url) as http:
                family = await Client.login(http, FAMILY)
                lines, balance = await family.statement()
                bought = {line["ref"] for line in lines if line["kind"] == "purchase"}
                charged = {line["ref"] for line in lines if line["kind"] == "message"}
                messages = []
                before = ""
                while True:
                    page = await family.get(f"/messages?folder=sent&limit=100{before}")
                    messages += page["messages"]
                    if page["next_before"] is None:
                        break
                    before = f"&before={page['next_before']}"
                shown = {m["id"] for m in messages}

                assert set(before_base) | set(during) | kept <= bought, \
                    "acknowledged before the target, lost"
                assert not bought & (dropped | {late_buy}), "came after the target, restored"
                assert {before_base_msg, middle_msg} | kept_msgs <= shown
                assert not shown & (dropped_msgs | {late_msg})
                # Each restored message with its charge, each charge with its message, and the
                # balance served is what the lines add up to: nothing half-restored.
                assert charged == shown
                assert balance == sum(line["credits"] for line in lines)
                assert balance == (await family.get("/me"))["balance"]

                for creds in (early, middle):
                    await Client.login(http, creds)
                assert await (await Client.login(http, middle)).statement() == middle_seen
                assert middle_buy in {line["ref"] for line in middle_seen[0]}
                async with http.post("/api/v1/auth/login", json=late) as r:
                    assert r.status == 401, "an account made after the target was restored"

                # An app that saw the lost events syncs from where it was: it is served the
                # first message sent after the restore, not a reset and not nothing.
                fresh = await family.send(person, "drill: after the restore")
                async with http.ws_connect("/ws", protocols=("kinwire.v1.json",)) as ws:
                    await ws.send_json({"id": 1, "op": "auth",
                                        "args": {"token": family.headers["Authorization"][7:]}})
                    await ws.send_json({"id": 2, "op": "sync", "args": {"since": seen_seq}})
                    while (reply := await ws.receive_json(timeout=10)).get("id") != 2:
                        pass
                got = reply["ok"]
                assert not got.get("reset"), got
                assert [e["data"]["id"] for e in got["events"] if e["type"] == "message.new"] \
                    == [fresh], got

            store = Store(restored.url("kinwire"), pool_size=1)
            try:
                async with store.read() as conn:
                    assert await ledger.check_invariants(conn) == []
            finally:
                await store.close()
    elapsed = time.monotonic() - began
    print(f"restore drill: {elapsed:.1f} s; {len(kept)} purchases and {len(kept_msgs)} "
          f"messages of the load kept, {len(dropped)} and {len(dropped_msgs)} dropped")
