"""Email through a real SMTP server (aiosmtpd, started here on a free port): the outbox and its
sender, password reset by an emailed one-time link, and the notifications a family chooses.

Adversaries: a relay that is down (the email waits in the outbox and arrives once, later; a
bounded number of tries), a process that goes away before sending (another sends it), two uses
of one reset token at once (exactly one wins), an expired token, a token for another account,
a flood of reset requests, an address with no account (the same answer, no email), and a
message body that must never reach an inbox."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from sqlalchemy import select

from server import mail
from server.app import create_app
from server.schema import mail_outbox, password_resets
from tests import conftest
from tests.support.clock import Clock
from tests.support.helpers import Api, Who
from tests.support.processes import free_port

PASSWORD = "correct horse"  # tests/support/helpers.py Api.family's


class Inbox:
    """What the SMTP server received, parsed."""

    def __init__(self) -> None:
        self.mail: list[EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.mail.append(message_from_bytes(envelope.original_content, policy=policy.default))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mail if m["To"] == address]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@asynccontextmanager
async def mail_app(db_url: str, tmp_path: Path, port: int, clock: Clock,
                   **overrides) -> AsyncIterator[Api]:
    settings = conftest.test_settings(
        db_url, tmp_path, smtp_url=f"smtp+plain://127.0.0.1:{port}",
        mail_from="Kinwire <no-reply@kinwire.test>", public_url="https://kinwire.test",
        **overrides)
    app = create_app(settings, clock=clock, run_migrations=False)
    async with TestClient(TestServer(app)) as client:
        yield Api(client)


@pytest.fixture
def clock() -> Clock:
    # The real instant only for the test client's cookie jar; everything else moves by hand.
    return Clock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def api(db_url: str, tmp_path: Path, smtp, clock: Clock) -> AsyncIterator[Api]:
    async with mail_app(db_url, tmp_path, smtp[1], clock) as api:
        yield api


async def deliver(api: Api) -> None:
    """Send what is due now (the background sender may have sent some already)."""
    sender = api.ctx.mail_sender
    while await sender.pass_once():
        pass


async def family_email(api: Api, name: str = "Fam") -> tuple[Who, str]:
    who = await api.family(name)
    return who, who.account["email"]


def token_in(mail: EmailMessage) -> str:
    found = re.search(r"https://kinwire\.test/reset#token=([A-Za-z0-9_-]+)",
                      mail.get_content())
    assert found, mail.get_content()
    return found.group(1)


async def reset_token(api: Api, inbox: Inbox, email: str) -> str:
    r = await api.call("POST", "/auth/reset", json={"email": email})
    assert r.status == 202, r.body
    await deliver(api)
    return token_in(inbox.to(email)[-1])


# --- password reset --------------------------------------------------------------------------

async def test_reset_by_emailed_link_sets_password_and_ends_sessions(api: Api, smtp) -> None:
    inbox = smtp[0]
    who, email = await family_email(api)
    token = await reset_token(api, inbox, email)
    mail = inbox.to(email)[-1]
    assert mail["Subject"] == "Reset your Kinwire password"
    assert mail["From"] == "Kinwire <no-reply@kinwire.test>"
    # Only the token's hash is stored.
    async with api.ctx.store.read() as conn:
        stored = list((await conn.execute(select(password_resets.c.token_hash))).scalars())
    assert token not in stored and len(stored) == 1
    assert (await api.call("GET", "/me", who)).status == 200
    r = await api.call("POST", "/auth/reset/confirm",
                       json={"token": token, "password": "a brand new one"})
    assert r.status == 200, r.body
    assert (await api.call("GET", "/me", who)).status == 401  # every session ended
    r = await api.call("POST", "/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status == 401
    r = await api.call("POST", "/auth/login", json={"email": email,
                                                    "password": "a brand new one"})
    assert r.status == 200
    # Single use.
    r = await api.call("POST", "/auth/reset/confirm",
                       json={"token": token, "password": "yet another one"})
    assert r.status == 400 and r.body["error"]["code"] == "invalid_token"


async def test_reset_answers_the_same_for_no_account_and_sends_nothing(api: Api, smtp) -> None:
    inbox = smtp[0]
    _, email = await family_email(api)
    known = await api.call("POST", "/auth/reset", json={"email": email})
    unknown = await api.call("POST", "/auth/reset", json={"email": "nobody@example.test"})
    assert (known.status, known.body) == (unknown.status, unknown.body) == (202, known.body)
    await deliver(api)
    assert len(inbox.to(email)) == 1
    assert inbox.to("nobody@example.test") == []


async def test_two_uses_of_one_token_at_once_exactly_one_wins(api: Api, smtp) -> None:
    _, email = await family_email(api)
    token = await reset_token(api, smtp[0], email)
    replies = await asyncio.gather(*(
        api.call("POST", "/auth/reset/confirm", json={"token": token, "password": f"new pw {i}!"})
        for i in range(6)))
    assert sorted(r.status for r in replies) == [200] + [400] * 5
    winner = next(i for i, r in enumerate(replies) if r.status == 200)
    r = await api.call("POST", "/auth/login", json={"email": email,
                                                    "password": f"new pw {winner}!"})
    assert r.status == 200


async def test_expired_token_is_refused(api: Api, smtp, clock: Clock) -> None:
    _, email = await family_email(api)
    token = await reset_token(api, smtp[0], email)
    clock.advance(seconds=api.ctx.settings.password_reset_ttl_s + 1)
    r = await api.call("POST", "/auth/reset/confirm",
                       json={"token": token, "password": "too late now"})
    assert r.status == 400 and r.body["error"]["code"] == "invalid_token"
    r = await api.call("POST", "/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status == 200


async def test_a_token_resets_only_its_own_account(api: Api, smtp) -> None:
    a, a_email = await family_email(api, "Ann")
    b, b_email = await family_email(api, "Bob")
    token = await reset_token(api, smtp[0], a_email)
    # Bob, signed in, uses Ann's token: it sets Ann's password, never Bob's, and ends Ann's
    # sessions, not Bob's.
    r = await api.call("POST", "/auth/reset/confirm", b,
                       json={"token": token, "password": "bob wants in"})
    assert r.status == 200
    assert (await api.call("GET", "/me", b)).status == 200
    assert (await api.call("GET", "/me", a)).status == 401
    r = await api.call("POST", "/auth/login", json={"email": b_email, "password": "bob wants in"})
    assert r.status == 401
    r = await api.call("POST", "/auth/login", json={"email": b_email, "password": PASSWORD})
    assert r.status == 200
    # A made-up token of the right shape does nothing.
    r = await api.call("POST", "/auth/reset/confirm",
                       json={"token": secrets.token_urlsafe(32), "password": "guessing here"})
    assert r.status == 400 and r.body["error"]["code"] == "invalid_token"


async def test_a_flood_of_reset_requests(api: Api, smtp) -> None:
    inbox = smtp[0]
    _, email = await family_email(api)
    per = api.ctx.settings.password_resets_per_hour
    replies = await asyncio.gather(*(api.call("POST", "/auth/reset", json={"email": email})
                                     for _ in range(per + 5)))
    assert {r.status for r in replies} == {202}  # the same answer past the limit
    await deliver(api)
    assert len(inbox.to(email)) == per  # the mailbox is not flooded
    # One client address asking about many addresses is refused past ten times that.
    statuses = []
    for i in range(per * 10):
        r = await api.call("POST", "/auth/reset", json={"email": f"x{i}@example.test"})
        statuses.append(r.status)
    assert statuses[-1] == 429 and statuses.count(202) == per * 10 - (per + 5)


# --- the outbox and its sender ---------------------------------------------------------------

async def test_relay_down_the_email_waits_and_arrives_once(db_url: str, tmp_path: Path,
                                                           clock: Clock) -> None:
    """The relay is down for the first process, which goes away before it could send; the
    email is still in the outbox and the next process sends it, once."""
    port = free_port()  # nothing listens here yet
    async with mail_app(db_url, tmp_path, port, clock) as first:
        _, email = await family_email(first)
        r = await first.call("POST", "/auth/reset", json={"email": email})
        assert r.status == 202  # answered at once: no SMTP on the request's path
        await first.ctx.mail_sender.pass_once()
        async with first.ctx.store.read() as conn:
            row = (await conn.execute(select(mail_outbox))).one()
        assert row.sent_at is None and row.failed_at is None and row.attempts >= 1
        assert row.last_error and email not in row.last_error
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock.advance(seconds=3600)  # past the retry's wait
        async with mail_app(db_url, tmp_path, port, clock) as second:
            await deliver(second)
            await deliver(second)
            assert len(inbox.to(email)) == 1
            async with second.ctx.store.read() as conn:
                row = (await conn.execute(select(mail_outbox))).one()
            assert row.sent_at is not None
    finally:
        controller.stop()


async def test_tries_are_bounded(db_url: str, tmp_path: Path, clock: Clock) -> None:
    async with mail_app(db_url, tmp_path, free_port(), clock, mail_attempts_max=3) as api:
        _, email = await family_email(api)
        await api.call("POST", "/auth/reset", json={"email": email})
        for _ in range(6):
            await api.ctx.mail_sender.pass_once()
            clock.advance(seconds=3600)
        async with api.ctx.store.read() as conn:
            row = (await conn.execute(select(mail_outbox))).one()
        assert row.attempts == 3 and row.failed_at is not None and row.sent_at is None


async def test_email_off_without_a_relay(db_url: str, tmp_path: Path, clock: Clock) -> None:
    settings = conftest.test_settings(db_url, tmp_path)
    app = create_app(settings, clock=clock, run_migrations=False)
    async with TestClient(TestServer(app)) as client:
        api = Api(client)
        assert api.ctx.mail_sender is None and api.ctx.notifier is None
        r = await api.call("POST", "/auth/reset", json={"email": "a@example.test"})
        assert r.status == 404 and r.body["error"]["code"] == "email_off"


# --- notifications ---------------------------------------------------------------------------

async def people(api: Api) -> tuple[Who, Who]:
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    return staff, await api.person(staff, facility)


async def test_purchase_receipt_and_low_balance(api: Api, smtp) -> None:
    inbox = smtp[0]
    who, email = await family_email(api)
    assert (await api.buy(who, 500)).status == 201
    await deliver(api)
    [receipt] = inbox.to(email)
    text = receipt.get_content()
    assert receipt["Subject"] == "Your Kinwire receipt"
    for expected in ("Credits: 500", "Fee: $1.50", "ending 4242"):
        assert expected in text, text
    assert "4242424242424242" not in text
    assert receipt["List-Unsubscribe"].startswith("<https://kinwire.test/api/v1/notifications/")
    # Spending below the threshold: one low-balance email, not one a debit.
    _, person = await people(api)
    await api.connect(who, person)
    for _ in range(3):
        r = await api.call("POST", "/gifts", who, json={"to": person.id, "credits": 150},
                           key=secrets.token_hex(8))
        assert r.status == 201, r.body
    await deliver(api)
    low = [m for m in inbox.to(email) if m["Subject"] == "Your Kinwire balance is low"]
    assert len(low) == 1 and "50 credits" in low[0].get_content()
    # Once until the next purchase: then below the threshold again is a second email.
    assert (await api.buy(who, 500)).status == 201
    r = await api.call("POST", "/gifts", who, json={"to": person.id, "credits": 400},
                       key=secrets.token_hex(8))
    assert r.status == 201, r.body
    await deliver(api)
    low = [m for m in inbox.to(email) if m["Subject"] == "Your Kinwire balance is low"]
    assert len(low) == 2 and "150 credits" in low[1].get_content()


async def test_new_messages_one_email_a_thread_a_quiet_period_no_body(api: Api, smtp,
                                                                      clock: Clock) -> None:
    inbox = smtp[0]
    _, person = await people(api)
    who, email = await family_email(api)
    r = await api.call("POST", "/connections", who, json={"person_id": person.id})
    r = await api.call("POST", f"/connections/{r.body['connection']['id']}/approve", person)
    assert r.status == 200
    secret_words = "the parcel is under the blue bench"
    for _ in range(3):
        r = await api.call("POST", "/messages", person,
                           json={"to": who.id, "body": secret_words, "cod": True},
                           key=secrets.token_hex(8))
        assert r.status == 201, r.body
        assert r.body["message"]["status"] == "delivered", r.body
    await deliver(api)
    approved = [m for m in inbox.to(email) if m["Subject"].startswith("Connection approved")]
    assert len(approved) == 1 and "Pat Person" in approved[0]["Subject"]
    assert [m for m in inbox.to(email) if "message" in m["Subject"]] == []  # quiet period
    clock.advance(seconds=api.ctx.settings.mail_quiet_s + 1)
    await deliver(api)
    [note] = [m for m in inbox.to(email) if "message" in m["Subject"]]
    assert "3 new messages from Pat Person" in note.get_content()
    assert all(secret_words not in m.as_string() for m in inbox.mail)


async def test_a_held_message_is_emailed_only_once_approved(api: Api, smtp,
                                                            clock: Clock) -> None:
    """A message held for review is not news yet: no email while it waits (the family could
    not read it), one after staff approve it, counted with the thread and without its body."""
    inbox = smtp[0]
    admin = await api.admin()
    facility = await api.facility(admin, review_mode="hold")
    staff = await api.staff(admin, facility)
    person = await api.person(staff, facility)
    who, email = await family_email(api)
    r = await api.call("POST", "/connections", who, json={"person_id": person.id})
    r = await api.call("POST", f"/connections/{r.body['connection']['id']}/approve", person)
    assert r.status == 200
    secret_words = "meet me by the gym door"
    r = await api.call("POST", "/messages", person,
                       json={"to": who.id, "body": secret_words, "cod": True},
                       key=secrets.token_hex(8))
    assert r.status == 201 and r.body["message"]["status"] == "held", r.body
    clock.advance(seconds=api.ctx.settings.mail_quiet_s + 1)
    await deliver(api)
    assert [m for m in inbox.to(email) if "message" in m["Subject"]] == []  # held: no news
    r = await api.call("POST", f"/review/{r.body['message']['id']}/approve", staff)
    assert r.status == 200, r.body
    clock.advance(seconds=api.ctx.settings.mail_quiet_s + 1)
    await deliver(api)
    [note] = [m for m in inbox.to(email) if "message" in m["Subject"]]
    assert "1 new message from Pat Person" in note.get_content(), note.get_content()
    assert all(secret_words not in m.as_string() for m in inbox.mail)


async def test_choices_and_the_unsubscribe_link(api: Api, smtp) -> None:
    inbox = smtp[0]
    who, email = await family_email(api)
    r = await api.call("GET", "/notifications", who)
    assert r.status == 200 and r.body["email"] is True and all(r.body["kinds"].values())
    r = await api.call("PUT", "/notifications", who, json={"kinds": {"receipt": False}})
    assert r.status == 200 and r.body["kinds"]["receipt"] is False
    assert (await api.buy(who, 500)).status == 201
    await deliver(api)
    assert inbox.to(email) == []
    r = await api.call("PUT", "/notifications", who, json={"kinds": {"receipt": True}})
    assert (await api.buy(who, 500)).status == 201
    await deliver(api)
    [receipt] = inbox.to(email)
    link = receipt["List-Unsubscribe"].strip("<>").removeprefix("https://kinwire.test")
    # Following the link (a mail scanner does) changes nothing; the button (POST) does.
    async with api.client.get(link) as resp:
        assert resp.status == 200 and "Unsubscribe" in await resp.text()
    assert all((await api.call("GET", "/notifications", who)).body["kinds"].values())
    async with api.client.post(link) as resp:
        assert resp.status == 200 and "Unsubscribed" in await resp.text()
    assert not any((await api.call("GET", "/notifications", who)).body["kinds"].values())
    async with api.client.post(link.split("key=")[0] + "key=" + "x" * 40) as resp:
        assert "not valid" in await resp.text()
    assert (await api.buy(who, 500)).status == 201
    await deliver(api)
    assert len(inbox.to(email)) == 1


async def test_visit_booked_reminded_cancelled_and_ended_with_minutes_and_cost(
        db_url: str, tmp_path: Path, smtp) -> None:
    from billing import ledger
    from server.events import Outbox
    from signalling import visits
    from signalling.tables import visits as visits_table
    from tests.integration.test_booking import T0, at, book, booked
    from tests.support.cast import cast

    inbox, clock = smtp[0], Clock(T0)
    async with mail_app(db_url, tmp_path, smtp[1], clock) as api:
        c = await cast(api)
        email = c.family.account["email"]
        r = await api.call("GET", "/connections", c.family)
        connection = r.body["connections"][0]["id"]
        first = booked(await book(api, c.family, connection, at("2026-03-02", "10:00")))
        second = booked(await book(api, c.family, connection, at("2026-03-02", "11:00")))
        # 09:10 at the facility: the 10:00 visit is within the hour's reminder, 11:00 is not;
        # a second scan finds nothing more to remind.
        notifier = api.ctx.notifier
        assert await notifier.remind(api.ctx.store, clock(), 100) == 1
        assert await notifier.remind(api.ctx.store, clock(), 100) == 0
        r = await api.call("POST", f"/visits/{second['id']}/cancel", c.family)
        assert r.status == 200, r.body
        # The first visit is billed two minutes and then hung up (the meter's own steps are
        # tested elsewhere: here only what the email reports).
        async with api.ctx.store.write() as conn:
            await conn.execute(visits_table.update().where(visits_table.c.id == first["id"])
                               .values(status="live"))
            for n in (1, 2):
                await ledger.transfer(conn, key=f"visit:{first['id']}:minute:{n}",
                                      debit=c.family.id,
                                      credit=ledger.SystemAccount.VISIT_REVENUE,
                                      amount=first["minute_price"], kind="visit_minute",
                                      ref=first["id"], at=clock())
            assert await visits.end(conn, Outbox(), first["id"], "hung_up", clock())
        await deliver(api)
        subjects = sorted(m["Subject"] for m in inbox.to(email)
                          if m["Subject"].startswith("Visit"))
        assert subjects == ["Visit booked", "Visit booked", "Visit cancelled", "Visit ended",
                            "Visit reminder"]
        [reminder] = [m for m in inbox.to(email) if m["Subject"] == "Visit reminder"]
        assert "starts at 2026-03-02 10:00 (America/Chicago)" in reminder.get_content()
        [ended] = [m for m in inbox.to(email) if m["Subject"] == "Visit ended"]
        text = ended.get_content()
        assert "Minutes: 2." in text and f"Cost: {2 * first['minute_price']} credits" in text
        assert "hung up" in text and "2026-03-02 10:00 (America/Chicago)" in text


async def test_housekeeping_prunes_sent_mail_and_old_tokens_only(api: Api, smtp,
                                                                clock: Clock) -> None:
    from server.housekeeping import Housekeeping

    _, email = await family_email(api)
    await reset_token(api, smtp[0], email)  # one sent email, one token
    async with api.ctx.store.write() as conn:  # one not sent yet (the relay refused it, say)
        await mail.enqueue(conn, to=email, kind="receipt", subject="s", body="b", at=clock(),
                           due_at=clock() + timedelta(days=30))
    clock.advance(days=8)
    keeper = Housekeeping(api.ctx.store, api.ctx.broker, clock, node_id="t", lease_s=10,
                          batch_rows=100, retention_s=86_400, metrics=api.ctx.metrics,
                          per_process=lambda now: None)
    assert await keeper._prune_mail(clock()) == 2  # the sent email and the expired token
    async with api.ctx.store.read() as conn:
        left = (await conn.execute(select(mail_outbox.c.sent_at))).scalars().all()
    assert left == [None]  # an unsent email is never pruned


def test_settings_for_the_relay(tmp_path: Path) -> None:
    from server.settings import Settings, SettingsError

    base = {"data_dir": str(tmp_path)}
    with pytest.raises(SettingsError, match="KINWIRE_MAIL_FROM"):
        Settings(**base, smtp_url="smtp://relay.example:587").validate()
    with pytest.raises(SettingsError, match="KINWIRE_PUBLIC_URL"):
        Settings(**base, smtp_host="relay.example", mail_from="k@x.test").validate()
    with pytest.raises(SettingsError, match="KINWIRE_SMTP_TLS"):
        Settings(**base, smtp_tls="maybe").validate()
    on = Settings(**base, smtp_url="smtp://kin%40x:p%3Ass@relay.example", mail_from="k@x.test",
                  public_url="https://k.test").validate()
    relay = mail.relay_of(on)
    assert (relay.host, relay.port, relay.tls, relay.user, relay.password) == \
        ("relay.example", 587, "starttls", "kin@x", "p:ss")
    assert "p:ss" not in repr(relay) and "p%3Ass" not in repr(on)
    assert mail.relay_of(Settings(**base).validate()) is None
    assert mail.relay_of(on.replace(smtp_url="smtps://relay.example")).port == 465


async def test_a_name_with_line_breaks_cannot_add_headers_or_lines(api: Api, smtp) -> None:
    """A client that lies: a family named with CR LF and a header (a person's name comes from
    staff, a family's from its own sign-up)."""
    inbox = smtp[0]
    email = f"evil-{secrets.token_hex(3)}@example.test"
    r = await api.call("POST", "/auth/signup", json={
        "email": email, "password": PASSWORD, "name": "Ann\r\nBcc: victim@example.test\n\nHi"})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": PASSWORD})
    who = Who(r.body["token"], r.body["account"])
    assert (await api.buy(who, 500)).status == 201
    await deliver(api)
    [receipt] = inbox.to(email)
    assert receipt["Bcc"] is None and inbox.to("victim@example.test") == []
    lines = receipt.get_content().splitlines()
    assert lines[:3] == ["Hello Ann Bcc: victim@example.test Hi,", "", lines[2]]
    assert lines[2].startswith("Purchase ")


async def test_a_family_that_reads_spanish_gets_its_emails_in_spanish(api: Api, smtp,
                                                                      clock: Clock) -> None:
    """The language a family's app runs in (PUT /notifications {language}, static/js/family.js)
    writes its emails (server/mail_words.py); another family, which never said, stays English.
    The adversaries: an email built with English words regardless, the quiet period's count
    that no longer finds its Spanish line (it would stay "1 mensaje nuevo" however many came),
    and a language the apps do not have."""
    inbox = smtp[0]
    _, person = await people(api)
    es, es_email = await family_email(api, "Ana")
    en, en_email = await family_email(api, "Ben")
    r = await api.call("GET", "/notifications", es)
    assert r.status == 200 and r.body["language"] == "en", r.body  # until the app says
    r = await api.call("PUT", "/notifications", es, json={"language": "fr"})
    assert r.status == 422, r.body
    r = await api.call("PUT", "/notifications", es, json={"language": "es"})
    assert r.status == 200 and r.body["language"] == "es", r.body
    assert all(r.body["kinds"].values())  # the choices untouched
    for who in (es, en):
        r = await api.call("POST", "/connections", who, json={"person_id": person.id})
        r = await api.call("POST", f"/connections/{r.body['connection']['id']}/approve", person)
        assert r.status == 200, r.body
        for _ in range(3):
            r = await api.call("POST", "/messages", person,
                               json={"to": who.id, "body": "hola", "cod": True},
                               key=secrets.token_hex(8))
            assert r.status == 201, r.body
    clock.advance(seconds=api.ctx.settings.mail_quiet_s + 1)
    await deliver(api)
    subjects = sorted(m["Subject"] for m in inbox.to(es_email))
    assert subjects == ["Conexión aprobada: Pat Person", "Nuevo mensaje de Pat Person"], subjects
    note = next(m for m in inbox.to(es_email) if m["Subject"].startswith("Nuevo"))
    text = note.get_content()
    assert text.startswith("Hola, Ana:")
    assert "3 mensajes nuevos de Pat Person. Léalos en Kinwire." in text
    assert "Elija qué correos recibe: https://kinwire.test/settings" in text
    # The password reset too, and its link still works.
    token = await reset_token(api, inbox, es_email)
    reset = inbox.to(es_email)[-1]
    assert reset["Subject"] == "Restablezca su contraseña de Kinwire"
    assert "dentro de" in reset.get_content() and "Reset" not in reset.get_content()
    r = await api.call("POST", "/auth/reset/confirm",
                       json={"token": token, "password": "a new password"})
    assert r.status == 200, r.body
    english = sorted(m["Subject"] for m in inbox.to(en_email))
    assert english == ["Connection approved: Pat Person", "New message from Pat Person"]
    note = next(m for m in inbox.to(en_email) if m["Subject"].startswith("New"))
    assert "3 new messages from Pat Person. Read them in Kinwire." in note.get_content()
