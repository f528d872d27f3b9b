"""The apps as people reach them in Chromium: a family account made through the API, signing in
on a page."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support.helpers import Api, Who

PASSWORD = "correct horse battery"


async def family_account(api: Api, name: str) -> tuple[Who, str]:
    email = f"{name.split()[0].lower()}-{secrets.token_hex(3)}@example.test"
    r = await api.call("POST", "/auth/signup", json={"email": email, "password": PASSWORD,
                                                     "name": name})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status == 200, r.body
    return Who(r.body["token"], r.body["account"]), email


async def log_in(page: Any, base: str, email: str, password: str, path: str = "/") -> None:
    from playwright.async_api import expect

    from tests.support.browser import until_ready

    await page.goto(base + path)
    await until_ready(page, "signed-out")
    await page.locator("#login-email").fill(email)
    await page.locator("#login-password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")


# The staff console's Watch (static/js/staff/watch.js): the pictures' streams noted, then new
# streams in both pictures, playing (the watch started again: a new socket, relay or room).
async def note_watch_streams(desk: Any) -> None:
    await desk.evaluate("""() => { window.oldStreams = [...document.querySelectorAll(
        '.watch video')].map(v => v.srcObject); }""")


async def watch_plays_new_streams(desk: Any, pictures: tuple[int, ...] = (0, 1)) -> None:
    """`pictures`: which (0 the family's, 1 the person's) must have new streams."""
    await desk.wait_for_function(
        """(which) => [...document.querySelectorAll('.watch video')].every((v, i) =>
             (!which.includes(i) || v.srcObject !== window.oldStreams[i]) && v.videoWidth > 0
             && v.currentTime > 0.5)""", arg=list(pictures), timeout=20_000)
