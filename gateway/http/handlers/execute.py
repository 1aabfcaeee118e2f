"""``POST /api/workflows/{workflowId}/execute``, and the signed URLs of its input files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.errors import NotFound
from gateway.execute.input_files import FILES_PATH
from gateway.execute.service import ChunkFrame, ExecuteService, Execution, Outcome
from gateway.http.attachments import attachment_response, send_attachment, utf8_disposition
from gateway.http.authentication import execute_key_org
from gateway.http.json_body import read_large_json_object
from gateway.http.keys import EXECUTE_SERVICE, FILE_SERVICE, RUN_SERVICE, SETTINGS
from gateway.http.path_ids import path_id
from gateway.http.rate_limits import EXECUTIONS, take_token
from gateway.http.sse import send_events
from gateway.http.views import execution_event_view, execution_result_view

routes = web.RouteTableDef()


@routes.post("/api/workflows/{workflowId}/execute")
async def execute(request: web.Request) -> web.StreamResponse:
    """Run the agent's workflow: its result as JSON, or (``stream: true``) live SSE frames.

    Errors in the order a caller fixes them: 401, 404, 403/422, then the body (413/400), then
    429. The body is read only for an agent the key may run.
    """
    app = request.app
    settings = app[SETTINGS]
    org_id = await execute_key_org(request)
    try:
        agent = await app[RUN_SERVICE].agent_for(org_id, path_id(request, "workflowId", "Workflow"))
    except NotFound:
        raise NotFound("Workflow not found") from None
    service = app[EXECUTE_SERVICE]
    adapter = service.check_eligible(agent)
    body = await read_large_json_object(request, limit=settings.execute_max_request_body)
    checked = service.parse(agent, body)
    del body  # the coerced input holds what is still needed (file data included)
    await take_token(request, EXECUTIONS, agent.id)
    execution = await service.start(agent, adapter, checked)
    del checked  # its file data is stored now; the execution keeps what it needs
    headers = {"X-Run-Id": str(execution.run.id)}
    if execution.request.stream:
        return await send_events(
            request,
            _frames(service, execution),
            ping_interval_s=settings.sse_ping_interval_s,
            headers=headers,
        )
    outcome = await _outcome(service, execution)
    if outcome.timed_out:
        return web.json_response(
            {"runId": outcome.run_id, "status": outcome.status, "timedOut": True},
            status=202,
            headers=headers,
        )
    return web.json_response(execution_result_view(outcome), headers=headers)


async def _frames(service: ExecuteService, execution: Execution) -> AsyncIterator[dict[str, Any]]:
    # aclosing: when the caller leaves, the execution's own iterator is closed at once (which
    # drops the runtime's connection and cancels the run), not whenever it is collected.
    async with contextlib.aclosing(service.events(execution)) as events:
        async for event in events:
            yield execution_event_view(event)


async def _outcome(service: ExecuteService, execution: Execution) -> Outcome:
    async with contextlib.aclosing(service.events(execution)) as events:
        async for event in events:
            if not isinstance(event, ChunkFrame):
                return event
    raise AssertionError("an execution always ends with its outcome")


@routes.get(FILES_PATH + "{key:.+}")
async def signed_file(request: web.Request) -> web.StreamResponse:
    """A stored input file, for whoever holds its signed URL (until it expires)."""
    opened = await request.app[FILE_SERVICE].open_signed(
        request.rel_url.raw_path,
        request.query.get("expires"),
        request.query.get("signature"),
    )
    record = opened.record
    response = attachment_response(
        content_type=record.mime_type,
        disposition=utf8_disposition(record.name),
        size=record.size_bytes,
    )
    await send_attachment(request, response, opened.chunks)
    return response
