"""signalling/janus_events.py on hand-made posts: the shapes Janus's sample event handler sends
(src/events.c), and the lies and losses the parser must survive. The real Janus posting is in
tests/integration/test_janus_events.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from signalling.janus import VIDEOROOM, party_token, sign_token
from signalling.janus_events import BadEvents, Presence, parse

SECRET = "token-secret-for-tests"
LATER = datetime(2030, 1, 1, tzinfo=UTC)


def token(role: str, visit: str = "vis_a") -> str:
    return party_token(SECRET, visit_id=visit, role=role, account_id=f"acc_{role}",
                       expires_at=LATER)


def attached(handle: int, tok: str | None, session: int = 1, emitter: str = "j1") -> dict:
    body = {"name": "attached", "plugin": VIDEOROOM}
    if tok is not None:
        body["token"] = tok
    return {"emitter": emitter, "type": 2, "timestamp": 1, "session_id": session,
            "handle_id": handle, "event": body}


def joined(handle: int, feed: str, room: str = "vis_a", emitter: str = "j1") -> dict:
    return {"emitter": emitter, "type": 64, "timestamp": 2, "session_id": 1, "handle_id": handle,
            "event": {"plugin": VIDEOROOM, "data": {"event": "joined", "room": room, "id": feed}}}


def published(handle: int, mids: dict[str, str]) -> dict:
    streams = [{"type": kind, "mid": mid, "mindex": i} for i, (mid, kind) in
               enumerate(mids.items())]
    return {"emitter": "j1", "type": 64, "timestamp": 3, "session_id": 1, "handle_id": handle,
            "event": {"plugin": VIDEOROOM, "data": {"event": "published", "room": "vis_a",
                                                    "streams": streams}}}


def webrtc(handle: int, state: str) -> dict:
    return {"emitter": "j1", "type": 16, "subtype": 6, "timestamp": 4, "session_id": 1,
            "handle_id": handle, "event": {"connection": state}}


def media(handle: int, mid: str, kind: str, on: bool, at_us: int = 5) -> dict:
    return {"emitter": "j1", "type": 32, "subtype": 1, "timestamp": at_us, "session_id": 1,
            "handle_id": handle, "event": {"media": kind, "mid": mid, "receiving": on}}


def call(presence: Presence) -> None:
    """Both parties publishing video and audio, everything arriving."""
    presence.apply(parse([
        attached(10, token("family")), joined(10, "family"),
        published(10, {"0": "video", "1": "audio"}), webrtc(10, "webrtcup"),
        media(10, "0", "video", True),
        attached(20, token("person"), session=2), joined(20, "person"),
        published(20, {"0": "video", "1": "audio"}), webrtc(20, "webrtcup"),
        media(20, "0", "video", True), media(20, "1", "audio", True)]))


def test_a_post_is_one_event_or_a_batch_and_anything_else_is_refused() -> None:
    """Adversary: a sender (with the password) posting what is not Janus events."""
    assert len(parse(webrtc(1, "webrtcup"))) == 1 and len(parse([webrtc(1, "hangup")] * 3)) == 3
    event = parse(media(1, "0", "video", True, at_us=1_700_000_000_500_000))[0]
    assert event.at == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC)
    for bad in ([1], ["x"], {"type": "16", "timestamp": 1}, {"type": 16},
                {"type": 16, "timestamp": -1}, {"type": 16, "timestamp": 1, "event": []},
                {"type": True, "timestamp": 1}, [webrtc(1, "up")] * 1001):
        with pytest.raises(BadEvents):
            parse(bad)


def test_the_call_is_connected_only_while_janus_sees_both_parties_media() -> None:
    """Adversary: the person's kiosk camera or microphone stalling; the family away."""
    presence = Presence(SECRET)
    call(presence)
    assert presence.connected("vis_a")
    # The family's audio is not required, only its picture (as in relay mode).
    presence.apply(parse([media(10, "1", "audio", False)]))
    assert presence.connected("vis_a")
    presence.apply(parse([media(20, "1", "audio", False)]))
    assert not presence.connected("vis_a")
    presence.apply(parse([media(20, "1", "audio", True)]))
    assert presence.connected("vis_a")
    for handle in (20, 10):  # the person's camera, then the family's
        presence.apply(parse([media(handle, "0", "video", False)]))
        assert not presence.connected("vis_a")
        presence.apply(parse([media(handle, "0", "video", True)]))
        assert presence.connected("vis_a")
    presence.apply(parse([webrtc(10, "hangup")]))
    assert not presence.connected("vis_a")


def test_a_handle_is_whoever_kinwire_signed_its_token_for() -> None:
    """Adversaries: a handle attached with a token Kinwire never signed (forged, or altered to
    name another party), and a family client publishing under the person's feed name or in
    another visit's room. None of them is counted as the person."""
    presence = Presence(SECRET)
    forged = sign_token("guess", expires_at=LATER, descriptors=[VIDEOROOM,
                                                                "kinwire=vis_a/person/acc_p"])
    data, signature = token("family").split(":")
    altered = data.replace("/family/", "/person/") + ":" + signature
    seen = presence.apply(parse([attached(1, forged), attached(2, altered), attached(3, None),
                                 joined(1, "person"), joined(2, "person"), joined(3, "person"),
                                 webrtc(1, "webrtcup"), webrtc(2, "webrtcup")]))
    assert seen == []
    seen = presence.apply(parse([attached(4, token("family")), joined(4, "person"),
                                 attached(5, token("family"), session=3),
                                 joined(5, "family", room="vis_b")]))
    assert [o.kind for o in seen] == ["attached", "foreign_room", "attached", "foreign_room"]
    assert presence.publishers("vis_a") == {} and presence.publishers("vis_b") == {}


def test_a_session_that_ends_or_a_server_that_restarts_takes_its_handles_along() -> None:
    """Adversary: lost events. A session destroyed or timed out, or a Janus server that
    restarted (its core event), leaves no handle counted, so no stale `connected` survives."""
    presence = Presence(SECRET)
    call(presence)
    assert presence.connected("vis_a")
    seen = presence.apply(parse([{"emitter": "j1", "type": 1, "timestamp": 9, "session_id": 2,
                                  "event": {"name": "timeout"}}]))
    assert [(o.kind, o.party.role) for o in seen] == [("left", "person")]
    assert set(presence.publishers("vis_a")) == {"family"}
    presence.apply(parse([{"emitter": "j2", "type": 256, "subtype": 1, "timestamp": 9,
                           "event": {"status": "started"}}]))
    assert set(presence.publishers("vis_a")) == {"family"}  # another server's restart
    presence.apply(parse([{"emitter": "j1", "type": 256, "subtype": 2, "timestamp": 9,
                           "event": {"status": "shutdown"}}]))
    assert presence.publishers("vis_a") == {}


def test_an_expired_token_still_names_its_party() -> None:
    """Janus checks expiry when the handle attaches (the only moment the token is sent), so a
    handle attached in time stays its party's to the end of its media."""
    presence = Presence(SECRET)
    old = party_token(SECRET, visit_id="vis_a", role="family", account_id="acc_f",
                      expires_at=datetime.now(UTC) - timedelta(minutes=1))
    assert [o.kind for o in presence.apply(parse([attached(1, old)]))] == ["attached"]
