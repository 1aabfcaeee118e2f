"""The deployment's shape on one machine: two ``serve`` replicas and one ``consume`` against one
PostgreSQL and one Redis, with the shipped nginx configuration in front."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from devkit.embedded import free_port
from devkit.fakes.n8n import RECEIVED, make_bytes
from devkit.nginx import Nginx, nginx_binary
from tests.support.backends import Backends
from tests.support.processes import Processes, process_env, setup_agent, wait_until_ready

MB = 1024 * 1024
SYNC_LIMIT = 3


@pytest.fixture(scope="module")
def nginx_path() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (e.g. `apt-get install nginx`): no load balancer")
    return binary


@pytest.fixture(scope="module")
def stack(
    nginx_path: str, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """nginx on one port in front of two gateway replicas, and one store consumer, shared by
    this module's tests (each makes its own organisation and agents)."""
    tmp_path = tmp_path_factory.mktemp("stack")
    processes = Processes()
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    replicas = []
    consumer_port = free_port()
    for name in ("a", "b"):
        env = process_env(
            backends,
            # Runtimes call back through the load balancer, as in production.
            PUBLIC_BASE_URL=front,
            SYNC_RATE_LIMIT=str(SYNC_LIMIT),
        )
        processes.start("serve", env=env, log=tmp_path / f"serve-{name}.log")
        replicas.append(f"http://127.0.0.1:{env['GATEWAY_PORT']}")
    consumer_env = process_env(backends, CONSUMER_PORT=str(consumer_port))
    processes.start("consume", env=consumer_env, log=tmp_path / "consume.log")
    nginx = Nginx(
        nginx_path,
        tmp_path / "nginx",
        front_port,
        [url.removeprefix("http://") for url in replicas],
    )
    try:
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr
        nginx.start()
        yield {
            "front": front,
            "replicas": replicas,
            "consumer": f"http://127.0.0.1:{consumer_port}",
            "nginx": nginx,
        }
    finally:
        nginx.stop()
        processes.stop_all()


async def ready(http: aiohttp.ClientSession, stack: dict[str, Any]) -> None:
    for base in [*stack["replicas"], stack["front"]]:
        await wait_until_ready(http, base)


async def test_a_download_streams_through_nginx_byte_identical(
    stack: dict[str, Any], runtime: TestServer, http: aiohttp.ClientSession
) -> None:
    await ready(http, stack)
    front = stack["front"]
    size = 24 * MB
    agent = await setup_agent(
        http, front, str(runtime.make_url(f"/webhook/bytes?size={size}&outputs=1"))
    )

    digest = hashlib.sha256()
    chunks = 0
    async with http.post(
        f"{front}/api/agents/{agent['id']}/runs/trigger-and-download", headers=agent["auth"]
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        assert resp.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
        run_id = resp.headers["X-Run-Id"]
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            chunks += 1

    assert digest.digest() == hashlib.sha256(make_bytes(size)).digest()
    assert chunks > 1  # streamed, not handed over in one piece
    for _ in range(100):
        async with http.get(
            f"{front}/api/agents/{agent['id']}/runs/{run_id}", headers=agent["auth"]
        ) as r:
            run = await r.json()
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert run["output_data"]["sizeBytes"] == size
    assert run["outputs"] == 1


async def test_nginx_spreads_requests_over_both_replicas(
    stack: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    await ready(http, stack)

    for _ in range(6):
        async with http.get(f"{stack['front']}/healthz") as resp:
            assert resp.status == 200

    upstreams = set(re.findall(r"upstream=(\S+)", stack["nginx"].access_log))
    assert {url.removeprefix("http://") for url in stack["replicas"]} <= upstreams


async def test_the_rate_limit_holds_across_replicas(
    stack: dict[str, Any], runtime: TestServer, http: aiohttp.ClientSession
) -> None:
    await ready(http, stack)
    a, b = stack["replicas"]
    agent = await setup_agent(
        http, stack["front"], str(runtime.make_url("/webhook/json")), output_kind="json"
    )

    statuses = []
    for base in (a, b, a, b, stack["front"]):
        async with http.post(
            f"{base}/api/agents/{agent['id']}/runs/trigger-and-wait",
            json={"timeoutMs": 10_000},
            headers=agent["auth"],
        ) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.headers["RateLimit-Policy"] == f"{SYNC_LIMIT};w=60"
                assert int(resp.headers["Retry-After"]) >= 1

    assert statuses == [200] * SYNC_LIMIT + [429] * (5 - SYNC_LIMIT)


async def test_a_waiter_on_one_replica_is_woken_by_a_callback_on_the_other(
    stack: dict[str, Any], runtime: TestServer, http: aiohttp.ClientSession
) -> None:
    await ready(http, stack)
    a, b = stack["replicas"]
    agent = await setup_agent(
        http,
        stack["front"],
        str(runtime.make_url("/webhook/accepted?report=0")),
        output_kind="json",
    )

    started = time.monotonic()
    waiting = asyncio.create_task(
        http.post(
            f"{a}/api/agents/{agent['id']}/runs/trigger-and-wait",
            json={"timeoutMs": 30_000},
            headers=agent["auth"],
        )
    )
    run_id = None
    for _ in range(200):
        calls = [c for c in runtime.app[RECEIVED] if c["payload"]["agentId"] == agent["id"]]
        if calls:
            run_id = calls[0]["payload"]["runId"]
            break
        await asyncio.sleep(0.02)
    assert run_id is not None
    async with http.post(
        f"{b}/api/runs/{run_id}/callback",
        json={"type": "output", "complete": True, "output": {"answer": 42}},
        headers={"Authorization": f"Bearer {agent['api_key']}"},
    ) as callback:
        assert callback.status == 202
    # What the 202 accepted is on the row already: the other replica reads it at once.
    async with http.get(
        f"{a}/api/agents/{agent['id']}/runs/{run_id}", headers=agent["auth"]
    ) as read:
        assert (await read.json())["status"] == "completed"

    resp = await asyncio.wait_for(waiting, 20)
    body = await resp.json()
    resp.release()

    assert resp.status == 200
    assert body["runId"] == run_id
    assert body["status"] == "completed"
    assert body["output_data"] == {"answer": 42}
    assert time.monotonic() - started < 15  # woken, not timed out at 30 s

    async with http.get(f"{stack['consumer']}/healthz") as health:
        assert health.status == 200
