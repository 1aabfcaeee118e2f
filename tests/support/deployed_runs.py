"""Reading runs of the as-deployed tree as a caller does (``GET /api/agents/{id}/runs/{runId}``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from store.enums import TERMINAL_STATUSES

# The run statuses that end a run, as the store declares them (StrEnum: equal to the JSON).
TERMINAL = TERMINAL_STATUSES


async def get_run(
    http: aiohttp.ClientSession, base: str, auth: dict[str, str], agent_id: int, run_id: int
) -> dict[str, Any]:
    """The run as ``GET /api/agents/{agentId}/runs/{runId}`` answers it."""
    async with http.get(f"{base}/api/agents/{agent_id}/runs/{run_id}", headers=auth) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def wait_terminal(
    http: aiohttp.ClientSession,
    base: str,
    auth: dict[str, str],
    agent_id: int,
    run_id: int,
    *,
    polls: int = 120,
    every_s: float = 0.25,
) -> dict[str, Any]:
    """The run once it has ended, polled a bounded number of times (the last answer if not)."""
    run = await get_run(http, base, auth, agent_id, run_id)
    for _ in range(polls):
        if run["status"] in TERMINAL:
            break
        await asyncio.sleep(every_s)
        run = await get_run(http, base, auth, agent_id, run_id)
    return run
