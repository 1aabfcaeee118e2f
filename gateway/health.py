"""Readiness: whether this replica should receive traffic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

_PROBE_TIMEOUT_S = 1.0


@dataclass(slots=True)
class Lifecycle:
    """Process state the readiness probe reports; ``draining`` is set on shutdown."""

    draining: bool = False


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
