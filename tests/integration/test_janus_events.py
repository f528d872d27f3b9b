"""Janus's event handler posting to Kinwire (issue 16): a real `janus` (one per module,
tests/support/janus.py) whose sample event handler posts to a real Kinwire app with
KINWIRE_MEDIA_ENGINE=janus (server/http/janus_events.py), and aiortc peers publishing synthetic
media into a visit's VideoRoom room over Janus's HTTP API, as a party's client would."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from server.app import create_app
from server.http.janus_events import PATH, PRESENCE
from signalling import janus_presence, janus_recording
from signalling.janus import JanusConfig, JanusEngine, JanusServer, Party, sign_token
from signalling.janus_events import Presence
from signalling.media import SyntheticVideoTrack, ToneAudioTrack
from signalling.media_engine import JoinCredentials
from store import Store
from tests.conftest import fresh_sqlite, test_settings
from tests.support.janus import Janus, fresh_secrets, private_janus, running_janus
from tests.support.processes import free_port

WAIT_S = 20.0  # ICE, DTLS and the first packets on a loaded two-core machine


@dataclass
class Shared:
    janus: Janus
    events_port: int

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.events_port}{PATH}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    port = free_port()  # Kinwire listens here in each test; Janus posts here throughout
    with private_janus(tmp_path_factory.mktemp("janus"),
                       events_url=f"http://127.0.0.1:{port}{PATH}") as janus:
        yield Shared(janus, port)


@dataclass
class Kinwire:
    presence: Presence  # the observations this process received (`recent`)
    url: str
    password: str
    store: Store

    async def view(self, visit_id: str) -> Presence:
        """The visit's handles as every process sees them (the janus_handles table)."""
        async with self.store.read() as conn:
            return await janus_presence.view(conn, self.presence.secret, visit_id)

    async def connected(self, visit_id: str) -> bool:
        return (await self.view(visit_id)).connected(visit_id)


@pytest.fixture
async def kinwire(shared: Shared, sqlite_template: Path,
                  tmp_path: Path) -> AsyncIterator[Kinwire]:
    s, janus = shared.janus.secrets, shared.janus
    settings = test_settings(
        fresh_sqlite(sqlite_template, tmp_path), tmp_path, media_engine="janus",
        janus_urls=(janus.api_url,), janus_admin_urls=(janus.admin_url,),
        janus_api_secret=s.api_secret, janus_admin_secret=s.admin_secret,
        janus_token_secret=s.token_secret, janus_room_admin_key=s.room_admin_key,
        janus_events_password=s.events_password, janus_events_bytes_max=65536)
    app = create_app(settings, run_migrations=False)
    server = TestServer(app, host="127.0.0.1", port=shared.events_port)
    await server.start_server(shutdown_timeout=1.0)  # Janus keeps its posting connection open
    try:
        store = Store(settings.resolved_database_url)
        try:
            yield Kinwire(app[PRESENCE], shared.events_url, s.events_password, store)
        finally:
            await store.close()
    finally:
        # Janus posts the test's last hang-ups and detaches now: a post cut by the server's
        # close leaves its socket unclosed (a ResourceWarning, an error at the next setup).
        await asyncio.sleep(0.5)
        await server.close()


@pytest.fixture
async def engine(shared: Shared) -> AsyncIterator[JanusEngine]:
    janus, s = shared.janus, shared.janus.secrets
    async with aiohttp.ClientSession() as http:
        engine = JanusEngine(http, JanusConfig(
            (janus.api_url,), (janus.admin_url,), s.api_secret, s.admin_secret, s.token_secret,
            s.room_admin_key, str(janus.recordings_dir)))
        yield engine
        await engine.close()


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=5)


async def until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for `check()` (a bool, or an awaitable of one) to be true."""
    async def holds() -> bool:
        result = check()
        return bool(await result) if inspect.isawaitable(result) else bool(result)
    deadline = time.monotonic() + timeout_s
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def not_(check: Awaitable[bool]) -> bool:
    return not await check


def seen(presence: Presence, role: str, kind: str, media: str | None = None) -> bool:
    return any(o.party.role == role and o.kind == kind and (media is None or o.media == media)
               for o in presence.recent)


class StallingTone(ToneAudioTrack):
    """A microphone that can stall: while `stalled` is set it sends nothing (a frozen driver)."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self):  # type: ignore[override]
        await self.flowing.wait()
        return await super().recv()


@asynccontextmanager
async def publishing(janus: Janus, creds: JoinCredentials, *, feed: str | None = None,
                     audio: ToneAudioTrack | None = None,
                     video: SyntheticVideoTrack | None = None) -> AsyncIterator[RTCPeerConnection]:
    """A party's client: a Janus session with its token, joined to its room with its pin as a
    publisher (as `feed`, by default its own), publishing a synthetic camera (and tone)."""
    async with aiohttp.ClientSession() as http:
        session = await JanusServer(http, janus.api_url, token=creds.token).session()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            handle = await session.attach()
            await handle.message({"request": "join", "ptype": "publisher", "room": creds.room,
                                  "pin": creds.pin, "id": feed or creds.feed})
            pc.addTrack(video or SyntheticVideoTrack(320, 240, 15))
            pc.addTrack(audio or ToneAudioTrack())
            await pc.setLocalDescription(await pc.createOffer())
            await handle.message({"request": "publish"},
                                 jsep={"type": "offer", "sdp": pc.localDescription.sdp})
            deadline = time.monotonic() + WAIT_S
            answer = None
            while answer is None and time.monotonic() < deadline:
                for event in await session.events(timeout_s=WAIT_S):
                    data = (event.get("plugindata") or {}).get("data") or {}
                    assert "error_code" not in data, data
                    answer = event.get("jsep") or answer
            assert answer is not None, "Janus never answered the publish"
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            yield pc
        finally:
            await pc.close()
            await session.close()


async def test_janus_s_media_events_reach_kinwire_as_each_party_s_presence(
        shared: Shared, kinwire: Kinwire, engine: JanusEngine) -> None:
    """Adversary: no party's client is asked anything; what counts is what the Janus server
    saw. The family publishing alone is not a call; with the person publishing every m-line
    the call is connected; the person's microphone stalling disconnects it until it sends
    again; the person hanging up ends it (webrtc hangup); the recorded room writes each
    publisher's .mjr files."""
    presence = kinwire.presence
    room = await engine.create_room("vis_live", record=True)
    family = engine.credentials(room, "family", "acc_family", soon())
    person = engine.credentials(room, "person", "acc_person", soon())
    try:
        async with publishing(shared.janus, family):
            await until(lambda: seen(presence, "family", "receiving", "video"),
                        "the family's video arriving at Janus")
            for kind in ("attached", "joined", "webrtcup"):
                assert seen(presence, "family", kind), kind
            [attached] = [o for o in presence.recent if o.kind == "attached"]
            assert (attached.party.visit_id, attached.party.account_id) == ("vis_live",
                                                                             "acc_family")
            assert not await kinwire.connected("vis_live")  # the person is not there
            microphone = StallingTone()
            async with publishing(shared.janus, person, audio=microphone):
                await until(lambda: kinwire.connected("vis_live"), "the call connected")
                assert seen(presence, "person", "receiving", "audio")
                assert seen(presence, "person", "published")
                # The kiosk's microphone stalls: Janus reports it (1 s without packets) and the
                # call is no longer connected; it comes back, and so does the call.
                microphone.flowing.clear()
                await until(lambda: not_(kinwire.connected("vis_live")), "the stall seen")
                assert seen(presence, "person", "not_receiving", "audio")
                microphone.flowing.set()
                await until(lambda: kinwire.connected("vis_live"), "the call connected again")
            await until(lambda: seen(presence, "person", "hangup")
                        or seen(presence, "person", "left"), "the person's hang-up")
            assert not await kinwire.connected("vis_live")
            files = sorted(p.name for p in shared.janus.recordings_dir.iterdir())
            assert any("vis_live" in f and "family" in f and "video" in f for f in files), files
            assert any("vis_live" in f and "person" in f and "audio" in f for f in files), files
    finally:
        await engine.end(room)


async def test_a_client_publishing_as_the_other_party_is_not_counted(
        shared: Shared, kinwire: Kinwire, engine: JanusEngine) -> None:
    """Adversary: a family client that joins its room under the person's feed name, so that
    its media would pass for the person's: its handle is the family's (the token Kinwire
    signed says so), it is flagged `foreign_room`, and no call is connected by it."""
    presence = kinwire.presence
    room = await engine.create_room("vis_liar", record=False)
    family = engine.credentials(room, "family", "acc_family", soon())
    try:
        async with publishing(shared.janus, family, feed="person"):
            await until(lambda: seen(presence, "family", "foreign_room"), "the flag")
            await until(lambda: seen(presence, "family", "webrtcup"), "its media up")
            assert (await kinwire.view("vis_liar")).publishers("vis_liar") == {}
            assert not await kinwire.connected("vis_liar")
            assert not any(o.party.role == "person" for o in presence.recent)
    finally:
        await engine.end(room)


async def watch(janus: Janus, creds: JoinCredentials, feed: str) -> tuple[bool, list[int]]:
    """A staff console: joins the room as a subscriber to `feed` with its own token and the
    pin it was given, answers Janus's offer, and reads the first video frame. Returns whether
    a frame came, and the plugin's error codes."""
    async with aiohttp.ClientSession() as http:
        session = await JanusServer(http, janus.api_url, token=creds.token).session()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        errors: list[int] = []
        try:
            handle = await session.attach()
            await handle.message({"request": "join", "ptype": "subscriber", "room": creds.room,
                                  "pin": creds.pin,
                                  "streams": [{"feed": feed}]})
            offer = None
            deadline = time.monotonic() + WAIT_S
            while offer is None and not errors and time.monotonic() < deadline:
                for event in await session.events(timeout_s=WAIT_S):
                    data = (event.get("plugindata") or {}).get("data") or {}
                    if "error_code" in data:
                        errors.append(data["error_code"])
                    offer = event.get("jsep") or offer
            if offer is None:
                return False, errors
            frames: asyncio.Queue = asyncio.Queue()

            @pc.on("track")
            def on_track(track) -> None:
                if track.kind == "video":
                    frames.put_nowait(track)
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            await handle.message({"request": "start"},
                                 jsep={"type": "answer", "sdp": pc.localDescription.sdp})
            track = await asyncio.wait_for(frames.get(), WAIT_S)
            frame = await asyncio.wait_for(track.recv(), WAIT_S)
            return frame.width > 0, errors
        finally:
            await pc.close()
            await session.close()


async def test_staff_watch_with_their_own_credentials_and_count_for_nothing(
        shared: Shared, kinwire: Kinwire, engine: JanusEngine) -> None:
    """Adversaries: staff of another visit who know this room's name (their own valid token,
    their own visit's pin), and a watcher whose presence might pass for a party's. The first
    is refused; this visit's staff see the family's camera; no watcher's handle is a party's
    publisher or connects a call."""
    presence = kinwire.presence
    room = await engine.create_room("vis_watched", record=False)
    other = await engine.create_room("vis_elsewhere", record=False)
    family = engine.credentials(room, "family", "acc_family", soon())
    staff = engine.credentials(room, "staff", "acc_staff", soon())
    stranger = engine.credentials(other, "staff", "acc_stranger", soon())
    assert staff.feed is None and staff.token != family.token
    try:
        async with publishing(shared.janus, family):
            await until(lambda: seen(presence, "family", "receiving", "video"), "the family")
            # In its own visit's room, "family" is that visit's family: not this one (no feed).
            shown, errors = await watch(shared.janus, stranger, "family")
            assert not shown and errors == [428]  # JANUS_VIDEOROOM_ERROR_NO_SUCH_FEED
            # This visit's room with its own visit's pin: refused.
            stranger_in_room = JoinCredentials(**{**vars(stranger), "room": room.room})
            shown, errors = await watch(shared.janus, stranger_in_room, "family")
            assert not shown and errors == [433]  # JANUS_VIDEOROOM_ERROR_UNAUTHORIZED
            shown, errors = await watch(shared.janus, staff, "family")
            assert shown and errors == []
            assert seen(presence, "staff", "attached")
            assert set((await kinwire.view("vis_watched")).publishers("vis_watched")) \
                == {"family"}
            assert not await kinwire.connected("vis_watched")
    finally:
        await engine.end(room)
        await engine.end(other)


async def test_a_recorded_visit_becomes_one_file_and_a_privileged_one_none(
        shared: Shared, kinwire: Kinwire, engine: JanusEngine, tmp_path: Path) -> None:
    """Adversaries: a party that joins late (its files start later than the other's: the one
    file keeps it late, on one timeline), and a privileged visit (`record` false), which must
    leave no file at all. janus-pp-rec converts each .mjr; PyAV reads the result."""
    folder = shared.janus.recordings_dir
    recorded = await engine.create_room("vis_recorded", record=True)
    privileged = await engine.create_room("vis_privileged", record=False)
    def first(role: str, kind: str) -> datetime | None:
        """When Janus first received the party's `kind` (its event's time, by Janus's clock)."""
        return min((o.at for o in kinwire.presence.recent if o.kind == "receiving"
                    and o.media == kind and o.party == Party("vis_recorded", role,
                                                             f"acc_{role[0]}")), default=None)

    try:
        started = time.monotonic()
        async with publishing(shared.janus, engine.credentials(
                recorded, "family", "acc_f", soon())), \
                publishing(shared.janus, engine.credentials(privileged, "family", "acc_p", soon())):
            # The person joins a second after Janus receives the family (counted from the
            # family's publishing, a loaded run's slower ICE and DTLS ate into it: 1.38 s late
            # against 1.95 s counted)
            await until(lambda: first("family", "video") is not None, "the family's video")
            family_seen = time.monotonic()
            await asyncio.sleep(1.0)
            late = time.monotonic() - family_seen
            async with publishing(shared.janus, engine.credentials(
                    recorded, "person", "acc_p", soon())):
                await until(lambda: presence_of(kinwire, "vis_recorded"), "both publishing")
                await asyncio.sleep(2.0)
        # Once every publisher has closed: the family's goes on while the person's closes
        # (read before that, the recording ran 0.33 s past it once in a full run).
        published_s = time.monotonic() - started
    finally:
        await engine.end(recorded)
        await engine.end(privileged)
    assert not any("vis_privileged" in p.name for p in folder.iterdir())
    await until(lambda: len(janus_recording.tracks(folder, "vis_recorded")) == 4,
                "four finished .mjr files")
    out = await asyncio.to_thread(janus_recording.mux, folder, "vis_recorded",
                                  tmp_path / "vis_recorded.webm")
    with av.open(str(out)) as container:
        titles = [s.metadata.get("title") for s in container.streams]
        assert titles == ["family video", "person video", "family audio", "person audio"]
        starts = [float(s.start_time * s.time_base) for s in container.streams]
        duration_s = container.duration / 1_000_000
        frames = sum(1 for _ in container.decode(video=1))
    # The family's media spans the file; the person's starts where Janus first received it,
    # after the family's.
    assert published_s - 1.5 < duration_s <= published_s + 0.2, (duration_s, published_s)
    for video, audio in ((0, 2), (1, 3)):
        assert abs(starts[video] - starts[audio]) < 0.2  # a party's two files start together
    person_late = (first("person", "video") - first("family", "video")).total_seconds()
    # at least the second waited after the family was seen (Janus's clock against this one's)
    assert person_late > late - 0.1 and abs(starts[1] - starts[0] - person_late) < 0.2, (
        starts, person_late, late)
    assert frames > 15  # the person's camera, 15 frames a second for about 2 s, decodes


class BlackedOutCamera(SyntheticVideoTrack):
    """A camera that never yields a frame: the party publishes video and sends none."""

    async def recv(self):  # type: ignore[override]
        await asyncio.Event().wait()


async def test_a_camera_that_sent_nothing_leaves_its_stream_out_of_the_recording(
        shared: Shared, kinwire: Kinwire, engine: JanusEngine, tmp_path: Path) -> None:
    """Adversary: the family publishes a camera that never sends a frame. Janus still makes
    its video file, with no header (it writes one with the first packet); before, reading
    that header failed the whole conversion, so the visit's recording could never be kept.
    Now the empty file is left out and the other three streams are kept."""
    folder = shared.janus.recordings_dir
    room = await engine.create_room("vis_blacked_out", record=True)
    try:
        async with publishing(shared.janus, engine.credentials(room, "family", "acc_f", soon()),
                              video=BlackedOutCamera(320, 240, 15)), \
                publishing(shared.janus, engine.credentials(room, "person", "acc_p", soon())):
            await until(lambda: seen(kinwire.presence, "person", "receiving", "video"),
                        "the person's video")
            await asyncio.sleep(1.5)
    finally:
        await engine.end(room)
    await until(lambda: len(janus_recording.files(folder, "vis_blacked_out")) == 4
                and not janus_recording.pending(folder, "vis_blacked_out"), "files closed")
    found = await asyncio.to_thread(janus_recording.tracks, folder, "vis_blacked_out")
    assert [(t.party, t.kind) for t in found] == [
        ("person", "video"), ("family", "audio"), ("person", "audio")]
    out = await asyncio.to_thread(janus_recording.mux, folder, "vis_blacked_out",
                                  tmp_path / "blacked_out.webm")
    with av.open(str(out)) as container:
        titles = [s.metadata.get("title") for s in container.streams]
        frames = sum(1 for _ in container.decode(video=0))
    assert titles == ["person video", "family audio", "person audio"]
    assert frames > 10


async def presence_of(kinwire: Kinwire, visit: str) -> bool:
    return set((await kinwire.view(visit)).publishers(visit)) == {"family", "person"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_an_event_post_without_the_password_is_refused(
        shared: Shared, kinwire: Kinwire, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Adversaries: a Janus server (or anyone on the network) posting with a wrong password or
    none, a post that is not JSON events, one too large, and a forged `attached` event naming
    a token Kinwire never signed. Refused 401 (logged without the credential), 400, 413; the
    forged event is taken (the credential was right) but names no party, so nothing is seen."""
    caplog.set_level(logging.WARNING, logger="kinwire.janus")
    event = {"type": 2, "timestamp": 1, "session_id": 1, "handle_id": 7, "emitter": "x",
             "event": {"name": "attached", "plugin": "janus.plugin.videoroom",
                       "token": sign_token("not-kinwire-s", expires_at=soon(),
                                           descriptors=["kinwire=vis_x/person/acc_x"])}}
    async with aiohttp.ClientSession() as http:
        async def post(body: bytes, auth: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if auth is not None:
                headers["Authorization"] = auth
            async with http.post(kinwire.url, data=body, headers=headers) as reply:
                return reply.status

        good = basic("janus", kinwire.password)
        body = json.dumps([event]).encode()
        assert await post(body, None) == 401
        assert await post(body, basic("janus", "guessed-password")) == 401
        assert await post(body, basic("admin", kinwire.password)) == 401
        assert await post(body, "Bearer " + kinwire.password) == 401
        assert await post(b"{not json", good) == 400
        assert await post(b'[{"type": "2"}]', good) == 400
        assert await post(b"[" + b"1," * 40_000 + b"1]", good) == 413
        assert await post(body, good) == 204
        assert not kinwire.presence.recent

    logged = "\n".join(r.getMessage() for r in caplog.records)
    # A real Janus with the wrong password: its start-up event is refused, and so is all else.
    caplog.clear()
    impostor = fresh_secrets()
    async with running_janus(tmp_path / "impostor", events_url=kinwire.url,
                             janus_secrets=impostor):
        await until(lambda: any("refused a post" in r.getMessage() for r in caplog.records),
                    "the impostor's post refused")
    logged += "\n".join(r.getMessage() for r in caplog.records)
    assert "guessed-password" not in logged and impostor.events_password not in logged
    assert kinwire.password not in logged
    assert not kinwire.presence.recent

