"""Log lines and request ids.

`JsonFormatter` writes one JSON object a line: time, level, logger, message, request_id (when
the line was logged while serving a request) and exc (the traceback text, if any). As a last
line of defence it masks bearer tokens and card-number-like digit runs in the message; the
code itself never logs tokens, bodies or card data. `TextFormatter` writes the same for a
person at a terminal ("07:02:11 INFO kinwire.drain [req 4f2a] message"), masked the same way.
`configure` picks one: KINWIRE_LOG_FORMAT `json` or `text`, or `auto` (the default): text when
the logs go to a terminal, JSON when they go to a file, a pipe or the journal.

`request_id_middleware` takes the client's X-Request-Id when it is a short safe token (else
makes one), echoes it in the response header and keeps it in a contextvar for the request.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server.http.routing import WS_PATH

HEADER = "X-Request-Id"
REQUEST_KEY = web.RequestKey("request_id", str)
REQUEST_ID: ContextVar[str | None] = ContextVar("kinwire_request_id", default=None)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")


def scrub(text: str) -> str:
    return _CARD.sub("[redacted]", _BEARER.sub(r"\1[redacted]", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = scrub(record.exc_text)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        record.rid = f" [req {request_id}]" if request_id else ""
        return scrub(super().format(record))


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


def configure(level: str, fmt: str, stream: Any = None) -> None:
    """Log to `stream` (standard error) at `level`, as `fmt`: json, text, or auto (text when
    the stream is a terminal)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
