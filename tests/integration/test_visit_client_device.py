"""The reference client as a real kiosk session (issue 17 bound kiosk sessions to their device):
a person signed in on a registered kiosk joins a visit with `kinwire visit-client --device-token`.
The adversary is a stolen kiosk session token used away from its device: without the device's
token the same client is refused at `auth`, before it can join."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from signalling.visit_client import VisitClient, VisitError
from tests.integration.test_roles import build_world
from tests.integration.test_ws_roles import under_way
from tests.support.helpers import Api


async def test_a_kiosk_session_joins_with_its_device_token_and_not_without(
        api: Api, client: TestClient) -> None:
    world = await build_world(api)
    visit = await under_way(api, world.facility, world.ids["connection"], world.family.id,
                            world.person.id)
    base = str(client.make_url("")).rstrip("/")

    stolen = VisitClient(base, world.person.token, visit, reconnect_s=0)
    try:
        await stolen.start()
        raise AssertionError("a kiosk session joined without its device's token")
    except VisitError as exc:
        assert exc.code == "device_required", exc
    finally:
        await stolen.close()

    kiosk = VisitClient(base, world.person.token, visit, reconnect_s=0,
                        device_token=world.device_token)
    try:
        joined = await kiosk.start()
        assert joined["role"] == "person" and kiosk.ice_servers == [], joined
    finally:
        await kiosk.close()
