"""The agent API: ``/api/agents/{agentId}/runs/...``."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from aiohttp import web
from marshmallow import Schema

from gateway.errors import BadRequest
from gateway.http.access.agent_buckets import RUN_REPORTS, SYNC_RUNS, TRIGGERS, take_token
from gateway.http.access.authentication import KeyGuardStep, authenticate_ingest_key
from gateway.http.app_keys import (
    DOWNLOAD_SERVICE,
    EXTERNAL_RUN_SERVICE,
    RUN_LOOKUPS,
    SETTINGS,
    TRIGGER_SERVICE,
)
from gateway.http.middleware.request_info import note_run
from gateway.http.parsing import request_bodies
from gateway.http.parsing.bodies import read_json_object
from gateway.http.parsing.path_ids import path_id
from gateway.http.streaming import memory_trim
from gateway.http.streaming.download import send_download
from gateway.http.views import (
    ingested_run_view,
    json_response,
    pending_run_view,
    registered_run_view,
    run_status_view,
    run_view,
    timed_out_run_view,
)
from gateway.runs.downloads import FILE_KINDS, DownloadAcknowledged
from gateway.runs.triggers import JSON_KINDS
from gateway.validation import load
from store.enums import RunStatus
from store.models import Agent

routes = web.RouteTableDef()

# Built once: a marshmallow schema costs more to construct than to load a body with.
_TRIGGER_BODY = request_bodies.TriggerBody()
_REGISTER_BODY = request_bodies.RegisterBody()
_INGEST_BODY = request_bodies.IngestBody()
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


async def _eligible_agent(
    request: web.Request, guard: KeyGuardStep, *, output_kinds: tuple[str, ...]
) -> tuple[Agent, dict[str, Any]]:
    """Authenticate, read the trigger body and find the agent, in the order the contract lists
    their errors: 401, then 400/404, then 403/422 (``output_kinds``: those the use case
    serves)."""
    app = request.app
    org_id = await authenticate_ingest_key(request, guard=guard)
    body = load(
        _TRIGGER_BODY,
        await read_json_object(request, limit=app[SETTINGS].max_request_body, allow_empty=True),
    )
    lookups = app[RUN_LOOKUPS]
    agent = await lookups.agent_for(org_id, path_id(request, "agentId", "Agent"))
    note_run(request, agent_id=agent.id)
    lookups.check_eligible(agent, output_kinds=output_kinds)
    return agent, body


@routes.post("/api/agents/{agentId}/runs/trigger")
async def trigger(request: web.Request) -> web.Response:
    """The agent SDK's ``triggerRun``: start a run, answer 202 ``{runId, status}`` at once."""
    async with KeyGuardStep(request, with_token=True) as guard:
        agent, body = await _eligible_agent(request, guard, output_kinds=JSON_KINDS)
        key = _idempotency_key(request)
        request_hash = _request_hash(body)
        triggered = await request.app[TRIGGER_SERVICE].trigger(
            agent,
            input_data=body["input"],
            user_id=body["userId"],
            idempotency=None if key is None else (key, request_hash),
            admit=lambda: take_token(request, TRIGGERS, agent.id, guard=guard),
        )
    run = triggered.run
    note_run(request, run_id=run.id)
    headers = {"Idempotent-Replayed": "true"} if triggered.replayed else {}
    return json_response(run_status_view(run.id, run.status), status=202, headers=headers)


@routes.post("/api/agents/{agentId}/runs/trigger-and-wait")
async def trigger_and_wait(request: web.Request) -> web.Response:
    """Trigger-and-wait: 200 with the run when it ends in the window, else 202 ``timedOut``.

    Retried with its Idempotency-Key, it waits for the run the key started (never a second
    one): its terminal row at once, or its end within this call's window."""
    async with KeyGuardStep(request, with_token=True) as guard:
        agent, body = await _eligible_agent(request, guard, output_kinds=JSON_KINDS)
        key = _idempotency_key(request)
        request_hash = _request_hash(body, route="trigger-and-wait")
        # Thousands of waits held at once fragment the heap as a burst of downloads does: it
        # is trimmed once they have all been answered.
        with memory_trim.BURSTS.stream(request.app[SETTINGS].stream_trim_burst):
            waited = await request.app[TRIGGER_SERVICE].trigger_and_wait(
                agent,
                input_data=body["input"],
                user_id=body["userId"],
                timeout_ms=body["timeoutMs"],
                idempotency=None if key is None else (key, request_hash),
                admit=lambda: take_token(request, SYNC_RUNS, agent.id, guard=guard),
            )
    run = waited.run
    note_run(request, run_id=run.id)
    headers = {"Idempotent-Replayed": "true"} if waited.replayed else {}
    if waited.timed_out:
        return json_response(timed_out_run_view(run), status=202, headers=headers)
    return json_response(run_view(run), headers=headers)


@routes.post("/api/agents/{agentId}/runs/trigger-and-download")
async def trigger_and_download(request: web.Request) -> web.StreamResponse:
    """Trigger-and-download: start a run and stream the runtime's file straight through.

    Retried with its Idempotency-Key: 409 with the run the key started and its status (the
    file is never stored, so it cannot be sent again), never a second run."""
    async with KeyGuardStep(request, with_token=True) as guard:
        agent, body = await _eligible_agent(request, guard, output_kinds=FILE_KINDS)
        key = _idempotency_key(request)
        request_hash = _request_hash(body, route="trigger-and-download")
        downloads = request.app[DOWNLOAD_SERVICE]
        started = await downloads.start(
            agent,
            input_data=body["input"],
            user_id=body["userId"],
            timeout_ms=body["timeoutMs"],
            accept_encoding=request.headers.get("Accept-Encoding"),
            idempotency=None if key is None else (key, request_hash),
            admit=lambda: take_token(request, SYNC_RUNS, agent.id, guard=guard),
        )
    note_run(request, run_id=started.run.id)
    if isinstance(started, DownloadAcknowledged):
        # No file comes in this answer: the run reports through callbacks; poll it.
        return json_response(pending_run_view(started.run), status=202)
    settings = request.app[SETTINGS]
    return await send_download(
        request,
        started,
        downloads,
        idle_timeout_s=settings.stream_idle_timeout_s,
        allow_splice=settings.stream_splice,
    )


@routes.get("/api/agents/{agentId}/runs/{runId}")
async def get_run(request: web.Request) -> web.Response:
    """The run row: the poll target of every trigger endpoint (the same shape as trigger-and-wait's
    200). ``?include=input`` adds the input it ran on (an execute's names its files)."""
    app = request.app
    org_id = await authenticate_ingest_key(request)
    run = await app[RUN_LOOKUPS].get_run(
        org_id, path_id(request, "agentId", "Agent"), path_id(request, "runId", "Run")
    )
    note_run(request, run_id=run.id, agent_id=run.agent_id)
    with_input = "input" in request.query.getall("include", [])
    return json_response(run_view(run, with_input=with_input))


@routes.post("/api/agents/{agentId}/runs/{runId}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    """Mark a run cancelled; a waiter sees ``cancelled``. 409 when it has already ended."""
    app = request.app
    org_id = await authenticate_ingest_key(request)
    run = await app[TRIGGER_SERVICE].cancel(
        org_id, path_id(request, "agentId", "Agent"), path_id(request, "runId", "Run")
    )
    note_run(request, run_id=run.id, agent_id=run.agent_id)
    return json_response(run_status_view(run.id, RunStatus.CANCELLED))


async def _reporting_agent(request: web.Request, schema: Schema) -> tuple[Agent, dict[str, Any]]:
    """Authenticate, read the body, find the agent and take a token from its report bucket
    (register and ingest share one); the key guard's look is made with the take."""
    app = request.app
    async with KeyGuardStep(request, with_token=True) as guard:
        org_id = await authenticate_ingest_key(request, guard=guard)
        body = load(schema, await read_json_object(request, limit=app[SETTINGS].max_result_body))
        agent = await app[RUN_LOOKUPS].agent_for(org_id, path_id(request, "agentId", "Agent"))
        await take_token(request, RUN_REPORTS, agent.id, guard=guard)
    return agent, body


@routes.post("/api/agents/{agentId}/runs/register")
async def register_run(request: web.Request) -> web.Response:
    """The agent SDK's ``registerRun``: a run the runtime started on its own, and a credentials
    token.

    201 the first time an ``externalRunId`` is seen; 200 with the same run (and a fresh token)
    after that.
    """
    agent, body = await _reporting_agent(request, _REGISTER_BODY)
    registration = await request.app[EXTERNAL_RUN_SERVICE].register(agent, body["externalRunId"])
    return json_response(
        registered_run_view(registration),
        status=201 if registration.created else 200,
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/api/agents/{agentId}/runs/ingest")
async def ingest_run(request: web.Request) -> web.Response:
    """The agent SDK's ``ingestRun``: a standalone agent reports a run's status (upsert by
    ``externalRunId``). 202 ``{runId, status}``; 409 once the run has ended."""
    agent, body = await _reporting_agent(request, _INGEST_BODY)
    ingested = await request.app[EXTERNAL_RUN_SERVICE].ingest(agent, body)
    return json_response(ingested_run_view(ingested), status=202)


def _idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, if it sent one; 400 when it is malformed."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


def _request_hash(body: dict[str, Any], *, route: str | None = None) -> bytes:
    """A fingerprint of what was asked, to tell a replay from a reused key.

    An agent's keys are shared by its trigger routes: the route is part of what was asked
    (a key that started a trigger-and-wait names nothing a download can replay). ``/trigger``
    hashes its body alone, as it did before the other routes took keys, so its keys stored by
    an earlier release still replay."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    if route is not None:
        canonical = f"{route}\n{canonical}"
    return hashlib.sha256(canonical.encode()).digest()
