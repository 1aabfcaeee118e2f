"""Server-Sent Events out of an async iterator of frames, with keep-alive pings.

The frames are produced by their own task into a queue of one, so that:

- each frame is written the moment it is produced (the queue never holds more than one);
- a ``: ping`` comment goes out after every ``ping_interval_s`` of silence, without ever
  interrupting the producer (a timed wait on a queue can be abandoned safely; a timed wait on
  a generator cannot);
- a slow caller slows the producer down (it waits on the full queue), so memory stays bounded;
- the caller leaving cancels the producer at once, which closes the frames' iterator.

Headers go out with the first frame or the first ping, whichever comes first: a failure before
that is still an ordinary JSON error response; after it, failures are an in-band
``{"event": "error", "error": ...}`` frame followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import ApiError

log = structlog.get_logger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx (and proxies that honour it) must pass each event on at once.
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def encode_frame(data: Mapping[str, Any]) -> bytes:
    """``data: <compact JSON>`` and the blank line that ends an event."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return b"data: " + text.encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class _End:
    pass


_END = _End()


async def _produce(frames: AsyncIterator[Mapping[str, Any]], queue: asyncio.Queue[Any]) -> None:
    try:
        async for frame in frames:
            await queue.put(frame)
        await queue.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(_Failed(exc))
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


async def send_events(
    request: web.Request,
    frames: AsyncIterator[Mapping[str, Any]],
    *,
    ping_interval_s: float,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream ``frames`` to the caller as SSE, then ``data: [DONE]``."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    producer = asyncio.create_task(_produce(frames, queue), name="sse-producer")
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), ping_interval_s)
            except TimeoutError:
                if not response.prepared:
                    await response.prepare(request)
                await response.write(PING)
                continue
            if item is _END:
                break
            if isinstance(item, _Failed):
                if not response.prepared:
                    # Nothing is out yet: an ordinary error response tells the caller best.
                    raise item.error
                await response.write(encode_frame(_error_frame(item.error)))
                break
            if not response.prepared:
                await response.prepare(request)
            await response.write(encode_frame(item))
        await response.write(DONE)
        await response.write_eof()
    except ConnectionError:
        # The caller left while we wrote (handler cancellation would also get us here).
        log.info("sse_caller_left", path=request.path)
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(producer, return_exceptions=True)
    return response


def _error_frame(error: BaseException) -> dict[str, Any]:
    if isinstance(error, ApiError):
        return {"event": "error", "error": error.message}
    log.error("sse_internal_error", exc_info=error)
    return {"event": "error", "error": "Internal error while streaming"}
