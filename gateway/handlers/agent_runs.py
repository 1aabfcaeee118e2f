"""The agent API: ``/api/agents/{agentId}/runs/...``."""

from __future__ import annotations

from aiohttp import web

from gateway import schemas
from gateway.app_keys import DB_POOL, RATE_LIMITER, RUN_SERVICE, SETTINGS
from gateway.auth import org_for_ingest_key
from gateway.request_parsing import path_id, read_json_object
from gateway.streaming import send_download

routes = web.RouteTableDef()


@routes.post("/api/agents/{agentId}/runs/trigger-and-download")
async def trigger_and_download(request: web.Request) -> web.StreamResponse:
    """Seed 000: start a run and stream the runtime's file straight through."""
    app = request.app
    settings = app[SETTINGS]
    runs = app[RUN_SERVICE]
    org_id = await org_for_ingest_key(app[DB_POOL], request.headers.get("Authorization"))
    body = schemas.load(
        schemas.TriggerBody(),
        await read_json_object(request, limit=settings.max_request_body, allow_empty=True),
    )
    agent = await runs.agent_for(org_id, path_id(request, "agentId", "Agent"))
    runs.check_eligible(agent, output_kind="file_download")
    await app[RATE_LIMITER].enforce(
        f"agent:{agent.id}:sync",
        limit=settings.sync_rate_limit,
        window_s=settings.sync_rate_window_s,
        what="this agent",
    )
    start = await runs.start_download(
        agent,
        input_data=body["input"],
        user_id=body["userId"],
        timeout_ms=body["timeoutMs"],
        accept_encoding=request.headers.get("Accept-Encoding"),
    )
    return await send_download(request, start, runs, idle_timeout_s=settings.stream_idle_timeout_s)


@routes.get("/api/agents/{agentId}/runs/{runId}")
async def get_run(request: web.Request) -> web.Response:
    """The run row: the poll target of every trigger endpoint."""
    app = request.app
    org_id = await org_for_ingest_key(app[DB_POOL], request.headers.get("Authorization"))
    run = await app[RUN_SERVICE].get_run(
        org_id, path_id(request, "agentId", "Agent"), path_id(request, "runId", "Run")
    )
    return web.json_response(run.public())
