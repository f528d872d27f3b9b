"""A visit ready for two browsers: the facility, its staff, a person with a PIN and a connected
family, the fake camera and microphone flags, a short billed minute."""

from __future__ import annotations

import secrets

from tests.support.browser import seed_kiosk
from tests.support.helpers import Api, Who

PIN = "1357"
MINUTE_S = 2.0
MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


async def visit_parties(api: Api, password: str) -> dict:
    """A facility, a person with a kiosk device, and a connected family with no credits."""
    seed = await seed_kiosk(api, PIN)
    person = await api.kiosk_login(seed["facility_id"], seed["number"], PIN, seed["device"])
    email = f"alex-{secrets.token_hex(3)}@example.test"
    r = await api.call("POST", "/auth/signup",
                       json={"email": email, "password": password, "name": "Alex Rivers"})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": password})
    family = Who(r.body["token"], r.body["account"])
    await api.connect(family, person)
    return {**seed, "email": email, "family": family, "person": person}
