"""Reading what callers send: bounded JSON bodies (ids in paths:
``gateway.http.parsing.path_ids``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from adapters.base import loads_json
from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout
from gateway.http.app_keys import SETTINGS
from store import jsonb


async def read_json_object(
    request: web.Request, *, limit: int, allow_empty: bool = False
) -> dict[str, Any]:
    """The body as a JSON object, read at most ``limit`` bytes (413 beyond, before reading it),
    within ``REQUEST_BODY_TIMEOUT_S`` (408 after)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async with body_deadline(request):
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    return parse_json_object(b"".join(chunks), allow_empty=allow_empty)


@contextlib.asynccontextmanager
async def body_deadline(request: web.Request) -> AsyncIterator[None]:
    """Bound the reading of a request body by ``REQUEST_BODY_TIMEOUT_S``: a caller that sends
    its body a byte at a time (slowloris) gets a 408 instead of holding the request open."""
    timeout_s = request.app[SETTINGS].request_body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise RequestTimeout(f"Request body did not arrive within {timeout_s:g} s") from None


def parse_json_object(raw: bytes, *, allow_empty: bool) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("Request body must be a JSON object")
    try:
        # orjson where it agrees with the strict reader; the reader itself (its value, its
        # message) for everything else.
        value = jsonb.loads(raw, fallback=loads_json)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("Request body must be a JSON object")
    return value
