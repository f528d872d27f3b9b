"""A privileged visit (attorney, clergy) is not monitored (issue 15's finding: `visit.watch`
checked only the facility and the media mode, so staff could watch a privileged relay visit
that was, rightly, not recorded). The adversary is a staff member of the right facility who
opens the watch anyway, before the visit and after the contact is marked privileged."""

from __future__ import annotations

from tests.integration.test_roles import build_world, ok
from tests.integration.test_ws_roles import under_way
from tests.support.helpers import Api
from tests.support.sockets import open_socket


async def test_staff_watch_a_relayed_visit_but_never_a_privileged_one(api: Api) -> None:
    world = await build_world(api)
    link = world.ids["connection"]
    visit = await under_way(api, world.facility, link, world.family.id, world.person.id,
                            media="relay")
    staff = await open_socket(api.client, world.staff)
    try:
        reply = await staff.call("visit.watch", visit_id=visit)
        assert "ok" in reply and reply["ok"]["visit"]["id"] == visit, reply  # not privileged

        ok(await api.call("POST", f"/connections/{link}/privileged", world.staff,
                          json={"privileged": True}), 200)
        for args in ({}, {"description": {"type": "offer", "sdp": "v=0\r\n"}}):
            reply = await staff.call("visit.watch", visit_id=visit, **args)
            assert reply.get("error", {}).get("code") == "privileged", reply

        admin = await open_socket(api.client, world.admin)
        try:
            reply = await admin.call("visit.watch", visit_id=visit)
            assert reply.get("error", {}).get("code") == "privileged", reply
        finally:
            await admin.ws.close()
    finally:
        await staff.ws.close()
