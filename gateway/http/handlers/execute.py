"""``POST /api/workflows/{workflowId}/execute``, and the signed URLs of its input files."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.errors import ApiError, BadRequest, NotFound
from gateway.execute.frames import END, ExecutionFeeds, Failed, Feed
from gateway.execute.input_files import FILES_PATH
from gateway.execute.service import ChunkFrame, Outcome
from gateway.http.access.agent_buckets import (
    EXECUTIONS,
    bucket_window_s,
    look_at_bucket,
    rate_limit_headers,
    take_token,
)
from gateway.http.access.authentication import KeyHeader, authenticate_ingest_key
from gateway.http.app_keys import (
    EXECUTE_SERVICE,
    EXECUTION_FEEDS,
    FILE_SERVICE,
    LARGE_BODY_SLOTS,
    RUN_LOOKUPS,
    SETTINGS,
)
from gateway.http.parsing.large_bodies import read_large_json_object
from gateway.http.parsing.path_ids import path_id
from gateway.http.streaming.attachments import (
    attachment_response,
    send_attachment,
    utf8_disposition,
)
from gateway.http.streaming.sse import encode_data, error_data, send_feed, send_followed
from gateway.http.views import (
    async_execution_view,
    bucket_view,
    execution_event_view,
    execution_result_view,
    execution_stream_path,
    execution_timed_out_view,
    job_status_view,
    usage_limits_view,
    workflow_status_view,
)
from gateway.security.ratelimit import Decision
from store.models import Agent

# Sim's header for an execute that answers at once with a task id.
EXECUTION_MODE_HEADER = "X-Execution-Mode"
ASYNC_MODE = "async"

routes = web.RouteTableDef()


@routes.post("/api/workflows/{workflowId}/execute")
async def execute(request: web.Request) -> web.StreamResponse:
    """Run the agent's workflow: its result as JSON, or (``stream: true``) live SSE frames.

    Errors in the order a caller fixes them: 401, 404, 403/422, then the body (413/400), then
    429. The body is read only for an agent the key may run. A large body
    (``EXECUTE_LARGE_BODY_BYTES``, or no declared length) takes its token first (429 before
    it is read) and one of the replica's slots (503 with Retry-After when none is free).
    """
    app = request.app
    settings = app[SETTINGS]
    org_id = await authenticate_ingest_key(request, KeyHeader.X_API_KEY)
    try:
        agent = await app[RUN_LOOKUPS].agent_for(org_id, path_id(request, "workflowId", "Workflow"))
    except NotFound:
        raise NotFound("Workflow not found") from None
    # From here on every answer, errors and 429 included, tells the agent's execute bucket.
    decision: Decision | None = None
    try:
        service = app[EXECUTE_SERVICE]
        adapter = service.check_eligible(agent)
        detached = request.headers.get(EXECUTION_MODE_HEADER, "").strip().lower() == ASYNC_MODE
        declared = request.content_length
        large = declared is None or (
            settings.execute_large_body_bytes < declared <= settings.execute_max_request_body
        )
        slot: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if large:
            # A large body costs its read and parse: a caller already refused pays nothing,
            # and a replica reads only so many at a time.
            decision = await take_token(request, EXECUTIONS, agent.id)
            slot = app[LARGE_BODY_SLOTS].held()
        with slot:
            body = await read_large_json_object(request, limit=settings.execute_max_request_body)
            checked = service.parse(agent, body)
            del body  # the coerced input holds what is still needed (file data included)
            if decision is None:
                decision = await take_token(request, EXECUTIONS, agent.id)
            execution = await service.start(agent, adapter, checked)
            del checked  # its file data is stored now; the execution keeps what it needs
    except ApiError as exc:
        await _add_bucket_headers(request, agent, exc, decision)
        raise
    headers = {
        "X-Run-Id": str(execution.run.id),
        **rate_limit_headers(decision, bucket_window_s(request, EXECUTIONS)),
    }
    feeds = app[EXECUTION_FEEDS]
    # The execution runs in a feed of its own: its frames are numbered and kept (a cut stream
    # is resumed on any replica), and the caller leaving is the feed's business.
    feed = feeds.start(
        execution.run.id,
        lambda reason: service.events(execution, cancel_on_leave=not detached, leave_reason=reason),
        render=_render,
        render_error=error_data,
        attached=not detached,
    )
    if detached:
        return web.json_response(async_execution_view(execution.run), status=202, headers=headers)
    if execution.request.stream:
        return await send_feed(
            request,
            feed,
            ping_interval_s=settings.sse_ping_interval_s,
            headers={**headers, "Link": f'<{execution_stream_path(execution.run)}>; rel="resume"'},
            left=feeds.left,
        )
    try:
        outcome = await _outcome(feed, feeds)
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise
    if outcome.timed_out:
        return web.json_response(execution_timed_out_view(outcome), status=202, headers=headers)
    return web.json_response(execution_result_view(outcome), headers=headers)


async def _add_bucket_headers(
    request: web.Request, agent: Agent, exc: ApiError, decision: Decision | None
) -> None:
    """Add the bucket's headers to an error answer; a 429's own headers are kept as they are."""
    if decision is None:
        try:
            decision = await look_at_bucket(request, EXECUTIONS, agent.id)
        except ApiError:
            return  # the bucket cannot be read: the error is answered without its headers
    exc.headers = {
        **rate_limit_headers(decision, bucket_window_s(request, EXECUTIONS)),
        **exc.headers,
    }


@routes.get("/api/workflows/{workflowId}/status")
async def workflow_status(request: web.Request) -> web.Response:
    """Sim's workflow status: ``isDeployed`` when the agent can be executed now."""
    app = request.app
    org_id = await authenticate_ingest_key(request, KeyHeader.X_API_KEY)
    try:
        agent = await app[RUN_LOOKUPS].agent_for(org_id, path_id(request, "workflowId", "Workflow"))
    except NotFound:
        raise NotFound("Workflow not found") from None
    deployed = app[EXECUTE_SERVICE].is_deployed(agent)
    return web.json_response(workflow_status_view(agent, deployed=deployed))


@routes.get("/api/jobs/{taskId}")
async def job_status(request: web.Request) -> web.Response:
    """Sim's job status: an async execute's task, for its organisation only."""
    org_id = await authenticate_ingest_key(request, KeyHeader.X_API_KEY)
    run = await request.app[EXECUTE_SERVICE].task(org_id, path_id(request, "taskId", "Task"))
    return web.json_response(job_status_view(run))


@routes.get("/api/users/me/usage-limits")
async def usage_limits(request: web.Request) -> web.Response:
    """Sim's usage limits: what the key's organisation may still execute, bucket by bucket.

    Sync and async executes take from the same per-workflow bucket, so ``rateLimit.sync`` and
    ``rateLimit.async`` are the same figures: the fewest tokens left in any of the
    organisation's workflows (each one's own in ``rateLimit.workflows``).
    """
    org_id = await authenticate_ingest_key(request, KeyHeader.X_API_KEY)
    agent_ids = await request.app[EXECUTE_SERVICE].org_agent_ids(org_id)
    limit, window_s = EXECUTIONS.policy(request.app[SETTINGS])
    workflows = {
        str(agent_id): bucket_view(await look_at_bucket(request, EXECUTIONS, agent_id), window_s)
        for agent_id in agent_ids
    }
    if workflows:
        overall = min(workflows.values(), key=lambda view: (view["remaining"], view["resetAt"]))
    else:
        overall = bucket_view(Decision(True, limit, limit, 0, 0), window_s)
    return web.json_response(usage_limits_view(overall, workflows))


def _render(event: ChunkFrame | Outcome) -> bytes:
    return encode_data(execution_event_view(event))


async def _outcome(feed: Feed, feeds: ExecutionFeeds) -> Outcome:
    """The outcome of an execute answered as one JSON body (its chunks are only kept)."""
    try:
        while True:
            item = await feed.queue.get()
            if isinstance(item, Failed):
                raise item.error
            if item is END:
                break
    except asyncio.CancelledError:
        feeds.left(feed)
        raise
    assert feed.outcome is not None, "an execution always ends with its outcome"
    return feed.outcome


def _last_event_id(request: web.Request) -> int:
    """The last frame the caller has: ``Last-Event-ID`` (what EventSource sends when it
    reconnects), else ``?lastEventId=``; none: from the first frame."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("lastEventId")
    if raw is None or not raw.strip():
        return 0
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(
            "Last-Event-ID must be the id of a frame of this execution (a whole number)",
            extra={"details": {"Last-Event-ID": ["Must be a non-negative integer."]}},
        )
    return int(text)


@routes.get("/api/workflows/{workflowId}/executions/{executionId}/stream")
async def execution_stream(request: web.Request) -> web.StreamResponse:
    """Follow an execution's frames, or resume a cut stream after ``Last-Event-ID``: the
    frames kept after it, then the live ones, to ``done`` and ``[DONE]``; on any replica."""
    app = request.app
    org_id = await authenticate_ingest_key(request, KeyHeader.X_API_KEY)
    workflow_id = path_id(request, "workflowId", "Execution")
    run_id = path_id(request, "executionId", "Execution")
    after = _last_event_id(request)
    frames = await app[EXECUTION_FEEDS].open_follow(
        org_id, workflow_id, run_id, after, render=_render
    )
    if frames is None:
        # The stream had ended: 204 is what tells an EventSource to stop reconnecting.
        return web.Response(status=204, headers={"X-Run-Id": str(run_id)})
    return await send_followed(request, frames, ping_interval_s=app[SETTINGS].sse_ping_interval_s)


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
