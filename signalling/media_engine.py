"""The media-engine port: what Kinwire, the control plane, asks of whatever carries a visit's
media (issue 16; docs/deploy.md, "Janus fleet (in progress)").

A deployment chooses its engine with KINWIRE_MEDIA_ENGINE: `aiortc` (the default: the embedded
forwarding relay of signalling/relay.py, one box) or `janus` (signalling/janus.py: a fleet of
Janus servers, one private VideoRoom room per visit). The gateway asks either through
`RelayMedia` (signalling/relay_media.py: `EmbeddedRelay`, `JanusMedia`) and branches on
neither; `MediaEngine` below is what the Janus fleet asks of its servers (rooms, credentials,
health).

The engine never decides who is connected: it reports what its server sees (events), and the
meter decides under the visit-trust rules. Secrets that govern the server (Janus's API and admin
secrets, the room's secret) stay in Kinwire; a party gets only its own JoinCredentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from store import Record

ENGINES = ("aiortc", "janus")
ROLES = ("family", "person", "staff")


@dataclass(frozen=True)
class Room:
    """A visit's room on one media server. `server` names the server (its API URL), so that
    the room can be ended there and the visit re-placed when that server dies. `secret` governs
    the room (destroy, kick, recording) and never leaves Kinwire."""
    visit_id: str
    server: str
    room: str
    pin: str
    secret: str
    record: bool


@dataclass(frozen=True)
class JoinCredentials:
    """What one party (or a watching staff member) needs to reach its visit's room: sent to
    that client alone. `feed`: the publisher id it joins as (none for staff, who only watch);
    `token`: the engine's per-party credential, valid until `expires_at`."""
    server: str
    room: str
    pin: str
    token: str
    feed: str | None
    expires_at: datetime

    def public(self) -> dict[str, str | None]:
        return {"server": self.server, "room": self.room, "pin": self.pin, "token": self.token,
                "feed": self.feed, "expires_at": self.expires_at.isoformat()}


class RelayMedia(Protocol):
    """What the control plane asks of the engine carrying relay-mode visits. Refusals are
    `common.errors.Refused` with a stable code (signalling/relay_media.py)."""

    # Whether a staff member's watch starts with the visit.watch reply (the engine's own
    # credentials) rather than with an offer the console sends Kinwire: when it is audited.
    watch_starts_at_reply: bool

    async def admit(self, row: Record, role: str, account_id: str) -> dict[str, Any]:
        """A party joins visit `row`: place its media if nobody has; returns what the join
        reply adds (the party's credentials, if the engine has any)."""

    async def signal(self, visit_id: str, account_id: str, signal: dict[str, Any], *,
                     watch: bool = False) -> dict[str, Any]:
        """A party's (or, `watch`, a staff member's) offer or ICE candidate for the visit."""

    def check_watch(self, row: Record, signal: dict[str, Any] | None) -> None:
        """Raise Refused when staff may not watch `row` this way now."""

    def watch_reply(self, row: Record, account_id: str) -> dict[str, Any]:
        """What the visit.watch reply adds for this staff member."""


class MediaEngine(Protocol):
    async def create_room(self, visit_id: str, *, record: bool) -> Room:
        """A private room for the visit on a healthy server, recorded when `record`."""

    def credentials(self, room: Room, role: str, account_id: str,
                    expires_at: datetime) -> JoinCredentials:
        """A party's (`family`, `person`) or a watcher's (`staff`) way into the room."""

    async def end(self, room: Room) -> None:
        """Destroy the room: every peer in it is cut at the server. Ending a room that is
        already gone (its server died, or a second end) is not an error."""

    async def healthy(self, server: str) -> bool:
        """Whether `server` answers its health check now."""
