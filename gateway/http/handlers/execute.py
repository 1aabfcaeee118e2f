"""Seed 004: ``POST /api/workflows/{workflowId}/execute``, and the signed URLs of input files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.errors import NotFound
from gateway.execute.input_files import FILES_PATH
from gateway.execute.service import ChunkFrame, ExecuteService, Execution, Outcome, sse_frame
from gateway.http.json_body import read_large_json_object
from gateway.http.keys import (
    DB_POOL,
    EXECUTE_SERVICE,
    FILE_SERVICE,
    RATE_LIMITER,
    RUN_SERVICE,
    SETTINGS,
)
from gateway.http.request_parsing import path_id
from gateway.http.sse import send_events
from gateway.security.auth import org_for_api_key

routes = web.RouteTableDef()


@routes.post("/api/workflows/{workflowId}/execute")
async def execute(request: web.Request) -> web.StreamResponse:
    """Run the agent's workflow: its result as JSON, or (``stream: true``) live SSE frames.

    Errors in the order a caller fixes them: 401, 404, 403/422, then the body (413/400), then
    429. The body is read only for an agent the key may run.
    """
    app = request.app
    settings = app[SETTINGS]
    org_id = await org_for_api_key(
        app[DB_POOL], request.headers.get("X-API-Key"), request.headers.get("Authorization")
    )
    try:
        agent = await app[RUN_SERVICE].agent_for(org_id, path_id(request, "workflowId", "Workflow"))
    except NotFound:
        raise NotFound("Workflow not found") from None
    service = app[EXECUTE_SERVICE]
    adapter = service.check_eligible(agent)
    body = await read_large_json_object(request, limit=settings.execute_max_request_body)
    checked = service.parse(agent, body)
    del body  # the coerced input holds what is still needed (file data included)
    await app[RATE_LIMITER].enforce(
        f"agent:{agent.id}:execute",
        limit=settings.execute_rate_limit,
        window_s=settings.execute_rate_window_s,
        what="this workflow's executions",
    )
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
    return web.json_response(outcome.result(), headers=headers)


async def _frames(service: ExecuteService, execution: Execution) -> AsyncIterator[dict[str, Any]]:
    # aclosing: when the caller leaves, the execution's own iterator is closed at once (which
    # drops the runtime's connection and cancels the run), not whenever it is collected.
    async with contextlib.aclosing(service.events(execution)) as events:
        async for event in events:
            yield sse_frame(event)


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
    response = web.StreamResponse(
        headers={
            "Content-Type": record.mime_type,
            "Content-Disposition": _attachment(record.name),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.content_length = record.size_bytes
    async with contextlib.aclosing(opened.chunks) as chunks:
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in chunks:
                await response.write(chunk)
    await response.write_eof()
    return response


def _attachment(name: str) -> str:
    """``Content-Disposition`` with an ASCII fallback and the UTF-8 name (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
