"""Outbound connections to one runtime host are bounded per replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.tenants import TenantFactory


@dataclass
class Busy:
    """How many calls the slow runtime holds at once, and the most it ever held."""

    now: int = 0
    peak: int = 0


@pytest.fixture
async def slow_runtime() -> AsyncIterator[tuple[TestServer, Busy]]:
    """A runtime that takes 0.3 s over each call and answers a JSON result."""
    busy = Busy()

    async def answer(request: web.Request) -> web.Response:
        busy.now += 1
        busy.peak = max(busy.peak, busy.now)
        try:
            await asyncio.sleep(0.3)
        finally:
            busy.now -= 1
        return web.json_response({"answer": 42})

    app = web.Application()
    app.router.add_post("/webhook/slow", answer)
    server = TestServer(app)
    await server.start_server()
    yield server, busy
    await server.close()


async def test_calls_past_the_per_host_bound_wait_for_a_connection_and_still_complete(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    slow_runtime: tuple[TestServer, Busy],
    consumer: StoreConsumer,
) -> None:
    runtime, busy = slow_runtime
    tenant = await make_tenant()
    tenant.client = await make_gateway(runtime_max_connections_per_host=1)
    agent = await tenant.create_agent(
        output_kind="json",
        runtime={"kind": "n8n", "webhook_url": str(runtime.make_url("/webhook/slow"))},
    )

    answers = await asyncio.gather(
        *(
            tenant.client.post(
                f"/api/agents/{agent['id']}/runs/trigger-and-wait",
                headers=tenant.auth,
                json={"timeoutMs": 20000},
            )
            for _ in range(3)
        )
    )

    assert [a.status for a in answers] == [200, 200, 200]
    assert busy.peak == 1
