"""Atomic attempt limits (issue 17, findings 2 and 5).

Adversaries: requests sent all at once (40 PIN guesses for one person from one kiosk; 12 wrong
passwords for one account), retried whenever the server says another attempt is in flight;
a person at a kiosk guessing another's PIN; an attacker trying to lock a victim (or a whole
facility behind one address) out with failures of their own; a process killed between
reserving an attempt and settling it. The old limiter counted failures, verified, and only
then recorded the failure: all 40 guesses were verified and the right PIN, sent 31st, got in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.attempts import ATTEMPT_LEASE_S, PRUNE_AFTER
from tests.conftest import app_client
from tests.support.clock import Clock
from tests.support.helpers import Api, Reply
from tests.support.nodes import RedisServer

PIN = "2468"


@dataclass
class Rig:
    api: Api
    clock: Clock
    verified: list[str]  # every secret the server really verified (argon2id), in order
    counters: str  # "store" or "redis"


@pytest.fixture(params=["store", "redis"])
async def rig(request: pytest.FixtureRequest, db_url: str,
              tmp_path: Path) -> AsyncIterator[Rig]:
    """An app with a hand-moved clock; its attempt counters in the store, or in a private
    Redis (where Redis is configured, the counters live there)."""
    clock = Clock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    extra = {}
    redis = None
    if request.param == "redis":
        redis = RedisServer(tmp_path)
        await redis.start()
        extra["redis_url"] = redis.url
    try:
        async with app_client(db_url, tmp_path, clock=clock, trusted_proxies=("127.0.0.1",),
                              **extra) as client:
            yield await _rigged(client, clock, request.param)
    finally:
        if redis is not None:
            redis.stop()


async def _rigged(client, clock: Clock, counters: str) -> Rig:
    api = Api(client)
    verified: list[str] = []
    passwords = api.ctx.passwords
    real = passwords.verify

    async def counted(hashed: str | None, secret: str) -> bool:
        verified.append(secret)
        return await real(hashed, secret)

    passwords.verify = counted  # the real verify, counted
    return Rig(api, clock, verified, counters)


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def _kiosk(api: Api, facility: str, number: str, pin: str, device: str) -> Reply:
    return await api.call("POST", "/auth/kiosk", headers={"X-Device-Token": device},
                          json={"facility_id": facility, "inmate_number": number, "pin": pin})


async def _until_answered(send) -> Reply:
    """Like an attacker: send again whenever the server says an attempt is in flight."""
    while True:
        reply = await send()
        if reply.code != "attempt_in_progress":
            return reply
        assert reply.status == 429
        await asyncio.sleep(0.002)


async def _kiosk_world(api: Api) -> tuple[str, str, str, object]:
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    number, device = await api.kiosk_person(staff, facility, PIN)
    return facility, number, device, staff


async def test_forty_pin_guesses_at_once_verify_at_most_the_limit(rig: Rig) -> None:
    api, limit = rig.api, rig.api.ctx.settings.login_failures_max
    facility, number, device, staff = await _kiosk_world(api)
    rig.verified.clear()
    answered, thirty_answered = 0, asyncio.Event()

    async def guess(i: int) -> Reply:
        nonlocal answered
        right = i == 30  # the 31st attempt carries the right PIN, as in the finding
        if right:
            await thirty_answered.wait()
        pin = PIN if right else f"{1000 + i:04d}"
        reply = await _until_answered(lambda: _kiosk(api, facility, number, pin, device))
        answered += 1
        if answered == 30:
            thirty_answered.set()
        return reply

    replies = await asyncio.gather(*(guess(i) for i in range(40)))
    statuses = [r.status for r in replies]
    assert len(rig.verified) <= limit, (len(rig.verified), statuses)
    assert statuses.count(401) == len(rig.verified) and PIN not in rig.verified, statuses
    assert all(r.status == 429 and r.code == "too_many_attempts" for r in replies
               if r.status != 401), statuses
    assert replies[30].status == 429, replies[30]  # the right PIN, refused once over the limit
    # Back-off, not a lock: after it the person signs in; staff were alerted once.
    rig.clock.advance(seconds=api.ctx.settings.login_backoff_base_s + 1)
    assert (await _kiosk(api, facility, number, PIN, device)).status == 200
    audit = (await api.call("GET", "/audit", staff)).body["entries"]
    alerts = [e for e in audit if e["action"] == "login.backoff"]
    assert [(a["target"], a["details"]["scope"]) for a in alerts] == [
        (number, "person_on_kiosk")], alerts


async def test_twelve_wrong_passwords_at_once_verify_at_most_the_limit(rig: Rig) -> None:
    api, limit = rig.api, rig.api.ctx.settings.login_failures_max
    victim = await api.family()
    email = victim.account["email"]
    rig.verified.clear()
    replies = await asyncio.gather(*(
        _until_answered(lambda i=i: api.call("POST", "/auth/login",
                                             json={"email": email, "password": f"guess {i}"}))
        for i in range(12)))
    statuses = sorted(r.status for r in replies)
    assert len(rig.verified) <= limit and statuses.count(401) == len(rig.verified), statuses
    assert statuses.count(429) == 12 - len(rig.verified), statuses
    r = await api.call("POST", "/auth/login", json={"email": email, "password": "correct horse"})
    assert r.status == 429 and r.code == "too_many_attempts", r


async def test_failures_from_one_address_do_not_lock_the_victim_out(rig: Rig) -> None:
    api, limit = rig.api, rig.api.ctx.settings.login_failures_max
    victim = await api.family()
    email = victim.account["email"]
    for i in range(limit + 2):
        await api.call("POST", "/auth/login", headers=_from("198.51.100.66"),
                       json={"email": email, "password": f"guess {i}"})
    r = await api.call("POST", "/auth/login", headers=_from("198.51.100.66"),
                       json={"email": email, "password": "correct horse"})
    assert r.status == 429, r  # the attacker's address is stopped...
    r = await api.call("POST", "/auth/login", headers=_from("203.0.113.5"),
                       json={"email": email, "password": "correct horse"})
    assert r.status == 200, r  # ...the victim, elsewhere, is not


async def test_pin_failures_on_one_kiosk_do_not_lock_the_facility(rig: Rig) -> None:
    """The finding: 50 wrong PINs from one address locked every kiosk behind it."""
    api, limit = rig.api, rig.api.ctx.settings.login_failures_max
    facility, number, device, staff = await _kiosk_world(api)
    other_kiosk = (await api.call("POST", f"/facilities/{facility}/devices", staff,
                                  json={"label": "kiosk 2"})).body["device_token"]
    for i in range(limit * 10 + 2):  # every kiosk shares the facility's address
        await _kiosk(api, facility, number if i < limit else f"X{i}", "0000", device)
    r = await _kiosk(api, facility, number, PIN, device)
    assert r.status == 429 and r.code == "too_many_attempts", r
    r = await _kiosk(api, facility, number, PIN, other_kiosk)
    assert r.status == 200, r


async def test_an_attempt_whose_process_died_frees_its_lease(rig: Rig) -> None:
    api = rig.api
    victim = await api.family()
    email = victim.account["email"]
    limiter = api.ctx.login_limiter
    # A process reserved an attempt and died before settling it.
    await limiter.reserve(api.ctx.store, limiter.password_keys(email, "127.0.0.1"), rig.clock())
    body = {"email": email, "password": "correct horse"}
    r = await api.call("POST", "/auth/login", json=body)
    assert r.status == 429 and r.code == "attempt_in_progress", r
    rig.clock.advance(seconds=ATTEMPT_LEASE_S + 0.5)
    assert (await api.call("POST", "/auth/login", json=body)).status == 200


async def test_old_counters_are_forgotten(rig: Rig) -> None:
    """The table holds recent attempts only: an address that failed once is forgotten after
    PRUNE_AFTER, a counter still in use is kept."""
    api = rig.api
    victim = await api.family()
    await api.call("POST", "/auth/login", json={"email": victim.account["email"],
                                                "password": "wrong guess"})
    limiter, store = api.ctx.login_limiter, api.ctx.store
    if rig.counters == "redis":  # Redis forgets each key by itself
        r = limiter.counters._redis
        ttls = [await r.pttl(k) async for k in r.scan_iter("kinwire:attempt:*")]
        assert len(ttls) == 3 and all(0 < t <= PRUNE_AFTER.total_seconds() * 1000
                                      for t in ttls), ttls
        return
    async with store.write() as conn:
        assert await limiter.prune(conn, rig.clock()) == 0
    rig.clock.advance(seconds=PRUNE_AFTER.total_seconds() + 1)
    async with store.write() as conn:
        assert await limiter.prune(conn, rig.clock()) == 3  # account, account+address, address


async def test_with_redis_down_a_login_is_refused_not_let_through(db_url: str,
                                                                  tmp_path: Path) -> None:
    """Where the counters are in Redis and Redis stops answering, no attempt is verified
    uncounted: 503 `unavailable` (retry), never a login past the limits."""
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with app_client(db_url, tmp_path, redis_url=redis.url) as client:
            api = Api(client)
            fam = await api.family()
            redis.stop()
            r = await api.call("POST", "/auth/login", json={"email": fam.account["email"],
                                                             "password": "correct horse"})
            assert r.status == 503 and r.code == "unavailable", r
    finally:
        redis.stop()
