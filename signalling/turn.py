"""TURN REST API credentials (coturn `use-auth-secret`) and the coturn configuration we document.

A visit's parties get time-limited TURN credentials, never a standing password:

    username   = f"{expiry_unix}:{account_id}"
    credential = base64(HMAC-SHA1(shared_secret, username))

coturn, started with `use-auth-secret` and the same `static-auth-secret`, recomputes the HMAC and
refuses the username once its leading timestamp is in the past. `expires_at` is the end of the
visit window, so the credentials are valid no longer than the visit (DESIGN.md, "Video visits").

`coturn_config` renders the one coturn configuration: docs/turn.md shows it and the tests' private
coturn (tests/support/turn_server.py) runs it, and a test checks the two are the same text.

Pure functions: no I/O, no clock, no server imports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

SEPARATOR = ":"  # coturn's default `rest-api-separator`

# Peer addresses a production relay must never reach: RFC 1918 and the other special-purpose
# ranges (loopback, link-local, CGNAT, documentation, benchmarking, reserved, NAT64, 6to4, ULA).
# A TURN server that relays to these is an open door into the network it stands in.
DENIED_PEER_RANGES: tuple[str, ...] = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.0.2.0-192.0.2.255",
    "192.88.99.0-192.88.99.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "100::-100::ffff:ffff:ffff:ffff",
    "2001::-2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)
# The test variant denies every address, then allows back only this one (an allowed-peer-ip
# wins over any denied-peer-ip in coturn): relayed test media can only ever reach loopback.
LOOPBACK_PEER = "127.0.0.1"
ALL_IPV4 = "0.0.0.0-255.255.255.255"
ALL_IPV6 = "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def _unix(expires_at: datetime | int) -> int:
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return int(expires_at.timestamp())
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise TypeError("expires_at is an aware datetime or whole unix seconds")
    return expires_at


def turn_username(account_id: str, expires_at: datetime | int) -> str:
    """`expiry:account`; the account id must not contain the separator, or coturn would
    misread where the timestamp ends."""
    if not account_id or SEPARATOR in account_id:
        raise ValueError("account_id must be non-empty and contain no ':'")
    return f"{_unix(expires_at)}{SEPARATOR}{account_id}"


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), exactly as coturn computes it."""
    if not secret:
        raise ValueError("the TURN shared secret is empty")
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def ice_servers(*, secret: str, turn_urls: Sequence[str], stun_urls: Sequence[str],
                account_id: str, expires_at: datetime | int) -> list[dict[str, Any]]:
    """WebRTC `iceServers` entries (RTCIceServer dicts): the STUN URLs without credentials, the
    TURN URLs with `username`/`credential` valid until `expires_at` (the visit window's end).
    No TURN URLs means no TURN entry (and no secret is needed)."""
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls:
        username = turn_username(account_id, expires_at)
        servers.append({"urls": list(turn_urls), "username": username,
                        "credential": turn_password(secret, username)})
    return servers


def ice_policy(relay_only: bool) -> str:
    """The `iceTransportPolicy` clients are told to use (`ice_transport_policy`): "relay", TURN
    candidates only (KINWIRE_ICE_RELAY_ONLY), or "all"."""
    return "relay" if relay_only else "all"


def coturn_config(*, secret: str, realm: str, listening_ip: str, listening_port: int | str,
                  relay_ip: str, min_port: int | str, max_port: int | str, log_file: str,
                  pid_file: str, userdb: str, loopback_test: bool = False) -> str:
    """The coturn configuration file (`turnserver -c FILE`). `loopback_test` makes the variant
    the test suite runs: peers on 127.0.0.1 only, everything else denied. (Ports may be given as
    placeholders, for the documentation.)"""
    lines = [
        "# Kinwire's coturn: TURN REST API credentials only, UDP/TCP, no TLS listener",
        f"listening-ip={listening_ip}",
        f"listening-port={listening_port}",
        f"relay-ip={relay_ip}",
        f"min-port={min_port}",
        f"max-port={max_port}",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={realm}",
        "fingerprint",
        "no-cli",
        "no-tls",
        "no-dtls",
        "no-rfc5780",
        "no-multicast-peers",
        "no-software-attribute",
        "stale-nonce=600",
        f"log-file={log_file}",
        "simple-log",
        "no-stdout-log",
        f"pidfile={pid_file}",
        f"userdb={userdb}",
    ]
    lines += [f"denied-peer-ip={r}" for r in DENIED_PEER_RANGES]
    if loopback_test:
        lines += [
            "# test only: deny every peer, then allow back loopback alone",
            f"denied-peer-ip={ALL_IPV4}",
            f"denied-peer-ip={ALL_IPV6}",
            "allow-loopback-peers",
            f"allowed-peer-ip={LOOPBACK_PEER}",
        ]
    return "\n".join(lines) + "\n"
