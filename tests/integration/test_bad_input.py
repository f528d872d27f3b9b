"""Bad input gets a clear 4xx with a stable error code and the one error shape, never a 500.

Each case names the request, the status and the code it must get. A hypothesis test then
throws random JSON (and some well-shaped bodies full of random values) at the routes that take
bodies from strangers and from families, and asserts that the server never fails (status < 500).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import VISA, Api, Reply, Who

JSON_HEADERS = {"Content-Type": "application/json"}


def assert_error(reply: Reply, status: int, code: str, what: str = "") -> None:
    """The status, the code and the shape {"error": {"code", "message"}}."""
    where = f"{what}: got {reply.status} {reply.body!s:.300}"
    assert reply.status == status, f"{where}; expected {status} {code}"
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, where
    error = reply.body["error"]
    assert isinstance(error, dict), where
    assert error.get("code") == code, f"{where}; expected code {code}"
    assert isinstance(error.get("message"), str) and error["message"], where


def signup_body(**changes: Any) -> dict[str, Any]:
    body = {"email": f"fam-{secrets.token_hex(4)}@example.test", "password": "long enough",
            "name": "Fam"}
    body.update(changes)
    return body


async def raw(api: Api, method: str, path: str, data: bytes, who: Who | None = None,
              key: str | None = None) -> Reply:
    return await api.call(method, path, who, data=data, key=key, headers=JSON_HEADERS)


# --- sign-up: JSON, types, unknown fields, lengths -----------------------------------------


async def test_signup_refuses_bad_bodies(api: Api) -> None:
    for data in (b'{"email": "a@b.cd", ', b"not json", b"{'email': 'single quotes'}",
                 b'{"name": "lone \\ud800 surrogate", "email": "a@b.cd", "password": "x"}',
                 b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000):
        assert_error(await raw(api, "POST", "/auth/signup", data), 400, "malformed_json",
                     f"body {data[:40]!r}")

    cases: list[tuple[str, Any]] = [
        ("a JSON array", []),
        ("a JSON string", "hello"),
        ("null", None),
        ("name as a number", signup_body(name=123)),
        ("password as a list", signup_body(password=["long enough"])),
        ("email as an object", signup_body(email={"a": 1})),
        ("missing password", {"email": "x@example.test", "name": "X"}),
        ("an unknown field", signup_body(role="admin")),
        ("a name of 201 characters", signup_body(name="n" * 201)),
        ("an email of 300 characters", signup_body(email="e" * 288 + "@example.test")),
        ("not an email", signup_body(email="nobody")),
        ("a short password", signup_body(password="short")),
        ("a blank name", signup_body(name="   ")),
        ("a NUL in the name", signup_body(name="Fa\u0000m")),
        ("a NUL in the email", signup_body(email="fa\u0000m@example.test")),
    ]
    for what, body in cases:
        data = json.dumps(body).encode()
        assert_error(await raw(api, "POST", "/auth/signup", data), 422, "invalid_input", what)

    r = await api.call("POST", "/auth/signup", json=signup_body(role="admin"))
    assert r.body["error"]["details"]["fields"][0]["field"] == "role", r.body

    # The limits are limits, not off by one: 200 characters of name are fine.
    r = await api.call("POST", "/auth/signup", json=signup_body(name="n" * 200))
    assert r.status == 201 and r.body["account"]["name"] == "n" * 200, r.body
    r = await api.call("POST", "/auth/signup", json=signup_body(name="  Padded  "))
    assert r.status == 201 and r.body["account"]["name"] == "Padded", r.body


async def test_body_over_the_size_limit_is_413(api: Api) -> None:
    limit = api.ctx.settings.request_body_bytes_max
    body = json.dumps(signup_body(name="x" * (limit + 1024))).encode()
    assert_error(await raw(api, "POST", "/auth/signup", body), 413, "too_large")
    fam = await api.family()
    body = json.dumps({"credits": 500, "card": {**VISA, "name": "x" * (limit + 1)}}).encode()
    r = await raw(api, "POST", "/purchases", body, fam, key="big")
    assert_error(r, 413, "too_large")
    assert (await api.call("GET", "/me", fam)).body["balance"] == 0


async def test_login_refuses_bad_bodies(api: Api) -> None:
    assert_error(await raw(api, "POST", "/auth/login", b'{"email": '), 400, "malformed_json")
    for what, body in (("no password", {"email": "a@example.test"}),
                       ("password as a number", {"email": "a@example.test", "password": 1}),
                       ("an unknown field", {"email": "a@example.test", "password": "p",
                                             "remember": True})):
        assert_error(await api.call("POST", "/auth/login", json=body), 422, "invalid_input", what)
    kiosk = {"facility_id": "fac_x", "inmate_number": "A 1", "pin": "1234"}
    assert_error(await api.call("POST", "/auth/kiosk", json=kiosk), 422, "invalid_input",
                 "an inmate number with a space")


# --- purchases -------------------------------------------------------------------------------


def card(**changes: Any) -> dict[str, Any]:
    return {**VISA, **changes}


async def test_purchase_refuses_bad_input_and_charges_nothing(api: Api) -> None:
    fam = await api.family()
    now = api.ctx.clock()  # the month the app checks expiry against, not the machine's
    last_month = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
    cases: list[tuple[str, Any, int, str]] = [
        ("credits as a string", {"credits": "500", "card": VISA}, 422, "invalid_input"),
        ("credits as a float", {"credits": 500.0, "card": VISA}, 422, "invalid_input"),
        ("credits as a bool", {"credits": True, "card": VISA}, 422, "invalid_input"),
        ("exp_month as a string", {"credits": 500, "card": card(exp_month="12")}, 422,
         "invalid_input"),
        ("no card", {"credits": 500}, 422, "invalid_input"),
        ("an unknown field", {"credits": 500, "card": VISA, "coupon": "FREE"}, 422,
         "invalid_input"),
        ("an unknown card field", {"credits": 500, "card": card(cvv="123")}, 422,
         "invalid_input"),
        ("zero credits", {"credits": 0, "card": VISA}, 422, "invalid_input"),
        ("negative credits", {"credits": -500, "card": VISA}, 422, "invalid_input"),
        ("credits not a multiple of 500", {"credits": 750, "card": VISA}, 422,
         "invalid_amount"),
        ("credits under the block", {"credits": 499, "card": VISA}, 422, "invalid_amount"),
        ("credits over the purchase maximum", {"credits": 50_500, "card": VISA}, 422,
         "invalid_amount"),
        ("credits beyond any limit", {"credits": 10**30, "card": VISA}, 422, "invalid_input"),
        ("a card failing Luhn", {"credits": 500, "card": card(number="4242424242424241")}, 422,
         "invalid_card"),
        ("a card number with a letter", {"credits": 500,
                                         "card": card(number="4242-4242-4242-424X")}, 422,
         "invalid_card"),
        ("a card number of superscript digits", {"credits": 500,
                                                 "card": card(number="²" * 16)}, 422,
         "invalid_card"),
        ("a card of Arabic-Indic digits", {"credits": 500, "card": card(number="٤٢" * 8)}, 422,
         "invalid_card"),
        ("an expired card", {"credits": 500, "card": card(exp_year=last_month[0],
                                                          exp_month=last_month[1])}, 422,
         "card_expired"),
        ("an expiry too far ahead", {"credits": 500, "card": card(exp_year=now.year + 21)}, 422,
         "invalid_card"),
        ("a month 13", {"credits": 500, "card": card(exp_month=13)}, 422, "invalid_input"),
        ("an unsupported brand (Discover)",
         {"credits": 500, "card": card(number="6011111111111117")}, 422, "unsupported_card"),
        ("an Amex with a 3-digit CVC", {"credits": 500, "card": card(number="378282246310005")},
         422, "invalid_card"),
        ("a declined card", {"credits": 500, "card": card(number="4000000000000002")}, 402,
         "card_declined"),
        ("declined for funds", {"credits": 500, "card": card(number="4000000000009995")}, 402,
         "card_declined"),
        ("the sandbox's expired test card",
         {"credits": 500, "card": card(number="4000000000000069")}, 402, "card_expired"),
        ("a NUL in the cardholder name", {"credits": 500, "card": card(name="A\u0000B")}, 422,
         "invalid_input"),
    ]
    for i, (what, body, status, code) in enumerate(cases):
        r = await api.call("POST", "/purchases", fam, json=body, key=f"bad-{i}")
        assert_error(r, status, code, what)
    assert_error(await raw(api, "POST", "/purchases", b'{"credits": 500,', fam, key="x"), 400,
                 "malformed_json")
    assert_error(await api.call("POST", "/purchases", fam, json={"credits": 500, "card": VISA}),
                 400, "idempotency_key_required", "no Idempotency-Key")

    me = await api.call("GET", "/me", fam)
    assert me.body["balance"] == 0, me.body
    ledger = await api.call("GET", "/ledger", fam)
    assert ledger.body["entries"] == [], ledger.body
    # The same requests are fine once the input is: 50,000 credits is the maximum, not over it.
    r = await api.buy(fam, 50_000)
    assert r.status == 201 and r.body["balance"] == 50_000, r.body


async def test_gift_refuses_bad_input(api: Api) -> None:
    fam = await api.family()
    for what, body, code in (("credits as a string", {"to": "fam_x", "credits": "10"},
                              "invalid_input"),
                             ("over the gift maximum", {"to": "fam_x", "credits": 50_001},
                              "invalid_amount"),
                             ("no recipient", {"credits": 10}, "invalid_input")):
        r = await api.call("POST", "/gifts", fam, json=body, key=secrets.token_hex(4))
        assert_error(r, 422, code, what)


# --- facilities --------------------------------------------------------------------------------


async def test_unknown_facility_is_404(api: Api) -> None:
    admin = await api.admin()
    fam = await api.family()
    missing = "/facilities/fac_doesnotexist"
    for who, method, path, body in (
            (admin, "GET", missing, None), (fam, "GET", missing, None),
            (admin, "PATCH", missing, {"settings": {"kiosks": 2}}),
            (admin, "POST", f"{missing}/staff", {"email": "s@example.test",
                                                 "password": "long enough", "name": "S"}),
            (admin, "POST", f"{missing}/people", {"name": "P", "inmate_number": "1",
                                                  "pin": "1234"}),
            (admin, "POST", f"{missing}/devices", {"label": "k"}),
            (fam, "GET", f"{missing}/people?q=ab", None),
            (admin, "GET", f"{missing}/people?q=ab", None)):
        assert_error(await api.call(method, path, who, json=body), 404, "not_found",
                     f"{method} {path}")


async def test_facility_refuses_bad_settings_and_time_zones(api: Api) -> None:
    admin = await api.admin()

    def new(**changes: Any) -> dict[str, Any]:
        return {"name": "F", "timezone": "America/Chicago", "settings": {}, **changes}

    bad_settings = [
        {"visit_block_minutes": 20},
        {"visit_block_minutes": "30"},
        {"review_mode": "later"},
        {"visit_hours": {"start": "21:00", "end": "08:00"}},
        {"visit_hours": {"start": "10:00", "end": "10:00"}},
        {"visit_hours": {"start": "25:00", "end": "26:00"}},
        {"visit_hours": {"start": "9:00"}},
        {"visit_hours": "08:00-21:00"},
        {"kiosks": 0},
        {"booking_horizon_days": 10_000},
        {"prices": {"message": -1}},
        {"prices": {"message": "50"}},
        {"prices": {"sticker": 5}},
        {"keywords": "contraband"},
        {"keywords": ["x" * 65]},
        {"media": "carrier pigeon"},
        {"record_visits": "yes"},
        {"colour": "blue"},
    ]
    for patch in bad_settings:
        r = await api.call("POST", "/facilities", admin, json=new(settings=patch))
        assert_error(r, 422, "invalid_settings", f"create with {patch}")
    for what, body, code in (
            ("settings not an object", new(settings=[1]), "invalid_input"),
            ("an unknown field", new(owner="me"), "invalid_input"),
            ("a name of 201 characters", new(name="n" * 201), "invalid_input"),
            ("a blank name", new(name=" "), "invalid_input"),
            ("no time zone", {"name": "F"}, "invalid_input"),
            ("a time zone of 65 characters", new(timezone="A" * 65), "invalid_input"),
            ("an unknown time zone", new(timezone="Mars/Olympus_Mons"), "invalid_timezone"),
            ("a time zone path", new(timezone="../../etc/passwd"), "invalid_timezone"),
            ("a time zone directory", new(timezone="America"), "invalid_timezone"),
            ("the host's local time", new(timezone="localtime"), "invalid_timezone"),
            ("a NUL in a keyword", new(settings={"keywords": ["a\u0000b"]}), "invalid_input")):
        r = await api.call("POST", "/facilities", admin, json=body)
        assert_error(r, 422, code, what)

    facility = await api.facility(admin)
    before = (await api.call("GET", f"/facilities/{facility}", admin)).body["facility"]
    path = f"/facilities/{facility}"
    for patch in [*bad_settings, {"visit_hours": {"start": "22:00"}}]:  # after the 21:00 end
        r = await api.call("PATCH", path, admin, json={"settings": patch})
        assert_error(r, 422, "invalid_settings", f"patch with {patch}")
    assert_error(await api.call("PATCH", path, admin, json={"timezone": "Nowhere/Town"}), 422,
                 "invalid_timezone")
    assert_error(await api.call("PATCH", path, admin, json={"settings": {}, "x": 1}), 422,
                 "invalid_input")
    assert_error(await raw(api, "PATCH", path, b'{"settings": {', admin), 400, "malformed_json")
    after = (await api.call("GET", path, admin)).body["facility"]
    assert after == before, "a refused change must change nothing"


async def test_bad_query_parameters_are_422(api: Api) -> None:
    admin = await api.admin()
    fam = await api.family()
    facility = await api.facility(admin)
    for who, path in ((fam, "/ledger?before=abc"), (fam, "/ledger?before=1.5"),
                      (fam, "/ledger?before=0"), (fam, "/ledger?before=-3"),
                      (fam, "/ledger?before=" + "9" * 19),  # past a 64-bit integer
                      (fam, "/ledger?before=" + "9" * 40),
                      (fam, "/ledger?limit=0"), (fam, "/ledger?limit=100000"),
                      (admin, "/audit?before=x"), (admin, "/audit?limit=-1"),
                      (admin, "/audit?before=" + "9" * 30),
                      (fam, f"/facilities/{facility}/people?q=a"),
                      (fam, f"/facilities/{facility}/people"),
                      (fam, f"/facilities/{facility}/people?q=" + "a" * 101),
                      (fam, f"/facilities/{facility}/people?q=a%00b"),
                      (fam, "/facilities/fac%00x")):
        assert_error(await api.call("GET", path, who), 422, "invalid_input", path)
    # The largest 64-bit number is still a number: an empty page, not an error.
    r = await api.call("GET", f"/ledger?before={2**63 - 1}", fam)
    assert r.status == 200 and r.body["entries"] == [], r.body


# --- fuzzing -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)


def bodies(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Any JSON at all; objects with some of the route's keys holding any JSON; and objects
    with every key holding a plausible value (so that the fuzz reaches past the schema into
    pricing, the gateway, settings and the database)."""
    some_keys = st.fixed_dictionaries({}, optional={k: v | json_values
                                                    for k, v in fields.items()})
    every_key = st.fixed_dictionaries(fields)
    return st.one_of(every_key, every_key, some_keys, json_values)


def mostly(plausible: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(plausible, plausible, plausible, other)


SETTING_NAMES = ["review_mode", "review_photos", "keywords", "visit_block_minutes",
                 "visit_hours", "kiosks", "booking_horizon_days", "cancel_cutoff_minutes",
                 "prices", "media", "record_visits"]
card_numbers = mostly(
    st.lists(st.sampled_from("0123456789" * 4 + " -²٤x"), min_size=12, max_size=24)
    .map("".join),
    st.sampled_from(["4242424242424242", "4000000000000002", "4000000000000069",
                     "5555555555554444", "378282246310005", "6011111111111117"]))
FUZZ_BODIES = {
    "/auth/signup": bodies({
        "email": mostly(st.from_regex(r"[a-z0-9.]{1,10}@[a-z]{1,8}\.test", fullmatch=True),
                        st.emails() | st.text(max_size=30)),
        "password": st.text(min_size=8, max_size=30),
        "name": st.text(min_size=1, max_size=30)}),
    "/purchases": bodies({
        "credits": mostly(st.sampled_from([500, 1000, 50_000, 750, 50_500]), st.integers()),
        "card": bodies({"number": card_numbers, "exp_month": st.integers(0, 13),
                        "exp_year": st.integers(2015, 2060),
                        "cvc": mostly(st.sampled_from(["123", "1234"]), st.text(max_size=5)),
                        "name": st.text(min_size=1, max_size=30)})}),
    "/facilities": bodies({
        "name": st.text(min_size=1, max_size=30),
        "timezone": mostly(st.sampled_from(["UTC", "America/Chicago", "Etc/GMT+5"]),
                           st.text(max_size=20)),
        "settings": st.dictionaries(
            mostly(st.sampled_from(SETTING_NAMES), st.text(max_size=8)),
            json_values | st.sampled_from([15, 30, "hold", {"start": "09:00", "end": "17:00"},
                                           {"message": 10}, ["word"]]), max_size=5)}),
}


@pytest.fixture
async def callers(api: Api) -> dict[str, Who | None]:
    return {"/auth/signup": None, "/purchases": await api.family(),
            "/facilities": await api.admin()}


# The app and its callers are made once per test and shared by every example.
@pytest.mark.parametrize("path", sorted(FUZZ_BODIES))
@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_random_bodies_never_fail_the_server(api: Api, callers: dict[str, Who | None],
                                                   path: str, data: st.DataObject) -> None:
    if data.draw(st.integers(0, 9), label="raw bytes?") == 0:
        payload = data.draw(st.binary(max_size=60), label="bytes")
    else:
        payload = json.dumps(data.draw(FUZZ_BODIES[path], label="body")).encode()
    r = await raw(api, "POST", path, payload, callers[path], key=secrets.token_hex(8))
    assert r.status < 500, f"POST {path} {payload[:300]!r}: {r.status} {r.body}"
    if r.status >= 400:
        assert_error(r, r.status, r.body["error"]["code"], f"POST {path}")
