"""The one WebSocket frame envelope, in two codecs (API.md, "WebSocket /ws").

Commands `{id, op, args}`, replies `{id, ok}` or `{id, error: {code, message}}`, pushes
`{type, seq?, data}`. `encode` and `decode` are pure functions of (codec, value); the socket
code never looks inside the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack

JSON = "kinwire.v1.json"
MSGPACK = "kinwire.v1.msgpack"
CODECS = (JSON, MSGPACK)
ID_MAX = 2**53  # ids must survive a JavaScript number


class BadFrame(Exception):
    """A frame that is not a well-formed command; `code` goes back to the client."""

    def __init__(self, code: str, message: str, command_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    id: int | str
    op: str
    args: dict[str, Any]


def encode(codec: str, value: dict[str, Any]) -> str | bytes:
    if codec == JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return msgpack.packb(value, use_bin_type=True)


def _load(codec: str, frame: str | bytes) -> Any:
    if codec == JSON:
        if not isinstance(frame, str):
            raise BadFrame("bad_frame", "this socket speaks JSON text frames")
        return json.loads(frame)
    if not isinstance(frame, bytes | bytearray):
        raise BadFrame("bad_frame", "this socket speaks msgpack binary frames")
    # Strict limits: a hostile frame must not make us build huge containers.
    return msgpack.unpackb(frame, raw=False, strict_map_key=True, max_bin_len=0,
                           max_ext_len=0, max_array_len=10_000, max_map_len=1_000)


def decode(codec: str, frame: str | bytes) -> Command:
    try:
        value = _load(codec, frame)
    except BadFrame:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError):
        raise BadFrame("bad_frame", "the frame could not be decoded") from None
    if not isinstance(value, dict):
        raise BadFrame("bad_frame", "a command is an object {id, op, args}")
    command_id = value.get("id")
    valid_id = (isinstance(command_id, int) and not isinstance(command_id, bool)
                and 0 <= command_id < ID_MAX) or (
                    isinstance(command_id, str) and 0 < len(command_id) <= 64)
    if not valid_id:
        raise BadFrame("bad_frame", "id must be a whole number or a short string")
    op, args = value.get("op"), value.get("args", {})
    if not isinstance(op, str) or not 0 < len(op) <= 64:
        raise BadFrame("bad_frame", "op must be a short string", command_id)
    if not isinstance(args, dict):
        raise BadFrame("bad_frame", "args must be an object", command_id)
    return Command(command_id, op, args)


def reply_ok(command_id: int | str, result: Any) -> dict[str, Any]:
    return {"id": command_id, "ok": result}


def reply_error(command_id: int | str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": command_id, "error": {"code": code, "message": message}}


def push(kind: str, data: dict[str, Any], seq: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": kind, "data": data}
    if seq is not None:
        frame["seq"] = seq
    return frame
