"""Behind a reverse proxy (nginx, docs/deploy.md): whom to believe about the client.

Every request reaches a process from the proxy's address, over http. Only when the peer is one
of `KINWIRE_TRUSTED_PROXIES` does Kinwire believe the proxy's headers:
- `X-Forwarded-For`: the client's address is the rightmost one that is not a trusted proxy
  (what the first proxy we trust saw; anything left of it the client may have made up). It is
  what the per-address login limit counts.
- `X-Forwarded-Proto: https`: the request is treated as https, so the session cookie is marked
  Secure and a browser's https Origin is the server's own.
From anyone else the headers are ignored (deny by default: a client could claim any address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(trusted: Sequence[str]) -> list[Network]:
    """`127.0.0.1`, `10.0.0.0/8`, `::1`: ValueError for anything else."""
    return [ipaddress.ip_network(item, strict=False) for item in trusted]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
             trusted: list[Network]) -> bool:
    return address is not None and any(address in net for net in trusted)


def client_address(remote: str | None, forwarded_for: str, trusted: list[Network]) -> str | None:
    """The client's address: `remote` unless it is a trusted proxy, else the rightmost address
    of `forwarded_for` that is not one (or the leftmost, when every hop is trusted)."""
    if not _trusted(_address(remote or ""), trusted):
        return remote
    hops = [_address(hop) for hop in forwarded_for.split(",") if hop.strip()]
    if not hops or None in hops:  # no header, or a hop that is no address: believe nothing
        return remote
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return str(hop)
    return str(hops[0])


def forwarded_scheme(request: web.BaseRequest, trusted: list[Network]) -> str:
    """The scheme the client used: the proxy's X-Forwarded-Proto when the peer is trusted."""
    if trusted and _trusted(_address(request.remote or ""), trusted):
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if proto in ("http", "https"):
            return proto
    return request.scheme


def middleware(trusted_proxies: Sequence[str]) -> Callable:
    trusted = networks(trusted_proxies)

    @web.middleware
    def forwarded(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> Awaitable[web.StreamResponse]:
        # Work before the handler only, so it hands on the handler's coroutine rather than
        # awaiting it (no frame kept per request; see server/http/routing.py WS_PATH).
        if trusted and _trusted(_address(request.remote or ""), trusted):
            changes: dict[str, str] = {}
            remote = client_address(request.remote, request.headers.get(
                "X-Forwarded-For", ""), trusted)
            if remote and remote != request.remote:
                changes["remote"] = remote
            proto = forwarded_scheme(request, trusted)
            if proto != request.scheme:
                changes["scheme"] = proto
            if changes:
                request = request.clone(**changes)
        return handler(request)

    return forwarded
