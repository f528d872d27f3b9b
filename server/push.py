"""Browser notifications by Web Push (RFC 8030), where the family allowed them.

A browser that allowed notifications subscribes (static/js/settings.js, static/sw.js) and gives
us its push service's endpoint and its keys. With each notification email the Notifier
(server/mail.py) writes one `push_outbox` row per subscription of the family, in the same
transaction; `PushSender` sends them from that outbox as MailSender sends email (server/outbox.py:
claimed, retried with a doubling wait, bounded): the payload `{title, body}` encrypted to the
browser's keys (RFC 8291, aes128gcm, by http_ece) and the request signed with the server's
VAPID key (RFC 8292, by py_vapid). A push service that answers 404 or 410 says the subscription
is gone: it is deleted. Like email, a push never holds a message's body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server import outbox
from server.schema import push_outbox, push_subscriptions
from store import Store
from store.ids import new_id

log = logging.getLogger("kinwire.push")

TTL_S = 24 * 3600  # how long a push service keeps a push for a browser that is offline


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Vapid:
    """The server's VAPID key: its public half for browsers, and the signed header."""

    def __init__(self, private_key: str, subject: str) -> None:
        self._vapid = Vapid02.from_raw(private_key.encode())
        self.subject = subject
        self.public_key = b64url(self._vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def __repr__(self) -> str:
        return f"Vapid({self.public_key[:12]}...)"

    def headers(self, endpoint: str) -> dict[str, str]:
        parts = urlsplit(endpoint)
        # exp: py_vapid's own default (now + 24 h, on the real clock, as push services check).
        return self._vapid.sign({"aud": f"{parts.scheme}://{parts.netloc}", "sub": self.subject})


def allowed(endpoint: str, services: tuple[str, ...]) -> bool:
    """An https URL on a listed push service's host (or under a listed exact origin)."""
    parts = urlsplit(endpoint)
    origin = f"{parts.scheme}://{parts.netloc}"
    host = (parts.hostname or "").lower()
    for service in services:
        if service.startswith(("http://", "https://")):
            if origin == service.rstrip("/"):
                return True
        elif parts.scheme == "https" and (host == service or host.endswith("." + service)):
            return True
    return False


async def subscribe(conn: AsyncConnection, account_id: str, endpoint: str, p256dh: str,
                    auth: str, at: datetime, services: tuple[str, ...]) -> None:
    """Keep a browser's subscription for this account (the same endpoint again replaces it:
    a browser re-subscribes with new keys, or another family signs in on it)."""
    try:
        point = unb64url(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        secret = unb64url(auth)
    except (ValueError, TypeError):
        raise Refused("invalid_input", "keys: not a P-256 key and auth secret") from None
    if len(secret) != 16:
        raise Refused("invalid_input", "keys.auth: 16 bytes")
    if not allowed(endpoint, services):
        raise Refused("invalid_input", "endpoint: not a known push service")
    s = push_subscriptions
    await conn.execute(s.delete().where(s.c.endpoint == endpoint))
    await conn.execute(s.insert().values(id=new_id("psh"), account_id=account_id,
                                         endpoint=endpoint, p256dh=p256dh, auth=auth,
                                         created_at=at))


async def unsubscribe(conn: AsyncConnection, account_id: str, endpoint: str) -> None:
    s = push_subscriptions
    await conn.execute(s.delete().where(s.c.account_id == account_id, s.c.endpoint == endpoint))


async def enqueue(conn: AsyncConnection, account_id: str, title: str, body: str,
                  at: datetime) -> int:
    """One push a subscription of the account; how many."""
    s = push_subscriptions
    ids = (await conn.execute(select(s.c.id).where(s.c.account_id == account_id))).scalars().all()
    for sub in ids:
        await conn.execute(push_outbox.insert().values(
            id=new_id("pout"), subscription_id=sub, title=title[:200], body=body[:500],
            created_at=at, due_at=at, attempts=0))
    return len(ids)


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291: to the browser's key and auth secret, from a key made for this push."""
    return http_ece.encrypt(payload, private_key=ec.generate_private_key(ec.SECP256R1()),
                            dh=unb64url(p256dh), auth_secret=unb64url(auth),
                            version="aes128gcm")


class PushSender:
    def __init__(self, store: Store, vapid: Vapid, clock: Callable[[], datetime], *,
                 attempts_max: int, poll_s: float = 1.0, batch: int = 20,
                 backoff_s: float = 30.0, timeout_s: float = 10.0) -> None:
        self.store, self.vapid, self.clock = store, vapid, clock
        self.attempts_max, self.poll_s, self.batch = attempts_max, poll_s, batch
        self.backoff_s, self.timeout_s = backoff_s, timeout_s
        self._passing = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        await outbox.run(self.pass_once, stop, batch=self.batch, poll_s=self.poll_s,
                         what="push")

    async def pass_once(self) -> int:
        async with self._passing:
            return await self._pass()

    async def _pass(self) -> int:
        now = self.clock()
        o, s = push_outbox, push_subscriptions
        async with self.store.read() as conn:
            due = (await conn.execute(
                select(o, s.c.endpoint, s.c.p256dh, s.c.auth)
                .outerjoin(s, s.c.id == o.c.subscription_id)
                .where(outbox.due(o, now))
                .order_by(o.c.due_at).limit(self.batch))).all()
        mine = await outbox.claim(self.store, o, due, now)
        if not mine:
            return 0
        outcome: dict[str, str | None] = {}
        gone: list[str] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for row in mine:
                if row.endpoint is None:  # unsubscribed since
                    outcome[row.id], _ = "gone", gone.append(row.subscription_id)
                    continue
                payload = json.dumps({"title": row.title, "body": row.body}).encode()
                headers = {**self.vapid.headers(row.endpoint), "TTL": str(TTL_S),
                           "Content-Encoding": "aes128gcm",
                           "Content-Type": "application/octet-stream", "Urgency": "normal"}
                try:
                    async with http.post(row.endpoint, data=encrypt(payload, row.p256dh,
                                                                    row.auth),
                                         headers=headers) as resp:
                        if resp.status in (404, 410):
                            outcome[row.id] = "gone"
                            gone.append(row.subscription_id)
                        elif resp.status >= 400:
                            outcome[row.id] = f"http {resp.status}"
                        else:
                            outcome[row.id] = None
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    outcome[row.id] = type(exc).__name__
        await self._settle(mine, outcome, gone)
        return len(mine)

    async def _settle(self, rows: list[Any], outcome: dict[str, str | None],
                      gone: list[str]) -> None:
        now = self.clock()
        o = push_outbox
        async with self.store.write() as conn:
            if gone:
                await conn.execute(push_subscriptions.delete().where(
                    push_subscriptions.c.id.in_(gone)))
            for row in rows:
                error = outcome.get(row.id, "not sent")
                values, became = outbox.settled(row, error, now, attempts_max=self.attempts_max,
                                                backoff_s=self.backoff_s,
                                                give_up=error == "gone")
                if became == "given up":
                    log.info("push %s given up after %d tries: %s", row.id, row.attempts + 1,
                             error)
                await conn.execute(o.update().where(o.c.id == row.id).values(**values))


async def prune(conn: AsyncConnection, now: datetime, keep: timedelta, limit: int) -> int:
    return await outbox.prune(conn, push_outbox, now, keep, limit)
