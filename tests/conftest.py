"""Shared fixtures: a real PostgreSQL and a real Redis for the session, and factories.

Both servers are started by the test session itself from the embedded wheels, unless
``DATABASE_URL`` and ``REDIS_URL`` point at servers to use instead. With ``TEST_REDIS=cluster``
the session starts a three-primary Redis Cluster instead of one Redis (or, with ``REDIS_URL``,
``REDIS_CLUSTER=true`` says that it names a cluster node), and every client and every gateway
the tests build uses cluster mode (``Backends.redis``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster, free_port
from devkit.fakes.n8n import create_fake_runtime
from devkit.fakes.trigger_dev import create_fake_trigger_dev
from gateway.http.app import create_app
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.migrate import migrate_url
from store.pool import create_pool
from store.redis_client import RedisClient
from tests.support.backends import Backends, wants_cluster
from tests.support.consumers import ConsumerFactory, event_buffer
from tests.support.gateways import GatewayFactory
from tests.support.processes import Processes
from tests.support.tenants import Tenant, TenantFactory, new_tenant
from tests.support.tokens import ADMIN_TOKEN, SECRET_KEY

# The as-deployed check runs the image's containers (scripts/as-deployed.sh builds it and sets
# AS_DEPLOYED); the ordinary suite leaves it out.
collect_ignore = [] if os.environ.get("AS_DEPLOYED") else ["as_deployed"]


@pytest.fixture(autouse=True)
def _heap_unfrozen() -> Iterator[None]:
    """A test that starts a gateway or a store consumer in this process freezes the heap and
    sets the collector's thresholds (gateway/ops/heap.py); after it, the session's heap goes
    back to the collector, on the session's thresholds."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Real PostgreSQL and Redis for the whole session (migrated once)."""
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    cluster = wants_cluster()
    started: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedRedisCluster] = []
    root = Path(tmp_path_factory.mktemp("backends"))
    try:
        if not database_url:
            pg = EmbeddedPostgres(root / "postgres", durable=False)
            started.append(pg)
            database_url = pg.start()
        if not redis_url:
            rd = EmbeddedRedisCluster(root / "redis") if cluster else EmbeddedRedis(root / "redis")
            started.append(rd)
            redis_url = rd.start()
        asyncio.run(migrate_url(database_url))
        yield Backends(database_url, redis_url, redis_cluster=cluster)
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def settings(backends: Backends, tmp_path: Path) -> Settings:
    """Gateway settings for one test; its own event stream keeps tests apart."""
    return Settings(
        blob_dir=str(tmp_path / "blobs"),
        database_url=backends.database_url,
        redis_url=backends.redis_url,
        redis_cluster=backends.redis_cluster,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        events_stream=f"test:events:{uuid.uuid4().hex}",
        stream_idle_timeout_s=5.0,
        drain_timeout_s=5.0,
        # Every test calls from 127.0.0.1: refused keys must not add up to a lock-out across
        # tests (tests/resilience/ tries the guard with its own addresses and limits).
        auth_failure_limit=1_000_000,
        # Trigger.dev runs are polled here; tests of the realtime feed turn it on
        # (tests/runs/test_trigger_dev_realtime.py).
        trigger_dev_realtime=False,
    )


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Children of the test (``serve``, ``consume``…), killed by their PIDs at the end."""
    children = Processes()
    yield children
    children.stop_all()


@pytest.fixture
async def db(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    """A pool for looking at rows directly."""
    pool = await create_pool(backends.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def redis_client(backends: Backends) -> AsyncIterator[RedisClient]:
    """A Redis client for looking at keys and streams directly (a cluster's, on a cluster)."""
    client = backends.redis()
    yield client
    await client.aclose()


@pytest.fixture
async def make_gateway(
    settings: Settings,
) -> AsyncIterator[GatewayFactory]:
    """Start gateway replicas (real sockets) sharing the test's PostgreSQL and Redis."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        # A known port, so that the callback URLs in trigger payloads reach this replica.
        port = free_port()
        overrides.setdefault("public_base_url", f"http://127.0.0.1:{port}")
        app = create_app(dataclasses.replace(settings, **overrides))
        client = TestClient(TestServer(app, host="127.0.0.1", port=port))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[web.Request, web.Application]:
    """One gateway replica."""
    return await make_gateway()


@pytest.fixture
async def runtime() -> AsyncIterator[TestServer]:
    """The fake n8n runtime on a real local socket."""
    server = TestServer(create_fake_runtime())
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def trigger_dev() -> AsyncIterator[TestServer]:
    """The fake Trigger.dev API on a real local socket."""
    server = TestServer(create_fake_trigger_dev())
    # A realtime request the fake still holds at the end (up to its 20 s live timeout) is not
    # waited for: whoever made it is gone with the test.
    await server.start_server(shutdown_timeout=0.5)
    yield server
    await server.close()


@pytest.fixture
async def make_consumer(settings: Settings, backends: Backends) -> AsyncIterator[ConsumerFactory]:
    """Start store consumers (with any ``StoreConsumer`` option) for the test's event stream."""
    redis = backends.redis()
    pool = await create_pool(backends.database_url, min_size=1, max_size=2)
    running: list[tuple[StoreConsumer, asyncio.Task[None]]] = []

    async def start(**options: Any) -> StoreConsumer:
        options.setdefault("name", f"test-consumer-{len(running)}")
        options.setdefault("poll_ms", 50)
        worker = StoreConsumer(redis, pool, buffer=event_buffer(settings, redis), **options)
        running.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, _task in running:
        worker.stop()
    await asyncio.wait_for(asyncio.gather(*(task for _w, task in running)), 10)
    await pool.close()
    await redis.aclose()


@pytest.fixture
async def consumer(make_consumer: ConsumerFactory) -> StoreConsumer:
    """The store consumer, running for the duration of the test."""
    return await make_consumer()


@pytest.fixture
def make_tenant(gateway: TestClient[web.Request, web.Application]) -> TenantFactory:
    """Create organisations with ingest keys through the admin API."""

    async def create(name: str = "Acme") -> Tenant:
        return await new_tenant(gateway, name)

    return create


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    """One organisation with an ingest key."""
    return await make_tenant()


# In CI every test must run: a test that cannot run there (nginx missing, say) fails the run
# instead of skipping. Elsewhere a skip names what is missing and how to get it.
_IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a skipped test is reported as a failure, with its skip reason."""
    outcome = yield
    report = outcome.get_result()
    if _IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (every test must run in CI): {reason}"
