"""Log lines: what every Kinwire process writes to standard error, and how.

`JsonFormatter` writes one JSON object a line: time, level, logger, message, request_id (when
the line was logged while serving a request) and exc (the traceback text, if any). As a last
line of defence it masks bearer tokens and card-number-like digit runs in the message; the
code itself never logs tokens, bodies or card data. `TextFormatter` writes the same for a
person at a terminal ("07:02:11 INFO kinwire.drain [req 4f2a] message"), masked the same way.
`configure` picks one: KINWIRE_LOG_FORMAT `json` or `text`, or `auto` (the default): text when
the logs go to a terminal, JSON when they go to a file, a pipe or the journal.

Here, apart from the HTTP edge's request ids (server/http/logs.py), so that a one-shot command
(`kinwire migrate`, `backup`, `restore`) configures its logs without importing the routes: a
tenth of a second of CPU a command (2026-12-07).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Set by the HTTP edge for the request being served (server/http/logs.py).
REQUEST_ID: ContextVar[str | None] = ContextVar("kinwire_request_id", default=None)
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


def configure(level: str, fmt: str, stream: Any = None) -> None:
    """Log to `stream` (standard error) at `level`, as `fmt`: json, text, or auto (text when
    the stream is a terminal)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
