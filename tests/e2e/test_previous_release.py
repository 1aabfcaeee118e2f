"""A rolling update from the previous release: its replicas keep serving on the new schema while
the new ones start.

The migrate Job has run this release's migrations; the previous release's gateway (its own code,
from tests/fixtures/previous-release/, the packages of the commit it was cut from) still serves
next to a new one, and only new consumers run. What the old gateway writes, the new code reads;
what it publishes to the pre-0.1.0 event stream, the new consumer applies and drains. This is the
expand/contract rule of docs/upgrading.md, checked for this release's migrations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from devkit.embedded import EmbeddedRedis, free_port
from devkit.fakes.n8n import CALLBACKS_SENT, make_bytes
from store.migrate import migrate_url, migration_files
from tests.support.backends import Backends
from tests.support.databases import scratch_database
from tests.support.processes import Processes, process_env, setup_agent, wait_until_ready

FIXTURES = Path(__file__).parents[1] / "fixtures" / "previous-release"
# The archive of the previous release's packages (see the README next to it): replaced at each
# release by the one before it.
ARCHIVE = FIXTURES / "agent-gateway-c8cb6aa.tar.gz"
# The one stream every release before 0.1.0 published run events to (its group: ``store``).
LEGACY_STREAM = "runs:events"
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
KB = 1024


@pytest.fixture
def previous_release(tmp_path: Path) -> Path:
    """The previous release's ``gateway``, ``store`` and ``adapters`` packages, extracted. A
    missing or broken archive fails the test (never a skip: it is in the repository)."""
    root = tmp_path / "previous-release"
    root.mkdir()
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own: the old release's gateway and the new consumer use the default
    key ``runs:events``, which must not meet other tests' keys (stopped by its PID)."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def new_schema(backends: Backends) -> AsyncIterator[str]:
    """A scratch database migrated by this release: the migrate Job has run."""
    async with scratch_database(backends.database_url) as url:
        await migrate_url(url)
        yield url


def _env(backends: Backends, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    port = free_port()
    return process_env(
        backends,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_CLUSTER="false",
        GATEWAY_PORT=str(port),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        **extra,
    )


def _old_env(env: dict[str, str], code: Path) -> dict[str, str]:
    """``env`` with the previous release's packages first on the import path."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(code), env.get("PYTHONPATH", "")])}


def _imported_from(env: dict[str, str], cwd: Path) -> list[str]:
    """Where ``gateway``, ``store`` and ``adapters`` import from under ``env``."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import adapters, gateway, store; "
            "print('\\n'.join(m.__file__ for m in (gateway, store, adapters)))",
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout.decode().split()


async def _run(
    http: aiohttp.ClientSession, base: str, agent: dict[str, Any], run_id: str
) -> dict[str, Any]:
    async with http.get(
        f"{base}/api/agents/{agent['id']}/runs/{run_id}", headers=agent["auth"]
    ) as resp:
        assert resp.status == 200, await resp.text()
        run: dict[str, Any] = await resp.json()
        return run


async def _ended(
    http: aiohttp.ClientSession, base: str, agent: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """The run once its row is terminal (the consumer applies the old release's events)."""
    run: dict[str, Any] = {}
    for _ in range(400):
        run = await _run(http, base, agent, run_id)
        if run["status"] in TERMINAL:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never ended: {run}")


async def test_the_previous_release_serves_on_the_new_schema_next_to_the_new_one(
    processes: Processes,
    backends: Backends,
    new_schema: str,
    dedicated_redis: EmbeddedRedis,
    previous_release: Path,
    runtime: TestServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    redis_url = dedicated_redis.url
    old_env = _old_env(_env(backends, new_schema, redis_url), previous_release)
    new_env = _env(backends, new_schema, redis_url)
    old, new = (f"http://127.0.0.1:{e['GATEWAY_PORT']}" for e in (old_env, new_env))
    # ``python -m`` puts the working directory first on sys.path: run the old code from its
    # own folder, so that the repository's packages never shadow it.
    assert _imported_from(old_env, previous_release) == [
        str(previous_release / package / "__init__.py")
        for package in ("gateway", "store", "adapters")
    ]

    # The previous release's replica starts on a schema ahead of it, warned.
    old_log = tmp_path / "old-serve.log"
    processes.start("serve", env=old_env, log=old_log, cwd=previous_release)
    processes.start("serve", env=new_env, log=tmp_path / "new-serve.log")
    try:
        await wait_until_ready(http, old)
        await wait_until_ready(http, new)
    except AssertionError:
        for log in (old_log, tmp_path / "new-serve.log"):
            print(f"--- {log.name}\n{log.read_text()}")
        raise
    old_known = {p.name for p in (previous_release / "store" / "migrations").glob("*.sql")}
    this_change = sorted(name for name, _sql in migration_files() if name not in old_known)
    assert this_change  # this release has migrations of its own: the point of the test
    warnings = [
        json.loads(line)
        for line in old_log.read_text().splitlines()
        if "schema_newer_than_code" in line
    ]
    assert [w["unknown_migrations"] for w in warnings] == [this_change]

    # Through the old replica: an organisation, its key and agents (the admin API).
    waited = await setup_agent(
        http, old, str(runtime.make_url("/webhook/json")), output_kind="json"
    )
    called_back = await setup_agent(
        http,
        old,
        str(runtime.make_url("/webhook/accepted?report=1&report_delay_ms=20")),
        output_kind="json",
    )
    downloaded = await setup_agent(
        http, old, str(runtime.make_url(f"/webhook/bytes?size={256 * KB}&outputs=1"))
    )

    # Trigger-and-wait: the runtime answers with the result.
    async with http.post(
        f"{old}/api/agents/{waited['id']}/runs/trigger-and-wait",
        json={"input": {"result": {"answer": 1}}, "timeoutMs": 20_000},
        headers=waited["auth"],
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert (body["status"], body["output_data"]) == ("completed", {"answer": 1})
    runs = {"waited": (waited, body["runId"], {"answer": 1})}

    # A trigger the runtime answers later through callbacks to the old replica's address.
    async with http.post(
        f"{old}/api/agents/{called_back['id']}/runs/trigger",
        json={"input": {"result": {"answer": 2}}},
        headers=called_back["auth"],
    ) as resp:
        assert resp.status == 202, await resp.text()
        runs["called_back"] = (called_back, (await resp.json())["runId"], {"answer": 2})

    # A download streamed through the old replica.
    async with http.post(
        f"{old}/api/agents/{downloaded['id']}/runs/trigger-and-download",
        headers=downloaded["auth"],
    ) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
        runs["downloaded"] = (downloaded, resp.headers["X-Run-Id"], None)
    assert hashlib.sha256(data).digest() == hashlib.sha256(make_bytes(256 * KB)).digest()

    # The runtime has reported all it will; no consumer has run yet: what the old replica
    # published waits in the one pre-0.1.0 stream.
    for _ in range(400):
        if [c["step"] for c in runtime.app[CALLBACKS_SENT]][-1:] == ["complete"]:
            break
        await asyncio.sleep(0.05)
    assert all(c["status"] == 202 for c in runtime.app[CALLBACKS_SENT])
    client = aioredis.Redis.from_url(redis_url)
    try:
        published = await client.xlen(LEGACY_STREAM)
        assert published > 0

        # The new consumer, whoever holds partition 0, applies and drains it.
        consumer_log = tmp_path / "new-consume.log"
        processes.start("consume", env=new_env, log=consumer_log)
        await wait_until_ready(
            http, f"http://127.0.0.1:{new_env['CONSUMER_PORT']}", probe="/healthz"
        )
        length = published
        for _ in range(400):
            length = await client.xlen(LEGACY_STREAM)
            if length == 0:
                break
            await asyncio.sleep(0.05)
        assert length == 0, consumer_log.read_text()
    finally:
        await client.aclose()

    # Each run reaches its terminal row, and both releases read it the same.
    for name, (agent, run_id, output) in runs.items():
        through_old = await _ended(http, old, agent, run_id)
        through_new = await _run(http, new, agent, run_id)
        assert through_old["status"] == "completed", (name, through_old)
        assert through_new == through_old, name
        if output is None:
            assert through_new["output_data"]["sizeBytes"] == 256 * KB
        else:
            assert through_new["output_data"] == output
    # Nothing failed on either side on the way (the old replica's one warning aside).
    for log in (old_log, consumer_log):
        assert '"level": "error"' not in log.read_text(), log.name
