"""Facilities: defaults, settings changes, who sees what, people search and the audit log."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support.helpers import Api, Reply, Who

# docs/API.md, "Facility settings" (defaults in brackets), written out by hand.
API_DEFAULTS: dict[str, Any] = {
    "review_mode": "instant",
    "review_photos": True,
    "keywords": [],
    "visit_block_minutes": 30,
    "visit_hours": {"start": "08:00", "end": "21:00"},
    "kiosks": 4,
    "booking_horizon_days": 14,
    "cancel_cutoff_minutes": 60,
    "prices": {"message": 50, "photo": 100, "visit_minute": 50},
    "media": "direct",
    "record_visits": True,
    "recording_retention_days": 90,
}


def ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, reply
    return reply.body


async def create(api: Api, admin: Who, name: str = "North Unit", timezone: str = "America/Denver",
                 **settings: Any) -> dict[str, Any]:
    body = ok(await api.call("POST", "/facilities", admin,
                             json={"name": name, "timezone": timezone, "settings": settings}), 201)
    return body["facility"]


async def add_person(api: Api, who: Who, facility: str, name: str,
                     number: str | None = None) -> dict[str, Any]:
    number = number or f"P{secrets.token_hex(3)}"
    body = ok(await api.call("POST", f"/facilities/{facility}/people", who,
                             json={"name": name, "inmate_number": number, "pin": "1234"}), 201)
    return body["account"]


async def test_a_new_facility_has_the_documented_defaults(api: Api) -> None:
    admin = await api.admin()
    facility = await create(api, admin)
    assert facility["name"] == "North Unit" and facility["timezone"] == "America/Denver"
    assert facility["id"]
    assert facility["settings"] == API_DEFAULTS
    shown = ok(await api.call("GET", f"/facilities/{facility['id']}", admin))["facility"]
    assert shown == facility

    # Given settings replace their defaults; nested ones merge with theirs; keywords are
    # trimmed, lower-cased, de-duplicated and sorted.
    custom = await create(api, admin, "South Unit", "Europe/London", review_mode="hold",
                          visit_block_minutes=15, visit_hours={"start": "09:30"},
                          prices={"photo": 0}, keywords=["Knife", " knife ", "Escape"])
    expected = {**API_DEFAULTS, "review_mode": "hold", "visit_block_minutes": 15,
                "visit_hours": {"start": "09:30", "end": "21:00"},
                "prices": {"message": 50, "photo": 0, "visit_minute": 50},
                "keywords": ["escape", "knife"]}
    assert custom["settings"] == expected
    assert custom["id"] != facility["id"]


async def test_patch_merges_nested_settings(api: Api) -> None:
    admin = await api.admin()
    facility = await create(api, admin, keywords=["parcel"], kiosks=6)
    path = f"/facilities/{facility['id']}"

    after = ok(await api.call("PATCH", path, admin,
                              json={"settings": {"prices": {"message": 75}}}))["facility"]
    want = {**API_DEFAULTS, "keywords": ["parcel"], "kiosks": 6,
            "prices": {"message": 75, "photo": 100, "visit_minute": 50}}
    assert after["settings"] == want

    after = ok(await api.call("PATCH", path, admin,
                              json={"settings": {"visit_hours": {"end": "20:00"},
                                                 "media": "relay"}}))["facility"]
    want = {**want, "visit_hours": {"start": "08:00", "end": "20:00"}, "media": "relay"}
    assert after["settings"] == want

    # A list is replaced, not merged; name and time zone change alone.
    after = ok(await api.call("PATCH", path, admin,
                              json={"settings": {"keywords": ["Visit"]}, "name": "Renamed",
                                    "timezone": "Pacific/Auckland"}))["facility"]
    want = {**want, "keywords": ["visit"]}
    assert after == {"id": facility["id"], "name": "Renamed", "timezone": "Pacific/Auckland",
                     "settings": want}
    # An empty change changes nothing, and what was stored is what is read back.
    assert ok(await api.call("PATCH", path, admin, json={}))["facility"] == after
    assert ok(await api.call("GET", path, admin))["facility"] == after


async def test_public_settings_hide_the_keyword_list(api: Api) -> None:
    admin = await api.admin()
    facility = await create(api, admin, keywords=["escape"], kiosks=7)
    fid = facility["id"]
    staff = await api.staff(admin, fid)
    other_staff = await api.staff(admin, (await create(api, admin, "Other"))["id"])
    person = await api.person(staff, fid)
    fam = await api.family()

    for who in (fam, person):
        one = ok(await api.call("GET", f"/facilities/{fid}", who))["facility"]
        listed = [f for f in ok(await api.call("GET", "/facilities", who))["facilities"]
                  if f["id"] == fid]
        assert listed == [one]
        assert "keywords" not in one["settings"], one
        # The public settings: prices, block and hours (and the rest a visitor needs).
        assert one["settings"]["prices"] == API_DEFAULTS["prices"]
        assert one["settings"]["visit_block_minutes"] == 30
        assert one["settings"]["visit_hours"] == API_DEFAULTS["visit_hours"]
        for key, value in one["settings"].items():
            assert facility["settings"][key] == value

    for who in (staff, admin):
        one = ok(await api.call("GET", f"/facilities/{fid}", who))["facility"]
        assert one["settings"]["keywords"] == ["escape"] and one["settings"]["kiosks"] == 7
        listed = [f for f in ok(await api.call("GET", "/facilities", who))["facilities"]
                  if f["id"] == fid]
        assert listed == [one]
    r = await api.call("GET", f"/facilities/{fid}", other_staff)
    assert r.status == 403 and r.code == "forbidden", r
    # The family's listing of every facility hides every keyword list.
    for f in ok(await api.call("GET", "/facilities", fam))["facilities"]:
        assert "keywords" not in f["settings"], f


async def test_people_search_by_name_or_exact_inmate_number(api: Api) -> None:
    admin = await api.admin()
    fid = (await create(api, admin))["id"]
    other = (await create(api, admin, "Other"))["id"]
    staff = await api.staff(admin, fid)
    fam = await api.family()
    ann = await add_person(api, staff, fid, "Ann Marie Smith", "AB-1001")
    bob = await add_person(api, staff, fid, "Bob Smithers", "AB-1002")
    await add_person(api, staff, fid, "Carl Jones", "CD-2001")
    await add_person(api, admin, other, "Anne Smith", "AB-1001")  # same number, other facility

    async def search(q: str, who: Who = fam, facility: str = fid) -> list[dict[str, Any]]:
        return ok(await api.call("GET", f"/facilities/{facility}/people?q={q}", who))["people"]

    found = await search("smith")
    assert [p["id"] for p in found] == [ann["id"], bob["id"]]  # by name, in name order
    assert found[0] == {"id": ann["id"], "name": "Ann Marie Smith", "inmate_number": "AB-1001"}
    assert [p["id"] for p in await search("MARIE")] == [ann["id"]]
    assert [p["id"] for p in await search("ab-1002")] == [bob["id"]]
    assert [p["id"] for p in await search("AB-1001")] == [ann["id"]]
    # An inmate number is matched whole, not in part.
    assert await search("AB-10") == []
    assert await search("1001") == []
    # LIKE wildcards are plain characters ("n%" and "n_" would match "Ann" otherwise).
    assert await search("n%25") == [] and await search("n_") == [] and await search("__") == []
    assert await search("nobody") == []
    for who in (staff, admin):
        assert [p["id"] for p in await search("smith", who)] == [ann["id"], bob["id"]]
    assert [p["name"] for p in await search("smith", fam, other)] == ["Anne Smith"]


async def test_duplicate_people_and_staff_are_refused(api: Api) -> None:
    admin = await api.admin()
    fid = (await create(api, admin))["id"]
    other = (await create(api, admin, "Other"))["id"]
    staff = await api.staff(admin, fid)
    await add_person(api, staff, fid, "Dee", "N-1")
    r = await api.call("POST", f"/facilities/{fid}/people", staff,
                       json={"name": "Dee Two", "inmate_number": "N-1", "pin": "1234"})
    assert r.status == 409 and r.code == "inmate_number_taken", r
    await add_person(api, admin, other, "Dee Elsewhere", "N-1")

    body = {"email": f"officer-{secrets.token_hex(3)}@example.test", "password": "long enough",
            "name": "Officer"}
    account = ok(await api.call("POST", f"/facilities/{fid}/staff", admin, json=body),
                 201)["account"]
    assert account["role"] == "staff" and account["facility_id"] == fid
    r = await api.call("POST", f"/facilities/{other}/staff", admin,
                       json={**body, "email": body["email"].upper()})
    assert r.status == 409 and r.code == "email_taken", r


async def audit(api: Api, who: Who, query: str = "") -> list[dict[str, Any]]:
    return ok(await api.call("GET", f"/audit{query}", who))["entries"]


async def test_every_admin_and_staff_action_is_audited(api: Api) -> None:
    admin = await api.admin()
    fid = (await create(api, admin, "Audited"))["id"]
    other = (await create(api, admin, "Other"))["id"]
    ok(await api.call("PATCH", f"/facilities/{fid}", admin,
                      json={"settings": {"kiosks": 9}}))
    staff = await api.staff(admin, fid)
    other_staff = await api.staff(admin, other)
    by_admin = await add_person(api, admin, fid, "Eve")
    by_staff = await add_person(api, staff, fid, "Fay")
    await add_person(api, other_staff, other, "Gus")
    device = ok(await api.call("POST", f"/facilities/{fid}/devices", staff,
                               json={"label": "Block C kiosk"}), 201)
    assert device["device_id"] and device["device_token"]

    entries = await audit(api, admin, f"?facility_id={fid}")
    seen = [(e["action"], e["actor_id"], e["actor_role"], e["target"]) for e in entries]
    assert seen == [  # newest first
        ("device.register", staff.id, "staff", device["device_id"]),
        ("person.create", staff.id, "staff", by_staff["id"]),
        ("person.create", admin.id, "admin", by_admin["id"]),
        ("staff.create", admin.id, "admin", staff.id),
        ("facility.update", admin.id, "admin", fid),
        ("facility.create", admin.id, "admin", fid),
    ]
    assert all(e["facility_id"] == fid for e in entries)
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    details = {e["action"]: e["details"] for e in entries}
    assert details["facility.update"] == {"settings": {"kiosks": 9}}
    assert details["device.register"] == {"label": "Block C kiosk"}
    assert details["staff.create"]["email"] == staff.account["email"]
    assert "pin" not in str(details) and "password" not in str(details)

    # Staff see their own facility's log and nothing else, whatever they ask for.
    assert await audit(api, staff) == entries
    assert await audit(api, staff, f"?facility_id={other}") == entries
    theirs = await audit(api, other_staff)
    assert {e["facility_id"] for e in theirs} == {other}
    assert {e["action"] for e in theirs} == {"facility.create", "staff.create", "person.create"}
    # The admin sees every facility's.
    everything = await audit(api, admin)
    assert {e["facility_id"] for e in everything} >= {fid, other}
    assert len(everything) == len(entries) + len(theirs)

    # Paging: newest first, ?before= continues where the last page ended.
    page = ok(await api.call("GET", "/audit?limit=4", staff))
    assert page["entries"] == entries[:4] and page["next_before"] == entries[3]["seq"]
    rest = ok(await api.call("GET", f"/audit?limit=4&before={page['next_before']}", staff))
    assert rest["entries"] == entries[4:] and rest["next_before"] is None
