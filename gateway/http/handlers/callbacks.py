"""``POST /api/runs/{runId}/callback``: a run's runtime reports on it (the agent SDK)."""

from __future__ import annotations

from aiohttp import web

from gateway.http.access.agent_buckets import CALLBACKS, take_token
from gateway.http.access.authentication import authenticate_agent_key
from gateway.http.app_keys import CALLBACK_SERVICE, SETTINGS
from gateway.http.middleware.request_info import note_run
from gateway.http.parsing import request_bodies
from gateway.http.parsing.bodies import read_json_object
from gateway.http.parsing.path_ids import path_id
from gateway.http.views import run_status_view
from gateway.runs.callbacks import status_after
from gateway.validation import load

routes = web.RouteTableDef()
# Built once: a marshmallow schema costs more to construct than to load a body with.
_CALLBACK_BODY = request_bodies.CallbackBody()


@routes.post("/api/runs/{runId}/callback")
async def callback(request: web.Request) -> web.Response:
    """``started``, ``output`` (intermediate, ``complete`` or ``failed``) and ``waiting``.

    202 once the event is recorded; 409 when the run has already ended; 429 past the agent's
    callback bucket (``CALLBACK_RATE_LIMIT``).
    """
    agent = await authenticate_agent_key(request)
    service = request.app[CALLBACK_SERVICE]
    run_id = path_id(request, "runId", "Run")
    service.admit(agent)
    # Before the body (up to MAX_RESULT_BODY) is read: a flood costs a Redis call each.
    await take_token(request, CALLBACKS, agent.id)
    raw = await read_json_object(request, limit=request.app[SETTINGS].max_result_body)
    body = load(_CALLBACK_BODY, raw)
    run = await service.report(agent, run_id, body)
    note_run(request, run_id=run.id, agent_id=run.agent_id)
    return web.json_response(run_status_view(run.id, status_after(body)), status=202)
