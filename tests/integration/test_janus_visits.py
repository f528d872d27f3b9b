"""Visits on Janus, billed from Janus's events (issue 16; docs/visits.md, "Trust", and
docs/deploy.md, "Janus fleet"). Real processes: two `kinwire serve` with
KINWIRE_MEDIA_ENGINE=janus on PostgreSQL and a private Redis, a real `janus` from deploy/janus/,
and aiortc parties that join through Kinwire's WebSocket (`visit.join` answers their Janus
credentials) and publish into the visit's room. Janus posts its events through a round-robin
balancer: each post goes to the other process.

Adversaries: a balancer that splits a handle's events across processes (before, a handle's
state lived in the memory of the process that saw it attach); a family client that reports its
media connected while it sends none (relay mode reads no client report: not billed); a Janus
server killed -9 in the middle of a paid minute (its observations stop counting: the visit
pauses, and the time after its last health check is not billed); a staff end (the room is
destroyed: the parties' media is cut at the server).

The real clock on purpose, and only as instants and intervals: Janus stamps its recordings and
checks its tokens' expiry on the machine's clock, and the visits are written as under way now
(no booking, no visiting hours, no facility day), so the date and hour cannot matter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import av
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from billing import ledger
from server.blobs.configured import open_blobs
from server.broker.memory import MemoryBroker
from server.doctor import janus_hosts_folders
from server.housekeeping import Housekeeping
from server.http.janus_events import PATH
from server.http.metrics import Metrics
from server.janus_files import RemoteFolders, Unreachable
from server.janus_recordings import JanusRecordings
from server.recordings import Recordings
from server.schema import recording_segments, recordings, utcnow
from server.settings import Settings
from signalling import janus_recording
from signalling.janus import JanusConfig, JanusEngine
from signalling.media import SyntheticVideoTrack
from signalling.tables import janus_handles, visits
from signalling.visit_client import VisitClient
from store import Store
from tests.conftest import test_settings
from tests.integration.test_janus_events import publishing
from tests.integration.test_relay import staff_of
from tests.integration.test_visit_e2e import MINUTE_S, account_id, debits, visit_now
from tests.support.janus import Janus, private_janus, running_janus
from tests.support.nginx import ROOT, private_nginx, self_signed, templated
from tests.support.nodes import Node, Peer, RedisServer, cluster, make_pair
from tests.support.processes import free_port

TOLERANCE_S = 1.0  # an event post, a meter pass and a debit, on a loaded machine
LIVE_WAIT_S = 30.0  # ICE, DTLS and the first packets through Janus, two cores shared


class Ports:
    def __init__(self) -> None:
        self.a, self.b, self.balancer = free_port(), free_port(), free_port()

    @property
    def events_url(self) -> str:  # Janus posts to the balancer, which alternates A and B
        return f"http://127.0.0.1:{self.balancer}{PATH}"


@asynccontextmanager
async def round_robin(ports: Ports) -> AsyncIterator[list[int]]:
    """A load balancer in front of the two processes that sends each post of Janus's event
    handler to the other process than the last one: a handle's `attached` and its later
    events land on different processes. Yields the count of posts each process answered."""
    backends, answered, turn = [ports.a, ports.b], [0, 0], [0]
    async with aiohttp.ClientSession() as http:
        async def forward(request: web.Request) -> web.Response:
            index = turn[0] % 2
            turn[0] += 1
            async with http.post(f"http://127.0.0.1:{backends[index]}{PATH}",
                                 data=await request.read(),
                                 headers={k: v for k, v in request.headers.items()
                                          if k in ("Authorization", "Content-Type")}) as r:
                body = await r.read()
                if r.status == 204:
                    answered[index] += 1
                return web.Response(status=r.status, body=body or None)

        app = web.Application()
        app.router.add_post(PATH, forward)
        server = TestServer(app, host="127.0.0.1", port=ports.balancer)
        await server.start_server(shutdown_timeout=1.0)
        try:
            yield answered
        finally:
            await server.close()


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports()


@pytest.fixture(scope="module")
def janus(ports: Ports, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Janus]:
    """One Janus for the module (the kill test starts its own)."""
    with private_janus(tmp_path_factory.mktemp("janus"), events_url=ports.events_url) as j:
        yield j


def janus_env(*fleet: Janus, pulled: Pulled | None = None) -> dict[str, str]:
    s = fleet[0].secrets  # the same on every server of the fleet
    # one folder for the fleet's .mjr files, shared with Kinwire (same host here), or the
    # Janus host's folder served by nginx and pulled into Kinwire's own
    files = dict(KINWIRE_JANUS_RECORDINGS_DIR=str(fleet[0].recordings_dir)) if pulled is None \
        else pulled.env
    return dict(KINWIRE_MEDIA_ENGINE="janus",
                KINWIRE_JANUS_URLS=",".join(j.api_url for j in fleet),
                KINWIRE_JANUS_ADMIN_URLS=",".join(j.admin_url for j in fleet),
                KINWIRE_JANUS_API_SECRET=s.api_secret,
                KINWIRE_JANUS_ADMIN_SECRET=s.admin_secret,
                KINWIRE_JANUS_TOKEN_SECRET=s.token_secret,
                KINWIRE_JANUS_ROOM_ADMIN_KEY=s.room_admin_key,
                KINWIRE_JANUS_EVENTS_PASSWORD=s.events_password,
                KINWIRE_VISIT_MINUTE_S=str(MINUTE_S), **files)


@dataclass
class Pulled:
    """A Janus host's recordings folder served by deploy/nginx/janus-recordings.conf (only
    its address, paths and certificate changed), pulled into `into` by Kinwire."""
    served: Path  # the rooms' rec_dir on the Janus host
    into: Path
    port: int
    cert: Path
    password: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/recordings/"

    @property
    def env(self) -> dict[str, str]:
        return dict(KINWIRE_JANUS_RECORDINGS_DIR=str(self.into),
                    KINWIRE_JANUS_REC_DIR=str(self.served),
                    KINWIRE_JANUS_RECORDINGS_URLS=self.url,
                    KINWIRE_JANUS_RECORDINGS_PASSWORD=self.password,
                    KINWIRE_JANUS_RECORDINGS_CA=str(self.cert))  # self-signed: its own CA


@asynccontextmanager
async def served_recordings(served: Path, folder: Path) -> AsyncIterator[Pulled]:
    pulled, site = await asyncio.to_thread(recordings_site, served, folder)
    async with private_nginx(folder, pulled.port, site):
        yield pulled


def recordings_site(served: Path, folder: Path) -> tuple[Pulled, str]:
    """The deploy file for `served`, its certificate and password file made in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(folder, "janus1-recordings.kinwire.internal")
    pulled = Pulled(served, folder / "pulled", free_port(), cert)
    pulled.into.mkdir()
    salt = secrets.token_bytes(8)  # nginx's {SSHA}: SHA-1 of password and salt, then the salt
    digest = hashlib.sha1(pulled.password.encode() + salt).digest()  # noqa: S324 - its format
    hashed = base64.b64encode(digest + salt).decode()
    (folder / "htpasswd").write_text(f"kinwire:{{SSHA}}{hashed}\n")
    return pulled, templated(RECORDINGS_SITE.read_text(), {
        "listen 10.0.0.11:8443 ssl;": f"listen 127.0.0.1:{pulled.port} ssl;",
        "/etc/ssl/kinwire/janus1-recordings.pem": str(cert),
        "/etc/ssl/kinwire/janus1-recordings.key.pem": str(key),
        "alias /var/lib/janus/recordings/;": f"alias {served}/;",
        "/etc/nginx/kinwire-recordings.htpasswd": str(folder / "htpasswd")})


RECORDINGS_SITE = ROOT / "deploy" / "nginx" / "janus-recordings.conf"


@asynccontextmanager
async def kinwires(pg: str, tmp_path: Path, ports: Ports, *fleet: Janus,
                   pulled: Pulled | None = None, media: bool = True,
                   ) -> AsyncIterator[tuple[list[Node], aiohttp.ClientSession]]:
    """Two Kinwire processes behind the round-robin balancer for Janus's posts; with `media`
    (parties publish), both must have answered some of them."""
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with cluster(pg, redis.url, tmp_path, ports=[ports.a, ports.b],
                           **janus_env(*fleet, pulled=pulled)) as nodes, \
                round_robin(ports) as answered, \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield nodes, http
            print(f"event posts answered by A, B: {answered}")
            assert not media or min(answered) > 0, answered
    finally:
        redis.stop()


async def row_of(db: str, visit_id: str) -> Any:
    store = Store(db)
    try:
        async with store.read() as conn:
            return (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
    finally:
        await store.close()


async def until_status(db: str, visit_id: str, wanted: set[str],
                       timeout_s: float = LIVE_WAIT_S) -> float:
    """Wait for the visit's status to be one of `wanted`; returns when (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while (await row_of(db, visit_id)).status not in wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"{visit_id} not {wanted} within {timeout_s} s")
        await asyncio.sleep(0.1)
    return time.monotonic()


class LivePeer(Peer):
    """A peer that also keeps the live pushes (no seq): `visit.media_lost` among them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.live: list[dict[str, Any]] = []

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if "id" in frame and frame["id"] in self.replies:
                future = self.replies.pop(frame["id"])
                if not future.done():
                    future.set_result(frame)
            elif "seq" in frame:
                self.keep(frame)
            elif "type" in frame:
                self.live.append(frame)

    def heard(self, kind: str) -> bool:
        return any(frame["type"] == kind for frame in self.live)


async def joined(http: aiohttp.ClientSession, node: Node, token: str,
                 visit_id: str) -> tuple[LivePeer, Any]:
    """A party's socket on `node`, joined: the peer and its Janus credentials."""
    peer = LivePeer(http, node, token, "kinwire.v1.json")
    await peer.connect()
    reply = await peer.call("visit.join", visit_id=visit_id)
    assert "ok" in reply, reply
    creds = reply["ok"]["janus"]
    assert set(creds) == {"server", "room", "pin", "token", "feed", "expires_at"}
    return peer, SimpleNamespace(**creds)


async def a_visit(http: aiohttp.ClientSession, a: Node, b: Node, db: str,
                  record: bool = False) -> tuple[str, ...]:
    family_token, person_token = await make_pair(http, a, b, db)
    family_id = await account_id(http, a, family_token)
    visit_id, facility_id = await visit_now(db, family_id, media="relay", record=record)
    return visit_id, facility_id, family_token, person_token


def assert_billed_for(paid: int, live_s: float, who: str) -> None:
    assert (paid - 1) * MINUTE_S < live_s + TOLERANCE_S, f"{who}: billed beyond the call"
    assert paid * MINUTE_S > live_s - TOLERANCE_S, f"{who}: connected time went unbilled"


class DeadCamera(SyntheticVideoTrack):
    """A camera that never yields a frame: the client publishes, and sends no media."""

    async def recv(self):  # type: ignore[override]
        await asyncio.Event().wait()


async def honest_visit(http: aiohttp.ClientSession, a: Node, b: Node, db: str,
                       janus: Janus) -> tuple[int, float]:
    """Both parties publish; the family hangs up its Janus session after ~3 minutes."""
    visit_id, _, family_token, person_token = await a_visit(http, a, b, db)
    family, family_creds = await joined(http, a, family_token, visit_id)
    person, person_creds = await joined(http, b, person_token, visit_id)
    try:
        assert (await row_of(db, visit_id)).media_server == janus.api_url
        # The embedded relay does not take the visit's signals.
        refused = await family.call("visit.signal", visit_id=visit_id,
                                    description={"type": "offer", "sdp": "v=0\r\n"})
        assert refused["error"]["code"] == "janus_media", refused
        async with publishing(janus, person_creds):
            async with publishing(janus, family_creds):
                live_at = await until_status(db, visit_id, {"live"})
                await asyncio.sleep(3.2 * MINUTE_S)
            stopped_at = time.monotonic()  # the family's peer connection and session closed
            paused_at = await until_status(db, visit_id, {"paused"}, 5.0)
            print(f"honest: paused {paused_at - stopped_at:.2f} s after the family hung up")
            await asyncio.sleep(MINUTE_S + 1.0)
        return len(await debits(db, visit_id)), stopped_at - live_at
    finally:
        await family.close()
        await person.close()


async def lying_visit(http: aiohttp.ClientSession, a: Node, b: Node, db: str,
                      janus: Janus) -> tuple[int, str]:
    """The family publishes a camera that sends nothing and reports `connected` anyway."""
    visit_id, _, family_token, person_token = await a_visit(http, a, b, db)
    family, family_creds = await joined(http, a, family_token, visit_id)
    person, person_creds = await joined(http, b, person_token, visit_id)
    try:
        async with publishing(janus, person_creds), \
                publishing(janus, family_creds, video=DeadCamera(320, 240, 15)):
            end = time.monotonic() + 4 * MINUTE_S
            while time.monotonic() < end:
                await family.call("visit.media", visit_id=visit_id, state="connected")
                await asyncio.sleep(0.5)
            status = (await row_of(db, visit_id)).status
        return len(await debits(db, visit_id)), status
    finally:
        await family.close()
        await person.close()


@pytest.mark.timeout(180)
async def test_parties_joining_through_kinwire_are_billed_from_janus_s_events(
        pg_db: str, tmp_path: Path, ports: Ports, janus: Janus) -> None:
    """An honest visit is billed for its connected time, as Janus saw it; in the same run a
    family that claims `connected` while its camera sends nothing pays nothing."""
    async with kinwires(pg_db, tmp_path, ports, janus) as ((a, b), http):
        (paid, live_s), (lied, status) = await asyncio.gather(
            honest_visit(http, a, b, pg_db, janus), lying_visit(http, a, b, pg_db, janus))
    print(f"honest: {paid} minutes for {live_s:.2f} s live; liar: {lied} minutes, {status}")
    assert paid >= 3
    assert_billed_for(paid, live_s, "honest")
    assert lied == 0 and status != "live"


@pytest.mark.timeout(240)
async def test_a_janus_killed_mid_call_pauses_the_visit_and_bills_no_gap(
        pg_db: str, tmp_path: Path, ports: Ports) -> None:
    """kill -9 of the Janus holding the call ~0.6 minutes into a paid minute: the visit pauses
    once the server's liveness lease runs out, and no time after its last good health check is
    billed (before: the handles' last state, `connected`, stood on the row for ever). Both
    parties are told (`visit.media_lost`) and join again: the room is placed again on the
    other Janus, and billing resumes. The visit is recorded: once staff end it, its recording
    holds both rooms' media, the dead server's unfinished `.mjr.tmp` files included, with the
    gap between them."""
    async with running_janus(tmp_path / "j1", events_url=ports.events_url) as first, \
            running_janus(tmp_path / "j2", events_url=ports.events_url,
                          janus_secrets=first.secrets) as second, \
            kinwires(pg_db, tmp_path, ports, first, second) as ((a, b), http):
        by_url = {first.api_url: first, second.api_url: second}
        visit_id, facility_id, family_token, person_token = await a_visit(http, a, b, pg_db,
                                                                          record=True)
        family, family_creds = await joined(http, a, family_token, visit_id)
        person, person_creds = await joined(http, b, person_token, visit_id)
        try:
            placed = by_url[family_creds.server]
            published_at = utcnow()
            async with publishing(placed, person_creds), publishing(placed, family_creds):
                live_at = await until_status(pg_db, visit_id, {"live"})
                live_wall = utcnow()
                await asyncio.sleep(2.6 * MINUTE_S)
                await asyncio.to_thread(placed.kill)
                killed_at = time.monotonic()
                paused_at = await until_status(pg_db, visit_id, {"paused"}, 10.0)
                await asyncio.sleep(2 * MINUTE_S)
                # The meter told both parties that their media server is lost.
                assert family.heard("visit.media_lost") and person.heard("visit.media_lost")
                paid_by_gap = len(await debits(pg_db, visit_id))
                row = await row_of(pg_db, visit_id)
            # The parties join again (their media died with the server): a new room.
            family_creds = SimpleNamespace(**(await family.call(
                "visit.join", visit_id=visit_id))["ok"]["janus"])
            person_creds = SimpleNamespace(**(await person.call(
                "visit.join", visit_id=visit_id))["ok"]["janus"])
            moved = by_url[family_creds.server]
            assert moved is not placed and person_creds.server == moved.api_url
            async with publishing(moved, person_creds), publishing(moved, family_creds):
                back_at = await until_status(pg_db, visit_id, {"live"})
                await asyncio.sleep(2 * MINUTE_S)
            stopped_at, stopped_wall = time.monotonic(), utcnow()
            await until_status(pg_db, visit_id, {"paused"}, 5.0)
            await asyncio.sleep(MINUTE_S + 1.0)
            paid = len(await debits(pg_db, visit_id))
            staff = await staff_of(http, b, pg_db, facility_id)
            async with http.post(f"{b.base}/api/v1/visits/{visit_id}/end",
                                 json={"reason": "rules"},
                                 headers={"Authorization": f"Bearer {staff}"}) as r:
                assert r.status == 200, await r.text()
            record = await listed(http, b, staff, visit_id)
            await plays_both_videos(http, b, staff, record, tmp_path / "played.webm")
        finally:
            await family.close()
            await person.close()
    live_s, again_s = killed_at - live_at, stopped_at - back_at
    print(f"killed after {live_s:.2f} s live; paused {paused_at - killed_at:.2f} s after the "
          f"kill; {paid_by_gap} minutes paid by then; live again {back_at - paused_at:.2f} s "
          f"after the pause for {again_s:.2f} s; {paid} minutes in all")
    assert row.status == "paused" and not row.server_media
    assert (paid_by_gap - 1) * MINUTE_S < live_s + TOLERANCE_S, "billed after the kill"
    assert paid_by_gap * MINUTE_S > live_s - TOLERANCE_S - 1.0, "connected time went unbilled"
    assert (paid - 1) * MINUTE_S < live_s + again_s + TOLERANCE_S, "billed beyond the call"
    assert paid > paid_by_gap, "billing did not resume on the new room"
    # From the first room's first packet to the second room's last, the gap between included.
    # The first packet comes after publishing began (then the peer's ICE and DTLS: 2.1 s more
    # than the recording once in a full run) and before Kinwire saw the visit live (Janus's
    # media event).
    span_s = (stopped_wall - published_at).total_seconds()
    seen_s = (stopped_wall - live_wall).total_seconds()
    print(f"recording of both rooms: {record['duration_s']:.2f} s for {span_s:.2f} s from "
          f"publishing in the first to hanging up in the second ({seen_s:.2f} s from live)")
    assert seen_s - 1.0 < record["duration_s"] <= span_s + 0.5, (record, seen_s, span_s)
    assert not janus_recording.files(first.recordings_dir, visit_id), "files left"


@pytest.mark.timeout(150)
async def test_reference_clients_see_each_other_through_janus_and_move_when_it_dies(
        pg_db: str, tmp_path: Path, ports: Ports) -> None:
    """The reference visit client (signalling/visit_client.py, signalling/janus_party.py)
    joins through Kinwire, publishes into the visit's room and subscribes to the other party's
    feed: each party receives the other's video and audio. Adversary: kill -9 of the Janus
    carrying the call, and nobody tells the clients what to do: they notice their server gone
    (its long poll fails), join again until Kinwire places the room on the other Janus (once
    the dead one's liveness lease runs out), and each receives the other's media again within
    10 s of the kill (issue 16)."""
    async with running_janus(tmp_path / "j1", events_url=ports.events_url) as first, \
            running_janus(tmp_path / "j2", events_url=ports.events_url,
                          janus_secrets=first.secrets) as second, \
            kinwires(pg_db, tmp_path, ports, first, second) as ((a, b), http):
        by_url = {first.api_url: first, second.api_url: second}
        visit_id, _, family_token, person_token = await a_visit(http, a, b, pg_db)
        family = VisitClient(a.base, family_token, visit_id, width=320, height=240, fps=15)
        person = VisitClient(b.base, person_token, visit_id, codec="msgpack", width=320,
                             height=240, fps=15)
        try:
            async with asyncio.timeout(LIVE_WAIT_S):
                await asyncio.gather(family.start(), person.start())
                for client in (family, person):
                    await client.wait_frames("video", 15)
                    await client.wait_frames("audio", 25)
            assert family.media == person.media == "relay" and family.pc is None
            assert family.janus_creds is not None and person.janus_creds is not None
            placed = by_url[family.janus_creds["server"]]
            assert person.janus_creds["server"] == placed.api_url
            await until_status(pg_db, visit_id, {"live"})
            await asyncio.to_thread(placed.kill)
            killed_at = time.monotonic()
            before = {client: client.frames["video"] for client in (family, person)}
            async with asyncio.timeout(10.0):
                for client in (family, person):  # a second of new video each way
                    await client.wait_frames("video", before[client] + 15)
            resumed_s = time.monotonic() - killed_at
            await until_status(pg_db, visit_id, {"live"}, 10.0)
            moved = (await row_of(pg_db, visit_id)).media_server
        finally:
            await family.close()
            await person.close()
    print(f"both parties' video again {resumed_s:.2f} s after the kill, through {moved}")
    assert moved != placed.api_url and moved in by_url
    for client in (family, person):
        assert client.janus_moves == 1 and client.reconnects == 0, client


# KINWIRE_TEST_LONG_RECORDING=1: the recorded visit runs 2 minutes (issue 16's "a 2-minute
# visit"), not 3 s: ~2 minutes longer, so not in make test; run by hand to check that what
# the short one shows (the duration, both parties' video decoded) holds for a long one.
LONG_RECORDING = os.environ.get("KINWIRE_TEST_LONG_RECORDING") == "1"
RECORDED_S = 120.0 if LONG_RECORDING else 3.0


@pytest.mark.timeout(150 + (RECORDED_S if LONG_RECORDING else 0))
async def test_a_staff_end_destroys_the_room_and_keeps_the_recording(
        pg_db: str, tmp_path: Path, ports: Ports, janus: Janus,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Staff end the recorded visit on process B: the room is gone from Janus (the media cut
    there) within a second of the end's answer, the visit's handles are forgotten, and its
    .mjr files become one recording, listed for the facility's staff, as long as the media
    was, with both parties' video. The Janus host shares no folder with Kinwire here: its
    folder is served by deploy/nginx/janus-recordings.conf, and the files are pulled from it
    and deleted on it. Before it, the two parties joining at once on two processes got one
    room, and staff a watcher's token. Beside it, the adversaries of the recording
    (`interrupted_visit`, on the shared folder)."""
    async with served_recordings(janus.recordings_dir, tmp_path / "janus-host") as pulled, \
            kinwires(pg_db, tmp_path, ports, janus, pulled=pulled) as ((a, b), http):
        visit_id, facility_id, family_token, person_token = await a_visit(http, a, b, pg_db,
                                                                          record=True)
        staff = await staff_of(http, b, pg_db, facility_id)
        # Both join at once, on two processes: the room is placed once, on one server.
        (family, family_creds), (person, person_creds) = await asyncio.gather(
            joined(http, a, family_token, visit_id), joined(http, b, person_token, visit_id))
        assert (family_creds.server, family_creds.room) == (person_creds.server, visit_id)
        assert (family_creds.feed, person_creds.feed) == ("family", "person")
        watcher = Peer(http, b, staff, "kinwire.v1.json")
        await watcher.connect()
        watch = (await watcher.call("visit.watch", visit_id=visit_id))["ok"]["janus"]
        assert watch["feed"] is None and watch["room"] == visit_id
        assert watch["token"] not in (family_creds.token, person_creds.token)
        # A download of this visit's a stopped process left half-done where files are pulled
        left = pulled.into / f"videoroom-{visit_id}-user-family-1-video-0.mjr.part"
        await asyncio.to_thread(left.write_bytes, b"half a file")
        engine = engine_of(http, janus)
        beside = asyncio.create_task(interrupted_visit(http, a, b, pg_db, tmp_path, janus,
                                                       engine, monkeypatch))
        try:
            published_at = utcnow()
            async with publishing(janus, person_creds), publishing(janus, family_creds):
                await until_status(pg_db, visit_id, {"live"})
                live_at = utcnow()
                await asyncio.sleep(RECORDED_S)
                rooms = await engine.rooms_on(janus.api_url)
                assert await rooms.exists(visit_id)
                async with http.post(f"{b.base}/api/v1/visits/{visit_id}/end",
                                     json={"reason": "rules"},
                                     headers={"Authorization": f"Bearer {staff}"}) as r:
                    assert r.status == 200, await r.text()
                ended_at = time.monotonic()
                while await rooms.exists(visit_id):
                    assert time.monotonic() - ended_at < 1.0, "the room outlived the end by 1 s"
                    await asyncio.sleep(0.02)
                gone_at = time.monotonic()
                store = Store(pg_db)
                try:
                    while await handles_of(store, visit_id):
                        assert time.monotonic() - ended_at < 2.0, "handles kept 2 s after the end"
                        await asyncio.sleep(0.02)
                finally:
                    await store.close()
                print(f"room gone {gone_at - ended_at:.2f} s and the visit's handles forgotten "
                      f"{time.monotonic() - ended_at:.2f} s after the end")
            record = await listed(http, b, staff, visit_id)
            print(f"recording listed {time.monotonic() - ended_at:.2f} s after the end")
            await beside
        finally:
            beside.cancel()
            await engine.close()
            await watcher.close()
            await family.close()
            await person.close()
        row = await row_of(pg_db, visit_id)
        started, ended = (datetime.fromisoformat(record[k]) for k in ("started_at", "ended_at"))
        # By Janus's clock (this machine's): from the first packet, which came once the
        # parties published and before the visit was live, to the last, which came as the
        # visit ended (its room destroyed a moment after the row's end was written).
        late_s, off_s = ((started - published_at).total_seconds(),
                         (ended - row.ended_at).total_seconds())
        print(f"recording {record['duration_s']:.2f} s: starts {late_s:.2f} s after "
              f"publishing, ends {off_s:+.2f} s from the visit's end")
        assert published_at <= started <= live_at, (published_at, started, live_at)
        assert abs((ended - row.ended_at).total_seconds()) < 1.0, (ended, row.ended_at)
        assert abs(record["duration_s"] - (ended - started).total_seconds()) < 0.1
        assert record["duration_s"] >= RECORDED_S, record
        await plays_both_videos(http, b, staff, record, tmp_path / "played.webm")
    assert not janus_recording.files(janus.recordings_dir, visit_id), "left on the Janus host"
    assert not list(pulled.into.iterdir()), "left where they were pulled to"


def engine_of(http: aiohttp.ClientSession, janus: Janus) -> JanusEngine:
    """Kinwire's engine, as a test's own client of the server (its rooms, their secrets)."""
    s = janus.secrets
    return JanusEngine(http, JanusConfig((janus.api_url,), (janus.admin_url,), s.api_secret,
                                         s.admin_secret, s.token_secret, s.room_admin_key,
                                         str(janus.recordings_dir)))


async def listed(http: aiohttp.ClientSession, node: Node, staff: str, visit_id: str,
                 timeout_s: float = 30.0) -> dict[str, Any]:
    """The visit's recording as GET /recordings lists it to the facility's staff (waited for:
    converted after the end)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{node.base}/api/v1/recordings", params={"visit_id": visit_id},
                            headers={"Authorization": f"Bearer {staff}"}) as r:
            assert r.status == 200, await r.text()
            shown = (await r.json())["recordings"]
        if shown:
            assert len(shown) == 1, shown
            return shown[0]
        assert time.monotonic() < deadline, f"no recording of {visit_id} in {timeout_s} s"
        await asyncio.sleep(0.2)


async def plays_both_videos(http: aiohttp.ClientSession, node: Node, staff: str,
                            record: dict[str, Any], path: Path) -> None:
    """The recording, downloaded as staff: its SHA-256 is the record's, and PyAV decodes both
    parties' video (VP8 from Janus, not re-encoded) for most of its length."""
    async with http.get(f"{node.base}/api/v1/recordings/{record['id']}/media",
                        headers={"Authorization": f"Bearer {staff}"}) as r:
        assert r.status == 200, await r.text()
        data = await r.read()
    assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
    await asyncio.to_thread(path.write_bytes, data)
    with av.open(str(path)) as container:
        titles = [s.metadata.get("title") for s in container.streams]
        assert titles == ["family video", "person video", "family audio", "person audio"]
        assert [container.streams[i].codec_context.name for i in (0, 1)] == ["vp8", "vp8"]
        frames = [0, 0]
        for packet in container.demux(*container.streams.video):
            frames[packet.stream.index] += len(packet.decode())
    # 15 frames a second from each synthetic camera; ICE and the first key frame cost some
    assert min(frames) >= 5 * (record["duration_s"] - 2), (frames, record["duration_s"])


async def interrupted_visit(http: aiohttp.ClientSession, a: Node, b: Node, db: str,
                            tmp_path: Path, janus: Janus, engine: JanusEngine,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Adversaries of the recording: its conversion killed (janus-pp-rec dies of SIGKILL, as
    when the process is stopped mid-way): the files stay and no row is made; then two
    processes finish it at once while housekeeping's sweep does too, a third finisher lists
    the files only after they were kept and deleted, and one repeats: one recording (the same
    for all), one segment, one blob, the files gone. The visit's end is written straight
    into its row, unannounced, so that no Kinwire process finishes it (its ending process
    died); the finishers are this test's, on the processes' database and blob store."""
    visit_id, facility_id, *_ = await a_visit(http, a, b, db, record=True)
    row = await row_of(db, visit_id)
    family_id, person_id = row.family_id, row.person_id
    room = engine.room(visit_id, janus.api_url, record=True)
    await engine.open(room)
    until_ = utcnow() + timedelta(minutes=5)
    async with publishing(janus, engine.credentials(room, "person", person_id, until_)), \
            publishing(janus, engine.credentials(room, "family", family_id, until_)):
        await asyncio.sleep(4.0)
    await engine.end(room)
    stores = [Store(db), Store(db)]  # two processes
    async with stores[0].write() as conn:
        await conn.execute(visits.update().where(visits.c.id == visit_id).values(
            status="ended", end_reason="hung_up", ended_at=utcnow()))
    settings = test_settings(db, tmp_path)  # the processes' KINWIRE_DATA_DIR
    blobs = open_blobs(settings)
    keepers = [JanusRecordings(store, Recordings(store, blobs.recordings, utcnow),
                               janus.recordings_dir, blobs.recording_staging, sweep_grace_s=0)
               for store in (*stores, stores[1])]
    try:
        killed = tmp_path / "killed-pp-rec"
        killed.write_text("#!/bin/sh\nkill -9 $$\n")
        killed.chmod(0o755)
        with monkeypatch.context() as patch:
            patch.setattr(janus_recording, "PP_REC", str(killed))
            with pytest.raises(janus_recording.ConvertError):
                await keepers[0].finish(visit_id)
        assert len(janus_recording.files(janus.recordings_dir, visit_id)) == 4
        assert await kept(stores[0], visit_id) == (0, 0)
        # housekeeping on the second "process", its sweep of the folder among its jobs
        metrics = Metrics()
        housekeeping = Housekeeping(stores[1], MemoryBroker(), utcnow, node_id="hk",
                                    lease_s=3.0, batch_rows=10, retention_s=30 * 86_400,
                                    metrics=metrics, per_process=lambda now: None,
                                    janus_recordings=keepers[1])
        # A third finisher that found no recording yet, and lists the files only after the
        # others kept it and deleted them (held at that point, so the race is not left to
        # chance; it returned None before).
        late, reached, gate = keepers[2], asyncio.Event(), asyncio.Event()
        checked = late._settled

        async def held(visit: str) -> float:
            reached.set()
            await gate.wait()
            return await checked(visit)

        monkeypatch.setattr(late, "_settled", held)
        behind = asyncio.create_task(late.finish(visit_id))
        await asyncio.wait_for(reached.wait(), 5.0)
        began = time.monotonic()
        results = await asyncio.gather(keepers[0].finish(visit_id), keepers[1].finish(visit_id),
                                       housekeeping.run_pass(asyncio.Event()))
        took_s = time.monotonic() - began
        gate.set()
        assert (await behind)["id"] == results[0]["id"]
        # The sweep kept this visit (and, when it ended meanwhile, the visit of the test this
        # one runs beside, whose files share the folder: 2 once in a loaded run); that this
        # visit was kept once is what the rows and the blob below show.
        assert metrics.counter_value("kinwire_housekeeping_rows_total",
                                     job="janus_recordings") >= 1
        again = await keepers[0].finish(visit_id)
        assert results[0]["id"] == results[1]["id"] == again["id"]
        assert await kept(stores[0], visit_id) == (1, 1)
        folder = settings.resolved_recordings_dir / facility_id
        assert len(list(folder.iterdir())) == 1, "a second blob, or none"
        assert not janus_recording.files(janus.recordings_dir, visit_id)
        staff = await staff_of(http, b, db, facility_id)
        record = await listed(http, b, staff, visit_id)
        print(f"interrupted: kept {record['duration_s']:.2f} s of visit by two finishers and "
              f"a sweep at once in {took_s:.2f} s")
        # The 4 s of publishing, give or take its start and end under load (4.57 s once in a
        # full run); two finishers' rooms laid end to end would be twice that
        assert 2.0 < record["duration_s"] < 6.0
    finally:
        for store in stores:
            await store.close()
        await blobs.close()


async def kept(store: Store, visit_id: str) -> tuple[int, int]:
    """(recordings rows, segments) of the visit."""
    async with store.read() as conn:
        rows = (await conn.execute(select(recordings.c.id).where(
            recordings.c.visit_id == visit_id))).all()
        segments = (await conn.execute(select(recording_segments.c.segment).where(
            recording_segments.c.recording_id.in_([r.id for r in rows])))).all()
    return len(rows), len(segments)


async def handles_of(store: Store, visit_id: str) -> int:
    """The visit's handles the janus_handles table still holds."""
    async with store.read() as conn:
        return len((await conn.execute(select(janus_handles.c.handle_id).where(
            janus_handles.c.visit_id == visit_id))).all())


@pytest.mark.timeout(120)
async def test_the_balance_running_out_ends_the_visit_and_destroys_the_room(
        pg_db: str, tmp_path: Path, ports: Ports, janus: Janus) -> None:
    """The meter ends the visit (`balance_exhausted`, on whichever process holds it): that
    process destroys the room, as a staff end's does. The visit is privileged (`record`
    off): it leaves no recording and no file."""
    async with kinwires(pg_db, tmp_path, ports, janus) as ((a, b), http):
        visit_id, _, family_token, person_token = await a_visit(http, a, b, pg_db)
        store = Store(pg_db)
        try:
            async with store.write() as conn:  # two minutes' worth of the family's balance
                row = (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
                price = await ledger.balance(conn, row.family_id) // 2
                await conn.execute(visits.update().where(visits.c.id == visit_id)
                                   .values(minute_price=price))
        finally:
            await store.close()
        family, family_creds = await joined(http, a, family_token, visit_id)
        person, person_creds = await joined(http, b, person_token, visit_id)
        s = janus.secrets
        engine = JanusEngine(http, JanusConfig((janus.api_url,), (janus.admin_url,),
                                               s.api_secret, s.admin_secret, s.token_secret,
                                               s.room_admin_key))
        try:
            async with publishing(janus, person_creds), publishing(janus, family_creds):
                await until_status(pg_db, visit_id, {"live"})
                ended_at = await until_status(pg_db, visit_id, {"ended"}, 4 * MINUTE_S + 5)
                rooms = await engine.rooms_on(janus.api_url)
                while await rooms.exists(visit_id):
                    assert time.monotonic() - ended_at < 1.0, "the room outlived the end by 1 s"
                    await asyncio.sleep(0.02)
                print(f"room gone {time.monotonic() - ended_at:.2f} s after the end was seen")
            row = await row_of(pg_db, visit_id)
            assert row.end_reason == "balance_exhausted"
            assert len(await debits(pg_db, visit_id)) == 2
            # Privileged (not recorded): Janus wrote no file, so no recording is made.
            assert not janus_recording.files(janus.recordings_dir, visit_id)
            store = Store(pg_db)
            try:
                assert await kept(store, visit_id) == (0, 0)
            finally:
                await store.close()
        finally:
            await engine.close()
            await family.close()
            await person.close()


@pytest.mark.timeout(60)
async def test_a_janus_host_s_folder_is_pulled_whole_or_not_at_all(tmp_path: Path) -> None:
    """server/janus_files.py against deploy/nginx/janus-recordings.conf (a real nginx): a
    room's finished files and a dead server's stale `.mjr.tmp` are pulled with their times,
    a `.tmp` still being written is waited for (up to the settling time) and left, another
    room's files are not touched, and DELETE removes on the host exactly what was pulled.
    Adversaries: a wrong password (nginx refuses), a host that does not answer, and a host
    that lists a file and sends less of it: each fails the pull (Unreachable), and nothing
    half-copied is left to be converted."""
    served, room = tmp_path / "served", "vis_pull"
    served.mkdir()
    finished = served / f"videoroom-{room}-user-family-1-video-0.mjr"
    finished.write_bytes(os.urandom(700_000))  # a few chunks
    dead = served / f"videoroom-{room}-user-person-1-video-0.mjr.tmp"
    dead.write_bytes(os.urandom(1000))
    os.utime(dead, (time.time() - 60, time.time() - 60))  # its server died a minute ago
    writing = served / f"videoroom-{room}-user-person-2-audio-1.mjr.tmp"
    writing.write_bytes(b"still open")
    other = served / "videoroom-vis_other-user-family-1-video-0.mjr"
    other.write_bytes(b"another visit")
    async with served_recordings(served, tmp_path / "host") as pulled:
        cert = str(pulled.cert)
        wrong = RemoteFolders((pulled.url,), "not-the-password", ca_file=cert)
        right = RemoteFolders((pulled.url,), pulled.password, ca_file=cert)
        down = RemoteFolders((pulled.url, f"http://127.0.0.1:{free_port()}/"), pulled.password,
                             ca_file=cert)
        try:
            with pytest.raises(Unreachable, match="401"):
                await wrong.pull(room, pulled.into, settle_s=1.0)
            with pytest.raises(Unreachable):
                await down.pull(room, pulled.into, settle_s=1.0)
            assert await down.rooms() == {room, "vis_other"}  # what answers is listed
            async def janus_writing() -> None:  # a live recorder: the file keeps changing
                while True:
                    with writing.open("ab") as out:
                        out.write(b"packet")
                    await asyncio.sleep(0.3)

            writer = asyncio.create_task(janus_writing())
            began = time.monotonic()
            try:
                taken = await right.pull(room, pulled.into, settle_s=2.0)
            finally:
                writer.cancel()
            waited_s = time.monotonic() - began
            assert sorted(f.name for f in taken) == sorted([finished.name, dead.name])
            assert waited_s >= 2.0, "a .tmp still being written was not waited for"
            for path in (finished, dead):
                copy = pulled.into / path.name
                assert copy.read_bytes() == path.read_bytes()
                assert int(copy.stat().st_mtime) == int(path.stat().st_mtime)
            assert sorted(p.name for p in pulled.into.iterdir()) == sorted(
                [finished.name, dead.name])
            await right.delete(taken)
            assert sorted(p.name for p in served.iterdir()) == sorted(
                [writing.name, other.name])
            # `kinwire doctor` says the same of each host
            settings = Settings(data_dir=str(tmp_path), janus_recordings_urls=(pulled.url,),
                                janus_recordings_dir=str(pulled.into),
                                janus_recordings_password=pulled.password,
                                janus_recordings_ca=cert)
            [listed] = await janus_hosts_folders(settings)
            [refused] = await janus_hosts_folders(settings.replace(
                janus_recordings_password="not-the-password-either"))
            assert (listed.status, refused.status) == ("ok", "fail"), (listed, refused)
            assert "2 visits' files waiting" in listed.detail, listed
        finally:
            for remote in (wrong, right, down):
                await remote.close()
    # A host that lists 1,000 bytes and sends 10 (its transfer cut short).
    app = web.Application()
    name = f"videoroom-{room}-user-family-2-video-0.mjr"

    async def listing(_: web.Request) -> web.Response:
        return web.json_response([{"name": name, "type": "file", "size": 1000,
                                   "mtime": "Mon, 07 Dec 2026 10:00:00 GMT"}])

    async def short(_: web.Request) -> web.Response:
        return web.Response(body=b"0123456789")

    app.router.add_get("/", listing)
    app.router.add_get(f"/{name}", short)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    cut = RemoteFolders((f"http://127.0.0.1:{server.port}/",), "password")
    try:
        with pytest.raises(Unreachable, match="10 bytes of 1000"):
            await cut.pull(room, pulled.into, settle_s=1.0)
        assert not (pulled.into / name).exists() and not list(pulled.into.glob("*.part"))
    finally:
        await cut.close()
        await server.close()


@pytest.mark.timeout(120)
async def test_forty_joins_at_once_on_two_processes_place_one_room(
        pg_db: str, tmp_path: Path, ports: Ports, janus: Janus) -> None:
    """The same request 40 times at once: ten sockets of the family on A and ten of the person
    on B each ask `visit.join` twice together, with two Janus servers in the fleet and no room
    placed yet. Every join is answered (20 commands at once are within a user's burst of 40:
    before server/gateway/limits.py's reserve drew again, all but a batch of 5 a process were
    refused), all name one server and one room, the visit's on the server its row names, and
    the other server has no room for it."""
    async with running_janus(tmp_path / "j2", events_url=ports.events_url,
                             janus_secrets=janus.secrets) as second, \
            kinwires(pg_db, tmp_path, ports, janus, second, media=False) as ((a, b), http):
        visit_id, _, family_token, person_token = await a_visit(http, a, b, pg_db)
        peers = [LivePeer(http, node, token, "kinwire.v1.json")
                 for node, token in ((a, family_token), (b, person_token)) for _ in range(10)]
        try:
            await asyncio.gather(*(peer.connect() for peer in peers))
            replies = await asyncio.gather(*(peer.call("visit.join", visit_id=visit_id)
                                             for peer in peers for _ in range(2)))
            assert all("ok" in r for r in replies), [r for r in replies if "ok" not in r]
            row = await row_of(pg_db, visit_id)
            placed = {(r["ok"]["janus"]["server"], r["ok"]["janus"]["room"]) for r in replies}
            assert placed == {(row.media_server, visit_id)}, (placed, row.media_server)
            by_url = {janus.api_url: janus, second.api_url: second}
            for url, server in by_url.items():
                rooms = await engine_of(http, server).rooms_on(url)
                assert await rooms.exists(visit_id) == (url == row.media_server), url
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))
            if (row := await row_of(pg_db, visit_id)).media_server:  # the module's Janus
                placed_on = janus if row.media_server == janus.api_url else second
                await engine_of(http, placed_on).end(
                    engine_of(http, placed_on).room(visit_id, row.media_server, record=False))
