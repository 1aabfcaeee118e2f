"""Runtime callbacks: what a run's own code reports (the agent SDK's ``createAgentClient``).

A callback is authenticated by the agent API key that the run's trigger payload carried; the
key must belong to the run's agent, and the agent must be active (a paused or archived agent's
key reports nothing: 403). A run that has ended refuses every callback (409).
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg
import structlog
from opentelemetry import trace

from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.ops import tracing
from gateway.runs.lookups import already_ended
from gateway.runs.outputs import json_outputs, lift_outputs
from gateway.runs.recording import MAX_ERROR_LEN, RunTransitions
from store import enums, runs
from store.enums import AgentStatus, EventType, RunStatus
from store.jsonb import jsonb_problem
from store.models import Agent, Run
from store.run_events import RunEvent

log = structlog.get_logger(__name__)

# The kinds of event a callback reports (``cancelled`` is the gateway's own).
_CALLBACK_EVENTS = (
    EventType.STARTED,
    EventType.OUTPUT,
    EventType.WAITING,
    EventType.COMPLETED,
    EventType.FAILED,
)
# What a run can be after a callback (the callback route's 202 names it).
STATUSES_AFTER = [s.value for s in dict.fromkeys(map(enums.status_after, _CALLBACK_EVENTS))]


class CallbackService:
    """Turns callbacks into run events."""

    def __init__(self, pool: asyncpg.Pool, transitions: RunTransitions) -> None:
        self._pool = pool
        self._transitions = transitions

    def admit(self, agent: Agent) -> None:
        """403 for an agent that is not active (before the callback's body is looked at): its
        runs report nothing."""
        if agent.status != AgentStatus.ACTIVE:
            log.warning("callback_refused_agent_not_active", agent_id=agent.id, status=agent.status)
            raise Forbidden(f"The agent is {agent.status}: its runs cannot report")

    async def report(self, agent: Agent, run_id: int, body: dict[str, Any]) -> Run:
        """Record one callback (``body`` validated by ``CallbackBody``); return the run as it
        was before it. 404 for a run of another agent, 400 for an output PostgreSQL cannot
        store (a number out of float range, a NUL), 409 when the run has ended."""
        run = await runs.get_run_of_agent(self._pool, agent.id, run_id)
        if run is None:
            raise NotFound("Run not found")
        if "output" in body and (problem := jsonb_problem(body["output"])) is not None:
            # Refused here, where the runtime can still send another, rather than a 202 for an
            # output that would then fail its run (recording.storable).
            raise BadRequest(
                f"output cannot be stored: it {problem}",
                extra={"details": {"output": [f"cannot be stored: it {problem}"]}},
            )
        event = _event(run.id, body)
        with _in_runs_trace(run):
            published = not run.terminal and await self._transitions.publish(event)
        if not published:
            refusal = await already_ended(self._pool, run, changed="callback")
            log.info(
                "callback_refused", run_id=run.id, type=event.type, status=refusal.extra["status"]
            )
            raise refusal
        return run


def _in_runs_trace(run: Run) -> contextlib.AbstractContextManager[Any]:
    """The span a callback is applied in (docs/operations.md, "Tracing").

    A callback that carries its own ``traceparent`` is applied in that trace (its server span's
    child), linked to the trace its run started in. One that carries none (the usual case: a
    workflow's HTTP node sends no trace context) is applied as a child of the run's own stored
    context, so that the run's whole story is one trace; its server span, a trace of its own,
    is linked. With tracing off, or a run started without it, it is a plain (no-op) span.
    """
    attributes = {"agent_gateway.run.id": str(run.id)}
    stored = tracing.context_of(run.trace_parent)
    if stored is None or not tracing.active():
        return tracing.span("run callback", attributes=attributes)
    here = trace.get_current_span().get_span_context()
    there = trace.get_current_span(stored).get_span_context()
    if tracing.CALLER_TRACE.get() is not None:
        return tracing.span("run callback", attributes=attributes, links=[trace.Link(there)])
    return tracing.span(
        "run callback", attributes=attributes, parent=stored, links=[trace.Link(here)]
    )


def status_after(body: dict[str, Any]) -> RunStatus:
    """The status a callback moves its run to."""
    return enums.status_after(_event_type(body))


def _event_type(body: dict[str, Any]) -> EventType:
    if body["type"] == "output" and body["complete"]:
        return EventType.COMPLETED
    if body["type"] == "output" and body["failed"]:
        return EventType.FAILED
    return EventType(body["type"])


def _event(run_id: int, body: dict[str, Any]) -> RunEvent:
    kind = _event_type(body)
    extra: dict[str, Any] = {}
    if "output" in body:
        extra["output_data"] = body["output"]
    if "outputs" in body:
        extra["outputs"] = json_outputs(body["outputs"])
    elif kind == EventType.COMPLETED:
        extra["outputs"] = lift_outputs(body.get("output"))
    if kind == EventType.STARTED:
        return RunEvent(run_id, EventType.STARTED)
    if kind == EventType.WAITING:
        waiting_for = {"tokenId": body["tokenId"], "description": body.get("description")}
        return RunEvent(run_id, EventType.WAITING, waiting_for=waiting_for, **extra)
    if kind == EventType.FAILED:
        return RunEvent(run_id, EventType.FAILED, error=failure_reason(body.get("error")), **extra)
    return RunEvent(run_id, kind, **extra)


def failure_reason(error: Any) -> str:
    """The run's short failure reason from ``fail({message, name?, stack?})`` or a string."""
    if isinstance(error, str) and error:
        return error[:MAX_ERROR_LEN]
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        name = error.get("name")
        if isinstance(name, str) and name and name != "Error":
            message = f"{name}: {message}"
        if message:
            return message[:MAX_ERROR_LEN]
    return "The run reported a failure without a reason"
