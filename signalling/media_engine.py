"""The media-engine port: what Kinwire, the control plane, asks of whatever carries a visit's
media (issue 16; docs/deploy.md, "Janus fleet (in progress)").

A deployment chooses its engine with KINWIRE_MEDIA_ENGINE: `aiortc` (the default: the embedded
forwarding relay of signalling/relay.py, one box, unchanged) or `janus` (signalling/janus.py: a
fleet of Janus servers, one private VideoRoom room per visit). The embedded relay does not go
through this port yet; Janus does.

The engine never decides who is connected: it reports what its server sees (events), and the
meter decides under the visit-trust rules. Secrets that govern the server (Janus's API and admin
secrets, the room's secret) stay in Kinwire; a party gets only its own JoinCredentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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
