"""What PostgreSQL and Redis look like from this process, apart from readiness.

A replica keeps serving while Redis is away (rate limits fail open, run events go straight to
PostgreSQL) and answers its own JSON 503 with ``Retry-After`` while PostgreSQL is; taking it out
of the load balancer for either would only replace those answers with the balancer's HTML 503
on every replica at once. So readiness (``gateway.ops.drain``) does not look at them: their
state is reported here, on ``/healthz/dependencies`` and as ``agent_gateway_dependency_up``,
for people and alerts, never for a probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from store.redis_client import RedisClient

log = structlog.get_logger(__name__)

# One answer is awaited this long; a dependency slower than that is as good as down to a request.
PROBE_TIMEOUT_S = 1.0


class Dependency(StrEnum):
    """The services a replica calls on every request path."""

    POSTGRES = "postgres"
    REDIS = "redis"


UP = "ok"


class DependencyMonitor:
    """Probes each dependency on demand (or every few seconds: :meth:`run`); remembers the last
    answer.

    ``on_probe`` is told every probe's outcome (the metrics gauge); a change of state is logged
    once, so an outage shows as one line when it starts and one when it ends.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        *,
        on_probe: Callable[[Dependency, bool], None] = lambda _dependency, _up: None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._on_probe = on_probe
        self.state: dict[Dependency, str] = {}

    async def probe(self) -> dict[Dependency, str]:
        """Ask every dependency at once: ``ok``, or ``unavailable: <error type>``."""

        async def postgres() -> None:
            await self._pool.fetchval("SELECT 1")

        async def redis() -> None:
            await self._redis.ping()

        checks = {Dependency.POSTGRES: postgres, Dependency.REDIS: redis}
        results = await asyncio.gather(
            *(_bounded(check()) for check in checks.values()), return_exceptions=True
        )
        state: dict[Dependency, str] = {}
        for dependency, result in zip(checks, results, strict=True):
            state[dependency] = (
                UP if result is None else f"unavailable: {type(result).__name__}"
            )
            up = state[dependency] == UP
            self._on_probe(dependency, up)
            # Unknown counts as up: a replica that starts healthy logs nothing.
            was_up = self.state.get(dependency, UP) == UP
            if up != was_up:
                if up:
                    log.info("dependency_up", dependency=dependency.value)
                else:
                    log.warning(
                        "dependency_down", dependency=dependency.value, state=state[dependency]
                    )
        self.state = state
        return state

    async def run(self, interval_s: float) -> None:
        """Probe every ``interval_s`` until cancelled."""
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)


async def _bounded(check: Coroutine[Any, Any, None]) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        await check
