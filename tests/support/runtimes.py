"""Agents on the fake n8n runtime, and what that runtime was sent."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import CALLBACKS_SENT, RECEIVED
from tests.support.tenants import Tenant


def webhook(runtime: TestServer, path: str) -> dict[str, Any]:
    """An n8n runtime config pointing at the fake runtime's ``/webhook/{path}``."""
    return {
        "kind": "n8n",
        "webhook_url": str(runtime.make_url(f"/webhook/{path}")),
        "headers": {"X-N8N-Auth": "shared-secret"},
    }


def as_agent(agent: dict[str, Any]) -> dict[str, str]:
    """The Authorization header a runtime sends for ``agent`` (its agent API key)."""
    return {"Authorization": f"Bearer {agent['api_key']}"}


async def json_agent(
    tenant: Tenant, runtime: TestServer, path: str, **fields: Any
) -> dict[str, Any]:
    """An eligible JSON agent whose n8n webhook is ``/webhook/{path}`` on the fake runtime."""
    return await tenant.create_agent(output_kind="json", runtime=webhook(runtime, path), **fields)


async def first_invoked_run(runtime: TestServer) -> int:
    """The run id the fake runtime was first invoked for, once it was (bounded)."""
    for _ in range(250):
        if calls := received(runtime):
            run_id: int = calls[0]["payload"]["runId"]
            return run_id
        await asyncio.sleep(0.02)
    raise AssertionError("the runtime was never invoked")


def received(runtime: TestServer) -> list[dict[str, Any]]:
    """What the fake runtime was sent, in order."""
    return runtime.app[RECEIVED]


async def callbacks_answered(runtime: TestServer, count: int) -> list[dict[str, Any]]:
    """The callbacks the fake workflow sent, once ``count`` of them have their answer (bounded).

    A run's end is on its row, and handed to whoever waits, before the callback route sends its
    202: a caller can read the end before the workflow has the answer to its last callback.
    """
    sent: list[dict[str, Any]] = runtime.app[CALLBACKS_SENT]
    for _ in range(500):
        if len(sent) >= count:
            break
        await asyncio.sleep(0.01)
    return sent
