"""The deployment in docs/deploy.md, run: a private nginx with deploy/nginx/kinwire.conf (only
its ports, paths and certificate changed) terminating TLS in front of two `kinwire serve`
processes on PostgreSQL and a private Redis; and coturn with deploy/coturn/turnserver.conf."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from server.cli import parser
from server.doctor import ice_server
from server.settings import from_env
from signalling.turn import coturn_config
from tests.integration.test_turn import PRODUCTION, TEST
from tests.support.nginx import private_nginx, self_signed, templated
from tests.support.nodes import RedisServer, cluster, make_pair
from tests.support.processes import free_port
from tests.support.turn_server import deploy_config, private_coturn

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "kinwire.conf"
COTURN = ROOT / "deploy" / "coturn" / "turnserver.conf"
ORIGIN = "https://kinwire.example"
# A browser on the public name: nginx passes `Host`, and says https, to a process that trusts it.
BROWSER = {"Host": "kinwire.example", "Origin": ORIGIN}


@asynccontextmanager
async def kinwire_nginx(folder: Path, https_port: int, upstreams: list[int],
                        cert: Path, key: Path) -> AsyncIterator[Path]:
    """nginx with deploy/nginx/kinwire.conf in front of two processes; yields its access log."""
    access_log = folder / "access.log"
    site = templated(SITE.read_text(), {
        "server 127.0.0.1:8081 ": f"server 127.0.0.1:{upstreams[0]} ",
        "server 127.0.0.1:8082 ": f"server 127.0.0.1:{upstreams[1]} ",
        "listen 80;": f"listen 127.0.0.1:{free_port()};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "/etc/letsencrypt/live/kinwire.example/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/kinwire.example/privkey.pem": str(key),
        "/var/log/nginx/kinwire.access.log": str(access_log)})
    async with private_nginx(folder, https_port, site):
        yield access_log


async def socket_count(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(base + "/metrics") as r:
        return int(re.search(r"^kinwire_sockets (\d+)", await r.text(), re.M).group(1))


async def authenticated(http: aiohttp.ClientSession, url: str, token: str):
    ws = await http.ws_connect(url, protocols=("kinwire.v1.json",), headers=BROWSER)
    await ws.send_str(json.dumps({"id": 1, "op": "auth", "args": {"token": token}}))
    reply = json.loads((await ws.receive(timeout=10)).data)
    assert "ok" in reply, reply
    return ws, reply["ok"]["account_id"]


# Janus as the media engine (nothing contacts these servers here): the processes mount
# /internal/janus/events, which nginx must not pass on.
JANUS_ENGINE = {"KINWIRE_MEDIA_ENGINE": "janus", "KINWIRE_JANUS_URLS": "http://127.0.0.1:9/janus",
                "KINWIRE_JANUS_ADMIN_URLS": "http://127.0.0.1:9/admin",
                **{f"KINWIRE_JANUS_{name}": "x" * 16 for name in (
                    "API_SECRET", "ADMIN_SECRET", "TOKEN_SECRET", "ROOM_ADMIN_KEY",
                    "EVENTS_PASSWORD")}}


async def test_two_processes_behind_the_deploy_nginx(pg_db: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    front = f"https://127.0.0.1:{port}"
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with cluster(pg_db, redis.url, tmp_path, KINWIRE_PUBLIC_URL=ORIGIN,
                           KINWIRE_TRUSTED_PROXIES="127.0.0.1",
                           KINWIRE_DRAIN_TIMEOUT_S="5", **JANUS_ENGINE) as nodes, \
                kinwire_nginx(tmp_path, port, [n.port for n in nodes], cert, key) as log, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
            family, person = await make_pair(http, *nodes, pg_db)
            # HTTPS requests are balanced over both processes.
            for _ in range(20):
                async with http.get(front + "/readyz") as r:
                    assert r.status == 200
            served: list[str] = []
            for _ in range(100):  # nginx writes a line once the response is sent
                served = re.findall(r'"GET /readyz" 200 .* upstream=(\S+)', log.read_text())
                if len(served) == 20:
                    break
                await asyncio.sleep(0.02)
            assert {n: served.count(f"127.0.0.1:{node.port}") for n, node in
                    enumerate(nodes)} == {0: 10, 1: 10}
            async with http.get(front + "/metrics") as r:
                assert r.status == 404, "metrics stay inside"
            # Janus's event endpoint answers on the process ports (a post without the password
            # is refused there), never through nginx.
            async with http.post(f"http://127.0.0.1:{nodes[0].port}/internal/janus/events",
                                 json=[]) as r:
                assert r.status == 401
            async with http.post(front + "/internal/janus/events", json=[]) as r:
                assert r.status == 404, "Janus's event endpoint stays inside"
            # Signed in through nginx, the session cookie is Secure (nginx says https).
            body = {"email": "nginx@example.test", "password": "a long password", "name": "N"}
            async with http.post(front + "/api/v1/auth/signup", json=body) as r:
                assert r.status == 201
            del body["name"]
            async with http.post(front + "/api/v1/auth/login", json=body) as r:
                assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
                # Kinwire's security headers pass through; HSTS comes once (nginx's).
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                assert r.headers.getall("Strict-Transport-Security") == ["max-age=63072000"]
            # A socket through nginx: the browser's https Origin is allowed, another is not.
            try:
                await http.ws_connect(f"wss://127.0.0.1:{port}/ws",
                                      headers={**BROWSER, "Origin": "https://elsewhere.example"})
                raise AssertionError("a foreign origin opened a socket")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 403
            ws, family_id = await authenticated(http, f"wss://127.0.0.1:{port}/ws", family)
            counts = [await socket_count(http, node.base) for node in nodes]
            assert sorted(counts) == [0, 1], counts
            holder, other = (nodes[0], nodes[1]) if counts[0] else (nodes[1], nodes[0])
            async with http.post(other.base + "/api/v1/messages",
                                 json={"to": family_id, "body": "through nginx"},
                                 headers={"Authorization": f"Bearer {person}",
                                          "Idempotency-Key": "nginx-1"}) as r:
                assert r.status == 201, await r.text()
            while True:
                frame = json.loads((await ws.receive(timeout=10)).data)
                if frame.get("type") == "message.new":
                    assert frame["data"]["body"] == "through nginx"
                    break
            # Drain the process holding the socket: the socket hears 1012 through nginx,
            # and the service stays available through nginx all along.
            holder.proc.send_signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1012, closing
            await ws.close()
            statuses = []
            loop = asyncio.get_running_loop()
            until = loop.time() + 2.0
            while loop.time() < until or holder.proc.poll() is None:
                async with http.get(front + "/api/v1/me",
                                    headers={"Authorization": f"Bearer {family}"}) as r:
                    statuses.append(r.status)
                await asyncio.sleep(0.02)
                assert loop.time() < until + 10, "the drained process did not exit"
            assert holder.proc.returncode == 0
            assert set(statuses) == {200}, statuses
            ws, _ = await authenticated(http, f"wss://127.0.0.1:{port}/ws", family)
            assert await socket_count(http, other.base) == 1, "it reconnected to the other"
            await ws.close()
    finally:
        redis.stop()


def test_the_deploy_coturn_file_is_the_documented_config() -> None:
    """deploy/coturn/turnserver.conf is docs/turn.md's production config, and with only its
    values changed (and the loopback block) it is what tests/support/turn_server.py runs."""
    text = COTURN.read_text()
    assert text == coturn_config(**PRODUCTION)
    run = dict(port="3479", first="50000", last="50031", secret="s3cret", folder="/run/t")
    rendered = {**TEST, "secret": "s3cret", "listening_port": "3479", "min_port": "50000",
                "max_port": "50031", "log_file": "/run/t/turn-3479.log",
                "pid_file": "/run/t/turn.pid", "userdb": "/run/t/turndb"}
    assert deploy_config(**run) == coturn_config(**rendered)
    assert deploy_config(**run, loopback_test=False) == coturn_config(
        **{**rendered, "loopback_test": False})


async def test_coturn_runs_the_deploy_file_and_allocates_with_rest_credentials() -> None:
    async with private_coturn() as turn:
        assert turn.config == deploy_config(
            port=str(turn.port), first=str(turn.min_port), last=str(turn.max_port),
            secret=turn.secret, folder=str(turn.log_file.parent))
        check = await ice_server(turn.url, turn.secret)
        assert check.status == "ok" and "allocated a relay" in check.detail, check


def test_docs_show_the_deploy_files_and_the_example_settings_validate() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in (SITE, COTURN, ROOT / "deploy" / "systemd" / "kinwire@.service",
                 ROOT / "deploy" / "kinwire.env.example"):
        assert path.read_text() in doc, f"docs/deploy.md does not show {path.name} as it is"
    env = dict(line.split("=", 1) for line in
               (ROOT / "deploy" / "kinwire.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    settings = from_env(env)
    assert settings.redis_url and settings.turn_urls and settings.public_url.startswith("https")
    unit = (ROOT / "deploy" / "systemd" / "kinwire@.service").read_text()
    command = re.search(r"^ExecStart=\S+/kinwire (.*)$", unit, re.M).group(1)
    args = parser().parse_args(command.replace("%i", "8081").split())
    assert (args.command, args.host, args.port) == ("serve", "127.0.0.1", 8081)
