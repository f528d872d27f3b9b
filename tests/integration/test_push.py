"""Web Push (server/push.py) against a push service of our own on a free port: it checks the
VAPID signature (ES256, with the server's public key) and decrypts each push with the
"browser's" own keys (RFC 8291), as a real push service and browser would.

Adversaries: a subscription pointing anywhere but a listed push service (the server would POST
there: refused), a push service that says the subscription is gone (410: it is deleted), a
message body that must not reach a notification."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import http_ece
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy import select

from server.push import b64url, unb64url
from server.schema import push_subscriptions
from tests.integration.test_mail import clock, deliver, mail_app, smtp  # noqa: F401 (fixtures)
from tests.support.clock import Clock
from tests.support.helpers import Api, Who
from tests.support.processes import free_port

PERSON_SECRET = "the parcel is under the blue bench"


class PushService:
    """Takes pushes at /sub/<n> (201) and /gone/<n> (410), keeping what came."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []

    async def take(self, request: web.Request) -> web.Response:
        self.got.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status=410 if request.path.startswith("/gone/") else 201)


class Browser:
    """A browser's push subscription keys."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = secrets.token_bytes(16)
        self.p256dh = b64url(self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def subscription(self, endpoint: str) -> dict:
        return {"endpoint": endpoint, "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)}}

    def read(self, body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth,
                                           version="aes128gcm"))


def vapid_key() -> tuple[str, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url(key.private_numbers().private_value.to_bytes(32, "big")), key.public_key()


def check_vapid(headers: dict[str, str], public: ec.EllipticCurvePublicKey,
                origin: str) -> None:
    scheme, _, params = headers["Authorization"].partition(" ")
    fields = dict(p.split("=", 1) for p in params.split(","))
    assert scheme == "vapid"
    assert unb64url(fields["k"]) == public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    head, claims, sig = fields["t"].split(".")
    raw = unb64url(sig)
    public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                       int.from_bytes(raw[32:], "big")),
                  f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    assert json.loads(base64.urlsafe_b64decode(claims + "==="))["aud"] == origin


@pytest.fixture
async def service() -> AsyncIterator[tuple[PushService, str]]:
    svc = PushService()
    app = web.Application()
    app.router.add_post("/{kind}/{n}", svc.take)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield svc, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_notifications_reach_the_browser_encrypted_and_signed(
        db_url: str, tmp_path: Path, smtp, clock: Clock, service) -> None:  # noqa: F811
    svc, origin = service
    private, public = vapid_key()
    async with mail_app(db_url, tmp_path, smtp[1], clock, vapid_private_key=private,
                        vapid_subject="mailto:ops@kinwire.test",
                        push_services=(origin,)) as api:
        who = await api.family("Fam")
        r = await api.call("GET", "/push/key", who)
        assert unb64url(r.body["public_key"]) == public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        browser, stale = Browser(), Browser()
        # Only a listed push service: the server would POST anywhere else it was told.
        for endpoint in ("https://internal.example/admin", "http://127.0.0.1:1/sub/1",
                         origin.replace("http:", "https:") + "/sub/1"):
            r = await api.call("POST", "/push/subscriptions", who,
                               json=browser.subscription(endpoint))
            assert r.status == 422, (endpoint, r.body)
        r = await api.call("POST", "/push/subscriptions", who,
                           json=browser.subscription(f"{origin}/sub/1"))
        assert r.status == 200, r.body
        r = await api.call("POST", "/push/subscriptions", who,
                           json=stale.subscription(f"{origin}/gone/2"))
        assert r.status == 200, r.body

        assert (await api.buy(who, 500)).status == 201
        await api.ctx.push_sender.pass_once()
        [(_, headers, body)] = [g for g in svc.got if g[0] == "/sub/1"]
        check_vapid(headers, public, origin)
        assert headers["Content-Encoding"] == "aes128gcm" and int(headers["TTL"]) > 0
        assert PERSON_SECRET.encode() not in body
        shown = browser.read(body)
        assert shown["title"] == "Your Kinwire receipt" and shown["body"].startswith("Purchase")
        # The push service said the second subscription is gone: it is forgotten.
        assert [g[0] for g in svc.got if g[0].startswith("/gone/")] == ["/gone/2"]
        async with api.ctx.store.read() as conn:
            left = (await conn.execute(select(push_subscriptions.c.endpoint))).scalars().all()
        assert left == [f"{origin}/sub/1"]

        # A message from the person: who wrote, never what.
        admin = await api.admin()
        facility = await api.facility(admin)
        staff = await api.staff(admin, facility)
        person = await api.person(staff, facility)
        await api.connect(who, person)
        r = await api.call("POST", "/messages", person,
                           json={"to": who.id, "body": PERSON_SECRET, "cod": True},
                           key=secrets.token_hex(8))
        assert r.status == 201 and r.body["message"]["status"] == "delivered", r.body
        await api.ctx.push_sender.pass_once()
        shown = browser.read(svc.got[-1][2])
        assert shown["title"] == "New message from Pat Person"
        assert PERSON_SECRET not in json.dumps(shown)

        # Unsubscribed: nothing more comes.
        r = await api.call("POST", "/push/subscriptions/delete", who,
                           json={"endpoint": f"{origin}/sub/1"})
        assert r.status == 200
        count = len(svc.got)
        assert (await api.buy(who, 500)).status == 201
        await api.ctx.push_sender.pass_once()
        await deliver(api)
        assert len(svc.got) == count


async def test_push_off_without_a_key(api: Api) -> None:
    who: Who = await api.family()
    r = await api.call("GET", "/push/key", who)
    assert r.status == 404 and r.body["error"]["code"] == "push_off"
