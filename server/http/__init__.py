"""The HTTP edge: routes (routes_*.py), routing, OpenAPI, proxy headers, drain, request logs and
metrics. Handlers parse a request, call the domain (server/, billing/, signalling/) and reply.
Only the composition root (server/app.py, server/cli.py, server/context.py) and the other edge,
the WebSocket gateway, import it; the domain never does (tests/unit/test_import_rules.py)."""
