"""The drain, in process: what a stop does to runs whose runtime has not answered yet. A held
wait cut by the drain fails its run with the reason (its caller saw the cut); an async trigger,
or a wait whose caller had already left, is handed on, never failed by the stop. (tests/e2e/
test_drain.py drives a real process with real downloads.)"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devkit.embedded import free_port
from gateway.http import app as gateway_app
from gateway.http.app import create_app
from gateway.http.app_keys import LIFECYCLE
from gateway.http.server import GatewayServer
from gateway.settings import Settings
from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import first_invoked_run, received, webhook
from tests.support.tokens import ADMIN

# A webhook that holds its call open for a minute before answering (n8n's "respond when the
# last node finishes" with a slow workflow).
HELD_OPEN = "json?delay_ms=60000"


@dataclasses.dataclass
class Stoppable:
    """A replica served as ``serve`` serves it, stopped by the test with :meth:`drain`."""

    server: GatewayServer
    base: str
    http: aiohttp.ClientSession

    async def agent(self, runtime: TestServer, path: str) -> dict[str, Any]:
        """A new organisation with a JSON agent on the fake runtime's ``/webhook/{path}``:
        the agent's fields, and ``auth`` (its ingest key's header)."""
        org = await (
            await self.http.post(f"{self.base}/admin/orgs", json={"name": "D"}, headers=ADMIN)
        ).json()
        key = await (
            await self.http.post(f"{self.base}/admin/orgs/{org['id']}/keys", headers=ADMIN)
        ).json()
        agent: dict[str, Any] = await (
            await self.http.post(
                f"{self.base}/admin/orgs/{org['id']}/agents",
                json={"name": "slow", "output_kind": "json", "runtime": webhook(runtime, path)},
                headers=ADMIN,
            )
        ).json()
        agent["auth"] = {"Authorization": f"Bearer {key['key']}"}
        return agent

    def post(self, agent: dict[str, Any], route: str, body: dict[str, Any]) -> Awaitable[Any]:
        """``POST /api/agents/{id}/runs/{route}`` as the agent's organisation."""
        return self.http.post(
            f"{self.base}/api/agents/{agent['id']}/runs/{route}", json=body, headers=agent["auth"]
        )


@pytest.fixture
async def stoppable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stoppable]:
    """A replica whose drain cancels what is still running after half a second."""
    # The shutdown's bound on background work, shortened so the test does not wait it out.
    monkeypatch.setattr(gateway_app, "_BACKGROUND_DRAIN_S", 0.5)
    port = free_port()
    settings = dataclasses.replace(
        settings,
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        drain_pre_stop_s=0,
        drain_timeout_s=0.5,
    )
    server = GatewayServer(create_app(settings), settings)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Stoppable(server, f"http://127.0.0.1:{port}", http)
    finally:
        await server.close()


async def run_row(
    db: asyncpg.Pool, run_id: int, *, until: Callable[[asyncpg.Record], bool]
) -> asyncpg.Record:
    """The run's row once ``until`` holds for it (bounded)."""
    for _ in range(200):
        row = await db.fetchrow("SELECT status, error, output_data FROM runs WHERE id = $1", run_id)
        if until(row):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never got there: {row}")


async def dropped(runtime: TestServer) -> None:
    """Return once the fake runtime saw its first call dropped by the gateway (bounded)."""
    for _ in range(200):
        if received(runtime)[0]["outcome"] == "disconnected":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the runtime's call was never dropped")


async def gone(stoppable: Stoppable) -> None:
    """Return once the replica has no request in flight: it saw its caller leave (bounded)."""
    lifecycle = stoppable.server.app[LIFECYCLE]
    for _ in range(200):
        if lifecycle.in_flight == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica never saw its caller leave")


async def complete_by_callback(
    replica: TestClient[web.Request, web.Application], agent: dict[str, Any], run_id: int
) -> int:
    """The runtime reports the run's end to another replica, as its workflow would; the
    answer's status."""
    resp = await replica.post(
        f"/api/runs/{run_id}/callback",
        json={"type": "output", "complete": True, "output": {"answer": 42}},
        headers={"Authorization": f"Bearer {agent['api_key']}"},
    )
    return resp.status


async def completed_elsewhere(
    make_gateway: GatewayFactory, agent: dict[str, Any], run_id: int, db: asyncpg.Pool
) -> asyncpg.Record:
    """The run handed on by the stop, once the runtime's callback to another replica (answered
    202) has ended it: its row."""
    other = await make_gateway()
    assert await complete_by_callback(other, agent, run_id) == 202
    return await run_row(db, run_id, until=lambda row: row["status"] != "running")


async def test_a_held_wait_cut_by_the_drain_fails_its_run_with_the_reason(
    stoppable: Stoppable, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await stoppable.agent(runtime, HELD_OPEN)
    waiting = asyncio.create_task(stoppable.post(agent, "trigger-and-wait", {"timeoutMs": 120_000}))
    run_id = await first_invoked_run(runtime)

    await stoppable.server.drain()

    with pytest.raises(aiohttp.ClientConnectionError):
        await waiting
    row = await run_row(db, run_id, until=lambda row: row["status"] == "failed")
    assert row["error"] == "The gateway shut down before the runtime answered"


async def test_an_async_trigger_whose_webhook_is_open_at_the_stop_is_handed_on_not_failed(
    stoppable: Stoppable,
    make_gateway: GatewayFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    """The replica stops while the runtime still holds the webhook call of a run triggered on
    it: the call is dropped, the run stays running, and the runtime's callback, to another
    replica, completes it."""
    agent = await stoppable.agent(runtime, HELD_OPEN)
    resp = await stoppable.post(agent, "trigger", {})
    assert resp.status == 202
    run_id = (await resp.json())["runId"]
    assert await first_invoked_run(runtime) == run_id

    await stoppable.server.drain()
    await dropped(runtime)

    row = await completed_elsewhere(make_gateway, agent, run_id, db)
    assert (row["status"], row["error"], row["output_data"]) == ("completed", None, {"answer": 42})


async def test_a_wait_whose_caller_left_before_the_stop_is_handed_on_not_failed(
    stoppable: Stoppable,
    make_gateway: GatewayFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    """A trigger-and-wait's caller hangs up: the run goes on without it, as a trigger's does.
    Then the replica stops with the webhook still open: the run is handed on, and completed by
    the runtime's callback."""
    agent = await stoppable.agent(runtime, HELD_OPEN)
    waiting = asyncio.create_task(stoppable.post(agent, "trigger-and-wait", {"timeoutMs": 120_000}))
    run_id = await first_invoked_run(runtime)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await gone(stoppable)

    await stoppable.server.drain()
    await dropped(runtime)

    row = await completed_elsewhere(make_gateway, agent, run_id, db)
    assert (row["status"], row["error"], row["output_data"]) == ("completed", None, {"answer": 42})
