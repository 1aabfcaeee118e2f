"""Runs the gateway did not start: registered by their runtime, or ingested from standalone
agents (the agent SDK's ``registerRun`` and ``ingestRun``).

Both find the run by the agent's ``externalRunId`` (unique per agent), so a repeated call
never makes a second run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.errors import Unprocessable
from gateway.runs.callbacks import failure_reason
from gateway.runs.lookups import already_ended, platform_problems
from gateway.runs.outputs import json_outputs, lift_outputs
from gateway.runs.recording import RunTransitions
from gateway.security.tokens import CredentialsTokens, IssuedToken
from store import runs
from store.enums import EventType, ManagedBy, RunStatus, TriggerKind, event_to
from store.models import Agent, Run
from store.run_events import RunEvent


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered run and a fresh credentials token for it."""

    run: Run
    created: bool
    token: IssuedToken


@dataclass(frozen=True, slots=True)
class Ingested:
    """An ingested report: the run it landed on and the status it moves the run to."""

    run: Run
    created: bool
    status: str


class ExternalRunService:
    """Registers externally triggered runs and ingests standalone agents' reports."""

    def __init__(
        self, pool: asyncpg.Pool, transitions: RunTransitions, tokens: CredentialsTokens
    ) -> None:
        self._pool = pool
        self._transitions = transitions
        self._tokens = tokens

    async def register(self, agent: Agent, external_run_id: str) -> Registration:
        """The run for ``external_run_id`` (created ``running`` on first sight), with a new token.

        Only for platform-managed, active agents: a standalone agent reports through ingest.
        """
        problems = platform_problems(agent, standalone_hint=" (standalone agents use ingest)")
        if problems:
            raise Unprocessable("Agent cannot register runs: " + "; ".join(problems))
        run, created = await runs.register_external_run(
            self._pool,
            agent=agent,
            external_run_id=external_run_id,
            status=RunStatus.RUNNING,
            deadline=_deadline(agent),
            trigger_kind=TriggerKind.EXTERNAL,
        )
        token = self._tokens.issue(run.id, at_least_s=run.seconds_to_deadline())
        return Registration(run, created, token)

    async def ingest(self, agent: Agent, body: dict[str, Any]) -> Ingested:
        """Upsert the run for ``body['externalRunId']`` and record its reported status.

        ``body`` is validated by ``IngestBody``. 422 for an agent that is not standalone; 409
        once the run has ended (the terminal guard: a run never changes after its end).
        """
        if agent.managed_by != ManagedBy.STANDALONE:
            raise Unprocessable(
                f"Agent is not eligible for ingest: managed_by is '{agent.managed_by}', not "
                "'standalone' (platform-managed runs report through their callback URL)"
            )
        status = body["status"]
        run, created = await runs.register_external_run(
            self._pool,
            agent=agent,
            external_run_id=body["externalRunId"],
            status=RunStatus.QUEUED,
            deadline=_deadline(agent),
            trigger_kind=TriggerKind.INGEST,
        )
        event = _event(run.id, body)
        if run.terminal or (event is not None and not await self._transitions.publish(event)):
            raise await already_ended(self._pool, run, changed="report")
        if event is None:
            # 'queued' only names a run that has not started: it never moves one back.
            status = run.status
        return Ingested(run, created, status)


def _deadline(agent: Agent) -> dt.datetime:
    """When the reaper may fail the run if nobody has ended it."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=agent.running_timeout_ms)


def _event(run_id: int, body: dict[str, Any]) -> RunEvent | None:
    """The event a reported status becomes; ``None`` for ``queued`` (nothing to record)."""
    extra: dict[str, Any] = {}
    if "output" in body:
        extra["output_data"] = body["output"]
    kind = event_to(RunStatus(body["status"]), with_output=bool(extra))
    if kind is None:
        return None
    if kind == EventType.COMPLETED:
        outputs = (
            json_outputs(body["outputs"]) if "outputs" in body else lift_outputs(body.get("output"))
        )
        return RunEvent(run_id, kind, outputs=outputs, **extra)
    if kind == EventType.FAILED:
        return RunEvent(run_id, kind, error=failure_reason(body.get("error")), **extra)
    return RunEvent(run_id, kind, **extra)
