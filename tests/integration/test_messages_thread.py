"""GET /messages?with=<account id>: one conversation of a folder, paged like the folder (the
family app's "Show older messages", docs/clients.md)."""

from __future__ import annotations

import secrets

from tests.support.helpers import Api


async def test_with_keeps_one_conversation_and_pages(api: Api) -> None:
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    dana, lee = await api.person(staff, facility), await api.person(staff, facility)
    family = await api.family()
    for person in (dana, lee):
        await api.connect(family, person)
    assert (await api.buy(family, 500)).status == 201
    sent = {dana.id: [], lee.id: []}
    for i in range(5):
        for person in (dana, lee):
            r = await api.call("POST", "/messages", family, json={"to": person.id,
                                                                  "body": f"{i}"},
                               key=secrets.token_hex(8))
            assert r.status == 201, r.body
            sent[person.id].append(r.body["message"]["id"])
    r = await api.call("POST", "/messages", dana, json={"to": family.id, "body": "hi",
                                                        "cod": True}, key="k")
    assert r.status == 201, r.body

    async def ids(query: str) -> tuple[list[str], str | None]:
        r = await api.call("GET", f"/messages?{query}", family)
        assert r.status == 200, r.body
        return [m["id"] for m in r.body["messages"]], r.body["next_before"]

    page, cursor = await ids(f"folder=sent&with={dana.id}&limit=3")
    assert page == sent[dana.id][::-1][:3] and cursor == page[-1]
    rest, cursor = await ids(f"folder=sent&with={dana.id}&limit=3&before={cursor}")
    assert rest == sent[dana.id][::-1][3:] and cursor is None
    assert (await ids(f"folder=inbox&with={lee.id}"))[0] == []
    assert len((await ids(f"folder=inbox&with={dana.id}"))[0]) == 1
    assert len((await ids("folder=sent"))[0]) == 10  # without `with`: the whole folder
    r = await api.call("GET", "/messages?folder=sent&with=" + "x" * 33, family)
    assert r.status == 422 and r.code == "invalid_input"
