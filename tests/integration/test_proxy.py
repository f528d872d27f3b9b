"""Behind a reverse proxy (server/http/proxy.py): the forwarded client address and scheme count only
when the peer is a trusted proxy; from anyone else the headers are ignored."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from sqlalchemy import select

from server.http.proxy import client_address, networks
from server.schema import attempts
from tests.conftest import app_client
from tests.support.helpers import Api

TRUSTED = networks(["127.0.0.1", "10.0.0.0/8"])


def test_the_client_is_the_rightmost_address_no_trusted_proxy_added() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", TRUSTED) == "198.51.100.7"
    # The client wrote the first hop itself; our proxies added the last two.
    assert client_address("127.0.0.1", "203.0.113.1, 198.51.100.7, 10.1.2.3",
                          TRUSTED) == "198.51.100.7"
    assert client_address("198.51.100.9", "203.0.113.1", TRUSTED) == "198.51.100.9"
    assert client_address("127.0.0.1", "", TRUSTED) == "127.0.0.1"
    assert client_address("127.0.0.1", "not-an-address", TRUSTED) == "127.0.0.1"
    assert client_address("127.0.0.1", "10.0.0.5, 10.0.0.6", TRUSTED) == "10.0.0.5"


async def failure_keys(api: Api) -> set[str]:
    async with api.ctx.store.read() as conn:
        return set((await conn.execute(select(attempts.c.key))).scalars())


async def login_and_socket(api: Api, email: str, headers: dict[str, str]) -> tuple:
    """A failed login, a good one (its cookie) and a socket from the server's https origin."""
    bad = await api.call("POST", "/auth/login", json={"email": email, "password": "wrong!!!"},
                         headers=headers)
    assert bad.status == 401
    async with api.client.post("/api/v1/auth/login", headers=headers,
                               json={"email": email, "password": "correct horse"}) as r:
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
    origin = f"https://{api.client.server.host}:{api.client.server.port}"
    try:
        ws = await api.client.ws_connect("/ws", headers={**headers, "Origin": origin})
        await ws.close()
        opened = True
    except aiohttp.WSServerHandshakeError:
        opened = False
    return cookie, opened


async def test_a_trusted_proxy_gives_the_client_address_and_https(db_url: str,
                                                                  tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.1, 198.51.100.7", "X-Forwarded-Proto": "https"}
    async with app_client(db_url, tmp_path, trusted_proxies=("127.0.0.1",)) as client:
        api = Api(client)
        family = await api.family()
        cookie, opened = await login_and_socket(api, family.account["email"], forwarded)
        assert "ip:198.51.100.7" in await failure_keys(api)
        assert "Secure" in cookie
        assert opened, "the browser's https origin is the server's own"


async def test_untrusted_peers_cannot_claim_an_address_or_https(db_url: str,
                                                                tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    async with app_client(db_url, tmp_path) as client:
        api = Api(client)
        family = await api.family()
        cookie, opened = await login_and_socket(api, family.account["email"], forwarded)
        keys = await failure_keys(api)
        assert "ip:127.0.0.1" in keys and "ip:198.51.100.7" not in keys
        assert "Secure" not in cookie
        assert not opened
