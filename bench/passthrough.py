"""The bare aiohttp pass-through: the reference the gateway's small requests are compared with.

Every ``POST`` is forwarded to one upstream URL and its answer (status, content type, body)
handed back; nothing else happens (no auth, no rate limit, no run row, no events, no access
log). It runs the way the gateway runs: its own process, uvloop, one ``ClientSession`` with
the gateway's session settings.

    python -m bench.passthrough --port 9200 --upstream http://127.0.0.1:9100/webhook/json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.Response:
    """POST the request's body upstream and answer with what came back."""
    body = await request.read()
    async with request.app[SESSION].post(
        request.app[UPSTREAM],
        data=body,
        headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
    ) as upstream:
        answer = await upstream.read()
        return web.Response(
            status=upstream.status,
            body=answer,
            headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
        )


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
    )
    yield
    await app[SESSION].close()


def create_passthrough(upstream: str) -> web.Application:
    """The pass-through application."""
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(_session)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    """Parse arguments and serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--upstream", required=True, help="the URL every POST is forwarded to")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_passthrough(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        handler_cancellation=True,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
