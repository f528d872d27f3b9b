"""Every HTTP route against /api/v1/openapi.json, by schemathesis.

The app runs on a loopback port in the test's event loop; schemathesis (whose calls are
blocking `requests`) runs in a worker thread against it, as a family member, a member of
staff and anonymous. For each operation it draws schema-valid and schema-invalid requests and
checks every answer: never a 5xx, only documented status codes, the declared content type, and
bodies that match the declared schemas (errors always `{"error": {"code", "message"}}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from server.app import ROUTES
from tests.conftest import app_client
from tests.integration.test_roles import (
    ACCOUNT_ROLES,
    EXPECTED,
    MAIL_ON,
    Req,
    build_world,
    png,
)
from tests.support.helpers import Api

CHECKS = [not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance,
          checks.negative_data_rejection]
# Refusals that count as rejecting a schema-invalid request: schemathesis's list, plus 413
# (a body over KINWIRE_REQUEST_BODY_BYTES_MAX is refused before it is parsed).
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
EXAMPLES_PER_OPERATION = 8
BUDGET_S = 45.0  # a bound on a loaded machine (generation dominates)


class ServerErrors(logging.Handler):
    """Collects records logged at ERROR: a swallowed exception is a bug too."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


PASSWORDS = {"family": "correct horse", "staff": "staff password"}


def fresh(base_url: str, session: requests.Session, email: str, caller: str) -> str:
    r = session.post(f"{base_url}/api/v1/auth/login", timeout=10,
                     json={"email": email, "password": PASSWORDS[caller]})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def fuzz(base_url: str, spec: dict, callers: dict[str, str | None],
         emails: dict[str, str]) -> list[str]:
    """Runs in a worker thread: the blocking schemathesis calls against the live server."""
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}})
    schema = schemathesis.openapi.from_dict(spec, config=config)
    failures: list[str] = []
    started = time.monotonic()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if time.monotonic() - started > BUDGET_S:
            failures.append(f"budget exhausted before {operation.label}")
            break
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=strategy, caller=st.sampled_from(sorted(callers)))
        def check(case, caller: str) -> None:
            token = callers[caller]
            if token and case.operation.path.endswith("/auth/logout"):
                # A new session to end, so that the shared ones stay alive.
                token = fresh(base_url, session, emails[caller], caller)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = case.call(base_url=base_url, session=session, headers=headers,
                                 timeout=10)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        except Exception as exc:  # one report per operation; keep going through the rest
            failures.append(f"{operation.label}: {exc!s:.1500}")
    session.close()
    return failures


@pytest.mark.slow
async def test_every_route_conforms_to_its_openapi_description(pg_db: str,
                                                               tmp_path: Path) -> None:
    """On PostgreSQL only: it is the stricter store (NUL characters, 64-bit columns), where
    unchecked input turns into 500s; SQLite runs the same SQL and the valid pass below."""
    watcher = ServerErrors()
    root_log = logging.getLogger()  # the app, aiohttp and asyncio alike
    root_log.addHandler(watcher)
    try:
        async with app_client(pg_db, tmp_path, **MAIL_ON) as client:
            api = Api(client)
            admin = await api.admin()
            facility = await api.facility(admin)
            staff = await api.staff(admin, facility)
            family = await api.family()
            spec = (await api.call("GET", "/api/v1/openapi.json")).body
            base_url = str(client.make_url("")).rstrip("/")
            callers = {"family": family.token, "staff": staff.token, "anonymous": None}
            emails = {"family": family.account["email"], "staff": staff.account["email"]}
            failures = await asyncio.to_thread(fuzz, base_url, spec, callers, emails)
            assert not failures, f"{len(failures)} operations failed:\n" + "\n\n".join(failures)
            # The app still answers after everything schemathesis threw at it.
            assert (await api.call("GET", "/me", family)).status == 200
    finally:
        root_log.removeHandler(watcher)
    assert not watcher.records, [r.getMessage() for r in watcher.records]


def call_valid(base_url: str, spec: dict, method: str, path: str, req: Req, token: str,
               has_body: bool) -> int:
    """One valid request, made and checked by schemathesis in the worker thread: its
    success answer must be what the document says (status, content type, schema)."""
    operation = schemathesis.openapi.from_dict(spec).find_operation_by_path(
        method, "/api/v1" + path)
    assert operation is not None, f"{method} {path} is missing from openapi.json"
    headers = {"Authorization": f"Bearer {token}", **req.headers}
    if req.key:
        headers["Idempotency-Key"] = req.key
    body: Any = req.json if has_body else schemathesis.core.NOT_SET
    media_type = None
    if req.data is not None:  # the photo upload: the same PNG as multipart/form-data
        body, media_type = {"file": png()}, "multipart/form-data"
    case = operation.Case(path_parameters=req.params or None, headers=headers,
                          query=dict(parse_qsl(req.query.lstrip("?"))) or None,
                          body=body, media_type=media_type)
    response = case.call(base_url=base_url, timeout=10)
    case.validate_response(response, checks=CHECKS, headers=headers)
    return response.status_code


async def test_valid_requests_get_the_documented_success(db_url: str, tmp_path: Path) -> None:
    """Every route, called validly by a caller it admits (the requests of
    tests/integration/test_roles.py),
    answers a documented success: random requests alone rarely get that far."""
    async with app_client(db_url, tmp_path, **MAIL_ON) as client:
        api = Api(client)
        world = await build_world(api)
        spec = (await api.call("GET", "/api/v1/openapi.json")).body
        base_url = str(client.make_url("")).rstrip("/")
        checked = 0
        for route in ROUTES:
            expect = EXPECTED[(route.method, route.path)]
            caller = next(r for r in ACCOUNT_ROLES if r in expect.allowed)
            req = await expect.build(world, caller)
            token = (await world.fresh_session(caller) if expect.fresh_session
                     else world.tokens[caller])
            if caller == "person":  # a kiosk session answers only with its device's token
                req.headers = {"X-Device-Token": world.device_token, **req.headers}
            req.params = {"facility_id": world.facility, **req.params}
            req.query = req.query.format(**req.params)
            status = await asyncio.to_thread(call_valid, base_url, spec, route.method,
                                             route.path, req, token, route.body is not None)
            assert status == expect.ok, (route.method, route.path, status)
            checked += 1
        assert checked == len(ROUTES)


async def test_malformed_upload_forms_are_400_not_500(api: Api) -> None:
    """What the fuzz found: part headers that are not HTTP headers, and a nested form where
    the file should be (a form inside a form is not a file: 422, no `file` part)."""
    fam = await api.family()
    boundary = b"b0undary"
    nested = (b'Content-Disposition: form-data; name="file"\r\n'
              b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
              b'--inner\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n--inner--\r\n')
    garbled = b'Content-Disposition: form-data; name="\xf3\x9b\x06\x11S\x7f\x19"\r\n\r\n{}\r\n'
    for part, status, code in ((garbled, 400, "bad_request"), (nested, 422, "invalid_input")):
        body = b"--" + boundary + b"\r\n" + part + b"--" + boundary + b"--\r\n"
        r = await api.call("POST", "/photos", fam, data=body, headers={
            "Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status == status and r.code == code, (part, r)
