"""Scenario 8, relay mode: how many concurrent relayed visits one core sustains at 640x480 with
at least 25 frames/s both ways, and the server's CPU per visit.

The Kinwire server (SQLite, in-memory broker) runs pinned to the server core. Each visit is
two aiortc clients (bench/clip.py: they send pre-encoded VP8, so the load generator does not
encode) talking only to the server, which terminates both peer connections, decodes each
party's video and encodes it again for the other (aiortc's MediaRelay hands on decoded
frames). All media goes through a private coturn on loopback (relay-only ICE, docs/turn.md),
pinned to the load generator's core. Visits are not recorded (the recording would be a third
encoder per visit; its cost is reported separately as one extra case).

Steps of 1, 2, 3... concurrent visits: after a warm-up, each client's received video frames are
counted over a window; a step is sustained when every client of every visit gets >= 25 frames/s
(they send 30). The ramp stops at the first step that is not sustained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bench import common
from bench.clip import ClipTrack, encode_clip
from signalling.media import ToneAudioTrack
from signalling.visit_client import VisitClient

FPS_MIN = 25
# What the parties send: a webcam's usual 30 frames/s, so that ">= 25 received" has a margin;
# sent at exactly 25, one frame late or a window edge would read as 24.8 and fail the step.
SOURCE_FPS = 30


def _pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of a running process (coturn starts its threads before we see it)."""
    if common.cpus() < 2:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})


def _coturn_pid(turn: Any) -> int | None:
    marker = str(turn.log_file.parent)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            if "turnserver" in cmd and marker in cmd:
                return int(entry)
    return None


async def _visit_rows(db: str, family_id: str, record: bool) -> str:
    """A relay-mode visit whose window is open now (the test suite's own helper)."""
    from tests.test_visit_e2e import visit_now

    visit_id, _facility_id = await visit_now(db, family_id, media="relay", record=record)
    return visit_id


async def _pair(http: aiohttp.ClientSession, server: common.Server) -> tuple[str, str, str]:
    """A family and a person with an approved connection: (family token, person token,
    family account id)."""
    from tests.test_cluster import make_pair

    family, person = await make_pair(http, server, server, server.database_url)
    async with http.get(server.base + "/api/v1/me",
                        headers={"Authorization": f"Bearer {family}"}) as r:
        family_id = (await r.json())["account"]["id"]
    return family, person, family_id


async def _step(base: str, pid: int, visits: list[tuple[str, str, str]], clip: list[bytes],
                *, system: str, label: str, warm_s: float, window_s: float,
                turn_pid: int | None) -> dict[str, Any]:
    """Run `visits` ((visit id, family token, person token) each) at once; measure a window."""
    clients: list[VisitClient] = []

    def tracks() -> list:
        return [ClipTrack(clip, SOURCE_FPS), ToneAudioTrack()]

    try:
        for visit_id, family, person in visits:
            for token in (family, person):
                client = VisitClient(base, token, visit_id, loopback_only=True, tracks=tracks)
                clients.append(client)
                await client.start()
        async with asyncio.timeout(30):
            for client in clients:
                await client.wait_frames("video", 5)
        await asyncio.sleep(warm_s)
        before = [c.frames.get("video", 0) for c in clients]
        cpu0 = common.cpu_seconds(pid)
        turn0 = common.cpu_seconds(turn_pid) if turn_pid else 0.0
        load0 = common.cpu_seconds(os.getpid())
        await asyncio.sleep(window_s)
        fps = [(c.frames.get("video", 0) - b) / window_s
               for c, b in zip(clients, before, strict=True)]
        server_cpu = (common.cpu_seconds(pid) - cpu0) / window_s
        turn_cpu = ((common.cpu_seconds(turn_pid) - turn0) / window_s) if turn_pid else 0.0
        load_cpu = (common.cpu_seconds(os.getpid()) - load0) / window_s
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.leave()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    n = len(visits)
    return {"case": label, "system": system, "visits": n, "fps_min": round(min(fps), 1),
            "fps_median": round(common.median(fps), 1),
            "server_cpu_pct": round(server_cpu * 100, 1),
            "cpu_per_visit_pct": round(server_cpu * 100 / n, 1),
            "coturn_cpu_pct": round(turn_cpu * 100, 1),
            "loadgen_cpu_pct": round(load_cpu * 100, 1)}


async def _ramp(step: Any, steps: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Steps until one is not sustained; returns the rows and the most visits sustained."""
    rows, sustained = [], 0
    for n in steps:
        row = await step(n)
        rows.append(row)
        if row["fps_min"] < FPS_MIN:
            break
        sustained = n
    return rows, sustained


@contextlib.asynccontextmanager
async def _bare(turn: Any) -> Any:
    port = common.free_port()
    proc = common.spawn([sys.executable, "-m", "bench.baselines.relay_bare", str(port),
                         turn.url, turn.secret], cwd=common.ROOT)
    try:
        await common.wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        common.stop(proc)


async def run(size: str) -> dict[str, Any]:
    from tests import turn_server

    tiny = size == "tiny"
    width, height = (320, 240) if tiny else (640, 480)
    steps = [1] if tiny else [1, 2, 3, 4, 5, 6]
    warm_s, window_s = (0.5, 1.5) if tiny else (3.0, 5.0)
    turn_server.RELAY_PORTS = 64  # four allocations a visit: two clients, two server peers
    clip = await encode_clip(width, height, SOURCE_FPS, 4.0)
    label = lambda n, extra="": f"{n} visit{'s' if n > 1 else ''}{extra}"  # noqa: E731
    with common.workdir("relay") as wd:
        async with turn_server.private_coturn() as turn:
            turn_pid = _coturn_pid(turn)
            if turn_pid:
                _pin_tree(turn_pid, common.LOAD_CPU)
            timing = {"warm_s": warm_s, "window_s": window_s, "turn_pid": turn_pid}
            async with _bare(turn) as (base, pid):
                def bare_step(n: int) -> Any:
                    visits = [(f"bare{i}", f"v{i}:family", f"v{i}:person") for i in range(n)]
                    return _step(base, pid, visits, clip, system="baseline", label=label(n),
                                 **timing)
                bare_rows, bare_sustained = await _ramp(bare_step, steps)
            async with common.database("sqlite", wd) as db, \
                    common.kinwire(db, wd, turn_secret=turn.secret, turn_urls=turn.url,
                                   relay_loopback_only="true", visit_minute_s=60,
                                   ws_commands_per_s=1000) as server, \
                    aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                pairs = [await _pair(http, server) for _ in range(max(steps))]

                async def visits(n: int, record: bool = False) -> list[tuple[str, str, str]]:
                    return [(await _visit_rows(db, family_id, record), family, person)
                            for family, person, family_id in pairs[:n]]

                async def step(n: int) -> Any:
                    return await _step(server.base, server.proc.pid, await visits(n), clip,
                                       system="kinwire", label=label(n), **timing)
                rows, sustained = await _ramp(step, steps)
                recorded = [] if tiny else [await _step(
                    server.base, server.proc.pid, await visits(1, True), clip,
                    system="kinwire", label=label(1, " recorded"), **timing)]
    one, bare_one = rows[0], bare_rows[0]
    return {"scenario": "relay", "size": size, "rows": [*rows, *recorded, *bare_rows],
            "targets": [
                common.target(f"relayed visits one core sustains at {width}x{height}, "
                              f">= {FPS_MIN} frames/s both ways", sustained, ">= 1",
                              sustained >= 1),
                common.target("relayed visits sustained, kinwire / baseline",
                              sustained / bare_sustained if bare_sustained else 0.0,
                              "reported", True),
                common.target("server CPU per relayed visit, kinwire / baseline",
                              one["cpu_per_visit_pct"] / max(bare_one["cpu_per_visit_pct"], 0.1),
                              "reported", True)],
            "notes": [f"clients send pre-encoded VP8 {width}x{height} at {SOURCE_FPS} frames/s "
                      "and a 400 Hz Opus tone; the server decodes and re-encodes each video "
                      "(MediaRelay); coturn on the load core; baseline: "
                      "bench/baselines/relay_bare.py",
                      f"steps {steps}, warm {warm_s} s, window {window_s} s; kinwire sustained "
                      f"{sustained}, baseline {bare_sustained}"]}
