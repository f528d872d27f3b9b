"""GET /metrics and JSON logs with request ids, on both databases."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.logs import JsonFormatter
from server.app import create_app
from server.http.logs import AccessLogger
from tests.conftest import test_settings
from tests.support.cast import cast, send
from tests.support.helpers import VISA, Api
from tests.support.sockets import open_socket

SAMPLE = re.compile(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$")


async def scrape(client: TestClient) -> dict[str, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for line in (await resp.text()).splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[match[1]] = float(match[2])
    return samples


async def test_sends_sockets_and_pushes_move_the_metrics(api: Api, client: TestClient) -> None:
    c = await cast(api)
    before = await scrape(client)
    assert before["kinwire_sockets"] == 0
    assert before["kinwire_messages_sent_total"] == 0
    assert before["kinwire_broker_up"] == 1
    sock = await open_socket(client, c.person)
    for text in ("one", "two"):
        assert (await send(api, c.family, c.person, text)).status == 201
    await sock.push()
    ws_reply = await (await open_socket(client, c.family)).call(
        "message.send", key="ws-1", to=c.person.id, body="three")
    assert "ok" in ws_reply, ws_reply
    after = await scrape(client)
    assert after["kinwire_sockets"] == 2
    assert after["kinwire_messages_sent_total"] == 3
    assert after["kinwire_pushes_total"] >= 1
    assert after["kinwire_send_seconds_count"] == 3
    assert after['kinwire_send_seconds_bucket{le="+Inf"}'] == 3
    assert after["kinwire_send_seconds_sum"] > 0
    assert after["kinwire_meter_lateness_seconds_count"] == 0
    assert "kinwire_meter_debits_total" in after
    await sock.ws.close()


async def test_the_tasks_gauge_follows_sockets_open_and_closed(api: Api,
                                                               client: TestClient) -> None:
    """A socket's tasks must end with it (the soak in bench/ watches this gauge)."""
    c = await cast(api)
    before = (await scrape(client))["kinwire_asyncio_tasks"]
    assert before >= 1  # at least the scrape's own request
    socks = [await open_socket(client, who) for who in (c.family, c.person, c.family)]
    opened = (await scrape(client))["kinwire_asyncio_tasks"]
    assert opened >= before + 3, (before, opened)
    for sock in socks:
        await sock.ws.close()
    for _ in range(100):
        now = (await scrape(client))["kinwire_asyncio_tasks"]
        if now <= before:
            break
        await asyncio.sleep(0.05)
    assert now <= before, f"tasks left behind by closed sockets: {before} -> {now}"


async def test_full_garbage_collections_are_timed(api: Api, client: TestClient) -> None:
    before = await scrape(client)
    gc.collect()  # a full collection, as the collector runs them
    after = await scrape(client)
    assert after["kinwire_gc_full_seconds_count"] >= before["kinwire_gc_full_seconds_count"] + 1
    assert after["kinwire_gc_full_seconds_sum"] > before["kinwire_gc_full_seconds_sum"]


async def test_the_review_gauge_counts_held_messages(api: Api, client: TestClient) -> None:
    c = await cast(api, review_mode="hold")
    assert (await scrape(client))["kinwire_review_queue_depth"] == 0
    r = await send(api, c.family, c.person, "please approve")
    assert r.body["message"]["status"] == "held"
    assert (await scrape(client))["kinwire_review_queue_depth"] == 1
    text = await (await client.get("/metrics")).text()
    assert "please approve" not in text and c.family.token not in text


async def test_json_logs_carry_the_request_id_and_no_secrets(db_url: str,
                                                            tmp_path: Path) -> None:
    app = create_app(test_settings(db_url, tmp_path), run_migrations=False)

    async def boom(request: web.Request) -> web.Response:
        logging.getLogger("kinwire.test").info("handling %s", request.headers["Authorization"])
        raise RuntimeError("card " + VISA["number"])

    app.router.add_post("/boom", boom)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(n) for n in ("kinwire", "aiohttp.access")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        server = TestServer(app)
        await server.start_server(access_log_class=AccessLogger)
        async with TestClient(server) as client:
            api = Api(client)
            family = await api.family()
            r = await api.buy(family, 500)
            assert r.status == 201, r.body
            resp = await client.post("/boom", json={"card": VISA},
                                     headers={"Authorization": f"Bearer {family.token}",
                                              "X-Request-Id": "req-abc.123"})
            assert resp.status == 500
            assert resp.headers["X-Request-Id"] == "req-abc.123"
            bad = await client.get("/healthz", headers={"X-Request-Id": "no way\u00e9" * 20})
            generated = bad.headers["X-Request-Id"]
            assert re.fullmatch(r"[0-9a-f]{16}", generated)
            await asyncio.sleep(0.05)  # the access log line follows the response
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
    text = out.getvalue()
    assert family.token not in text
    assert VISA["number"] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("request_id") == "req-abc.123"]
    assert {line["logger"] for line in mine} >= {"kinwire.test", "kinwire.http", "aiohttp.access"}
    assert any("RuntimeError" in line.get("exc", "") for line in mine)
    assert any(line.get("request_id") == generated for line in lines)
    assert any(line["message"].startswith("POST /boom 500") for line in mine)
