"""Readiness: whether this replica should receive traffic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis

_PROBE_TIMEOUT_S = 1.0


@dataclass(slots=True)
class Lifecycle:
    """Process state the readiness probe reports, and the requests a drain waits for.

    ``draining`` is set when SIGTERM arrives; ``cancelling`` once the drain timeout has passed
    and the requests still in flight are being cancelled (so that they can say why).
    """

    draining: bool = False
    cancelling: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    def request_started(self) -> None:
        """A request reached the application."""
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        """A request's handler returned (or was cancelled)."""
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; ``False`` if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


async def readiness(
    pool: asyncpg.Pool, redis: aioredis.Redis, lifecycle: Lifecycle
) -> dict[str, str]:
    """``{"postgres": "ok"|reason, "redis": ..., "process": ...}``, probed concurrently."""

    async def postgres() -> str:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await pool.fetchval("SELECT 1")
        return "ok"

    async def redis_ping() -> str:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await redis.ping()
        return "ok"

    results = await asyncio.gather(postgres(), redis_ping(), return_exceptions=True)
    checks = {
        name: result if isinstance(result, str) else f"unavailable: {type(result).__name__}"
        for name, result in zip(("postgres", "redis"), results, strict=True)
    }
    checks["process"] = "draining" if lifecycle.draining else "ok"
    return checks
