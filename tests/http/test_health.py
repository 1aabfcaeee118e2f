"""Probes for the load balancer, and what a replica does when Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from gateway.http import app as gateway_app
from gateway.http.app_keys import DB_POOL, REDIS
from store.redis_client import RedisClient
from tests.support.databases import every_connection_held
from tests.support.dependencies import changes
from tests.support.gateways import GatewayFactory
from tests.support.polling import until
from tests.support.prometheus import metric_sum
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_healthy_replica_is_live_and_ready(make_gateway: GatewayFactory) -> None:
    client = await make_gateway()

    live = await client.get("/healthz")
    ready = await client.get("/readyz")
    dependencies = await client.get("/healthz/dependencies")

    assert live.status == 200
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"process": "ok", "database_pool": "open"},
    }
    assert dependencies.status == 200
    assert await dependencies.json() == {
        "status": "ok",
        "dependencies": {"postgres": "ok", "redis": "ok"},
    }
    metrics = await (await client.get("/metrics")).text()
    assert metric_sum(metrics, "agent_gateway_dependency_up", dependency="postgres") == 1
    assert metric_sum(metrics, "agent_gateway_dependency_up", dependency="redis") == 1


async def test_a_replica_whose_requests_hold_every_pooled_connection_says_postgres_is_ok(
    make_gateway: GatewayFactory,
) -> None:
    """A burst of thousands of calls holds every connection of the request pool for seconds:
    PostgreSQL is busy serving them, not away, and a dependency page that said otherwise would
    page people. The probe asks on a connection of its own."""
    client = await make_gateway(db_pool_min_size=1, db_pool_max_size=3)
    pool = client.app[DB_POOL]

    with capture_logs() as logs:
        async with every_connection_held(pool):
            # No connection is left for a request: it would wait for one, then give up.
            with pytest.raises(TimeoutError):
                async with pool.acquire(timeout=0.1):
                    pass
            dependencies = await client.get("/healthz/dependencies")
            body = await dependencies.json()
            metrics = await (await client.get("/metrics")).text()

    assert dependencies.status == 200
    assert body == {"status": "ok", "dependencies": {"postgres": "ok", "redis": "ok"}}
    assert metric_sum(metrics, "agent_gateway_dependency_up", dependency="postgres") == 1
    assert changes(logs) == []


async def _refused(redis: RedisClient) -> bool:
    """Whether a command finds no connection free."""
    try:
        await redis.llen("nobody-pushes")
    except RedisConnectionError:
        return True
    return False


async def test_a_replica_whose_requests_hold_every_redis_connection_says_redis_is_ok(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same burst holds every connection of the replica's Redis client: Redis is serving
    it. The probe pings on a client of its own."""
    monkeypatch.setattr(gateway_app, "_REDIS_CONNECTIONS", 2)
    monkeypatch.setattr(gateway_app, "_REDIS_CLUSTER_NODE_CONNECTIONS", 2)
    monkeypatch.setattr(gateway_app, "_REDIS_CONNECTION_WAIT_S", 0.2)
    client = await make_gateway()
    redis = client.app[REDIS]
    # Two commands that hold their connection until cancelled (a list nobody pushes to).
    holding = [asyncio.create_task(redis.blpop(["nobody-pushes"], timeout=0)) for _ in range(2)]

    try:
        with capture_logs() as logs:
            # Once both hold theirs, no connection is left for a request's command: it waits
            # for one, then gives up.
            await until(lambda: _refused(redis), bound_s=5.0)
            with pytest.raises(RedisConnectionError):
                await redis.llen("nobody-pushes")
            dependencies = await client.get("/healthz/dependencies")
            body = await dependencies.json()
            metrics = await (await client.get("/metrics")).text()
    finally:
        for task in holding:
            task.cancel()
        for task in holding:
            with contextlib.suppress(asyncio.CancelledError, RedisConnectionError):
                await task

    assert dependencies.status == 200
    assert body == {"status": "ok", "dependencies": {"postgres": "ok", "redis": "ok"}}
    assert metric_sum(metrics, "agent_gateway_dependency_up", dependency="redis") == 1
    assert changes(logs) == []


async def test_a_replica_without_redis_stays_ready_and_says_redis_is_down(
    make_gateway: GatewayFactory,
) -> None:
    """Every replica loses Redis at once; taking them all out of the balancer would turn the
    answers they can still give (limits fail open, events go to PostgreSQL) into its 503."""
    client = await make_gateway(redis_url=f"redis://127.0.0.1:{closed_port()}/0")

    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200

    dependencies = await client.get("/healthz/dependencies")
    assert dependencies.status == 503
    body: dict[str, Any] = await dependencies.json()
    assert body["status"] == "degraded"
    assert body["dependencies"]["redis"].startswith("unavailable")
    assert body["dependencies"]["postgres"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    # Present and 0, not merely absent.
    assert 'agent_gateway_dependency_up{dependency="redis"} 0.0' in metrics.splitlines()
    assert metric_sum(metrics, "agent_gateway_dependency_up", dependency="postgres") == 1


async def test_without_redis_a_download_still_works_and_its_run_is_recorded(
    make_gateway: GatewayFactory, runtime: TestServer
) -> None:
    """Rate limiting fails open (the default) and events go straight to PostgreSQL."""
    client = await make_gateway(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    org = await (await client.post("/admin/orgs", json={"name": "x"}, headers=ADMIN)).json()
    key = await (await client.post(f"/admin/orgs/{org['id']}/keys", headers=ADMIN)).json()
    tenant = Tenant(org["id"], key["key"], client)
    agent = await tenant.create_agent(
        runtime={
            "kind": "n8n",
            "webhook_url": str(runtime.make_url("/webhook/report.pdf?outputs=1")),
        }
    )

    resp = await client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    assert resp.status == 200
    body = await resp.read()

    run = await (
        await client.get(
            f"/api/agents/{agent['id']}/runs/{resp.headers['X-Run-Id']}", headers=tenant.auth
        )
    ).json()
    assert run["status"] == "completed"
    assert run["output_data"]["sizeBytes"] == len(body)
    assert run["outputs"] == 1
