"""A fast origin for the download benchmark: N bytes from one pre-generated in-memory block.

Run as its own process (aiohttp + uvloop) so it never shares an event loop with the gateway:

    python bench/origin_server.py --port 9100

Routes (all answer the same body; ``size`` and ``chunked`` come from the query string):

``GET  /bytes?size=N&chunked=0|1``          direct download
``POST /bytes?size=N&chunked=0|1``          direct download (request body drained, ignored)
``POST /webhook/bytes?size=N&chunked=0|1``  what an agent's webhook URL points at

``chunked=0`` (the default) sends ``Content-Length``; ``chunked=1`` sends
``Transfer-Encoding: chunked``. Either way the body is written in ``--chunk-kib`` pieces
(default 256 KiB), each the same ``bytes`` object (or one slice of it for the tail), so the
origin copies nothing per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random

from aiohttp import web

BLOCK = web.AppKey("block", bytes)


async def serve_bytes(request: web.Request) -> web.StreamResponse:
    """Send ``size`` bytes of the block, with Content-Length or chunked."""
    if request.can_read_body:
        await request.read()  # the trigger payload: small, bounded by client_max_size
    block = request.app[BLOCK]
    try:
        size = int(request.query.get("size", str(len(block))))
    except ValueError:
        raise web.HTTPBadRequest(text="size must be an integer") from None
    if size < 0:
        raise web.HTTPBadRequest(text="size must be >= 0")
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
    for _ in range(whole):
        await response.write(block)
    if rest:
        await response.write(block[:rest])
    await response.write_eof()
    return response


def create_origin(chunk_bytes: int) -> web.Application:
    """The origin application with its pre-generated block."""
    app = web.Application()
    app[BLOCK] = random.Random(20261123).randbytes(chunk_bytes)
    app.router.add_get("/bytes", serve_bytes)
    app.router.add_post("/bytes", serve_bytes)
    app.router.add_post("/webhook/bytes", serve_bytes)
    return app


def main() -> None:
    """Parse arguments and serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--chunk-kib", type=int, default=256, help="size of each body write (default 256)"
    )
    args = parser.parse_args()
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
    )


if __name__ == "__main__":
    main()
