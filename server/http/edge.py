"""Defences in depth at the HTTP edge: security headers on every response, read timeouts for
slow clients, and malformed requests logged as one-line warnings (not errors with tracebacks).

- Headers: the browser apps load scripts and styles from /static only (no inline script,
  handler or style; tests/integration/test_edge.py checks), so the CSP allows nothing inline; no
  page may
  be framed; no MIME sniffing; no Referer leaves the site; HSTS when the client came over https
  (directly, or through a trusted proxy's X-Forwarded-Proto).
- Slow headers: aiohttp closes a connection that has not sent a whole request within its
  keep-alive timeout from the moment it connected or was last answered; that timeout is
  `http_header_timeout_s`. Slow bodies: handlers read bodies through `read_body`, bounded by
  `http_body_timeout_s`; past it the answer is 408 and the connection is closed (after at
  most LINGER_S more).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from common.errors import Refused
from server.http.proxy import Network, forwarded_scheme


def csp(connect: Sequence[str] = ()) -> str:
    """The pages' Content-Security-Policy; `connect`: origins beyond our own that pages may
    call (the Janus servers' client API, KINWIRE_MEDIA_ENGINE=janus)."""
    return "; ".join([
        "default-src 'self'", "script-src 'self'", "style-src 'self'",
        "img-src 'self' blob: data:", "media-src 'self' blob:",
        " ".join(["connect-src 'self'", *connect]),
        "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ])


def origins(urls: Sequence[str]) -> list[str]:
    """Each URL's origin (scheme://host[:port]), once, in order."""
    seen: dict[str, None] = {}
    for url in urls:
        parts = urlsplit(url)
        seen[f"{parts.scheme}://{parts.netloc}"] = None
    return list(seen)


HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(trusted: list[Network], connect: Sequence[str] = ()
                     ) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    headers = {"Content-Security-Policy": csp(connect), **HEADERS}

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        if forwarded_scheme(request, trusted) == "https":
            response.headers.setdefault("Strict-Transport-Security", HSTS)

    return on_prepare


async def read_body(request: web.BaseRequest, timeout_s: float,
                    reading: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """`reading()` (default: the whole body) within `timeout_s`, else 408 and the connection
    closes: a client trickling its body holds a connection no longer than that."""
    try:
        async with asyncio.timeout(timeout_s):
            return await (reading or request.read)()
    except TimeoutError:
        raise Refused("request_timeout",
                       f"The request body did not arrive within {timeout_s:g} s.") from None


class ParseErrorLog(logging.LoggerAdapter):
    """aiohttp's server logger, but a request it cannot parse is the client's mistake: one
    warning line with the kind of error (never the bytes, which may hold a token)."""

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.warning("malformed request from %s: %s (%s)",
                                args[0] if args else "?", type(exc_info).__name__,
                                exc_info.code)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


# After an answer sent before the whole body was read (408, 413, 401), aiohttp reads on so the
# client can see the answer; 10 s by default, which let a trickling client keep its connection
# 10 s past the body timeout.
LINGER_S = 1.0


def handler_args(header_timeout_s: float) -> dict[str, Any]:
    return {"keepalive_timeout": header_timeout_s, "lingering_time": LINGER_S,
            "logger": ParseErrorLog(logging.getLogger("aiohttp.server"), {})}
