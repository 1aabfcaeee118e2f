"""PostgreSQL goes away and comes back: new requests get a prompt 503 with Retry-After, files
already streaming finish, and the pool recovers without a restart."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devkit.embedded import EmbeddedPostgres
from devkit.fakes.n8n import make_bytes
from gateway.http.middleware import errors_to_json, request_context
from gateway.ops.dependencies import Dependency, DependencyMonitor
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.pool import create_pool
from tests.support.backends import Backends
from tests.support.consumers import event_buffer
from tests.support.dependencies import assert_one_outage_of, probed_through_an_outage
from tests.support.live_gateways import Caller, Live, LiveFactory

MB = 1024 * 1024
FILE_SIZE = 8 * MB
OUTAGE_S = 2.0


@pytest.fixture
async def store_consumer(
    dedicated_postgres: EmbeddedPostgres, backends: Backends, settings: Settings
) -> AsyncIterator[StoreConsumer]:
    """A store consumer with the production lease, on the dedicated PostgreSQL and the
    session's Redis, draining the test's event buffer."""
    redis = aioredis.Redis.from_url(backends.redis_url)
    pool = await create_pool(dedicated_postgres.url, min_size=1, max_size=2)
    worker = StoreConsumer(redis, pool, buffer=event_buffer(settings, redis), poll_ms=100)
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, 10)
    await pool.close()
    await redis.aclose()


async def _download(live: Live, caller: Caller, agent_id: int, flowing: list[int]) -> bytes:
    async with live.http.post(
        live.url(f"/api/agents/{agent_id}/runs/trigger-and-download"), headers=caller.auth
    ) as resp:
        assert resp.status == 200
        flowing.append(int(resp.headers["X-Run-Id"]))
        return await resp.read()


async def test_postgresql_going_away_is_a_prompt_503_and_the_pool_recovers(
    dedicated_postgres: EmbeddedPostgres,
    store_consumer: StoreConsumer,
    make_live: LiveFactory,
    runtime: TestServer,
) -> None:
    live = await make_live(
        database_url=dedicated_postgres.url,
        sync_rate_limit=100_000,
        trigger_rate_limit=100_000,
        wait_recheck_s=0.5,
    )
    caller = await live.caller()
    # 8 MiB, 256 KiB every 60 ms: about two seconds of streaming each.
    files = await live.agent(
        caller, str(runtime.make_url(f"/webhook/bytes?size={FILE_SIZE}&pace_ms=60"))
    )
    quick = await live.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")
    loop = asyncio.get_running_loop()

    flowing: list[int] = []
    downloads = [
        asyncio.create_task(_download(live, caller, files["id"], flowing)) for _ in range(3)
    ]
    while len(flowing) < 3:
        await asyncio.sleep(0.01)

    await asyncio.to_thread(dedicated_postgres.stop)
    down_at = loop.time()
    refused: list[tuple[str, int, str | None, float]] = []
    requests = [
        ("POST", f"/api/agents/{quick['id']}/runs/trigger"),
        ("POST", f"/api/agents/{quick['id']}/runs/trigger-and-wait"),
        ("POST", f"/api/agents/{files['id']}/runs/trigger-and-download"),
        ("GET", f"/api/agents/{quick['id']}/runs/1"),
        ("POST", f"/api/workflows/{quick['id']}/execute"),
    ]
    while loop.time() - down_at < OUTAGE_S:
        for method, path in requests:
            started = loop.time()
            async with live.http.request(
                method,
                live.url(path),
                json={},
                headers={**caller.auth, "X-API-Key": caller.key},
            ) as resp:
                body = await resp.json()
                refused.append(
                    (path, resp.status, resp.headers.get("Retry-After"), loop.time() - started)
                )
                assert resp.status == 503, (path, resp.status, body)
                assert body["error"]
        await asyncio.sleep(0.05)
    # The replica stays in the balancer: its JSON 503s are the answers callers should get.
    async with live.http.get(live.url("/readyz")) as resp:
        assert resp.status == 200
    async with live.http.get(live.url("/healthz/dependencies")) as resp:
        assert resp.status == 503
        assert (await resp.json())["dependencies"]["postgres"].startswith("unavailable")

    # The files that were flowing when PostgreSQL left arrive whole.
    bodies = await asyncio.gather(*downloads)
    whole = hashlib.sha256(make_bytes(FILE_SIZE)).digest()
    assert all(hashlib.sha256(body).digest() == whole for body in bodies)

    await asyncio.to_thread(dedicated_postgres.start)
    up_at = loop.time()
    # The pool recovers by itself: the first requests may still meet a dead connection.
    statuses: list[int] = []
    while loop.time() - up_at < 10:
        async with live.http.post(
            live.url(f"/api/agents/{quick['id']}/runs/trigger"), headers=caller.auth
        ) as resp:
            statuses.append(resp.status)
            if resp.status == 202:
                break
        await asyncio.sleep(0.1)
    recovered_s = loop.time() - up_at
    assert statuses[-1] == 202, statuses
    for _ in range(10):
        async with live.http.post(
            live.url(f"/api/agents/{quick['id']}/runs/trigger-and-wait"), headers=caller.auth
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "completed"
    async with live.http.get(live.url("/readyz")) as resp:
        assert resp.status == 200

    # The runs of the files sent during the outage are recorded once PostgreSQL is back.
    for run_id in flowing:
        run = await live.terminal_run(caller, files["id"], run_id, timeout=10)
        assert run["status"] == "completed"
        assert run["output_data"]["sizeBytes"] == FILE_SIZE

    assert {status for _p, status, _r, _s in refused} == {503}
    assert all(retry == "1" for _p, _s, retry, _t in refused)
    slowest = max(seconds for _p, _s, _r, seconds in refused)
    # Prompt: a refused connection, never a wait for a server that is not there.
    assert slowest < 5.0, slowest
    print(  # docs/reliability.md quotes these figures
        f"\npostgres outage {up_at - down_at:.1f} s: {len(refused)} requests answered 503 "
        f"with Retry-After: 1 (slowest {slowest * 1000:.0f} ms; "
        f"{dict(Counter(p.rsplit('/', 1)[-1] for p, *_ in refused))}); 3 downloads in flight "
        f"finished whole ({FILE_SIZE // MB} MiB each); first trigger served "
        f"{recovered_s:.2f} s after PostgreSQL was back (answers {statuses})"
    )


async def test_the_dependency_monitor_says_once_that_postgresql_left_and_once_that_it_is_back(
    dedicated_postgres: EmbeddedPostgres, backends: Backends
) -> None:
    """The probe's own connection is cut by the shutdown, a new one is refused while the
    server is away, and the first probe after its return connects again."""
    monitor = DependencyMonitor(
        dedicated_postgres.url, backends.redis_url, redis_cluster=backends.redis_cluster
    )
    try:
        seen = await probed_through_an_outage(
            monitor, dedicated_postgres.stop, dedicated_postgres.start
        )
    finally:
        await monitor.close()

    assert_one_outage_of(seen, Dependency.POSTGRES)


@pytest.mark.parametrize(
    "outage",
    [
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        TimeoutError(),
    ],
    ids=["admin-shutdown", "starting-up", "connection-lost", "command-timeout"],
)
async def test_a_query_cut_by_the_outage_is_a_503_not_a_500(outage: Exception) -> None:
    """Regression: a statement in flight when PostgreSQL shut down raised AdminShutdownError,
    which was not counted as an outage: the caller got a 500."""

    async def querying(request: web.Request) -> web.StreamResponse:
        raise outage

    app = web.Application(middlewares=[request_context, errors_to_json])
    app.router.add_get("/", querying)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"].startswith("Service temporarily unavailable")
