"""No existence oracles, no lookalike accounts (issue 17, finding 6).

Adversaries: a family member paging their own messages with `before=` set to ids they guessed
or saw elsewhere (the old answer, 404 against 200, said whether any message id existed, and
paged by another user's message's time); someone signing up an address that looks like a
victim's (a zero-width space, fullwidth letters) to be mistaken for them.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from server.schema import accounts
from store import Store
from store.migrate import alembic_config, migrate
from tests.integration.test_roles import build_world, ok
from tests.support.helpers import Api, Who


async def _page(api: Api, who: Who, folder: str, before: str):
    return await api.call("GET", f"/messages?folder={folder}&before={before}", who)


async def test_paging_from_a_message_you_cannot_see_is_not_found(api: Api) -> None:
    world = await build_world(api)
    stranger = await api.family("Stranger")
    theirs = world.ids["to_person"]  # the family's message to the person
    unknown = "msg_" + secrets.token_hex(8)
    for folder in ("inbox", "sent"):
        seen = await _page(api, stranger, folder, theirs)
        never = await _page(api, stranger, folder, unknown)
        assert (seen.status, seen.body) == (never.status, never.body) == (404, never.body), \
            (folder, seen, never)
    # A message held from its recipient is not an anchor of the recipient's inbox either.
    held = await world.send(world.family, world.person.id, "the contraband list", status="held")
    r = await _page(api, world.person, "inbox", held)
    assert r.status == 404 and r.code == "not_found", r
    # The other party's message in your own folder still pages; your sent one in your inbox
    # does not.
    assert ok(await _page(api, world.person, "inbox", world.ids["to_person"]), 200)
    assert ok(await _page(api, world.family, "sent", world.ids["to_person"]), 200)
    r = await _page(api, world.family, "inbox", world.ids["to_person"])
    assert r.status == 404, r


async def _signup(api: Api, email: str):
    return await api.call("POST", "/auth/signup",
                          json={"email": email, "password": "correct horse", "name": "Dana"})


async def test_a_lookalike_email_is_refused_or_is_the_same_account(api: Api) -> None:
    ok(await _signup(api, "dana@example.test"), 201)
    for lookalike in ("dana\u200b@example.test", "da\u200dna@example.test",
                      "\ufeffdana@example.test", "dana@exam\u00adple.test"):
        r = await _signup(api, lookalike)
        assert r.status == 422 and r.code == "invalid_input", (lookalike, r)
    fullwidth = "\uff24\uff41\uff4e\uff41@example.test"  # Ｄａｎａ
    r = await _signup(api, fullwidth)
    assert r.status == 409, r  # it is dana@example.test, taken
    r = await api.call("POST", "/auth/login",
                       json={"email": fullwidth, "password": "correct horse"})
    assert ok(r, 200)["account"]["email"] == "dana@example.test"


async def test_the_migration_folds_stored_emails_to_their_spelling(db_url: str) -> None:
    cfg = alembic_config()

    def downgrade(sync_conn) -> None:
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "0006")

    store = Store(db_url)
    try:
        async with store.write() as conn:
            await conn.run_sync(downgrade)
            now = datetime(2026, 12, 1, tzinfo=UTC)
            for account_id, email in (("acc_plain", "kim@example.test"),
                                      ("acc_upper", "LEE@Example.TEST"),
                                      ("acc_wide", "\uff4b\uff49\uff4d@example.test")):
                await conn.execute(accounts.insert().values(
                    id=account_id, role="family", name="x", email=email, created_at=now,
                    disabled=False))
        await migrate(store)
        async with store.read() as conn:
            found = dict((await conn.execute(select(accounts.c.id, accounts.c.email))).all())
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await store.close()
    assert found == {"acc_plain": "kim@example.test", "acc_upper": "lee@example.test",
                     "acc_wide": "\uff4b\uff49\uff4d@example.test"}, found  # kim's is taken
    assert head == ScriptDirectory.from_config(cfg).get_current_head()  # migrated to the end
