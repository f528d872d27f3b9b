"""Janus as the media engine (issue 16), against a real `janus` started from deploy/janus/ (one
server shared by the module; tests/support/janus.py): what it loads, who may talk to it, and
the rooms Kinwire makes for visits (signalling/janus.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from server.settings import Settings, SettingsError
from signalling.janus import (
    LONG_POLL_S,
    VIDEOROOM,
    JanusConfig,
    JanusEngine,
    JanusError,
    JanusServer,
    JanusUnavailable,
    party_token,
    sign_token,
)
from signalling.janus_party import JanusParty
from signalling.media import SyntheticVideoTrack, ToneAudioTrack, rtc_configuration
from signalling.turn import ice_servers
from tests.integration.test_relay import until
from tests.support.janus import Janus, private_janus, running_janus
from tests.support.nginx import ROOT, private_nginx, self_signed, templated
from tests.support.processes import free_port
from tests.support.turn_server import private_coturn

UNAUTHORIZED = 403  # JANUS_ERROR_UNAUTHORIZED
UNAUTHORIZED_PLUGIN = 405  # JANUS_ERROR_UNAUTHORIZED_PLUGIN
ROOM_UNAUTHORIZED = 433  # JANUS_VIDEOROOM_ERROR_UNAUTHORIZED (wrong pin, secret or key)
NO_SUCH_ROOM = 426
MISSING_ELEMENT = 429  # no admin key, no secret


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Janus]:
    # Nobody listens at the events URL: this module does not read events (test_janus_events.py).
    url = f"http://127.0.0.1:{free_port()}/internal/janus/events"
    with private_janus(tmp_path_factory.mktemp("janus"), events_url=url) as server:
        yield server


def config(*servers: Janus) -> JanusConfig:
    s = servers[0].secrets
    return JanusConfig(api_urls=tuple(j.api_url for j in servers),
                       admin_urls=tuple(j.admin_url for j in servers), api_secret=s.api_secret,
                       admin_secret=s.admin_secret, token_secret=s.token_secret,
                       room_admin_key=s.room_admin_key,
                       recordings_dir=str(servers[0].recordings_dir))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def engine(http: aiohttp.ClientSession, janus: Janus) -> AsyncIterator[JanusEngine]:
    engine = JanusEngine(http, config(janus))
    yield engine
    await engine.close()


def soon(minutes: float = 5) -> datetime:
    """`minutes` from the real instant: Janus checks a token's expiry against the machine's
    clock, so expiries are set relative to it; only the offset matters, never the hour."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def room_error(events: list[dict]) -> int | None:
    for event in events:
        data = (event.get("plugindata") or {}).get("data") or {}
        if "error_code" in data:
            return data["error_code"]
    return None


def test_janus_loads_only_what_kinwire_uses(janus: Janus) -> None:
    """Adversary: a deployment that leaves Janus's other plugins and transports on (an echo
    test, a SIP gateway, a WebSocket API nobody guards): the deploy files load the VideoRoom,
    the HTTP transport and the event handler alone, with API secret and token auth on."""
    info = janus.info()
    assert list(info["plugins"]) == [VIDEOROOM]
    assert list(info["transports"]) == ["janus.transport.http"]
    assert list(info["events"]) == ["janus.eventhandler.sampleevh"]
    assert info["api_secret"] is True and info["auth_token"] is True


async def test_a_request_without_kinwire_s_secret_or_token_is_refused(
        http: aiohttp.ClientSession, janus: Janus) -> None:
    """Adversary: a client that talks to Janus directly, with no token, with a token it signed
    itself, or with Kinwire's token after it expired: no session for any of them."""
    forged = sign_token("not-the-secret", expires_at=soon(), descriptors=[VIDEOROOM])
    expired = sign_token(janus.secrets.token_secret, expires_at=soon(-1), descriptors=[VIDEOROOM])
    for token in ("", forged, expired):
        with pytest.raises(JanusError) as refused:
            await JanusServer(http, janus.api_url, token=token).session()
        assert refused.value.code == UNAUTHORIZED, token
    with pytest.raises(JanusError) as refused:
        await JanusServer(http, janus.api_url, api_secret="not-the-secret").session()
    assert refused.value.code == UNAUTHORIZED
    # A token of Kinwire's for another plugin does not open the VideoRoom either.
    other = sign_token(janus.secrets.token_secret, expires_at=soon(),
                       descriptors=["janus.plugin.echotest"])
    session = await JanusServer(http, janus.api_url, token=other).session()
    try:
        with pytest.raises(JanusError) as refused:
            await session.attach(VIDEOROOM)
        assert refused.value.code == UNAUTHORIZED_PLUGIN
    finally:
        await session.close()


async def test_a_visit_s_room_is_joined_with_its_pin_only(
        http: aiohttp.ClientSession, janus: Janus, engine: JanusEngine) -> None:
    """Adversary: a party of another visit (a valid token of its own) that knows this visit's
    room name and guesses its pin: refused; the party given the pin joins as its feed."""
    room = await engine.create_room("vis_pin", record=False)
    stranger = engine.credentials(await engine.create_room("vis_other", record=False),
                                  "family", "acc_stranger", soon())
    session = await JanusServer(http, janus.api_url, token=stranger.token).session()
    try:
        handle = await session.attach()
        await handle.message({"request": "join", "ptype": "publisher", "room": room.room,
                              "pin": stranger.pin, "id": "family"})
        assert room_error(await session.events()) == ROOM_UNAUTHORIZED
        await handle.message({"request": "join", "ptype": "publisher", "room": room.room,
                              "id": "family"})  # no pin at all
        assert room_error(await session.events()) is not None
    finally:
        await session.close()
    mine = engine.credentials(room, "family", "acc_family", soon())
    assert (mine.room, mine.feed) == ("vis_pin", "family") and mine.pin == room.pin
    session = await JanusServer(http, janus.api_url, token=mine.token).session()
    try:
        handle = await session.attach()
        await handle.message({"request": "join", "ptype": "publisher", "room": mine.room,
                              "pin": mine.pin, "id": mine.feed})
        joined = [e["plugindata"]["data"] for e in await session.events()]
        assert joined[0]["videoroom"] == "joined" and joined[0]["id"] == "family"
        rooms = await engine.rooms_on(room.server)
        assert [p["id"] for p in await rooms.participants(room.room)] == ["family"]
        # Kinwire, with the room's secret, may remove a party (staff ending its part).
        await rooms.kick(room.room, "family", secret=room.secret)
        assert await rooms.participants(room.room) == []
    finally:
        await session.close()
        await engine.end(room)


async def test_a_party_cannot_make_destroy_or_record_a_room(
        http: aiohttp.ClientSession, janus: Janus, engine: JanusEngine) -> None:
    """Adversary: a party's client using its own valid token for more than joining: creating a
    room (no admin key), destroying its visit's room or turning its recording off (no room
    secret), kicking the other party. Every request is refused and the room stays as made."""
    room = await engine.create_room("vis_locked", record=True)
    token = engine.credentials(room, "family", "acc_family", soon()).token
    session = await JanusServer(http, janus.api_url, token=token).session()
    try:
        handle = await session.attach()
        for body in ({"request": "create", "room": "vis_mine"},
                     {"request": "destroy", "room": room.room},
                     {"request": "destroy", "room": room.room, "secret": room.pin},
                     {"request": "enable_recording", "room": room.room, "record": False},
                     {"request": "kick", "room": room.room, "id": "person"}):
            with pytest.raises(JanusError) as refused:
                await handle.data(body)
            assert refused.value.code in (ROOM_UNAUTHORIZED, MISSING_ELEMENT), body
        rooms = await engine.rooms_on(room.server)
        assert await rooms.exists(room.room) and not await rooms.exists("vis_mine")
        listed = await rooms.handle.data({"request": "list", "admin_key":
                                          janus.secrets.room_admin_key})
        [made] = [r for r in listed["list"] if r["room"] == room.room]
        assert made["record"] is True and made["pin_required"] is True
        # Kinwire, with the room's secret, turns the recording off (a visit made privileged).
        await rooms.set_recording(room.room, False, secret=room.secret)
        listed = await rooms.handle.data({"request": "list", "admin_key":
                                          janus.secrets.room_admin_key})
        assert [r["record"] for r in listed["list"] if r["room"] == room.room] == [False]
    finally:
        await session.close()
        await engine.end(room)


async def test_an_ended_visit_s_room_is_gone(
        http: aiohttp.ClientSession, janus: Janus, engine: JanusEngine) -> None:
    """Adversary: a party that stays joined after the visit ended, or rejoins with the pin it
    was given: ending destroys the room at the server (the party is cut), a rejoin finds no
    room, and a second end (two processes ending at once) is no error."""
    room = await engine.create_room("vis_end", record=False)
    creds = engine.credentials(room, "person", "acc_person", soon())
    session = await JanusServer(http, janus.api_url, token=creds.token).session()
    try:
        handle = await session.attach()
        await handle.message({"request": "join", "ptype": "publisher", "room": room.room,
                              "pin": creds.pin, "id": creds.feed})
        assert (await session.events())[0]["plugindata"]["data"]["videoroom"] == "joined"
        await engine.end(room)
        told = [e["plugindata"]["data"] for e in await session.events()]
        assert any(d.get("videoroom") == "destroyed" for d in told), told
        rooms = await engine.rooms_on(room.server)
        assert not await rooms.exists(room.room)
        again = await session.attach()
        await again.message({"request": "join", "ptype": "publisher", "room": room.room,
                             "pin": creds.pin, "id": creds.feed})
        assert room_error(await session.events()) == NO_SUCH_ROOM
        await engine.end(room)  # again: nothing to destroy, no error
    finally:
        await session.close()


async def test_health_is_the_admin_api_and_a_dead_server_gets_no_room(
        http: aiohttp.ClientSession, janus: Janus, tmp_path: Path) -> None:
    """Adversary: a Janus server killed -9, and a caller with the wrong admin secret. The dead
    server fails its health check and its sessions' keep-alives, a new visit's room goes to
    the live one; the admin secret is checked (a wrong one is refused)."""
    url = f"http://127.0.0.1:{free_port()}/internal/janus/events"
    async with running_janus(tmp_path / "doomed", events_url=url,
                             janus_secrets=janus.secrets) as doomed:
        engine = JanusEngine(http, config(doomed, janus))
        try:
            assert await engine.healthy(doomed.api_url) and await engine.healthy(janus.api_url)
            wrong = JanusServer(http, janus.api_url, admin_url=janus.admin_url,
                                admin_secret="not-the-secret")
            with pytest.raises(JanusError) as refused:
                await wrong.status()
            assert refused.value.code == UNAUTHORIZED
            watched = await engine.servers[doomed.api_url].session(keepalive_s=0.1)
            doomed.kill()
            assert not await engine.healthy(doomed.api_url)
            for _ in range(100):  # its session's keep-alive fails within a few tenths
                if not watched.alive:
                    break
                await asyncio.sleep(0.05)
            assert not watched.alive
            await watched.close()
            with pytest.raises(JanusUnavailable):
                await engine.servers[doomed.api_url].info()
            room = await engine.create_room("vis_failover", record=False)
            assert room.server == janus.api_url
            await engine.end(room)
        finally:
            await engine.close()


def test_a_party_token_names_its_party_and_nothing_else() -> None:
    """Adversary: an id with a comma or colon that would let a party's token name more than
    its party (another plugin, a second party): refused when signing."""
    with pytest.raises(ValueError):
        party_token("s", visit_id="vis_a,janus.plugin.echotest", role="family",
                    account_id="acc", expires_at=soon())
    with pytest.raises(ValueError):
        party_token("s", visit_id="vis_a", role="family", account_id="acc:x", expires_at=soon())
    with pytest.raises(ValueError):
        party_token("s", visit_id="vis_a", role="admin", account_id="acc", expires_at=soon())


async def test_a_client_is_given_the_server_s_public_url_and_kinwire_keeps_its_own(
        http: aiohttp.ClientSession, janus: Janus) -> None:
    """KINWIRE_JANUS_PUBLIC_URLS: the room is made and stored at the URL Kinwire reaches (a
    private address), and each party is told the server's public one (its TLS proxy)."""
    public = "https://janus1.kinwire.example/janus"
    engine = JanusEngine(http, dataclasses.replace(config(janus), public_urls=(public,)))
    try:
        room = await engine.create_room("vis_public", record=False)
        assert room.server == janus.api_url
        for role in ("family", "person", "staff"):
            assert engine.credentials(room, role, "acc_x", soon()).server == public
        await engine.end(room)
    finally:
        await engine.close()
    plain = JanusEngine(http, config(janus))  # none set: the API URL itself
    assert plain.credentials(plain.room("vis_p", janus.api_url, record=False), "family",
                             "acc_x", soon()).server == janus.api_url
    with pytest.raises(ValueError, match="public URL"):
        JanusEngine(http, dataclasses.replace(config(janus), public_urls=(public, public)))
    settings = Settings(janus_urls=("http://10.0.0.5:8088/janus",),
                        janus_admin_urls=("http://10.0.0.5:7088/admin",))
    with pytest.raises(SettingsError, match="KINWIRE_JANUS_PUBLIC_URLS"):
        settings.replace(janus_public_urls=(public, public)).validate()
    with pytest.raises(SettingsError, match="not an http"):
        settings.replace(janus_public_urls=("janus1.kinwire.example",)).validate()


JANUS_SITE = ROOT / "deploy" / "nginx" / "janus.conf"


async def test_browsers_reach_janus_through_the_deploy_tls_proxy(
        tmp_path: Path, janus: Janus, engine: JanusEngine) -> None:
    """deploy/nginx/janus.conf in front of the module's Janus (only its ports, paths and cert
    changed): a party's client-API calls (a session, the VideoRoom join with its pin, the long
    poll that brings the answer) work over TLS at the public URL. Adversaries: a browser that
    asks the proxy for anything else (the admin API's path, the server's root), or calls the
    API without its token: 404, and Janus's own refusal passed on unchanged."""
    cert, key = self_signed(tmp_path, "janus1.kinwire.example")
    port = free_port()
    site = templated(JANUS_SITE.read_text(), {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
        "/etc/letsencrypt/live/janus1.kinwire.example/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/janus1.kinwire.example/privkey.pem": str(key),
        "proxy_pass http://10.0.0.11:8088;": f"proxy_pass http://127.0.0.1:{janus.http_port};"})
    # Janus holds a long poll up to LONG_POLL_S: nginx must wait longer for its answer.
    read_timeout_s = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))
    assert read_timeout_s > LONG_POLL_S + 5, read_timeout_s
    public = f"https://127.0.0.1:{port}/janus"
    tls = ssl.create_default_context(cafile=str(cert))
    room = await engine.create_room("vis_tls", record=False)
    mine = engine.credentials(room, "family", "acc_family", soon())
    try:
        async with private_nginx(tmp_path, port, site), \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as browser:
            session = await JanusServer(browser, public, token=mine.token).session()
            try:
                handle = await session.attach()
                await handle.message({"request": "join", "ptype": "publisher",
                                      "room": mine.room, "pin": mine.pin, "id": mine.feed})
                joined = [e["plugindata"]["data"] for e in await session.events()]
                assert joined[0]["videoroom"] == "joined" and joined[0]["id"] == "family"
            finally:
                await session.close()
            with pytest.raises(JanusError) as refused:
                await JanusServer(browser, public, token="").session()
            assert refused.value.code == UNAUTHORIZED
            base = f"https://127.0.0.1:{port}"
            for path in ("/admin", "/", "/internal/janus/events"):
                async with browser.post(base + path, json={"janus": "info"}) as r:
                    assert r.status == 404, path
    finally:
        await engine.end(room)


def own_address() -> str:
    """This machine's address on its default route (no packet is sent): where Janus's
    candidates are, since libnice gathers none on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))
        return probe.getsockname()[0]


def nominated(pc: RTCPeerConnection) -> list[tuple[str, str]]:
    """(our candidate's type, the far candidate's address) of each ICE pair in use."""
    ice = pc.getTransceivers()[0].receiver.transport.transport._connection
    return [(pair.local_candidate.type, pair.remote_candidate.host)
            for pair in ice._nominated.values()]


async def test_parties_behind_a_firewall_reach_janus_through_turn(
        janus: Janus, engine: JanusEngine) -> None:
    """Adversary: a network that lets no UDP through but to the TURN server (the parties run
    relay-only ICE, as with KINWIRE_ICE_RELAY_ONLY): both parties publish and receive each
    other's video through Kinwire's coturn, whose relay reaches Janus's own address (and
    nothing else but loopback); every ICE pair in use is a relay candidate to Janus."""
    address = own_address()
    async with private_coturn(own_address=address) as turn:
        room = await engine.create_room("vis_turn", record=False)
        soon_ = soon()
        servers = ice_servers(secret=turn.secret, turn_urls=[turn.url], stun_urls=[],
                              account_id="acc_x", expires_at=soon_)
        config = rtc_configuration(servers, loopback_only=True)  # relay-only
        frames = {"family": 0, "person": 0}
        counting: list[asyncio.Task[None]] = []

        async def count(role: str, track: Any) -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
                    frames[role] += 1

        async def unchanged() -> None:
            return None

        parties = []
        try:
            for role in ("family", "person"):
                def on_track(track: Any, _transceiver: Any, role: str = role) -> None:
                    if track.kind == "video":
                        counting.append(asyncio.create_task(count(role, track)))
                party = JanusParty(engine.credentials(room, role, f"acc_{role}", soon_).public(),
                                   config=config, on_track=on_track, on_change=unchanged,
                                   tracks=[SyntheticVideoTrack(160, 120, 15), ToneAudioTrack()])
                parties.append(party)
                await party.start()
            # two seconds of each camera, at the other end
            await until(lambda: min(frames.values()) >= 30, 20)
            pairs = [pair for party in parties
                     for pc in (party.publisher, *party.subscribers.values())
                     for pair in nominated(pc)]
            assert pairs and all(pair == ("relay", address) for pair in pairs), pairs
        finally:
            for party in parties:
                await party.close()
            for task in counting:
                task.cancel()
            await engine.end(room)
