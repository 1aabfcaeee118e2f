"""Creating a run: its row, the Idempotency-Key that may name it, and what its runtime receives.

A key binds to one run for 24 h. A request whose key already names a run creates nothing:
it is answered with that run (:class:`IdempotentReplay`), each use case in its own way.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from adapters.base import TriggerPayload
from gateway.errors import ServiceUnavailable, Unprocessable
from gateway.ops import tracing
from gateway.security.apikeys import agent_api_key, derive_agent_api_key
from gateway.security.keyring import key_ring
from gateway.security.tokens import CredentialsTokens
from gateway.settings import Settings
from store import orgs, runs
from store.models import Agent, Run

log = structlog.get_logger(__name__)

# An Idempotency-Key and the fingerprint of the request that sent it.
IdempotencyKey = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Created:
    """The run this request created."""

    run: Run


@dataclass(frozen=True, slots=True)
class IdempotentReplay:
    """The request's Idempotency-Key already names ``run``: that run is the answer, and
    nothing was created."""

    run: Run


Creation = Created | IdempotentReplay


class RunCreation:
    """Creates runs (once per Idempotency-Key) and builds the payload their runtime receives."""

    def __init__(
        self, *, settings: Settings, pool: asyncpg.Pool, tokens: CredentialsTokens
    ) -> None:
        self._settings = settings
        self._ring = key_ring(settings)
        self._pool = pool
        self._tokens = tokens
        # Runs created at about the same moment share one statement.
        self._inserts = runs.RunInserts(pool)

    async def create(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        window_ms: int,
        trigger_kind: str,
        started: bool = False,
    ) -> Run:
        """Insert the run row (already ``running`` when ``started``: the caller invokes the
        runtime at once); the caller's input is merged over the agent's default input."""
        row = await self._row(agent, input_data, user_id, window_ms, trigger_kind, started)
        # One statement, shared with the runs created meanwhile: no transaction to open.
        return await self._inserts.insert(runs.NewRun(**row))

    async def create_once(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        window_ms: int,
        trigger_kind: str,
        idempotency: IdempotencyKey | None,
        started: bool = False,
    ) -> Creation:
        """:meth:`create`, bound to ``idempotency`` when given: a key already bound to a run in
        the last 24 h is answered with that run (:class:`IdempotentReplay`) and nothing is
        created; the same key with a different request is a 422, and a key held by a request
        still creating its run a 503."""
        if idempotency is None:
            return Created(
                await self.create(
                    agent,
                    input_data=input_data,
                    user_id=user_id,
                    window_ms=window_ms,
                    trigger_kind=trigger_kind,
                    started=started,
                )
            )
        row = await self._row(agent, input_data, user_id, window_ms, trigger_kind, started)
        key, request_hash = idempotency
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                run = await runs.insert_run(conn, **row)
                claimed = await runs.claim_idempotency_key(
                    conn, agent_id=agent.id, key=key, request_hash=request_hash, run_id=run.id
                )
            except BaseException:
                await transaction.rollback()
                raise
            if claimed:
                await transaction.commit()
                return Created(run)
            # Another request holds the key: this call creates nothing.
            await transaction.rollback()
        # The holder may have committed a moment ago.
        existing = await self.replay(agent, idempotency)
        if existing is None:
            raise ServiceUnavailable(
                "Idempotency-Key is being used by a request still in progress",
                headers={"Retry-After": "1"},
            )
        return IdempotentReplay(existing)

    async def replay(self, agent: Agent, idempotency: IdempotencyKey | None) -> Run | None:
        """The run that the key names for this agent in the last 24 h, if any.

        The same key sent with a different request is refused (422): it cannot name two runs.
        """
        if idempotency is None:
            return None
        key, request_hash = idempotency
        found = await runs.find_idempotent_run(self._pool, agent_id=agent.id, key=key)
        if found is None:
            return None
        run_id, bound_hash = found
        if bound_hash != request_hash:
            raise Unprocessable(
                "Idempotency-Key was already used with a different request body",
                extra={"runId": run_id},
            )
        return await runs.get_run(self._pool, run_id)

    async def _row(
        self,
        agent: Agent,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        window_ms: int,
        trigger_kind: str,
        started: bool,
    ) -> dict[str, Any]:
        """The arguments of ``store.runs.insert_run`` for a new run."""
        created_by = None
        if user_id is not None and await orgs.is_member(self._pool, agent.org_id, user_id):
            created_by = user_id
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(
            milliseconds=window_ms + agent.running_timeout_ms
        )
        return {
            "agent": agent,
            "input_data": {**agent.default_input, **input_data},
            "created_by": created_by,
            "deadline": deadline,
            "trigger_kind": trigger_kind,
            "started": started,
            # Its callbacks, later and elsewhere, are recorded in the trace the run starts in.
            "trace_parent": tracing.current_traceparent(),
        }

    def trigger_payload(self, agent: Agent, run: Run) -> TriggerPayload:
        """The body a runtime receives for ``run``."""
        created_ms = int(run.created_at.timestamp() * 1000)
        return TriggerPayload(
            run_id=run.id,
            agent_id=agent.id,
            input=run.input,
            agent_api_key=self._agent_api_key(agent),
            callback_url=f"{self._settings.public_base_url}/api/runs/{run.id}/callback",
            # The token lasts while the run may: a long run keeps its credentials to the end.
            credentials_token=self._tokens.issue(
                run.id, at_least_s=run.seconds_to_deadline()
            ).token,
            idempotency_key=f"agent-gateway-run-{run.id}-{created_ms}",
            trace_headers=tracing.outbound_headers(),
        )

    def _agent_api_key(self, agent: Agent) -> str:
        key = agent_api_key(self._ring, agent.api_key_salt, agent.api_key_hash)
        if key is None:
            # Made under a key that was retired: its callbacks will be refused until an
            # operator rotates it (docs/operations.md, "Rotating SECRET_KEY").
            log.error("agent_key_under_retired_secret", agent_id=agent.id)
            return derive_agent_api_key(self._ring.primary, agent.api_key_salt)
        return key
