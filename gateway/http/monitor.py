"""The store consumer's own small HTTP server: ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from gateway.ops.consumer_monitor import ConsumerMonitor
from gateway.ops.metrics import render

log = structlog.get_logger(__name__)


def monitor_app(monitor: ConsumerMonitor) -> web.Application:
    """The monitor's aiohttp application."""

    async def healthz(request: web.Request) -> web.Response:
        alive, body = monitor.health()
        return web.json_response(body, status=200 if alive else 503)

    async def metrics(request: web.Request) -> web.Response:
        await monitor.refresh()
        body, content_type = render(monitor.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def probe_connection(_app: web.Application) -> AsyncIterator[None]:
        yield
        await monitor.close()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(probe_connection)
    return app


@contextlib.asynccontextmanager
async def serve_monitor(monitor: ConsumerMonitor, host: str, port: int) -> AsyncIterator[None]:
    """Serve the monitor on ``host:port`` for the life of the ``async with`` block."""
    runner = web.AppRunner(monitor_app(monitor), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("consumer_monitor_listening", host=host, port=port)
        yield
    finally:
        await runner.cleanup()
