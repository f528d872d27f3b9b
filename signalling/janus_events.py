"""What Janus's servers see of a visit's media, from their event handler's posts (Janus's sample
event handler, deploy/janus/janus.eventhandler.sampleevh.jcfg.in; the route is
server/http/janus_events.py).

A post is one event (a JSON object) or a batch (an array of them). `parse` checks their shape;
`Presence.apply` follows each handle of each Janus server:
- `attached` (a handle event) carries the token its party attached with. Kinwire signed that
  token for one party of one visit (signalling/janus.py, `party_token`), so the handle is that
  party's, whatever the client claims later; a handle attached with no token of Kinwire's
  (Kinwire's own, or a forged one) is not followed.
- the VideoRoom plugin's `joined` says which room the handle publishes in (a handle whose room
  is not its token's visit, or whose feed is not its party's role, is flagged `foreign_room`
  and not counted), and `published` which m-lines (mid, audio or video) it sends.
- WebRTC state `webrtcup` / `hangup`; media state `receiving` true/false per m-line (Janus says
  false after its no_media_timer, 1 s, without packets); `slowlink`; `detached`, and a session's
  `destroyed`/`timeout`, end the handle. A core `shutdown` or `startup` forgets the server's
  handles.
Each change is an `Observation`; `connected(visit)` is the server's view of the call: both
parties' publishers up, the family's video arriving, and every m-line the person publishes
arriving (the relay's rule in docs/visits.md, "Trust").

A `Presence` holds handles in memory; a running Kinwire keeps them in the `janus_handles` table
instead, restoring a server's handles before each post and storing them after it, so that every
process receiving a server's posts sees the same state (signalling/janus_presence.py, which also
feeds `connected` to the meter).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from signalling.janus import VIDEOROOM, Party, token_party

SESSION, HANDLE, WEBRTC, MEDIA, PLUGIN, CORE = 1, 2, 16, 32, 64, 256
WEBRTC_STATE = 6
MEDIA_STATE, MEDIA_SLOWLINK = 1, 2
EVENTS_PER_POST_MAX = 1000
RECENT_MAX = 1000


class BadEvents(ValueError):
    """The post is not a Janus event or an array of them."""


@dataclass(frozen=True)
class Event:
    emitter: str
    type: int
    subtype: int
    at: datetime
    session_id: int | None
    handle_id: int | None
    body: dict[str, Any]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(payload: Any) -> list[Event]:
    """The events in a post (an object or an array of objects), or BadEvents."""
    items = payload if isinstance(payload, list) else [payload]
    if len(items) > EVENTS_PER_POST_MAX:
        raise BadEvents(f"more than {EVENTS_PER_POST_MAX} events in one post")
    events = []
    for item in items:
        if not isinstance(item, dict):
            raise BadEvents("an event is a JSON object")
        kind, stamp = _int(item.get("type")), _int(item.get("timestamp"))
        if kind is None or stamp is None or stamp < 0:
            raise BadEvents("an event has an integer type and timestamp")
        body = item.get("event")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadEvents("an event's `event` is an object")
        emitter = item.get("emitter", "")
        if not isinstance(emitter, str) or len(emitter) > 256:
            raise BadEvents("an event's emitter is a short string")
        events.append(Event(emitter=emitter, type=kind, subtype=_int(item.get("subtype")) or 0,
                            at=datetime.fromtimestamp(stamp / 1_000_000, UTC),
                            session_id=_int(item.get("session_id")),
                            handle_id=_int(item.get("handle_id")), body=body))
    return events


@dataclass(frozen=True)
class Observation:
    """One change Janus saw. `kind`: attached, joined, foreign_room, published, webrtcup,
    hangup, receiving, not_receiving, slowlink, left. `media`/`mid` for media kinds."""
    emitter: str
    handle_id: int
    party: Party
    kind: str
    at: datetime
    media: str | None = None
    mid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Handle:
    party: Party
    session_id: int | None
    room: str | None = None
    publisher: bool = False
    foreign: bool = False
    up: bool = False
    receiving: dict[str, tuple[str, bool]] = field(default_factory=dict)  # mid: (media, flag)
    published: dict[str, str] = field(default_factory=dict)  # mid: media, as the plugin says

    def state(self) -> dict[str, Any]:
        """As JSON, for the table every process shares (signalling/janus_presence.py)."""
        p = self.party
        return {"party": [p.visit_id, p.role, p.account_id], "session_id": self.session_id,
                "room": self.room, "publisher": self.publisher, "foreign": self.foreign,
                "up": self.up, "receiving": {mid: [media, flag] for mid, (media, flag)
                                             in self.receiving.items()},
                "published": dict(self.published)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Handle:
        return cls(Party(*state["party"]), state.get("session_id"), room=state.get("room"),
                   publisher=bool(state.get("publisher")), foreign=bool(state.get("foreign")),
                   up=bool(state.get("up")),
                   receiving={mid: (m, bool(f)) for mid, (m, f)
                              in (state.get("receiving") or {}).items()},
                   published=dict(state.get("published") or {}))


class Presence:
    """The handles of Kinwire's parties on every Janus server that posts here."""

    def __init__(self, token_secret: str) -> None:
        self.secret = self._secret = token_secret
        self._handles: dict[tuple[str, int], _Handle] = {}
        self.recent: deque[Observation] = deque(maxlen=RECENT_MAX)  # the latest, to look at

    def restore(self, emitter: str, states: dict[int, dict[str, Any]]) -> None:
        """Take these handles of `emitter` as stored (others held stay as they are)."""
        for handle_id, state in states.items():
            self._handles[(emitter, handle_id)] = _Handle.from_state(state)

    def states(self, emitter: str) -> dict[int, dict[str, Any]]:
        """`emitter`'s handles, as `restore` takes them."""
        return {key[1]: h.state() for key, h in self._handles.items() if key[0] == emitter}

    def apply(self, events: list[Event]) -> list[Observation]:
        seen: list[Observation] = []
        for event in events:
            seen.extend(self._one(event))
        self.recent.extend(seen)
        return seen

    def _one(self, event: Event) -> list[Observation]:
        if event.type == CORE:
            # A server that (re)starts or shuts down holds none of its old handles.
            self._handles = {key: h for key, h in self._handles.items()
                             if key[0] != event.emitter}
            return []
        if event.type == SESSION and event.body.get("name") in ("destroyed", "timeout"):
            gone = [key for key, h in self._handles.items()
                    if key[0] == event.emitter and h.session_id == event.session_id]
            return [self._drop(key, event) for key in gone]
        if event.handle_id is None:
            return []
        key = (event.emitter, event.handle_id)
        if event.type == HANDLE:
            name = event.body.get("name")
            if name == "attached" and event.body.get("plugin") == VIDEOROOM:
                party = token_party(self._secret, event.body.get("token"))
                if party is None:
                    return []  # Kinwire's own handle, or a token Kinwire never signed
                self._handles[key] = _Handle(party, event.session_id)
                return [self._seen(key, event, "attached")]
            if name == "detached" and key in self._handles:
                return [self._drop(key, event)]
            return []
        handle = self._handles.get(key)
        if handle is None:
            return []
        if event.type == PLUGIN:
            return self._plugin(key, handle, event)
        if event.type == WEBRTC and event.subtype == WEBRTC_STATE:
            connection = event.body.get("connection")
            if connection == "webrtcup":
                handle.up = True
                return [self._seen(key, event, "webrtcup")]
            if connection == "hangup":
                handle.up = False
                handle.receiving.clear()
                return [self._seen(key, event, "hangup",
                                   detail={"reason": str(event.body.get("reason", ""))[:200]})]
            return []
        if event.type == MEDIA and event.subtype == MEDIA_STATE:
            media, mid, receiving = (event.body.get("media"), event.body.get("mid"),
                                     event.body.get("receiving"))
            if media not in ("audio", "video") or not isinstance(mid, str) \
                    or not isinstance(receiving, bool):
                return []
            handle.receiving[mid] = (media, receiving)
            return [self._seen(key, event, "receiving" if receiving else "not_receiving",
                               media=media, mid=mid)]
        if event.type == MEDIA and event.subtype == MEDIA_SLOWLINK:
            lost = _int(event.body.get("lost_lastsec"))
            return [self._seen(key, event, "slowlink", media=event.body.get("media"),
                               mid=event.body.get("mid"),
                               detail={"direction": event.body.get("slow_link"), "lost": lost})]
        return []

    def _plugin(self, key: tuple[str, int], handle: _Handle,
                event: Event) -> list[Observation]:
        if event.body.get("plugin") != VIDEOROOM:
            return []
        data = event.body.get("data")
        if not isinstance(data, dict):
            return []
        what = data.get("event")
        if what == "joined":
            room = data.get("room")
            handle.room = room if isinstance(room, str) else None
            handle.publisher = True
            if handle.room != handle.party.visit_id or handle.party.role == "staff" \
                    or data.get("id") != handle.party.role:
                # Another visit's room, a watcher publishing, or another party's feed name:
                # never counted as this party's media.
                handle.foreign = True
                return [self._seen(key, event, "foreign_room",
                                   detail={"room": str(room)[:64], "id": str(data.get("id"))[:64]})]
            return [self._seen(key, event, "joined")]
        if what == "published" and handle.publisher and not handle.foreign:
            streams = data.get("streams")
            handle.published = {str(s.get("mid")): str(s.get("type")) for s in streams
                                if isinstance(s, dict) and s.get("type") in ("audio", "video")
                                } if isinstance(streams, list) else {}
            return [self._seen(key, event, "published",
                               detail={"media": sorted(handle.published.values())})]
        if what in ("leaving", "unpublished") and handle.publisher:
            handle.publisher = False
            handle.receiving.clear()
            handle.published.clear()
            return [self._seen(key, event, "left")]
        return []

    def _seen(self, key: tuple[str, int], event: Event, kind: str, **extra: Any) -> Observation:
        return Observation(emitter=key[0], handle_id=key[1], party=self._handles[key].party,
                           kind=kind, at=event.at, **extra)

    def _drop(self, key: tuple[str, int], event: Event) -> Observation:
        seen = self._seen(key, event, "left")
        del self._handles[key]
        return seen

    def publishers(self, visit_id: str) -> dict[str, _Handle]:
        """Each party's counted publisher handle in the visit's room (the latest one)."""
        found: dict[str, _Handle] = {}
        for handle in self._handles.values():
            if (handle.party.visit_id == visit_id and handle.publisher and not handle.foreign
                    and handle.room == visit_id):
                found[handle.party.role] = handle
        return found

    def connected(self, visit_id: str) -> bool:
        """The server's view of the call: both publishers up, the family's video arriving,
        and every m-line the person published (the plugin's `published` event) arriving."""
        by_role = self.publishers(visit_id)
        family, person = by_role.get("family"), by_role.get("person")
        if family is None or person is None or not (family.up and person.up):
            return False

        def arriving(handle: _Handle, mid: str) -> bool:
            return handle.receiving.get(mid, ("", False))[1]
        family_video = any(media == "video" and arriving(family, mid)
                           for mid, media in family.published.items())
        person_all = bool(person.published) and all(arriving(person, mid)
                                                     for mid in person.published)
        return family_video and person_all
