"""Reading what callers send: bounded JSON bodies and numeric ids in paths."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import NotFound, PayloadTooLarge
from gateway.schemas import parse_json_object

_MAX_ID = 2**63 - 1


async def read_json_object(
    request: web.Request, *, limit: int, allow_empty: bool = False
) -> dict[str, Any]:
    """The body as a JSON object, read at most ``limit`` bytes (413 beyond, before reading it)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks), allow_empty=allow_empty)


def path_id(request: web.Request, name: str, what: str) -> int:
    """A positive integer id from the path; anything else names nothing (404)."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= _MAX_ID:
        raise NotFound(f"{what} not found")
    return int(raw)
