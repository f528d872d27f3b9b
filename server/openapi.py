"""/api/v1/openapi.json, built from the route table and the routes' own pydantic models, so
the description cannot drift from what the server checks."""

from __future__ import annotations

import re
from typing import Any

from server.routing import ANYONE, Route

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "object"}}}}}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "x-roles": sorted(route.roles),
        "responses": {"default": {"description": "an error",
                                  "content": {"application/json": {
                                      "schema": {"$ref": "#/components/schemas/Error"}}}},
                      "2XX": {"description": "success",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": name, "in": "query", "required": False, "description": doc,
                "schema": {"type": "string"}} for name, doc in route.query.items()]
    if route.idempotent:
        params.append({"name": "Idempotency-Key", "in": "header", "required": True,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
    if params:
        op["parameters"] = params
    if route.roles is not ANYONE:
        op["security"] = [{"bearer": []}, {"cookie": []}]
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
