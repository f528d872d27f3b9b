"""Janus as Kinwire's media engine: an async client of Janus's HTTP API (aiohttp) and the
engine built on it (the port in signalling/media_engine.py; docs/deploy.md, "Janus fleet").

Janus's HTTP API: POST /janus creates a session; POST /janus/<session> attaches a handle to a
plugin (or is a keep-alive); POST /janus/<session>/<handle> sends the plugin a message. A
session with no request for Janus's session_timeout (60 s in deploy/janus/janus.jcfg.in) is
destroyed with its handles, so `Session` sends a keep-alive every KEEPALIVE_S. Asynchronous
plugin replies (a join, a publish) come on GET /janus/<session> (a long poll).

Who may do what (deploy/janus/): Kinwire's requests carry the API secret; a client's carry a
token Kinwire signed for that party (`sign_token`: HMAC-SHA1 with the token secret, expiring
with the visit, naming the plugin and the party), which Janus checks and passes to the event
handler with every handle the party attaches, so that Kinwire knows whose media an event is
about (`token_party`). Rooms are created only with the VideoRoom admin key, and changed,
recorded or destroyed only with the room's own secret: both stay in Kinwire, as does the admin
secret of the admin API (its get_status is the server's health check).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from signalling.media_engine import ROLES, JoinCredentials, Room

log = logging.getLogger("kinwire.janus")
VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_S = 25.0  # well inside Janus's 60 s session timeout
REQUEST_TIMEOUT_S = 5.0
LONG_POLL_S = 30.0  # Janus answers a long poll with a keep-alive after 30 s of nothing
PARTY_PREFIX = "kinwire="  # the party in a signed token: kinwire=<visit>/<role>/<account>
NO_SUCH_ROOM = 426  # JANUS_VIDEOROOM_ERROR_NO_SUCH_ROOM
ROOM_EXISTS = 427  # JANUS_VIDEOROOM_ERROR_ROOM_EXISTS


class JanusError(Exception):
    """Janus answered with an error (core or plugin): `code` is Janus's number."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"janus error {code}: {reason}")
        self.code, self.reason = code, reason


class JanusUnavailable(Exception):
    """The server did not answer (refused, timed out, not JSON): it may be dead."""


# --- tokens ------------------------------------------------------------------------------------

def sign_token(secret: str, *, expires_at: datetime, descriptors: Sequence[str]) -> str:
    """A Janus signed token (token_auth_secret): `<expiry>,janus,<descriptor>...:<signature>`,
    the signature HMAC-SHA1 of the part before the colon, in base64, as Janus's auth.c checks
    it. Janus accepts it for a session until `expires_at` and for each plugin it names."""
    for item in descriptors:
        if "," in item or ":" in item:
            raise ValueError(f"a token descriptor holds no ',' or ':': {item!r}")
    data = ",".join([str(int(expires_at.timestamp())), "janus", *descriptors])
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()
    return f"{data}:{base64.b64encode(mac).decode()}"


def party_token(secret: str, *, visit_id: str, role: str, account_id: str,
                expires_at: datetime) -> str:
    """A party's token: the VideoRoom plugin, and who it is (read back by `token_party`)."""
    if role not in ROLES:
        raise ValueError(role)
    return sign_token(secret, expires_at=expires_at, descriptors=[
        VIDEOROOM, f"{PARTY_PREFIX}{visit_id}/{role}/{account_id}"])


@dataclass(frozen=True)
class Party:
    visit_id: str
    role: str
    account_id: str


def token_party(secret: str, token: Any) -> Party | None:
    """The party a token was signed for, or None if it is not one of Kinwire's (a bad
    signature, no party in it). Expiry is Janus's business: it refused expired tokens when
    the handle was attached, which is the only moment an event names the token."""
    if not isinstance(token, str) or token.count(":") != 1:
        return None
    data, signature = token.split(":")
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(base64.b64encode(mac).decode(), signature):
        return None
    for item in data.split(",")[2:]:
        if item.startswith(PARTY_PREFIX):
            parts = item[len(PARTY_PREFIX):].split("/")
            if len(parts) == 3 and parts[1] in ROLES and all(parts):
                return Party(*parts)
    return None


# --- the HTTP API ------------------------------------------------------------------------------

class JanusServer:
    """One Janus server's client and admin API. `api_secret` (Kinwire) or `token` (a client)
    authenticates each request; `admin_url`/`admin_secret` only for the health check."""

    def __init__(self, http: aiohttp.ClientSession, api_url: str, *, api_secret: str = "",
                 token: str = "", admin_url: str = "", admin_secret: str = "",
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.http, self.api_url = http, api_url.rstrip("/")
        self.admin_url, self._admin_secret = admin_url.rstrip("/"), admin_secret
        self._auth = {"apisecret": api_secret} if api_secret else {"token": token}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:  # never the secrets
        return f"JanusServer({self.api_url!r})"

    async def _send(self, url: str, body: dict[str, Any], *,
                    auth: dict[str, str]) -> dict[str, Any]:
        message = {**body, "transaction": secrets.token_hex(8), **auth}
        try:
            async with self.http.post(url, json=message, timeout=self.timeout) as r:
                reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusUnavailable(f"{url}: {type(exc).__name__}") from None
        return _checked(reply)

    async def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send(self.api_url + path, body, auth=self._auth)

    async def info(self) -> dict[str, Any]:
        try:
            async with self.http.get(self.api_url + "/info", timeout=self.timeout) as r:
                return _checked(await r.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusUnavailable(f"{self.api_url}/info: {type(exc).__name__}") from None

    async def status(self) -> dict[str, Any]:
        """The admin API's get_status (needs the admin secret, unlike its ping, so it checks
        that too): JanusUnavailable if the server does not answer, JanusError if it refuses."""
        reply = await self._send(self.admin_url, {"janus": "get_status"},
                                 auth={"admin_secret": self._admin_secret})
        return dict(reply.get("status") or {})

    async def session(self, *, keepalive_s: float = KEEPALIVE_S) -> Session:
        reply = await self.request("", {"janus": "create"})
        return Session(self, int(reply["data"]["id"]), keepalive_s)


def _checked(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise JanusUnavailable("not a JSON object")
    if reply.get("janus") == "error":
        error = reply.get("error") or {}
        raise JanusError(int(error.get("code", 0)), str(error.get("reason", "")))
    data = (reply.get("plugindata") or {}).get("data") or {}
    if "error_code" in data:
        raise JanusError(int(data["error_code"]), str(data.get("error", "")))
    return reply


class Session:
    """A Janus session, kept alive until `close`. Handles attach to it."""

    def __init__(self, server: JanusServer, session_id: int, keepalive_s: float) -> None:
        self.server, self.id = server, session_id
        self.path = f"/{session_id}"
        self.alive = True  # false once a keep-alive failed: the server or the session is gone
        self._keepalive = asyncio.create_task(self._keep(keepalive_s), name="janus-keepalive")

    async def _keep(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.server.request(self.path, {"janus": "keepalive"})
            except (JanusError, JanusUnavailable) as exc:
                log.warning("janus session %s on %s: keep-alive failed (%s)", self.id,
                            self.server.api_url, exc)
                self.alive = False
                return

    async def attach(self, plugin: str = VIDEOROOM) -> Handle:
        reply = await self.server.request(self.path, {"janus": "attach", "plugin": plugin})
        return Handle(self, int(reply["data"]["id"]))

    async def events(self, max_events: int = 10,
                     timeout_s: float = LONG_POLL_S + 5) -> list[dict[str, Any]]:
        """The session's next events (a long poll; Janus answers a keep-alive after 30 s of
        nothing, which is dropped here)."""
        server = self.server
        query = {"maxev": str(max_events), **server._auth}
        try:
            async with server.http.get(server.api_url + self.path, params=query,
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusUnavailable(f"{server.api_url}: {type(exc).__name__}") from None
        items = reply if isinstance(reply, list) else [reply]
        return [item for item in items if item.get("janus") != "keepalive"]

    async def close(self) -> None:
        self._keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keepalive
        with contextlib.suppress(JanusError, JanusUnavailable):
            await self.server.request(self.path, {"janus": "destroy"})


class Handle:
    def __init__(self, session: Session, handle_id: int) -> None:
        self.session, self.id = session, handle_id
        self.path = f"{session.path}/{handle_id}"

    async def message(self, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A plugin message. Synchronous requests (create, destroy, exists, listparticipants,
        kick) answer `success` with the plugin's data; asynchronous ones (join, publish)
        answer `ack` and their result comes on the session's `events`."""
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        return await self.session.server.request(self.path, request)

    async def data(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.message(body)
        return (reply.get("plugindata") or {}).get("data") or {}


class VideoRooms:
    """Kinwire's side of the VideoRoom plugin on one server: one handle, the admin key for
    creating rooms, each room's secret for everything else."""

    def __init__(self, handle: Handle, admin_key: str) -> None:
        self.handle, self._admin_key = handle, admin_key

    async def create(self, room: str, *, secret: str, pin: str, record: bool,
                     rec_dir: str | None) -> None:
        body: dict[str, Any] = {
            "request": "create", "room": room, "admin_key": self._admin_key,
            "permanent": False, "is_private": True, "secret": secret, "pin": pin,
            "publishers": 2,  # the family and the person; staff only subscribe
            "audiocodec": "opus", "videocodec": "vp8",  # as the embedded relay forwards
            "fir_freq": 10, "record": record, "lock_record": True,
            "description": f"visit {room}"}
        if rec_dir:
            body["rec_dir"] = rec_dir
        await self.handle.data(body)

    async def exists(self, room: str) -> bool:
        return bool((await self.handle.data({"request": "exists", "room": room}))["exists"])

    async def destroy(self, room: str, *, secret: str) -> bool:
        """True if it was destroyed now; False if there was no such room."""
        try:
            await self.handle.data({"request": "destroy", "room": room, "secret": secret,
                                    "permanent": False})
        except JanusError as exc:
            if exc.code == NO_SUCH_ROOM:
                return False
            raise
        return True

    async def participants(self, room: str) -> list[dict[str, Any]]:
        data = await self.handle.data({"request": "listparticipants", "room": room})
        return list(data.get("participants") or [])

    async def kick(self, room: str, participant: str, *, secret: str) -> None:
        await self.handle.data({"request": "kick", "room": room, "id": participant,
                                "secret": secret})

    async def set_recording(self, room: str, record: bool, *, secret: str) -> None:
        await self.handle.data({"request": "enable_recording", "room": room, "record": record,
                                "secret": secret})


# --- the engine --------------------------------------------------------------------------------

@dataclass(frozen=True)
class JanusConfig:
    """The fleet's addresses and secrets (server/settings.py's KINWIRE_JANUS_*): the same
    secrets on every server of the fleet."""
    api_urls: tuple[str, ...]
    admin_urls: tuple[str, ...]
    api_secret: str
    admin_secret: str
    token_secret: str
    room_admin_key: str
    recordings_dir: str = ""  # rec_dir as the Janus servers see it; empty: Janus's default
    # Where clients reach each server (its TLS proxy), in api_urls' order; empty: api_urls.
    public_urls: tuple[str, ...] = ()


class JanusEngine:
    """The media-engine port on a fleet of Janus servers. `create_room` puts a room on the
    healthy server with the fewest rooms this process made there; a running Kinwire places
    visits across processes by the visits table instead (signalling/janus_fleet.py) and
    opens the room it chose with `open`."""

    def __init__(self, http: aiohttp.ClientSession, config: JanusConfig) -> None:
        if len(config.api_urls) != len(config.admin_urls) or not config.api_urls:
            raise ValueError("one admin URL for each Janus API URL")
        if config.public_urls and len(config.public_urls) != len(config.api_urls):
            raise ValueError("one public URL for each Janus API URL, or none")
        self.config = config
        # A room's server is stored as Kinwire reaches it; a client is given this instead.
        self.public = dict(zip(config.api_urls, config.public_urls or config.api_urls,
                               strict=True))
        self.servers = {api: JanusServer(http, api, api_secret=config.api_secret,
                                         admin_url=admin, admin_secret=config.admin_secret)
                        for api, admin in zip(config.api_urls, config.admin_urls, strict=True)}
        self._rooms: dict[str, VideoRooms] = {}
        self._sessions: dict[str, Session] = {}
        self._count: dict[str, int] = dict.fromkeys(self.servers, 0)
        self._lock = asyncio.Lock()

    async def rooms_on(self, server: str) -> VideoRooms:
        async with self._lock:
            rooms, session = self._rooms.get(server), self._sessions.get(server)
            if rooms is None or session is None or not session.alive:
                if session is not None:
                    await session.close()
                session = await self.servers[server].session()
                rooms = VideoRooms(await session.attach(VIDEOROOM), self.config.room_admin_key)
                self._sessions[server], self._rooms[server] = session, rooms
            return rooms

    def room(self, visit_id: str, server: str, *, record: bool) -> Room:
        """The visit's room on `server`. Its id is the visit's; its pin and secret are derived
        from the token secret and the visit (HMAC), so every Kinwire process knows them and
        none is stored: the visit row keeps only the server and the room id."""
        def derived(purpose: str, size: int) -> str:
            mac = hmac.new(self.config.token_secret.encode(), f"{purpose}:{visit_id}".encode(),
                           hashlib.sha256).digest()
            return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:size]
        return Room(visit_id=visit_id, server=server, room=visit_id, pin=derived("pin", 16),
                    secret=derived("room-secret", 32), record=record)

    async def open(self, room: Room) -> None:
        """Create `room` on its server; one that exists already (a retry) is not an error."""
        rooms = await self.rooms_on(room.server)
        try:
            await rooms.create(room.room, secret=room.secret, pin=room.pin, record=room.record,
                               rec_dir=self.config.recordings_dir or None)
        except JanusError as exc:
            if exc.code != ROOM_EXISTS:
                raise
            return
        self._count[room.server] += 1

    async def create_room(self, visit_id: str, *, record: bool) -> Room:
        for server in sorted(self.servers, key=lambda s: self._count[s]):
            if not await self.healthy(server):
                continue
            room = self.room(visit_id, server, record=record)
            await self.open(room)
            return room
        raise JanusUnavailable("no Janus server answers")

    def credentials(self, room: Room, role: str, account_id: str,
                    expires_at: datetime) -> JoinCredentials:
        token = party_token(self.config.token_secret, visit_id=room.visit_id, role=role,
                            account_id=account_id, expires_at=expires_at)
        return JoinCredentials(server=self.public[room.server], room=room.room, pin=room.pin,
                               token=token, feed=None if role == "staff" else role,
                               expires_at=expires_at.astimezone(UTC))

    async def end(self, room: Room) -> None:
        rooms = await self.rooms_on(room.server)
        if await rooms.destroy(room.room, secret=room.secret):
            self._count[room.server] = max(0, self._count[room.server] - 1)

    async def healthy(self, server: str) -> bool:
        """The admin API answers with Kinwire's admin secret, and token auth is on (a server
        without it would let anyone in: it gets no visit)."""
        try:
            status = await self.servers[server].status()
        except (JanusError, JanusUnavailable):
            return False
        return status.get("token_auth") is True

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        self._rooms.clear()
