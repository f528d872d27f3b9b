"""The limits are settings: each is changed here from its default and the server must follow
the new value (tests/integration/test_gateway.py, test_auth.py and test_photos.py test the defaults'
behaviour; connections per user and photo uploads per hour are already set there)."""

from __future__ import annotations

import json
import secrets

import aiohttp

from server.settings import Settings
from tests.conftest import app_client
from tests.support.helpers import Api


async def test_the_command_rate_follows_its_setting(db_url: str, tmp_path) -> None:
    rate = 3
    assert Settings().ws_commands_per_s != rate
    async with app_client(db_url, tmp_path, ws_commands_per_s=rate) as client:
        await Api(client).family()  # its login cookie authenticates the socket
        ws = await client.ws_connect("/ws", protocols=("kinwire.v1.json",))
        burst = 20
        for i in range(burst):  # sent back to back: a fraction of a second
            await ws.send_str(json.dumps({"id": i, "op": "ping", "args": {}}))
        codes = []
        for _ in range(burst):
            frame = json.loads((await ws.receive(timeout=5)).data)
            codes.append("ok" if "ok" in frame else frame["error"]["code"])
        # A burst of twice the rate passes, plus what
        # refills while the burst is read; everything else is refused, and the socket lives.
        assert 2 * rate <= codes.count("ok") <= 2 * rate + 2, codes
        assert codes.count("rate_limited") == burst - codes.count("ok"), codes
        await ws.close()


async def test_failed_logins_follow_their_setting(db_url: str, tmp_path) -> None:
    limit = 2
    assert Settings().login_failures_max != limit
    async with app_client(db_url, tmp_path, login_failures_max=limit) as client:
        api = Api(client)
        fam = await api.family()
        email = fam.account["email"]
        statuses = []
        for _ in range(limit + 1):
            r = await api.call("POST", "/auth/login",
                               json={"email": email, "password": secrets.token_hex(6)})
            statuses.append(r.status)
        assert statuses == [401] * limit + [429], statuses
        r = await api.call("POST", "/auth/login", json={"email": email,
                                                        "password": "correct horse"})
        assert r.status == 429 and r.code == "too_many_attempts", r


async def test_connections_per_user_follow_their_setting(db_url: str, tmp_path) -> None:
    """Three is not the default (tests/integration/test_gateway.py sets two): the fourth is
    refused."""
    limit = 3
    assert Settings().ws_connections_per_user_max != limit
    async with app_client(db_url, tmp_path, ws_connections_per_user_max=limit) as client:
        await Api(client).family()  # its login cookie authenticates the sockets below
        keep = []
        for i in range(limit):  # one at a time: a ping answered means the socket is attached
            ws = await client.ws_connect("/ws")
            await ws.send_str(json.dumps({"id": i, "op": "ping", "args": {}}))
            assert "ok" in json.loads((await ws.receive(timeout=5)).data)
            keep.append(ws)
        extra = await client.ws_connect("/ws")
        frame = json.loads((await extra.receive(timeout=5)).data)
        assert frame["error"]["code"] == "too_many_connections", frame
        msg = await extra.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and extra.close_code == 4029, msg
        for ws in keep:
            await ws.close()


async def test_the_command_rate_is_per_user_not_per_socket(db_url: str, tmp_path) -> None:
    """More sockets buy no more commands: the user's sockets share one budget, and another
    user's budget is untouched."""
    rate = 4
    async with app_client(db_url, tmp_path, ws_commands_per_s=rate) as client:
        api = Api(client)
        other = await api.family("Other")
        await api.family()  # the cookie now authenticates the next sockets as this user
        socks = [await client.ws_connect("/ws") for _ in range(4)]
        for n, ws in enumerate(socks):  # the same burst on each socket, back to back
            for i in range(3 * rate):
                await ws.send_str(json.dumps({"id": n * 100 + i, "op": "ping", "args": {}}))
        answered = 0
        for ws in socks:
            for _ in range(3 * rate):
                answered += "ok" in json.loads((await ws.receive(timeout=5)).data)
        # One budget: a burst of 2 x rate (and a little refill), not 2 x rate per socket.
        assert 2 * rate <= answered <= 2 * rate + 3, answered
        client.session.cookie_jar.clear()
        ws = await client.ws_connect("/ws")
        await ws.send_str(json.dumps({"id": 1, "op": "auth", "args": {"token": other.token}}))
        assert "ok" in json.loads((await ws.receive(timeout=5)).data)
        await ws.send_str(json.dumps({"id": 2, "op": "ping", "args": {}}))
        assert "ok" in json.loads((await ws.receive(timeout=5)).data), "another user throttled"
        for sock in (*socks, ws):
            await sock.close()
