"""Relay-mode visits end to end: two real server processes on one PostgreSQL and a private
Redis, a private coturn on loopback, aiortc reference clients (one per process). The server
terminates both peer connections (relay-only ICE through the coturn, KINWIRE_RELAY_LOOPBACK_ONLY),
forwards the media, records it unless privileged, lets staff watch, and cuts the media itself
when the visit ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import RTCBundlePolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from argon2 import PasswordHasher
from sqlalchemy import select

from server import accounts
from server.schema import recordings, utcnow
from signalling.visit_client import VisitClient, VisitError, rtc_configuration
from store import Store
from tests.integration.test_visit_e2e import account_id, stack, visit_now
from tests.support.nodes import make_pair, post

FAMILY_SIZE, PERSON_SIZE = (320, 240), (240, 176)  # told apart by the watcher
RELAY = {"KINWIRE_RELAY_LEASE_S": "3", "KINWIRE_RELAY_LOOPBACK_ONLY": "1"}


STAFF_PASSWORD = "staff pass"


async def new_staff(db: str, facility_id: str, name: str = "Officer") -> str:
    """A staff account of the facility, written straight to the store (the servers under
    test are other processes); returns its email. Its password is STAFF_PASSWORD."""
    email = f"staff-{secrets.token_hex(3)}@x.test"
    store = Store(db)
    try:
        async with store.write() as conn:
            hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
            await accounts.create(conn, role="staff", name=name, email=email,
                                  password_hash=hasher.hash(STAFF_PASSWORD),
                                  facility_id=facility_id, now=utcnow())
    finally:
        await store.close()
    return email


async def staff_of(http: aiohttp.ClientSession, node: Any, db: str, facility_id: str) -> str:
    """A staff account of the facility; returns its token."""
    email = await new_staff(db, facility_id)
    status, r = await post(http, node, "/auth/login", body={"email": email,
                                                            "password": STAFF_PASSWORD})
    assert status == 200, r
    return r["token"]


def party(node: Any, token: str, visit_id: str, size: tuple[int, int], *,
          kind: type[VisitClient] = VisitClient) -> VisitClient:
    return kind(node.base, token, visit_id, codec="json" if size == FAMILY_SIZE else "msgpack",
                loopback_only=True, width=size[0], height=size[1], fps=15)


class Stubborn(VisitClient):
    """A misbehaving client: it ignores `visit.ended` and keeps its peer connection open."""

    async def _handle(self, kind: str | None, data: dict[str, Any]) -> None:
        if kind == "visit.ended":
            self.events.append((kind, data))
            return
        await super()._handle(kind, data)


def udp_sockets_to(pid: int, port: int) -> int:
    """How many UDP sockets process `pid` holds connected to 127.0.0.1:`port` (the coturn):
    a server-side peer connection in relay-only ICE has exactly one (docs/turn.md)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def server_sockets(nodes: list[Any], turn: Any) -> int:
    return sum(udp_sockets_to(node.proc.pid, turn.port) for node in nodes)


def fingerprints(sdp: str) -> set[str]:
    return set(re.findall(r"a=fingerprint:\S+ (\S+)", sdp))


def candidate_ports(sdp: str) -> set[int]:
    return {int(p) for p in re.findall(r"a=candidate:\S+ \d+ \S+ \d+ \S+ (\d+) typ", sdp)}


def assert_through_the_server(family: VisitClient, person: VisitClient) -> None:
    """Each client's DTLS peer is not the other client (its certificate fingerprint differs:
    SRTP from the other client could not even be decrypted), and no candidate of one is the
    other's: both talk to the server, which decrypts and forwards the encoded frames."""
    assert family.pc is not None and person.pc is not None
    for one, other in ((family.pc, person.pc), (person.pc, family.pc)):
        assert fingerprints(one.remoteDescription.sdp)
        assert fingerprints(one.remoteDescription.sdp).isdisjoint(
            fingerprints(other.localDescription.sdp))
        assert candidate_ports(one.remoteDescription.sdp)
        assert candidate_ports(one.remoteDescription.sdp).isdisjoint(
            candidate_ports(other.localDescription.sdp))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def rows_of(db: str, visit_id: str) -> list[Any]:
    store = Store(db)
    try:
        async with store.read() as conn:
            return list((await conn.execute(select(recordings).where(
                recordings.c.visit_id == visit_id))).all())
    finally:
        await store.close()


async def recorded(db: str, visit_id: str, timeout_s: float = 10.0) -> Any:
    """The visit's one recording row, once the relay has kept it."""
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if rows := await rows_of(db, visit_id):
                break
            await asyncio.sleep(0.1)
    assert len(rows) == 1, rows
    return rows[0]


async def until(predicate: Any, timeout_s: float, step_s: float = 0.02) -> float:
    """Poll until predicate() holds; returns how long it took (AssertionError after timeout)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        assert loop.time() - started < timeout_s, f"not within {timeout_s} s"
        await asyncio.sleep(step_s)
    return loop.time() - started


async def test_a_relayed_visit_flows_through_the_server_and_is_recorded(
        pg_db: str, tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path, **RELAY) as (nodes, turn, http):
        a, b = nodes
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        person_id = await account_id(http, b, person_token)
        async with http.get(a.base + "/api/v1/me",
                            headers={"Authorization": f"Bearer {family_token}"}) as r:
            spare = (await r.json())["balance"] - 120  # two minutes at 50, and 20 over
        status, _ = await post(http, a, "/gifts", family_token,
                               {"to": person_id, "credits": spare},
                               **{"Idempotency-Key": "leave-120"})
        assert status == 201
        visit_id, _ = await visit_now(pg_db, family_id, media="relay", record=True)
        family = party(a, family_token, visit_id, FAMILY_SIZE)
        person = party(b, person_token, visit_id, PERSON_SIZE)
        loop = asyncio.get_running_loop()
        connected: dict[str, float] = {}

        async def note(name: str, client: VisitClient) -> None:
            await client.wait_connected()
            connected[name] = loop.time()

        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(30):
                await asyncio.gather(note("family", family), note("person", person))
                await family.wait_frames("video", 10)
                await person.wait_frames("video", 10)
                assert family.media == person.media == "relay"
                assert_through_the_server(family, person)
                assert server_sockets(nodes, turn) == 2, "one server-side peer per party"
                ended = await family.wait_event("visit.ended")
                ended_at = loop.time()
                await person.wait_event("visit.ended")
        finally:
            await family.close()
            await person.close()
        assert ended["reason"] == "balance_exhausted"
        assert family.frames.get("audio", 0) > 0 and person.frames.get("audio", 0) > 0
        record = await recorded(pg_db, visit_id)
        recording = tmp_path / "recordings" / record.location
        assert record.location.endswith(".webm") and record.segment == 1
        data = await asyncio.to_thread(recording.read_bytes)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record.bytes, record.sha256)
        assert (record.family_id, record.person_id) == (family_id, person_id)
        expected_s = ended_at - min(connected.values())
        assert abs(record.duration_ms / 1000 - expected_s) <= 1.0
        with av.open(str(recording)) as container:
            titles = [s.metadata.get("title") for s in container.streams]
            assert titles == ["family video", "person video", "family audio", "person audio"]
            # forwarded and remuxed as the parties encoded them (no x264/AAC re-encoding)
            assert [s.codec_context.name for s in container.streams] == \
                ["vp8", "vp8", "opus", "opus"]
            assert [s.type for s in container.streams] == ["video", "video", "audio", "audio"]
            duration_s = container.duration / 1_000_000
            packets = dict.fromkeys(range(4), 0)
            for packet in container.demux():
                if packet.size:
                    packets[packet.stream.index] += 1
        assert abs(duration_s - expected_s) <= 1.0, (duration_s, expected_s)
        assert packets[0] >= 10 * expected_s and packets[1] >= 10 * expected_s, packets
        assert packets[2] >= 20 * expected_s and packets[3] >= 20 * expected_s, packets
        assert names(tmp_path / "recordings" / ".partial") == [], "nothing left half-written"


async def test_a_privileged_visit_leaves_no_recording(pg_db: str, tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path, **RELAY) as (nodes, turn, http):
        a, b = nodes
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, _ = await visit_now(pg_db, family_id, media="relay", record=False)
        family = party(a, family_token, visit_id, FAMILY_SIZE)
        person = party(b, person_token, visit_id, PERSON_SIZE)
        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(30):
                await family.wait_frames("video", 10)
                await person.wait_frames("video", 10)
                assert_through_the_server(family, person)
                await asyncio.sleep(1.0)  # long enough that a recording would have started
                await family.leave()
                assert (await person.wait_event("visit.ended"))["reason"] == "hung_up"
        finally:
            await family.close()
            await person.close()
        await until(lambda: server_sockets(nodes, turn) == 0, 5)  # the relay has ended
        await asyncio.sleep(0.5)
        folder = tmp_path / "recordings"
        assert not folder.exists() or names(folder) in ([], [".partial"])
        assert not folder.exists() or names(folder / ".partial") == []
        assert await rows_of(pg_db, visit_id) == []


async def test_staff_end_cuts_the_media_at_the_server(pg_db: str, tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path, **RELAY) as (nodes, turn, http):
        a, b = nodes
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, facility_id = await visit_now(pg_db, family_id, media="relay", record=True)
        staff = await staff_of(http, b, pg_db, facility_id)
        family = party(a, family_token, visit_id, FAMILY_SIZE, kind=Stubborn)
        person = party(b, person_token, visit_id, PERSON_SIZE, kind=Stubborn)
        loop = asyncio.get_running_loop()
        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(30):
                await family.wait_frames("video", 10)
                await person.wait_frames("video", 10)
                await family.wait_frames("audio", 10)
                await person.wait_frames("audio", 10)
            assert server_sockets(nodes, turn) == 2
            asked_at = loop.time()
            status, r = await post(http, b, f"/visits/{visit_id}/end", staff, {"reason": "x"})
            assert status == 200 and r["visit"]["end_reason"] == "staff_ended", r
            # The server's peer connections are closed (their TURN sockets gone) within a
            # second, although neither client closes its own.
            await until(lambda: server_sockets(nodes, turn) == 0, 1.0 - (loop.time() - asked_at))
            await asyncio.sleep(max(0.0, asked_at + 1.0 - loop.time()))
            frames = (dict(family.frames), dict(person.frames))
            await asyncio.sleep(1.0)
            assert (family.frames, person.frames) == frames, "no frame a second after the end"
            assert family.pc is not None and person.pc is not None, "the clients held on"
            for client in (family, person):
                assert ("visit.ended", {"visit_id": visit_id, "reason": "staff_ended"}) \
                    in client.events
        finally:
            await family.close()
            await person.close()


class Watcher:
    """A staff member's receive-only watch of a relay-mode visit, over /ws and aiortc: it
    offers two video and two audio m-lines and counts frames (and the picture size) on each."""

    def __init__(self, http: aiohttp.ClientSession, node: Any, token: str,
                 visit_id: str) -> None:
        self.http, self.node, self.token, self.visit_id = http, node, token, visit_id
        self.frames = [0, 0, 0, 0]  # family video, person video, family audio, person audio
        self.sizes: list[tuple[int, int] | None] = [None, None]
        self.pc: RTCPeerConnection | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = 0

    async def call(self, op: str, **args: Any) -> Any:
        assert self._ws is not None
        self._ids += 1
        future = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = future
        await self._ws.send_str(json.dumps({"id": self._ids, "op": op, "args": args}))
        reply = await asyncio.wait_for(future, 10)
        assert "ok" in reply, reply
        return reply["ok"]

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            frame = json.loads(msg.data)
            if "id" in frame and frame["id"] in self._replies:
                self._replies.pop(frame["id"]).set_result(frame)
            elif frame.get("type") == "visit.signal" and self._answer is not None \
                    and not self._answer.done():
                self._answer.set_result(frame["data"])

    async def start(self) -> None:
        self._ws = await self.http.ws_connect(self.node.base + "/ws",
                                              protocols=("kinwire.v1.json",))
        self._tasks.append(asyncio.create_task(self._read()))
        await self.call("auth", token=self.token)
        watch = await self.call("visit.watch", visit_id=self.visit_id)
        configuration = rtc_configuration(watch["ice_servers"], loopback_only=True)
        # aiortc (unlike browsers) needs max-bundle for two m-lines of one kind (relay.py).
        configuration.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
        self.pc = pc = RTCPeerConnection(configuration)
        for kind in ("video", "video", "audio", "audio"):
            pc.addTransceiver(kind, direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
            index = next(i for i, t in enumerate(pc.getTransceivers()) if t.receiver.track is track)
            self._tasks.append(asyncio.create_task(self._count(index, track)))

        await pc.setLocalDescription(await pc.createOffer())
        self._answer = asyncio.get_running_loop().create_future()
        await self.call("visit.watch", visit_id=self.visit_id,
                        description={"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await asyncio.wait_for(self._answer, 10)
        assert answer["from"] == "server" and answer["description"]["type"] == "answer"
        await pc.setRemoteDescription(RTCSessionDescription(**answer["description"]))

    async def _count(self, index: int, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames[index] += 1
                if index < 2:
                    self.sizes[index] = (frame.width, frame.height)

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_staff_watch_both_parties_live(pg_db: str, tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path, **RELAY) as (nodes, turn, http):
        a, b = nodes
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, facility_id = await visit_now(pg_db, family_id, media="relay", record=False)
        staff = await staff_of(http, b, pg_db, facility_id)
        family = party(a, family_token, visit_id, FAMILY_SIZE)
        person = party(b, person_token, visit_id, PERSON_SIZE)
        watcher = Watcher(http, b, staff, visit_id)
        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(30):
                await family.wait_frames("video", 10)
                await person.wait_frames("video", 10)
                with pytest.raises(VisitError) as refused:  # a party may not watch
                    await family.call("visit.watch", {"visit_id": visit_id})
                assert refused.value.code == "forbidden"
                await watcher.start()
                await until(lambda: min(watcher.frames) >= 10, 20)
            assert watcher.sizes == [FAMILY_SIZE, PERSON_SIZE], "each party on its own m-line"
            assert server_sockets(nodes, turn) == 3, "two parties and one watcher"
            async with http.get(b.base + "/api/v1/audit",
                                headers={"Authorization": f"Bearer {staff}"}) as r:
                entries = (await r.json())["entries"]
            assert any(e["action"] == "visit.watch" and e["target"] == visit_id
                       for e in entries)
            # The person's kiosk restarts and rejoins through the other process: its new offer
            # replaces its session at the server. The family's and the watcher's peer
            # connections are not renegotiated, yet they get the new session's media.
            family_pc = family.pc
            await person.close()
            await asyncio.sleep(1.0)
            quiet = (family.frames["video"], watcher.frames[1])
            await asyncio.sleep(0.5)
            assert (family.frames["video"], watcher.frames[1]) == quiet, "the person is away"
            person = party(a, person_token, visit_id, PERSON_SIZE)
            await person.start()
            async with asyncio.timeout(20):
                await person.wait_frames("video", 10)
                await family.wait_for(lambda: family.frames["video"] >= quiet[0] + 20)
                await until(lambda: watcher.frames[1] >= quiet[1] + 20, 20)
            assert family.pc is family_pc and family_pc.signalingState == "stable"
            assert server_sockets(nodes, turn) == 3, "the old session was closed"
            await family.leave()
            await until(lambda: server_sockets(nodes, turn) == 0, 2)
        finally:
            await watcher.close()
            await family.close()
            await person.close()


async def test_a_stopping_server_finishes_and_keeps_its_recordings(pg_db: str,
                                                                   tmp_path: Path) -> None:
    """SIGTERM (a deploy, a drain) of the process relaying a recorded visit mid-call: it cuts
    the media, finishes the file and keeps it as a record before it exits; the file plays to
    the moment the process stopped."""
    from tests.integration.test_visit_e2e import start_both
    from tests.support.nodes import cluster
    from tests.support.turn_server import private_coturn

    async with private_coturn() as turn, \
            cluster(pg_db, "", tmp_path, n=1, KINWIRE_TURN_SECRET=turn.secret,
                    KINWIRE_TURN_URLS=turn.url, KINWIRE_DRAIN_TIMEOUT_S="2", **RELAY) as (node,), \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        family_token, person_token = await make_pair(http, node, node, pg_db)
        family_id = await account_id(http, node, family_token)
        visit_id, _ = await visit_now(pg_db, family_id, media="relay", record=True)
        family = party(node, family_token, visit_id, FAMILY_SIZE)
        person = party(node, person_token, visit_id, PERSON_SIZE)
        loop = asyncio.get_running_loop()
        try:
            begun = loop.time()  # the recording starts with the first track, after this
            await start_both(family, person)
            started = loop.time()  # ... and before this, when both already receive frames
            async with asyncio.timeout(20):
                await family.wait_for(lambda: family.frames["video"] >= 40)
            node.proc.terminate()
            stopped = loop.time()
            await asyncio.wait_for(asyncio.to_thread(node.proc.wait), 20)
        finally:
            await family.close()
            await person.close()
        assert node.proc.returncode == 0
        record = await recorded(pg_db, visit_id, timeout_s=1.0)  # kept before it exited
        data = await asyncio.to_thread((tmp_path / "recordings" / record.location).read_bytes)
        assert hashlib.sha256(data).hexdigest() == record.sha256
        with av.open(str(tmp_path / "recordings" / record.location)) as container:
            assert len(container.streams) == 4
            duration_s = container.duration / 1_000_000
        # From the first frame recorded (while the connections came up) to the stop: a slow
        # start_both (a loaded machine) once put the first frame 3.2 s before `started`.
        assert stopped - started - 1.5 <= duration_s <= stopped - begun + 3.0, \
            (duration_s, stopped - started, stopped - begun)
        assert names(tmp_path / "recordings" / ".partial") == []
