"""The one wire format of broker payloads, shared by both implementations.

A payload is a dict of msgpack-able values (None, bool, int within 64 bits, float, str, bytes,
and lists/tuples/dicts of those). Tuples come back as lists: the memory broker round-trips
through the same bytes as Redis, so a test on it sees exactly what production sees.
"""

from __future__ import annotations

from typing import Any

import msgpack


def encode(payload: dict[str, Any]) -> bytes:
    """Encode a payload; raise TypeError if it is not a dict of msgpack-able values."""
    if not isinstance(payload, dict):
        raise TypeError(f"broker payload must be a dict, not {type(payload).__name__}")
    try:
        return msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        # msgpack reports ints beyond 64 bits and too-deep nesting as other errors; callers
        # get one exception type for "this payload cannot go on the wire".
        raise TypeError(f"broker payload is not msgpack-encodable: {error}") from error


def decode(data: bytes) -> dict[str, Any]:
    """Decode bytes made by `encode` into a fresh dict (every call builds new objects)."""
    # Non-string keys (ints) are valid msgpack and encode fine, so they must decode too.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
