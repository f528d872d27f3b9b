"""In Debian's Chromium: a family that forgot its password asks for a link on the log-in page,
opens the link from the email a real SMTP server (aiosmtpd) received, sets a new password, and
logs in with it; its other session is over. Then it chooses its emails on /settings.

The app runs on a clock from tests/support/clock.py. Screens saved: family-forgot-password,
family-reset-password, family-email-settings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_mail import Inbox, deliver
from tests.integration.test_roles import MAIL_ON
from tests.support.audit import Audit
from tests.support.browser import PHONE, chromium, require_chromium, shot
from tests.support.clock import running_clock
from tests.support.helpers import Api
from tests.support.pages import family_account, log_in
from tests.support.processes import free_port

START = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)


async def test_a_family_resets_its_password_from_the_emailed_link(sqlite_template: Path,
                                                                   tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    inbox, smtp_port, port = Inbox(), free_port(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    base = f"http://127.0.0.1:{port}"
    settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                             smtp_url=f"smtp+plain://127.0.0.1:{smtp_port}",
                             mail_from="Kinwire <no-reply@kinwire.test>", public_url=base,
                             vapid_private_key=MAIL_ON["vapid_private_key"],
                             vapid_subject="mailto:ops@kinwire.test")
    app = create_app(settings, run_migrations=False, clock=running_clock(START))
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client, \
                chromium() as browser:
            api = Api(client)
            family, email = await family_account(api, "Alex Rivers")
            context = await browser.new_context(viewport=PHONE, device_scale_factor=1)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            audit = Audit()  # every control named, images with alt, nothing wider than a phone

            await page.goto(base + "/")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
            await page.get_by_role("link", name="Forgot your password?").click()
            await page.get_by_label("Email").fill(email)
            await page.get_by_role("button", name="Send the link").click()
            await expect(page.locator("#forgot-notice")).to_contain_text(
                "If an account uses that address")
            await shot(page, "family-forgot-password")
            await audit.screen(page, "forgot password")

            await deliver(api)
            [mail] = inbox.to(email)
            link = next(line for line in mail.get_content().splitlines()
                        if line.startswith(base + "/reset#token="))
            await page.goto(link)
            await expect(page.get_by_role("heading", name="Set a new password")).to_be_visible()
            assert "token" not in page.url  # taken out of the address bar and history
            await page.get_by_role("textbox", name="New password").fill("a fresh passphrase")
            await page.get_by_label("The same again").fill("a fresh passphrase")
            await shot(page, "family-reset-password")
            await audit.screen(page, "set a new password")
            await page.get_by_role("button", name="Set the password").click()
            await expect(page.locator("#reset-notice")).to_contain_text("Your password is set")
            # The same link again: refused.
            await page.goto(link)
            await page.get_by_role("textbox", name="New password").fill("another passphrase")
            await page.get_by_label("The same again").fill("another passphrase")
            await page.get_by_role("button", name="Set the password").click()
            await expect(page.locator("#reset-notice")).to_contain_text("not valid any more")

            assert (await api.call("GET", "/me", family)).status == 401  # the old session ended
            await log_in(page, base, email, "a fresh passphrase")

            # Its email choices.
            await page.goto(base + "/settings")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await page.get_by_label("A receipt for each purchase").uncheck()
            await page.get_by_role("button", name="Save").click()
            await expect(page.locator("#prefs-notice")).to_have_text("Saved.")
            # Web Push on: the device's own switch is offered (its service worker registered;
            # a headless browser has no push service to subscribe with:
            # tests/integration/test_push.py covers the server's side).
            await expect(page.get_by_role("button", name="Allow on this device")).to_be_visible()
            await shot(page, "family-email-settings")
            await audit.screen(page, "email settings")
            await page.reload()
            await expect(page.get_by_label("A receipt for each purchase")).not_to_be_checked()
            await expect(page.get_by_label("A connection approved")).to_be_checked()
            assert errors == []
            assert audit.problems == [], "\n".join(audit.problems)
            assert len(audit.checked) == 2 * 3 and min(audit.checked.values()) >= 3, \
                audit.checked
            await context.close()
    finally:
        controller.stop()
