"""A fast upstream runtime for the benchmarks: bytes, instant JSON and n8n streaming answers.

Run as its own process (aiohttp + uvloop) so it never shares an event loop with the gateway:

    python -m bench.origin_server --port 9100

Routes:

``GET  /bytes?size=N&chunked=0|1&tag=T``          direct download
``POST /bytes?...``                                direct download (request body drained)
``POST /webhook/bytes?...``                        what a ``file_download`` agent points at
``GET  /sent?tag=T``                               bytes written so far for downloads tagged T
``POST /webhook/json``                             an instant, small JSON answer (trigger-and-wait)
``POST /webhook/ndjson?frames=N&interval_us=U&pad=P``  an n8n "Streaming" webhook answer
``POST /webhook/slow?delay_s=S&tag=T&together=N`` JSON after ``S`` seconds (default 20)
``GET  /stats?tag=T``                              what the slow route did for calls tagged T

Bytes: ``chunked=0`` (the default) sends ``Content-Length``, ``chunked=1`` sends
``Transfer-Encoding: chunked``. Either way the body is written in ``--chunk-kib`` pieces
(default 256 KiB), each the same ``bytes`` object (or one slice of it for the tail), so the
origin copies nothing per request. With ``tag``, the bytes handed to the socket are counted,
so a benchmark can see how far the origin got ahead of a slow reader.

NDJSON: ``200 application/json; charset=utf-8``, chunked, one line of JSON per chunk the way
n8n's streaming response mode writes them (``{"type": "begin"|"item"|"end", "content"?,
"metadata": {"nodeId", "nodeName", "itemIndex", "runIndex", "timestamp"}}``): a ``begin``,
``frames`` ``item`` s and an ``end``. Each item's content starts with ``<seq>:<t>:`` where
``t`` is ``time.monotonic_ns()`` just before the line was written (CLOCK_MONOTONIC, shared by
every process on the machine), then ``pad`` filler characters. With ``interval_us`` the items
are paced (item ``i`` is due at ``start + i * interval``), otherwise written back to back.

Slow: a webhook whose workflow takes ``delay_s`` seconds, for held waits. The answer echoes the
trigger payload's ``runId`` and ``input`` (``{"ok": true, "runId", "input"}``), so a caller can
tell that it got its own run's result. With ``together=N`` the calls tagged ``T`` are answered
all at once, ``delay_s`` after the ``N``-th arrived (or ``gather_s``, default 60, after the
first, if fewer come): every call is then held for at least ``delay_s``, all of them at the same
time. For every ``tag`` the origin counts the calls received and answered and keeps the
``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the machine) and wall time of
the first and last of each, read back with ``GET /stats?tag=T``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import time
from dataclasses import asdict, dataclass

from aiohttp import web

BLOCK = web.AppKey("block", bytes)
SENT = web.AppKey("sent", dict[str, int])


@dataclass
class SlowStats:
    """What the slow route did for one tag (monotonic and wall seconds; 0 before the first)."""

    received: int = 0
    answered: int = 0
    first_received: float = 0.0
    last_received: float = 0.0
    first_answer: float = 0.0
    last_answer: float = 0.0
    last_answer_wall: float = 0.0
    # With together=N: when the answers were scheduled (the N-th arrival), and for when.
    released: float = 0.0
    answer_due: float = 0.0


SLOW = web.AppKey("slow", dict[str, SlowStats])
# With together=N: per tag, resolved with the monotonic time at which every call is answered.
RELEASES = web.AppKey("releases", dict[str, asyncio.Future[float]])
JSON_ANSWER = b'{"ok":true,"result":{"text":"instant answer from the bench runtime"}}'
NODE = {"nodeId": "bench-node-1", "nodeName": "Bench Agent"}


def _query_int(request: web.Request, name: str, default: int) -> int:
    try:
        value = int(request.query.get(name, str(default)))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if value < 0:
        raise web.HTTPBadRequest(text=f"{name} must be >= 0")
    return value


async def serve_bytes(request: web.Request) -> web.StreamResponse:
    """Send ``size`` bytes of the block, with Content-Length or chunked."""
    if request.can_read_body:
        await request.read()  # the trigger payload: small, bounded by client_max_size
    block = request.app[BLOCK]
    size = _query_int(request, "size", len(block))
    tag = request.query.get("tag")
    sent = request.app[SENT]
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": 'attachment; filename="bench.bin"',
        }
    )
    if request.query.get("chunked", "0") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    whole, rest = divmod(size, len(block))
    if tag is None:
        for _ in range(whole):
            await response.write(block)
        if rest:
            await response.write(block[:rest])
    else:
        sent[tag] = 0
        for _ in range(whole):
            await response.write(block)
            sent[tag] += len(block)
        if rest:
            await response.write(block[:rest])
            sent[tag] += rest
    await response.write_eof()
    return response


async def sent_bytes(request: web.Request) -> web.Response:
    """How many bytes the downloads tagged ``tag`` have handed to their sockets so far."""
    return web.json_response({"sent": request.app[SENT].get(request.query.get("tag", ""), 0)})


async def serve_json(request: web.Request) -> web.Response:
    """An instant JSON answer, like an n8n webhook whose workflow ends at once."""
    await request.read()
    return web.Response(body=JSON_ANSWER, content_type="application/json")


async def serve_slow(request: web.Request) -> web.Response:
    """JSON after ``delay_s`` seconds, echoing the payload's ``runId`` and ``input``."""
    try:
        delay = float(request.query.get("delay_s", "20"))
    except ValueError:
        raise web.HTTPBadRequest(text="delay_s must be a number") from None
    stats = request.app[SLOW].setdefault(request.query.get("tag", ""), SlowStats())
    now = time.monotonic()
    stats.received += 1
    stats.first_received = stats.first_received or now
    stats.last_received = now
    try:
        payload = await request.json()
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    together = _query_int(request, "together", 0)
    if together:
        due = await _release(request, stats, together, delay)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    else:
        await asyncio.sleep(delay)
    answer = web.json_response(
        {"ok": True, "runId": payload.get("runId"), "input": payload.get("input")}
    )
    now = time.monotonic()
    stats.answered += 1
    stats.first_answer = stats.first_answer or now
    stats.last_answer = now
    stats.last_answer_wall = time.time()
    return answer


async def _release(request: web.Request, stats: SlowStats, together: int, delay: float) -> float:
    """When the calls of this tag are answered: ``delay`` after the ``together``-th arrived,
    or after ``gather_s`` (default 60) from the first if fewer arrive."""
    tag = request.query.get("tag", "")
    loop = asyncio.get_running_loop()
    release = request.app[RELEASES].get(tag)
    if release is None or (release.done() and stats.received == 1):
        release = request.app[RELEASES][tag] = loop.create_future()

        def gathered() -> None:
            if not release.done():
                _schedule(release, stats, delay)

        loop.call_later(float(request.query.get("gather_s", "60")), gathered)
    if stats.received >= together and not release.done():
        _schedule(release, stats, delay)
    return await asyncio.shield(release)


def _schedule(release: asyncio.Future[float], stats: SlowStats, delay: float) -> None:
    stats.released = time.monotonic()
    stats.answer_due = stats.released + delay
    release.set_result(stats.answer_due)


async def slow_stats(request: web.Request) -> web.Response:
    """The slow route's counts and times for ``tag`` (zeros when it saw no call)."""
    stats = request.app[SLOW].get(request.query.get("tag", ""), SlowStats())
    return web.json_response(asdict(stats))


def _chunk(kind: str, content: str | None, item: int) -> bytes:
    body: dict[str, object] = {"type": kind}
    if content is not None:
        body["content"] = content
    stamp = time.time_ns() // 10**6  # n8n's metadata.timestamp: Date.now()
    body["metadata"] = {**NODE, "itemIndex": item, "runIndex": 0, "timestamp": stamp}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def serve_ndjson(request: web.Request) -> web.StreamResponse:
    """n8n's streaming response: begin, ``frames`` timestamped items, end."""
    await request.read()
    frames = _query_int(request, "frames", 100)
    interval_ns = _query_int(request, "interval_us", 0) * 1000
    pad = "x" * _query_int(request, "pad", 16)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(_chunk("begin", None, 0))
    start = time.monotonic_ns()
    for seq in range(frames):
        if interval_ns:
            due = start + seq * interval_ns
            now = time.monotonic_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
        await response.write(_chunk("item", f"{seq}:{time.monotonic_ns()}:{pad}", seq))
    await response.write(_chunk("end", None, frames))
    await response.write_eof()
    return response


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit (held waits keep one socket per
    call open); returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def create_origin(chunk_bytes: int) -> web.Application:
    """The origin application with its pre-generated block."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[BLOCK] = random.Random(20261123).randbytes(chunk_bytes)
    app[SENT] = {}
    app[SLOW] = {}
    app[RELEASES] = {}
    app.router.add_get("/bytes", serve_bytes)
    app.router.add_post("/bytes", serve_bytes)
    app.router.add_post("/webhook/bytes", serve_bytes)
    app.router.add_get("/sent", sent_bytes)
    app.router.add_post("/webhook/json", serve_json)
    app.router.add_post("/webhook/ndjson", serve_ndjson)
    app.router.add_post("/webhook/slow", serve_slow)
    app.router.add_get("/stats", slow_stats)
    return app


def main() -> None:
    """Parse arguments and serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--chunk-kib", type=int, default=256, help="size of each body write (default 256)"
    )
    args = parser.parse_args()
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_origin(args.chunk_kib * 1024),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
