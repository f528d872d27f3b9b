"""/api/v1/openapi.json, built from the route table and the routes' own pydantic models, so
the description cannot drift from what the server checks."""

from __future__ import annotations

import re
from typing import Any

from server.http.routing import ANYONE, Route

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "object"}}}}}


# Routes whose success is an image, not JSON (the re-encoded photo and its thumbnail).
IMAGES = frozenset({"/photos/{photo_id}", "/photos/{photo_id}/thumb"})
# Routes whose success is a CSV download (exports).
CSV = frozenset({"/audit/export", "/statement/export"})
# Routes whose success is a recording's file (200 whole; 206 for a Range request).
VIDEOS = frozenset({"/recordings/{recording_id}/media"})
# The unsubscribe link's pages: HTML for a person following a link from an email.
HTML = frozenset({"/notifications/unsubscribe"})
# Accepted for later work: the password-reset email goes out from the outbox.
ACCEPTED = frozenset({("POST", "/auth/reset")})
# Routes that answer 201 (they create something); every other route answers 200.
# tests/integration/test_schemathesis.py calls each route validly and holds the answers to this.
CREATED = frozenset({
    ("POST", "/auth/signup"), ("POST", "/facilities"), ("POST", "/facilities/{facility_id}/staff"),
    ("POST", "/facilities/{facility_id}/people"), ("POST", "/facilities/{facility_id}/devices"),
    ("POST", "/purchases"), ("POST", "/checkouts"), ("POST", "/gifts"), ("POST", "/connections"),
    ("POST", "/photos"), ("POST", "/messages"), ("POST", "/visits")})
# Routes that read a multipart upload rather than a JSON body: the field holding the file.
UPLOADS = {("POST", "/photos"): "file"}


def _responses(route: Route) -> dict[str, Any]:
    """Success is 200, or 201 for what a route creates; every refusal is a 4xx with the one
    error shape. No 5xx is part of the contract: a 5xx is a bug (and
    tests/integration/test_schemathesis.py treats one as a failure)."""
    media = ("application/json", {"type": "object"})
    if route.path in IMAGES:
        media = ("image/jpeg", {"type": "string", "format": "binary"})
    elif route.path in VIDEOS:
        media = ("video/webm", {"type": "string", "format": "binary"})
    elif route.path in CSV:
        media = ("text/csv", {"type": "string"})
    elif route.path in HTML:
        media = ("text/html", {"type": "string"})
    status = "201" if (route.method, route.path) in CREATED else \
        "202" if (route.method, route.path) in ACCEPTED else "200"
    success = {"description": "success", "content": {media[0]: {"schema": media[1]}}}
    partial = {"206": {"description": "the byte range asked for",
                       "content": {media[0]: {"schema": media[1]}}}} \
        if route.path in VIDEOS else {}
    return {status: success, **partial,
            "4XX": {"description": "refused: {error: {code, message}}, code stable",
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}}}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "x-roles": sorted(route.roles),
        "responses": _responses(route),
    }
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": name, "in": "query", "required": False, "description": doc,
                "schema": {"type": "string"}} for name, doc in route.query.items()]
    if route.idempotent:
        params.append({"name": "Idempotency-Key", "in": "header",
                       "required": route.idempotent is True,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
    if params:
        op["parameters"] = params
    if route.roles is not ANYONE:
        op["security"] = [{"bearer": []}, {"cookie": []}]
    upload = UPLOADS.get((route.method, route.path))
    if upload is not None:
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [upload],
            "properties": {upload: {"type": "string", "format": "binary"}}}}}}
    if route.body is not None:
        schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[route.body.__name__] = schema
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    return op


def build(routes: list[Route], prefix: str = "/api/v1") -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(prefix + route.path, {})[route.method.lower()] = \
            _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kinwire", "version": "1"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "kw_session"}}},
    }
