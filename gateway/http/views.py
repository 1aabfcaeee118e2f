"""The JSON bodies the API answers with, built from what the domain returns.

Domain code hands back records (an :class:`~store.models.Agent`, a
:class:`~store.models.Run`, a :class:`~gateway.packages.service.PackageTicket` …); how each is
shown to a caller is decided here, at the HTTP edge, and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.admin.service import CreatedAgent, CreatedIngestKey, CreatedOrg
from gateway.execute.service import ChunkFrame, Outcome
from gateway.http.access.agent_buckets import reset_s
from gateway.ops.dependencies import UP, Dependency
from gateway.packages.service import PackageTicket
from gateway.runs.external import Ingested, Registration
from gateway.security.credentials import CreatedCredential, ResolvedCredential
from gateway.security.ratelimit import Decision
from store.agents import SEALED
from store.credentials import CredentialInfo
from store.enums import JobStatus
from store.jsonb import dumps_bytes
from store.models import Agent, IngestKey, Org, Run, iso

# Runtime settings that hold secrets: shown masked, so an operator sees that they are set.
_MASKED_RUNTIME_KEYS = frozenset({"secret_key", "headers"})


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``web.json_response`` with the body written by orjson (``store.jsonb.dumps_bytes``): the
    same ``application/json; charset=utf-8`` answer, compact, for a fraction of the CPU."""
    return web.Response(
        body=dumps_bytes(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def run_view(run: Run, *, with_input: bool = False) -> dict[str, Any]:
    """The run as trigger-and-wait's 200 response shapes it (the poll target answers the same,
    and adds the input it ran on when asked)."""
    view = {
        "runId": run.id,
        "agentId": run.agent_id,
        "status": run.status,
        "output_data": run.output_data,
        "outputs": run.outputs,
        "error": run.error,
        "duration_ms": run.duration_ms,
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "created_at": iso(run.created_at),
    }
    if with_input:
        view["input"] = run.input
    return view


def run_status_view(run_id: int, status: str) -> dict[str, Any]:
    """``{runId, status}``: what a trigger's 202, a callback's 202 and a cancel answer."""
    return {"runId": run_id, "status": status}


def pending_run_view(run: Run) -> dict[str, Any]:
    """``{runId, agentId, status}``: a download the runtime acknowledged without a file (the
    run reports later; poll it)."""
    return {"runId": run.id, "agentId": run.agent_id, "status": run.status}


def timed_out_run_view(run: Run) -> dict[str, Any]:
    """Trigger-and-wait's 202 when the window closed first: the run to poll, ``timedOut``."""
    return {**pending_run_view(run), "timedOut": True}


def registered_run_view(registration: Registration) -> dict[str, Any]:
    """Register's answer: the run and a fresh credentials token."""
    return {
        "runId": registration.run.id,
        "credentialsToken": registration.token.token,
        "expiresInSeconds": registration.token.expires_in_s,
    }


def ingested_run_view(ingested: Ingested) -> dict[str, Any]:
    """Ingest's 202: the run, its status, and whether this report created it."""
    return {"runId": ingested.run.id, "status": ingested.status, "created": ingested.created}


def created_org_view(org: CreatedOrg) -> dict[str, Any]:
    """A new organisation: ``{id, name}``."""
    return {"id": str(org.id), "name": org.name}


def created_ingest_key_view(key: CreatedIngestKey) -> dict[str, Any]:
    """A new ingest key, shown this once: ``{id, key}``."""
    return {"id": str(key.id), "key": key.key}


def created_user_view(user_id: uuid.UUID) -> dict[str, Any]:
    """A new user: ``{id}``."""
    return {"id": str(user_id)}


def created_credential_view(credential: CreatedCredential) -> dict[str, Any]:
    """A new credential: ``{id, name, type}``, never its data."""
    return {"id": str(credential.id), "name": credential.name, "type": credential.type}


def org_view(org: Org) -> dict[str, Any]:
    """The organisation as the admin API shows it."""
    return {"id": str(org.id), "name": org.name, "created_at": iso(org.created_at)}


def ingest_key_view(key: IngestKey) -> dict[str, Any]:
    """An ingest key as an operator lists it: its id (what revoking takes) and first
    characters, never the key nor its hash."""
    return {
        "id": str(key.id),
        "prefix": key.prefix,
        "created_at": iso(key.created_at),
        "revoked": key.revoked_at is not None,
        "revoked_at": iso(key.revoked_at),
    }


def agent_view(agent: Agent) -> dict[str, Any]:
    """The agent as the admin API shows it (never the runtime's secrets)."""
    sealed = agent.runtime.get(SEALED) or {}
    runtime = {
        k: ("***" if k in _MASKED_RUNTIME_KEYS and v else v)
        for k, v in agent.runtime.items()
        if k != SEALED
    }
    # Sealed at rest (gateway.security.runtime_secrets): shown as set, never opened here.
    runtime.update({k: "***" for k in _MASKED_RUNTIME_KEYS if k in sealed})
    return {
        "id": agent.id,
        "org_id": str(agent.org_id),
        "name": agent.name,
        "managed_by": agent.managed_by,
        "status": agent.status,
        "allow_external_triggers": agent.allow_external_triggers,
        "output_kind": agent.output_kind,
        "runtime": runtime,
        "default_input": agent.default_input,
        "input_format": agent.input_format,
        "running_timeout_ms": agent.running_timeout_ms,
        "blocks": agent.blocks,
        "credential_ids": [str(c) for c in agent.credential_ids],
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
    }


def created_agent_view(created: CreatedAgent) -> dict[str, Any]:
    """A new agent, with the API key it was given (shown this once)."""
    return {**agent_view(created.agent), "api_key": created.api_key}


def package_ticket_view(ticket: PackageTicket) -> dict[str, Any]:
    """The /v0 API's ``{id, status, signed_url, workflowId}`` (all strings)."""
    return {
        "id": str(ticket.id),
        "status": ticket.status,
        "signed_url": ticket.signed_url,
        "workflowId": str(ticket.workflow_id),
    }


def credential_info_view(info: CredentialInfo) -> dict[str, Any]:
    """A credential as an operator lists it: never its data."""
    return {
        "id": str(info.id),
        "name": info.name,
        "type": info.type,
        "created_at": iso(info.created_at),
        "updated_at": iso(info.updated_at),
    }


def credential_view(credential: ResolvedCredential) -> dict[str, Any]:
    """The credential as a run's code receives it, its data opened."""
    return {
        "id": str(credential.id),
        "name": credential.name,
        "type": credential.type,
        "data": credential.data,
    }


def execution_result_view(outcome: Outcome) -> dict[str, Any]:
    """Workflow execute's result: ``{success, output, error, metadata, runId}``."""
    return {
        "success": outcome.success,
        "output": outcome.output,
        "error": outcome.error,
        "metadata": {"duration": outcome.duration_ms},
        "runId": outcome.run_id,
    }


def execution_timed_out_view(outcome: Outcome) -> dict[str, Any]:
    """Workflow execute's 202 when the window closed first: the run goes on; poll it."""
    return {"runId": outcome.run_id, "status": outcome.status, "timedOut": True}


def execution_event_view(event: ChunkFrame | Outcome) -> dict[str, Any]:
    """The SSE data of an execute event, as workflow execute prints it."""
    if isinstance(event, ChunkFrame):
        return {"blockId": event.block_id, "chunk": event.chunk}
    if event.success:
        return {
            "event": "done",
            "success": True,
            "output": event.output,
            "metadata": {"duration": event.duration_ms},
        }
    return {"event": "error", "error": event.error or f"Run {event.status}"}


def async_execution_view(run: Run) -> dict[str, Any]:
    """An async execute's 202: ``{success, taskId, status, createdAt, links}``: where to poll
    its status, and where to follow its frames live."""
    return {
        "success": True,
        "taskId": str(run.id),
        "status": JobStatus.QUEUED,
        "createdAt": iso(run.created_at),
        "links": {"status": f"/api/jobs/{run.id}", "stream": execution_stream_path(run)},
    }


def execution_stream_path(run: Run) -> str:
    """Where an execution's frames are followed (and a cut stream resumed)."""
    return f"/api/workflows/{run.agent_id}/executions/{run.id}/stream"


def job_status_view(run: Run) -> dict[str, Any]:
    """``GET /api/jobs/{taskId}``: the task's state, and its ``output`` or ``error`` once ended."""
    status = JobStatus.of(run.status)
    metadata: dict[str, Any] = {
        "workflowId": str(run.agent_id),
        "runId": run.id,
        "startedAt": iso(run.started_at),
    }
    view: dict[str, Any] = {
        "success": True,
        "taskId": str(run.id),
        "status": status,
        "metadata": metadata,
    }
    if run.terminal:
        metadata["completedAt"] = iso(run.completed_at)
        metadata["duration"] = run.duration_ms
        if status == JobStatus.COMPLETED:
            view["output"] = run.output_data
        else:
            view["error"] = run.error or f"The run was {run.status}"
    return view


def workflow_status_view(agent: Agent, *, deployed: bool) -> dict[str, Any]:
    """``GET /api/workflows/{id}/status``: whether the agent can be executed now."""
    return {
        "isDeployed": deployed,
        "deployedAt": iso(agent.updated_at) if deployed else None,
        "needsRedeployment": False,
    }


def bucket_view(decision: Decision, window_s: int) -> dict[str, Any]:
    """One execute bucket as Sim's usage limits show it."""
    remaining = max(0, decision.remaining)
    reset_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=reset_s(decision))
    return {
        "isLimited": remaining < 1,
        "limit": decision.limit,
        "remaining": remaining,
        "windowSeconds": window_s,
        "resetAt": iso(reset_at),
    }


def usage_limits_view(overall: dict[str, Any], workflows: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/users/me/usage-limits``: the tightest bucket, and each workflow's own."""
    return {
        "success": True,
        "rateLimit": {
            "sync": overall,
            "async": overall,
            "authType": "api",
            "workflows": workflows,
        },
        # The gateway meters no cost: nothing is spent, and no spending limit applies.
        "usage": {"currentPeriodCost": 0, "limit": None, "plan": "gateway"},
    }


def liveness_view() -> dict[str, Any]:
    """``/healthz``: the process answers."""
    return {"status": "ok"}


def readiness_view(checks: Mapping[str, str], *, ready: bool) -> dict[str, Any]:
    """``/readyz``: ready or not, and the checks that say why."""
    return {"status": "ready" if ready else "unavailable", "checks": checks}


def dependencies_view(state: Mapping[Dependency, str]) -> dict[str, Any]:
    """``/healthz/dependencies``: PostgreSQL and Redis as this replica sees them."""
    up = all(value == UP for value in state.values())
    return {
        "status": "ok" if up else "degraded",
        "dependencies": {dependency.value: value for dependency, value in state.items()},
    }
