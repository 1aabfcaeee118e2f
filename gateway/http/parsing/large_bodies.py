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
from ijson.common import ObjectBuilder

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.http.parsing.bodies import body_deadline
from store.jsonb import MAX_DEPTH

# The parser is fed in pieces this large: fewer, larger pieces keep a long string (a base64
# file) cheap to assemble (it is re-buffered on every piece); see bench/README.md for the figures.
_FEED_SIZE = 4 * 1024 * 1024
_WHITESPACE = b" \t\r\n"
_OPENS = frozenset({"start_map", "start_array"})
_CLOSES = frozenset({"end_map", "end_array"})


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
    # Built from the parser's events rather than with ijson.items: items names every value by
    # its path, which costs time in proportion to the depth, so that a 200 KB body of nested
    # brackets took the event loop for tens of seconds. Here depth is bounded as it grows.
    builder = ObjectBuilder()
    depth = 0
    events = 0
    field: str | None = None  # the top-level key being read
    try:
        async with body_deadline(request):
            async for event, value in ijson.basic_parse_async(
                reader, use_float=True, buf_size=_FEED_SIZE
            ):
                if event in _OPENS:
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise _too_deep(field)
                elif event in _CLOSES:
                    depth -= 1
                elif event == "map_key" and depth == 1:
                    field = value
                builder.event(event, value)
                events += 1
    except ijson.JSONError as exc:
        if reader.blank:
            return {}
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid JSON"
        raise BadRequest(f"Request body is not valid JSON: {first_line}") from None
    except UnicodeDecodeError:
        # yajl passes a lone surrogate escape ("\udfff") on as bytes that are not UTF-8.
        raise BadRequest("Request body is not valid JSON: a string is not valid Unicode") from None
    if not events:
        return {}
    if not isinstance(builder.value, dict):
        raise BadRequest("Request body must be a JSON object")
    body: dict[str, Any] = builder.value
    return body


def _too_deep(field: str | None) -> BadRequest:
    """The 400 for a body nested past what the store holds, naming the field (as the other
    values the store cannot hold are named)."""
    problem = f"cannot be stored: nested deeper than {MAX_DEPTH} levels"
    if field is None:
        return BadRequest(f"Request body {problem}")
    return BadRequest(f"Invalid input: {field!r} {problem}", extra={"details": {field: [problem]}})
