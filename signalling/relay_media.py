"""The two engines that carry relay-mode visits' media, behind one port (`RelayMedia` in
signalling/media_engine.py): the gateway (server/gateway/ops.py) asks the deployment's engine,
whichever it is, and branches on neither (issue 16, item 1; KINWIRE_MEDIA_ENGINE).

- `EmbeddedRelay` (`aiortc`, the default, one box): the visit is placed on a Kinwire process
  with room (signalling/relay.py); parties and watchers send their offers and candidates to
  Kinwire, whose forwarding relay answers.
- `JanusMedia` (`janus`): the visit's room is placed on a live Janus server
  (signalling/janus_fleet.py); each party and watcher gets its own credentials and talks to
  Janus itself, so Kinwire takes no offers.

A refusal is a `Refused` with a stable code: `relay_full` (every process relays as many visits
as it may), `media_unavailable` (no Janus server answers), `janus_media` (an offer sent to
Kinwire for a visit Janus carries), `not_in_call` (a watch before anyone placed the room).
"""

from __future__ import annotations

from typing import Any

from common.errors import BrokerUnavailable, Refused
from signalling.janus import JanusError, JanusUnavailable
from signalling.janus_fleet import JanusFleet
from signalling.placement import RelayFull
from signalling.relay import Relay
from store import Record

RELAY_FULL = "Every server is relaying as many visits as it can; join again in a minute."
JANUS_DOWN = "No media server answers; join again in a minute."
JANUS_MEDIA = "This visit's media goes through Janus: use the janus credentials of visit.join."


class EmbeddedRelay:
    """Relay-mode media on Kinwire's own processes (signalling/relay.py)."""

    # A watch starts with the console's offer (audited when it comes), not with the reply.
    watch_starts_at_reply = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def admit(self, row: Record, role: str, account_id: str) -> dict[str, Any]:
        try:
            await self.relay.place(row.id)
        except BrokerUnavailable:
            pass  # its first signal places it, once the broker is back
        except RelayFull:
            raise Refused("relay_full", RELAY_FULL) from None
        return {}

    async def signal(self, visit_id: str, account_id: str, signal: dict[str, Any], *,
                     watch: bool = False) -> dict[str, Any]:
        try:
            return {"relayed": await self.relay.forward(visit_id, account_id, signal,
                                                        watch=watch)}
        except RelayFull:
            raise Refused("relay_full", RELAY_FULL) from None

    def check_watch(self, row: Record, signal: dict[str, Any] | None) -> None:
        return None

    def watch_reply(self, row: Record, account_id: str) -> dict[str, Any]:
        return {}


class JanusMedia:
    """Relay-mode media on a fleet of Janus servers (signalling/janus_fleet.py)."""

    # The console's credentials start its watch (Kinwire sees no offer): audited at the reply.
    watch_starts_at_reply = True

    def __init__(self, fleet: JanusFleet) -> None:
        self.fleet = fleet

    async def admit(self, row: Record, role: str, account_id: str) -> dict[str, Any]:
        try:
            creds = await self.fleet.join(row, role, account_id)
        except (JanusError, JanusUnavailable):
            raise Refused("media_unavailable", JANUS_DOWN) from None
        return {"janus": creds.public()}  # this party's way into the visit's room

    async def signal(self, visit_id: str, account_id: str, signal: dict[str, Any], *,
                     watch: bool = False) -> dict[str, Any]:
        raise Refused("janus_media", JANUS_MEDIA)  # the embedded relay relays none of these

    def check_watch(self, row: Record, signal: dict[str, Any] | None) -> None:
        if signal is not None:
            raise Refused("janus_media", JANUS_MEDIA)
        if row.media_server is None:
            raise Refused("not_in_call", "Nobody has joined the visit's call yet.")

    def watch_reply(self, row: Record, account_id: str) -> dict[str, Any]:
        # The console reaches Janus as the parties do (through the same TURN).
        room = self.fleet.room_of(row)
        assert room is not None, "check_watch refuses a visit with no room"
        creds = self.fleet.engine.credentials(room, "staff", account_id, row.end_at)
        return {"janus": creds.public()}
