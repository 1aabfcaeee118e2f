"""Probes for the load balancer and the orchestrator, and the Prometheus scrape target."""

from __future__ import annotations

from aiohttp import web

from gateway.http.app_keys import DB_POOL, DEPENDENCIES, LIFECYCLE, METRICS
from gateway.http.views import dependencies_view, liveness_view, readiness_view
from gateway.ops.drain import readiness
from gateway.ops.metrics import render

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process answers."""
    return web.json_response(liveness_view())


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 while this replica can usefully take traffic (not draining, pools open); else 503.

    PostgreSQL and Redis are not asked: see ``/healthz/dependencies``."""
    checks = readiness(request.app[DB_POOL], request.app[LIFECYCLE])
    ready = checks == {"process": "ok", "database_pool": "open"}
    return web.json_response(
        readiness_view(checks, ready=ready),
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/healthz/dependencies")
async def dependencies(request: web.Request) -> web.Response:
    """PostgreSQL and Redis as this replica sees them now: 200 when both answer, else 503.

    For people and monitors, never for a probe (``gateway.ops.dependencies`` says why)."""
    view = dependencies_view(await request.app[DEPENDENCIES].probe())
    return web.json_response(
        view,
        status=200 if view["status"] == "ok" else 503,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    body, content_type = render(request.app[METRICS].registry, request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
