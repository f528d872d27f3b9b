"""Request ids and the access log.

`request_id_middleware` takes the client's X-Request-Id when it is a short safe token (else
makes one), echoes it in the response header and keeps it in a contextvar for the request
(common/logs.py's formatters write it on every line logged while serving it).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from common.logs import REQUEST_ID
from server.http.routing import WS_PATH

HEADER = "X-Request-Id"
REQUEST_KEY = web.RequestKey("request_id", str)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_for(request: web.BaseRequest) -> str:
    given = request.headers.get(HEADER, "")
    return given if _SAFE_ID.fullmatch(given) else secrets.token_hex(8)


@web.middleware
def request_id_middleware(request: web.Request, handler: Any) -> Any:
    if request.path == WS_PATH:
        # Not awaited here (see server/http/routing.py WS_PATH): the id stays set in this request's
        # task, which ends with the socket; the socket's handler adds the header to a refusal.
        request_id = request[REQUEST_KEY] = request_id_for(request)
        REQUEST_ID.set(request_id)
        return handler(request)
    return _with_request_id(request, handler)


async def _with_request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id = request_id_for(request)
    request[REQUEST_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and the like pass through the error middleware
        exc.headers[HEADER] = request_id
        raise
    finally:
        REQUEST_ID.reset(token)
    if not response.prepared:  # a WebSocket's headers left with the upgrade
        response.headers[HEADER] = request_id
    return response


class AccessLogger(AbstractAccessLogger):
    """One line a request: method, path (never the query string), status, seconds, with the
    request id as a field of the record."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time,
                         extra={"request_id": request.get(REQUEST_KEY)})
