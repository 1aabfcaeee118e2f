"""Probes for the load balancer and the orchestrator."""

from __future__ import annotations

from aiohttp import web

from gateway.app_keys import DB_POOL, LIFECYCLE, REDIS
from gateway.health import readiness

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
    )
