"""Connections, messages, COD and review through the HTTP API and live sockets, on both DBs."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from billing import ledger
from tests.support.cast import balance, cast, send
from tests.support.helpers import Api
from tests.support.sockets import MSGPACK, open_socket


async def assert_ledger_sound(api: Api) -> None:
    async with api.ctx.store.read() as conn:
        assert await ledger.check_invariants(conn) == []


async def test_connection_lifecycle(api: Api) -> None:
    c = await cast(api, connected=False)
    r = await api.call("POST", "/connections", c.family, json={"person_id": c.person.id})
    con = r.body["connection"]
    assert r.status == 201 and con["status"] == "requested"
    assert (await send(api, c.family, c.person)).code == "not_connected"
    listed = await api.call("GET", "/connections", c.person)
    assert [x["id"] for x in listed.body["connections"]] == [con["id"]]
    assert (await api.call("POST", f"/connections/{con['id']}/approve", c.family)).status == 403
    assert (await api.call("POST", f"/connections/{con['id']}/deny", c.person)).status == 200
    assert (await send(api, c.family, c.person)).code == "not_connected"
    again = await api.call("POST", "/connections", c.family, json={"person_id": c.person.id})
    assert again.body["connection"]["status"] == "requested"
    await api.call("POST", f"/connections/{con['id']}/approve", c.person)
    assert (await send(api, c.family, c.person)).status == 201
    assert (await api.call("POST", f"/connections/{con['id']}/block", c.family)).status == 200
    assert (await send(api, c.person, c.family)).code == "not_connected"
    assert (await api.call("POST", f"/connections/{con['id']}/unblock", c.person)).status == 403
    # Only its owner lifts a block (issue 17): not the other party, not staff.
    assert (await api.call("POST", f"/connections/{con['id']}/unblock", c.staff)).status == 403
    assert (await api.call("POST", f"/connections/{con['id']}/unblock", c.family)).status == 200
    r = await api.call("POST", f"/connections/{con['id']}/privileged", c.staff,
                       json={"privileged": True})
    assert r.body["connection"]["privileged"] is True
    other_staff = await api.staff(c.admin, await api.facility(c.admin))
    assert (await api.call("POST", f"/connections/{con['id']}/block", other_staff)).status == 403
    audit = await api.call("GET", "/audit", c.staff)
    actions = {e["action"] for e in audit.body["entries"]}
    assert {"connection.unblock", "connection.privileged"} <= actions


async def test_a_message_is_charged_delivered_live_and_read(api: Api,
                                                            client: TestClient) -> None:
    c = await cast(api)
    p_sock = await open_socket(client, c.person, MSGPACK)
    f_sock = await open_socket(client, c.family)
    r = await send(api, c.family, c.person, "Thinking of you")
    assert r.status == 201, r.body
    message = r.body["message"]
    assert message["status"] == "delivered" and message["price"] == 50
    assert await balance(api, c.family) == 450
    pushed = await p_sock.push()
    assert pushed["type"] == "message.new" and pushed["data"]["body"] == "Thinking of you"
    inbox = await api.call("GET", "/messages?folder=inbox", c.person)
    assert [m["id"] for m in inbox.body["messages"]] == [message["id"]]
    opened = await api.call("POST", f"/messages/{message['id']}/open", c.person)
    assert opened.status == 200 and opened.body["message"]["opened_at"]
    kinds = [(await f_sock.push())["type"] for _ in range(3)]
    assert kinds == ["balance", "message.new", "message.status"]
    assert await balance(api, c.family) == 450, "reading is free"
    await assert_ledger_sound(api)


async def test_sending_is_idempotent_and_checked(api: Api) -> None:
    c = await cast(api, credits=500)
    first = await send(api, c.family, c.person, "once", key="k-1")
    second = await send(api, c.family, c.person, "once", key="k-1")
    assert first.status == second.status == 201
    assert first.body["message"]["id"] == second.body["message"]["id"]
    assert await balance(api, c.family) == 450
    assert (await send(api, c.family, c.person, "twice", key="k-1")).code == \
        "idempotency_conflict"
    too_long = await send(api, c.family, c.person, "x" * 30_001)
    assert too_long.status == 422 and too_long.code == "too_long"
    assert (await send(api, c.family, c.person, "   ")).code == "empty_message"
    stranger = await api.family("Stranger")
    assert (await send(api, stranger, c.person)).code == "not_connected"
    assert (await send(api, c.family, c.person, cod=True)).code == "forbidden"


async def test_insufficient_credits_store_nothing(api: Api) -> None:
    c = await cast(api, credits=0)
    r = await send(api, c.family, c.person)
    assert r.status == 402 and r.code == "insufficient_credits"
    sent = await api.call("GET", "/messages?folder=sent", c.family)
    assert sent.body["messages"] == []


async def test_cod_is_paid_once_by_the_recipient_on_first_open(api: Api) -> None:
    c = await cast(api, credits=500)
    r = await send(api, c.person, c.family, "collect call, in writing", cod=True)
    assert r.status == 201, r.body
    message_id = r.body["message"]["id"]
    inbox = (await api.call("GET", "/messages", c.family)).body["messages"]
    assert inbox[0]["locked"] is True and "body" not in inbox[0]
    assert inbox[0]["from"] == c.person.id and inbox[0]["created_at"]
    opens = await asyncio.gather(*[
        api.call("POST", f"/messages/{message_id}/open", c.family) for _ in range(10)])
    assert all(o.status == 200 for o in opens), [o.body for o in opens]
    assert all(o.body["message"]["body"] == "collect call, in writing" for o in opens)
    assert await balance(api, c.family) == 450
    await assert_ledger_sound(api)


async def test_cod_without_credits_stays_locked(api: Api) -> None:
    c = await cast(api, credits=0)
    message_id = (await send(api, c.person, c.family, cod=True)).body["message"]["id"]
    r = await api.call("POST", f"/messages/{message_id}/open", c.family)
    assert r.status == 402 and r.code == "insufficient_credits"
    inbox = (await api.call("GET", "/messages", c.family)).body["messages"]
    assert inbox[0]["locked"] is True and inbox[0]["opened_at"] is None


async def test_held_messages_wait_for_staff(api: Api, client: TestClient) -> None:
    c = await cast(api, review_mode="hold")
    f_sock = await open_socket(client, c.family)
    r = await send(api, c.family, c.person, "please approve")
    assert r.body["message"]["status"] == "held"
    assert "held_for" not in r.body["message"], "the reason stays with staff"
    assert (await api.call("GET", "/messages", c.person)).body["messages"] == []
    queue = await api.call("GET", "/review", c.staff)
    assert [m["id"] for m in queue.body["messages"]] == [r.body["message"]["id"]]
    assert queue.body["messages"][0]["held_for"] == "review"
    message_id = r.body["message"]["id"]
    ok = await api.call("POST", f"/review/{message_id}/approve", c.staff)
    assert ok.status == 200
    assert (await api.call("POST", f"/review/{message_id}/reject", c.staff,
                           json={"reason": "late"})).code == "already_reviewed"
    inbox = (await api.call("GET", "/messages", c.person)).body["messages"]
    assert [m["id"] for m in inbox] == [message_id]
    frames = [await f_sock.push() for _ in range(3)]
    assert frames[-1]["type"] == "message.status"
    assert frames[-1]["data"]["status"] == "delivered"


async def test_rejection_refunds_and_tells_the_sender(api: Api, client: TestClient) -> None:
    c = await cast(api, keywords=["Escape Plan"])
    f_sock = await open_socket(client, c.family)
    r = await send(api, c.family, c.person, "about the escape plan tonight")
    assert r.body["message"]["status"] == "held", "a watched phrase holds even in instant mode"
    assert (await send(api, c.family, c.person, "escaped the rain")).body["message"][
        "status"] == "delivered"
    assert await balance(api, c.family) == 400
    message_id = r.body["message"]["id"]
    other_staff = await api.staff(c.admin, await api.facility(c.admin))
    assert (await api.call("POST", f"/review/{message_id}/reject", other_staff,
                           json={"reason": "x"})).status == 404
    rej = await api.call("POST", f"/review/{message_id}/reject", c.staff,
                         json={"reason": "Mentions an escape"})
    assert rej.status == 200, rej.body
    assert await balance(api, c.family) == 450
    seen = []
    while not seen or seen[-1]["type"] != "message.status":
        seen.append(await f_sock.push())
    assert seen[-1]["data"]["status"] == "rejected"
    assert seen[-1]["data"]["reject_reason"] == "Mentions an escape"
    audit = (await api.call("GET", "/audit", c.staff)).body["entries"]
    assert audit[0]["action"] == "message.reject" and audit[0]["target"] == message_id
    statement = (await api.call("GET", "/ledger", c.family)).body["entries"]
    assert statement[0]["kind"] == "refund" and statement[0]["credits"] == 50
    assert statement[0]["ref"] == message_id, "the correcting transfer names the message"
    await assert_ledger_sound(api)


async def test_inbox_pages_and_removal(api: Api) -> None:
    c = await cast(api, credits=500)
    ids = [(await send(api, c.family, c.person, f"m{i}")).body["message"]["id"]
           for i in range(5)]
    page = await api.call("GET", "/messages?folder=inbox&limit=2", c.person)
    assert [m["id"] for m in page.body["messages"]] == ids[::-1][:2]
    rest = await api.call("GET", f"/messages?folder=inbox&before={page.body['next_before']}",
                          c.person)
    assert [m["id"] for m in rest.body["messages"]] == ids[::-1][2:]
    assert (await api.call("DELETE", f"/messages/{ids[0]}", c.person)).status == 200
    inbox = await api.call("GET", "/messages?folder=inbox", c.person)
    assert ids[0] not in [m["id"] for m in inbox.body["messages"]]
    sent = await api.call("GET", "/messages?folder=sent", c.family)
    assert ids[0] in [m["id"] for m in sent.body["messages"]], "the other side keeps it"


async def test_message_send_over_the_socket(api: Api, client: TestClient) -> None:
    c = await cast(api)
    f_sock = await open_socket(client, c.family)
    reply = await f_sock.call("message.send", to=c.person.id, body="over ws", key="ws-1")
    assert reply["ok"]["message"]["status"] == "delivered"
    again = await f_sock.call("message.send", to=c.person.id, body="over ws", key="ws-1")
    assert again["ok"]["message"]["id"] == reply["ok"]["message"]["id"]
    bad = await f_sock.call("message.send", to=c.person.id, body=5, key="ws-2")
    assert bad["error"]["code"] == "invalid_input"
    p_sock = await open_socket(client, c.person, MSGPACK)
    opened = await p_sock.call("message.open", message_id=reply["ok"]["message"]["id"])
    assert opened["ok"]["message"]["opened_at"]
    assert await balance(api, c.family) == 450


async def test_no_one_reaches_anothers_messages_by_id(api: Api, client: TestClient) -> None:
    c = await cast(api, credits=500)
    mid = (await send(api, c.family, c.person, "private")).body["message"]["id"]
    intruder = await api.family("Intruder")
    other_person = await api.person(c.staff, c.facility)
    for who in (intruder, other_person):
        assert (await api.call("POST", f"/messages/{mid}/open", who)).status == 404
        assert (await api.call("DELETE", f"/messages/{mid}", who)).status == 404
        assert (await api.call("GET", "/messages?folder=inbox", who)).body["messages"] == []
        sock = await open_socket(client, who)
        assert (await sock.call("message.open", message_id=mid))["error"]["code"] == \
            "not_found"
    assert (await api.call("POST", f"/messages/{mid}/open", c.family)).status == 404, \
        "the sender does not open their own message as if they were the recipient"
    b_staff = await api.staff(c.admin, await api.facility(c.admin, review_mode="hold"))
    held = (await send(api, c.family, c.person, "hold me")).body["message"]["id"]
    assert (await api.call("GET", "/review", b_staff)).body["messages"] == []
    for verb in ("approve", "reject"):
        r = await api.call("POST", f"/review/{held}/{verb}", b_staff, json={"reason": "x"}
                           if verb == "reject" else None)
        assert r.status == 404, (verb, r.body)
    assert (await api.call("GET", "/connections", b_staff)).body["connections"] == []
    assert (await api.call("POST", f"/review/{held}/approve", c.family)).status == 403
