"""Finding what a run request names: the agent, its runtime's adapter, a run, and whether the
agent may be run from outside at all.

Every use case (trigger, trigger-and-wait, trigger-and-download, execute, register) starts
here; none of it changes anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping

import asyncpg

from adapters.base import RuntimeAdapter
from gateway.errors import Conflict, Forbidden, NotFound, Unprocessable
from gateway.settings import Settings
from store import runs
from store.enums import AgentStatus, ManagedBy, OutputKind
from store.lookup_cache import LookupCache
from store.models import Agent, Run


class RunLookups:
    """Reads agents and runs for the run use cases, and says which agents may run."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        adapters: Mapping[str, RuntimeAdapter],
        cache: LookupCache | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._adapters = adapters
        # Agent rows, read through the process's cache (uncached when none is given).
        self.cache = cache or LookupCache(pool)

    async def agent_for(self, org_id: uuid.UUID, agent_id: int) -> Agent:
        """The agent, if it belongs to ``org_id``; otherwise 404 (never reveal it exists)."""
        agent = await self.cache.agent_in_org(agent_id, org_id)
        if agent is None:
            raise NotFound("Agent not found")
        return agent

    async def get_run(self, org_id: uuid.UUID, agent_id: int, run_id: int) -> Run:
        """A run of one of the organisation's agents; 404 otherwise."""
        await self.agent_for(org_id, agent_id)
        run = await runs.get_run_of_agent(self._pool, agent_id, run_id)
        if run is None:
            raise NotFound("Run not found")
        return run

    def check_eligible(self, agent: Agent, *, output_kinds: Collection[str]) -> None:
        """Raise 403/422 unless ``agent`` may be triggered from outside for this kind of run."""
        if not agent.allow_external_triggers:
            raise Forbidden(
                "External triggers are disabled for this agent (allow_external_triggers is off)"
            )
        problems = platform_problems(agent)
        if agent.output_kind not in output_kinds:
            if agent.output_kind == OutputKind.FILE_DOWNLOAD:
                problems.append("output_kind is 'file_download': use trigger-and-download")
            else:
                allowed = "' or '".join(sorted(output_kinds))
                problems.append(f"output_kind is '{agent.output_kind}', not '{allowed}'")
        if problems:
            raise Unprocessable("Agent is not eligible for this endpoint: " + "; ".join(problems))

    def wait_window_ms(self, agent: Agent, timeout_ms: float | None) -> int:
        """``min(timeoutMs or default, agent.running_timeout_ms, hard ceiling)``."""
        asked = self._settings.default_wait_ms if timeout_ms is None else timeout_ms
        return max(1, int(min(asked, agent.running_timeout_ms, self._settings.hard_ceiling_ms)))

    def adapter_for(self, agent: Agent) -> RuntimeAdapter:
        """The adapter of the agent's runtime kind; 422 when no adapter serves it."""
        adapter = self._adapters.get(str(agent.runtime.get("kind")))
        if adapter is None:
            raise Unprocessable(
                f"Agent runtime kind {agent.runtime.get('kind')!r} is not supported"
            )
        return adapter


def platform_problems(agent: Agent, *, standalone_hint: str = "") -> list[str]:
    """Why ``agent`` cannot take runs the platform drives (none when it can): it must be
    platform-managed and active. ``standalone_hint`` follows the managed_by problem."""
    problems = []
    if agent.managed_by != ManagedBy.PLATFORM:
        problems.append(f"managed_by is '{agent.managed_by}', not 'platform'{standalone_hint}")
    if agent.status != AgentStatus.ACTIVE:
        problems.append(f"status is '{agent.status}', not 'active'")
    return problems


async def already_ended(pool: asyncpg.Pool, run: Run, *, changed: str | None = None) -> Conflict:
    """The 409 for a request a run refused because it has ended, naming the status the run
    ended in (read now: it may have ended a moment ago) and, with ``changed``, what the
    request changed (nothing)."""
    status = (await runs.current(pool, run)).status
    message = f"Run has already ended ({status})"
    if changed is not None:
        message += f"; the {changed} changed nothing"
    return Conflict(message, extra={"runId": run.id, "status": status})
