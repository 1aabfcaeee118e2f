"""The pool's acquire is bounded: a saturated pool answers 503 with Retry-After, never hangs."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestServer

from gateway.http.app_keys import DB_POOL
from store.consumer import StoreConsumer
from store.pool import create_pool
from tests.support.backends import Backends
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import json_agent
from tests.support.tenants import TenantFactory


async def test_a_query_on_a_full_pool_gives_up_after_the_acquire_timeout(
    backends: Backends,
) -> None:
    pool = await create_pool(backends.database_url, min_size=1, max_size=1, acquire_timeout_s=0.3)
    try:
        async with pool.acquire() as held:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")
            assert time.monotonic() - started < 2
            assert await held.fetchval("SELECT 1") == 1
        # Given back, the connection serves the next query.
        assert await pool.fetchval("SELECT 2") == 2
    finally:
        await pool.close()


async def test_a_saturated_pool_answers_503_with_retry_after_within_the_setting(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(
        db_pool_min_size=1, db_pool_max_size=1, db_pool_acquire_timeout_s=0.5
    )
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={}
    )
    assert resp.status == 202
    run_url = f"/api/agents/{agent['id']}/runs/{(await resp.json())['runId']}"
    assert (await tenant.client.get(run_url, headers=tenant.auth)).status == 200

    pool = tenant.client.app[DB_POOL]
    async with pool.acquire():
        started = time.monotonic()
        refused = await asyncio.wait_for(
            tenant.client.get(run_url, headers=tenant.auth), timeout=10
        )
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 3
    assert (await tenant.client.get(run_url, headers=tenant.auth)).status == 200
