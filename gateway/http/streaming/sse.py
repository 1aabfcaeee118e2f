"""Server-Sent Events of an execution's numbered frames, with keep-alive pings.

Every frame goes out as ``id: <n>`` and ``data: <data>``, ``n`` its number in the execution, so
that a caller who loses the stream resumes it with ``Last-Event-ID: <n>``
(``gateway.execute.frames``). Frames come from a :class:`~gateway.execute.frames.FeedQueue`,
and everything it holds goes out in one write:

- live (:func:`send_feed`): the execution's feed fills it as frames are produced, so a frame
  is written the moment it is produced when the writer waits, a burst in a few large writes,
  and a slow caller slows the producer down;
- followed (:func:`send_followed`): a task of its own reads the kept frames into it.

A ``: ping`` comment goes out after every ``ping_interval_s`` of silence (a timed wait on a
queue can be abandoned safely; a timed wait on a generator cannot). Headers go out with the
first frame or the first ping, whichever comes first: a failure before that is still an ordinary
JSON error response; after it, a live failure is an in-band ``{"event": "error", "error": ...}``
frame followed by ``data: [DONE]``, and a follower's failure aborts the connection (the caller
resumes again from its last id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.errors import ApiError
from gateway.execute.frames import END, Failed, Feed, FeedQueue, Frame

log = structlog.get_logger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx (and proxies that honour it) must pass each event on at once.
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"


# One encoder for every frame (json.dumps with options builds one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_data(data: Mapping[str, Any]) -> bytes:
    """A frame's data: compact JSON."""
    for value in data.values():
        if type(value) is not str:
            return _ENCODER.encode(data).encode()
    # A chunk's frame: orjson writes strings byte for byte as the encoder does, in a fraction
    # of the time (a lone surrogate, which neither can write, takes the slow way to its error).
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(data).encode()


def error_data(error: BaseException) -> bytes:
    """The data of the in-band frame that says a stream failed."""
    if isinstance(error, ApiError):
        return encode_data({"event": "error", "error": error.message})
    log.error("sse_internal_error", exc_info=error)
    return encode_data({"event": "error", "error": "Internal error while streaming"})


async def send_feed(
    request: web.Request,
    feed: Feed,
    *,
    ping_interval_s: float,
    headers: Mapping[str, str] | None = None,
    left: Callable[[Feed], None],
) -> web.StreamResponse:
    """Stream a live execution's frames to its caller; ``left`` is told if the caller goes
    before the end (the run's fate is its business)."""
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
    ended = False
    try:
        ended = await _write(request, response, feed.queue, ping_interval_s)
    except ConnectionError:
        # The caller left while we wrote (handler cancellation would also get us here).
        log.info("sse_caller_left", path=request.path)
    except ApiError:
        ended = True  # answered as an error response: the run was failed already
        raise
    finally:
        if not ended:
            left(feed)
    return response


async def send_followed(
    request: web.Request,
    frames: AsyncIterator[Frame],
    *,
    ping_interval_s: float,
) -> web.StreamResponse:
    """Stream kept frames (then the live ones) to a caller who resumes or follows."""
    queue = FeedQueue()
    producer = asyncio.create_task(_produce(frames, queue), name="sse-follower")
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    try:
        await _write(request, response, queue, ping_interval_s)
    except ConnectionError:
        log.info("sse_follower_left", path=request.path)
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(producer, return_exceptions=True)
    return response


async def _write(
    request: web.Request,
    response: web.StreamResponse,
    queue: FeedQueue,
    ping_interval_s: float,
) -> bool:
    """Write what comes through ``queue`` up to its end; whether the end was reached.

    Everything the queue holds goes out in one write (a burst costs a few writes, not one
    per frame); a frame produced while the writer waits goes out at once.
    """
    while True:
        if queue.empty() and not await queue.wait(ping_interval_s):
            if not response.prepared:
                await response.prepare(request)
            await response.write(PING)
            continue
        out = bytearray()
        for item in queue.take():
            if item is END:
                await _flush(request, response, out)
                await response.write_eof()
                return True
            if isinstance(item, Failed):
                if not response.prepared and not out:
                    # Nothing is out yet: an ordinary error response tells the caller best.
                    raise item.error
                if isinstance(item, _Aborted):
                    # A follower's read failed mid-stream: no clean end, the caller resumes.
                    await _flush(request, response, out)
                    log.warning("sse_follow_failed", path=request.path, error=repr(item.error))
                    if request.transport is not None:
                        request.transport.abort()
                    return True
                item = item.frame
            assert isinstance(item, Frame)
            out += b"id: %d\ndata: %b\n\n" % (item.number, item.data)
        await _flush(request, response, out)


async def _flush(request: web.Request, response: web.StreamResponse, out: bytearray) -> None:
    if not out:
        return
    if not response.prepared:
        await response.prepare(request)
    await response.write(bytes(out))


class _Aborted(Failed):
    pass


async def _produce(frames: AsyncIterator[Frame], queue: FeedQueue) -> None:
    try:
        async for frame in frames:
            await queue.put(frame)
        await queue.put(END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(_Aborted(exc, Frame(0, b"")))
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
