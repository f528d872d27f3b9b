"""The kiosk's link-quality report (issue 21 item 4; docs/visits.md, "Link quality") through the
real gateway: `visit.media` carries an optional `quality` and `quality_reason`, stored on the
visit and shown to staff in the visit list. The browser side (the level computed from
getStats(), on both screens and in the staff console) is
tests/browser/test_browser_link_quality.py."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.integration.test_visit_calls import book_now, join_both
from tests.support.cast import cast
from tests.support.helpers import Api
from tests.support.sockets import MSGPACK, open_socket


async def _staff_view(api: Api, staff, visit_id: str) -> dict:
    r = await api.call("GET", "/visits", staff)
    assert r.status == 200, r.body
    return next(v for v in r.body["visits"] if v["id"] == visit_id)


async def test_a_kiosks_link_quality_reaches_staff_and_nonsense_is_refused(
        api: Api, client: TestClient) -> None:
    """The adversary is a client that reports an invalid quality (a level that is not one of
    good, fair, poor; a reason that is not a short line of text, or a reason without a level):
    refused with invalid_input and nothing stored. A good report from the kiosk reaches the
    staff's visit list with its reason; the family's report (advisory, like all its reports)
    changes nothing there; a rejoin of the kiosk clears it until it measures again."""
    c = await cast(api, credits=500)
    visit_id = await book_now(api, c)
    fam, per = await join_both(client, c, visit_id)
    bad = [{"quality": "excellent"}, {"quality": "POOR"}, {"quality": 1}, {"quality": ""},
           {"quality": "poor", "quality_reason": "x" * 81},
           {"quality": "poor", "quality_reason": "line\nbreak"},
           {"quality": "poor", "quality_reason": 9},
           {"quality_reason": "9 frames a second"}]
    for args in bad:
        reply = await per.call("visit.media", visit_id=visit_id, state="connected", **args)
        assert reply.get("error", {}).get("code") == "invalid_input", (args, reply)
    shown = await _staff_view(api, c.staff, visit_id)
    assert shown["link_quality"] is None and shown["link_reason"] is None, shown

    reply = await per.call("visit.media", visit_id=visit_id, state="connected", quality="poor",
                           quality_reason="9 frames a second, 6% loss")
    assert reply["ok"]["visit"]["link_quality"] == "poor", reply
    shown = await _staff_view(api, c.staff, visit_id)
    assert (shown["link_quality"], shown["link_reason"]) == ("poor", "9 frames a second, 6% loss")

    # The family's own view of the link is for its screen: the kiosk's stays on the row.
    reply = await fam.call("visit.media", visit_id=visit_id, state="connected", quality="good",
                           quality_reason="20 frames a second")
    assert "ok" in reply, reply
    assert (await _staff_view(api, c.staff, visit_id))["link_quality"] == "poor"

    # A level without a reason is a level.
    assert "ok" in await per.call("visit.media", visit_id=visit_id, state="connected",
                                  quality="fair")
    shown = await _staff_view(api, c.staff, visit_id)
    assert (shown["link_quality"], shown["link_reason"]) == ("fair", None), shown

    # The kiosk's new join is a new call whose link nobody has measured yet.
    await per.ws.close()
    again = await open_socket(client, c.person, MSGPACK)
    assert "ok" in await again.call("visit.join", visit_id=visit_id)
    shown = await _staff_view(api, c.staff, visit_id)
    assert (shown["link_quality"], shown["link_reason"]) == (None, None), shown
    await again.ws.close()
    await fam.ws.close()

