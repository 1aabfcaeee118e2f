"""Probes for the load balancer and the orchestrator, and the Prometheus scrape target."""

from __future__ import annotations

from aiohttp import web

from gateway.http.keys import DB_POOL, LIFECYCLE, METRICS, REDIS
from gateway.ops.drain import readiness
from gateway.ops.metrics import render

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 while PostgreSQL and Redis answer and the process is not draining; else 503."""
    app = request.app
    checks = await readiness(app[DB_POOL], app[REDIS], app[LIFECYCLE])
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    body, content_type = render(request.app[METRICS].registry, request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
