"""Large JSON request bodies, parsed as they arrive.

Execute requests carry files as base64 inside JSON, so their bodies run to tens of megabytes.
They are never read whole first: the bytes are fed to an incremental parser (ijson's yajl
backend) as they come off the socket, counted against a limit (413 past it, before reading
more), and only the parsed value is kept, so the body is not held twice in memory.
"""

from __future__ import annotations

from typing import Any

import ijson
from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge

# The parser is fed in pieces this large: fewer, larger pieces keep a long string (a base64
# file) cheap to assemble (it is re-buffered on every piece); see the README's figures.
_FEED_SIZE = 4 * 1024 * 1024
_WHITESPACE = b" \t\r\n"


class _CountingReader:
    """What ijson reads from: the request body, refused once it passes ``limit`` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self._limit = limit
        self.size = 0
        self.blank = True

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            # ijson probes with read(0) to tell bytes from text.
            return b""
        want = _FEED_SIZE if n is None or n < 0 else max(n, _FEED_SIZE)
        parts: list[bytes] = []
        got = 0
        while got < want:
            data = await self._content.read(want - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        self.size += got
        if self.size > self._limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {self._limit} bytes")
        piece = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.blank and piece.strip(_WHITESPACE):
            self.blank = False
        return piece


async def read_large_json_object(request: web.Request, *, limit: int) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``), read at most ``limit`` bytes.

    NaN, Infinity, trailing data and anything but an object are refused (400).
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}")
    reader = _CountingReader(request, limit)
    values: list[Any] = []
    try:
        async for value in ijson.items_async(reader, "", use_float=True, buf_size=_FEED_SIZE):
            values.append(value)
    except ijson.JSONError as exc:
        if reader.blank:
            return {}
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid JSON"
        raise BadRequest(f"Request body is not valid JSON: {first_line}") from None
    if not values:
        return {}
    if not isinstance(values[0], dict):
        raise BadRequest("Request body must be a JSON object")
    body: dict[str, Any] = values[0]
    return body
