"""Defences in depth at the HTTP edge (issue 17, finding 4).

Adversaries: a site framing our pages or sniffing our responses (headers on every page and API
answer); 50 clients trickling their headers, or their bodies, to hold connections (real
sockets, shortened timeouts); a client sending bytes that are not HTTP (one warning line, no
traceback); another site posting a form at a JSON route (the JSON content type is required).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import app_client
from tests.support.helpers import Api

STATIC = Path(__file__).resolve().parents[2] / "static"
PATHS = ["/", "/static/kiosk.html", "/static/staff.html", "/static/js/api.js",
         "/static/css/app.css", "/api/v1/me", "/api/v1/openapi.json", "/api/v1/pricing",
         "/healthz", "/no/such/page"]


def _secured(headers, path: str) -> None:
    csp = headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
    assert "unsafe-inline" not in csp, csp
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("Referrer-Policy") == "no-referrer", path


async def test_every_page_and_api_answer_carries_the_headers(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, trusted_proxies=("127.0.0.1",)) as client:
        for path in PATHS:
            async with client.get(path) as resp:
                _secured(resp.headers, path)
                assert "Strict-Transport-Security" not in resp.headers, path
            async with client.get(path, headers={"X-Forwarded-Proto": "https"}) as resp:
                _secured(resp.headers, path)
                assert resp.headers["Strict-Transport-Security"].startswith("max-age="), path
        r = await Api(client).call("POST", "/auth/login", json={"email": "a@b.cd",
                                                                 "password": "x"})
        assert r.status == 401


async def test_https_claimed_by_an_untrusted_peer_gets_no_hsts(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path) as client, \
            client.get("/", headers={"X-Forwarded-Proto": "https"}) as resp:
        _secured(resp.headers, "/")
        assert "Strict-Transport-Security" not in resp.headers


class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names
                       if name == "style" or name.startswith("on")]
        if tag == "a" and any(v and v.lower().startswith("javascript:") for _, v in attrs):
            self.found.append("javascript: link")


def test_the_apps_have_nothing_inline_that_the_csp_would_block() -> None:
    for page in STATIC.glob("*.html"):
        parser = _Inline()
        parser.feed(page.read_text())
        assert parser.found == [], (page.name, parser.found)
    for script in STATIC.glob("js/**/*.js"):  # the screens' modules too (js/family/)
        text = script.read_text()
        # Markup built from strings (with handlers or styles), or code built from strings.
        bad = re.findall(r"""\son[a-z]+\s*=\s*["']|style\s*=\s*["']|setAttribute\(\s*["']"""
                         r"""(?:style|on[a-z]+)["']|\beval\(|new Function\(|innerHTML|"""
                         r"""outerHTML|insertAdjacentHTML|document\.write""", text)
        assert bad == [], (script.name, bad)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it does not).
    A reset is a close too: the server shut a socket that still had unread header lines in
    its receive buffer, and the kernel answers those with RST instead of FIN."""
    received = bytearray()
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return bytes(received)


async def test_slow_headers_are_cut_off(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, http_header_timeout_s=1.0) as client:
        host, port = client.server.host, client.server.port
        conns = [await asyncio.open_connection(host, port) for _ in range(50)]
        started = time.perf_counter()

        async def trickle(writer: asyncio.StreamWriter) -> None:
            writer.write(b"GET / HTTP/1.1\r\nHost: kinwire\r\n")
            for i in range(40):  # a header line every 0.1 s: 4 s if nobody stops it
                await asyncio.sleep(0.1)
                if writer.is_closing():
                    return
                try:
                    writer.write(f"X-Slow-{i}: a\r\n".encode())
                    await writer.drain()
                except ConnectionError:
                    return

        trickling = [asyncio.create_task(trickle(w)) for _, w in conns]
        try:
            received = await asyncio.gather(*(_closed_within(r, 3.0) for r, _ in conns))
            took = time.perf_counter() - started
        finally:  # a failure must not leave 50 sockets for a later test's garbage collection
            for task in trickling:
                task.cancel()
            for _, writer in conns:
                writer.close()
        assert all(b"200 OK" not in data for data in received)
        assert took < 3.0, took


async def test_slow_bodies_are_cut_off(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, http_body_timeout_s=1.0) as client:
        host, port = client.server.host, client.server.port
        started = time.perf_counter()

        async def slow_login() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: kinwire\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
            await writer.drain()

            async def trickle() -> None:
                for _ in range(40):
                    await asyncio.sleep(0.1)
                    try:
                        writer.write(b" ")
                        await writer.drain()
                    except ConnectionError:
                        return

            task = asyncio.create_task(trickle())
            try:
                return await _closed_within(reader, 3.0)
            finally:
                task.cancel()
                writer.close()

        answers = await asyncio.gather(*(slow_login() for _ in range(50)))
        took = time.perf_counter() - started
    assert all(a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a for a in answers), \
        answers[0]
    assert took < 3.0, took


async def test_a_malformed_request_is_one_warning_line(db_url: str, tmp_path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async with app_client(db_url, tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: kinwire\r\n"
                     b"Authorization Bearer secret-token\r\n\r\n")
        answer = await _closed_within(reader, 3.0)
        writer.close()
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
    mine = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelno for r in mine] == [logging.WARNING], [r.getMessage() for r in mine]
    assert mine[0].exc_info is None and "\n" not in mine[0].getMessage()
    assert "malformed request" in mine[0].getMessage()
    assert "secret-token" not in caplog.text


async def test_json_routes_require_the_json_content_type(api: Api) -> None:
    fam = await api.family()
    email = fam.account["email"]
    body = json.dumps({"email": email, "password": "correct horse"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        r = await api.call("POST", "/auth/login", data=body,
                           headers={"Content-Type": content_type})
        assert r.status == 415 and r.code == "unsupported_media_type", (content_type, r)
    r = await api.call("POST", "/auth/login", data=body,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 200, r
