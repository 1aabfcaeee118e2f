"""The store consumer's own /metrics and /healthz: its lag, what it applied, whether it turns."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.monitor import monitor_app
from gateway.ops import metrics
from gateway.ops.consumer_monitor import ConsumerMonitor
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.run_events import RunEvent
from tests.support.consumers import ConsumerFactory, event_buffer
from tests.support.runtimes import json_agent
from tests.support.tenants import Tenant

Client = TestClient[web.Request, web.Application]
MonitorFactory = Callable[[StoreConsumer], Awaitable[Client]]


@pytest.fixture
async def monitor_of(
    redis_client: aioredis.Redis, db: asyncpg.Pool, settings: Settings
) -> AsyncIterator[MonitorFactory]:
    clients: list[Client] = []

    async def start(consumer: StoreConsumer) -> Client:
        monitor = ConsumerMonitor(consumer, redis_client, db, settings)
        client = TestClient(TestServer(monitor_app(monitor)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def scrape(client: Client) -> dict[str, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        sample.name + "".join(f"[{v}]" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


async def test_the_backlog_shows_buffered_events_and_drops_once_they_are_applied(
    settings: Settings,
    tenant: Tenant,
    runtime: TestServer,
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    make_consumer: ConsumerFactory,
    monitor_of: MonitorFactory,
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=0")
    run_ids = []
    for _ in range(3):
        resp = await tenant.client.post(
            f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth
        )
        run_ids.append((await resp.json())["runId"])
    # Held as a replica holds them while PostgreSQL is away.
    buffer = event_buffer(settings, redis_client)
    for run_id in run_ids:
        await buffer.append(RunEvent(run_id, "cancelled"))
    # A consumer that holds no partition yet: the events wait in the buffer.
    idle = StoreConsumer(redis_client, db, buffer=buffer, name="idle")
    before = await scrape(await monitor_of(idle))

    worker = await make_consumer()
    monitor = await monitor_of(worker)
    for _ in range(200):
        after = await scrape(monitor)
        if after["agent_gateway_store_buffered_events"] == 0:
            break
        await asyncio.sleep(0.05)

    assert before["agent_gateway_store_buffered_events"] == len(run_ids)
    assert before["agent_gateway_store_oldest_event_age_seconds"] >= 0
    assert before["agent_gateway_store_partitions_held"] == 0
    assert after["agent_gateway_store_events_total[applied]"] == len(run_ids)
    assert after["agent_gateway_store_buffered_events"] == 0
    assert after["agent_gateway_store_oldest_event_age_seconds"] == 0
    assert after["agent_gateway_store_partitions_held"] == settings.events_partitions
    assert after["agent_gateway_store_db_pool_max_connections"] == 4
    assert 0 <= after["agent_gateway_store_loop_age_seconds"] < 90
    assert "agent_gateway_store_db_pool_connections[max]" not in after
    assert after["agent_gateway_store_db_pool_connections[in_use]"] >= 0
    # The exposition sorts labels: python, then version.
    build = f"agent_gateway_build_info[{platform.python_version()}][{metrics.installed_version()}]"
    assert after[build] == 1


async def test_healthz_is_ok_while_the_loop_turns_and_503_once_stopping(
    make_consumer: ConsumerFactory, monitor_of: MonitorFactory
) -> None:
    worker = await make_consumer()
    monitor = await monitor_of(worker)

    live = await monitor.get("/healthz")
    body = await live.json()
    worker.stop()
    stopping = await monitor.get("/healthz")

    assert live.status == 200
    assert body["status"] == "ok"
    assert body["consumer"] == worker.name
    assert stopping.status == 503
    assert (await stopping.json())["process"] == "stopping"


async def test_a_stuck_loop_is_reported_unhealthy(
    settings: Settings,
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    monitor_of: MonitorFactory,
) -> None:
    consumer = StoreConsumer(redis_client, db, buffer=event_buffer(settings, redis_client))
    consumer.heartbeat -= 600  # as if its loop had not turned for ten minutes

    resp = await (await monitor_of(consumer)).get("/healthz")

    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"


async def test_a_scrape_says_whether_postgres_and_redis_answer_the_consumer(
    make_consumer: ConsumerFactory, monitor_of: MonitorFactory
) -> None:
    monitor = await monitor_of(await make_consumer())

    samples = await scrape(monitor)

    assert samples["agent_gateway_dependency_up[postgres]"] == 1
    assert samples["agent_gateway_dependency_up[redis]"] == 1
