"""Runs as a caller sees them: trigger-and-wait's endpoint, run keys and timestamps, polling."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from tests.support.tenants import Tenant

# The keys of a run as trigger-and-wait's 200 and the poll target show it.
RUN_KEYS = frozenset(
    {
        "runId",
        "agentId",
        "status",
        "output_data",
        "outputs",
        "error",
        "duration_ms",
        "started_at",
        "completed_at",
        "created_at",
    }
)


def wait_url(agent_id: int | str) -> str:
    """Trigger-and-wait's endpoint for an agent."""
    return f"/api/agents/{agent_id}/runs/trigger-and-wait"


def parse_time(value: str) -> dt.datetime:
    """A run timestamp as the API prints it (ISO 8601, UTC, ``Z``)."""
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value[:-1] + "+00:00")


async def wait_for_run(
    tenant: Tenant, agent_id: int, run_id: int, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the run until it is terminal, as a caller would (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await tenant.client.get(f"/api/agents/{agent_id}/runs/{run_id}", headers=tenant.auth)
        assert resp.status == 200, await resp.text()
        run: dict[str, Any] = await resp.json()
        if run["status"] in {"completed", "failed", "cancelled"}:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")
        await asyncio.sleep(0.05)
