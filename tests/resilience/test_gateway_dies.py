"""A gateway dies mid-work. After its statement recording a run's end committed and before it
answered the caller: the end is not lost, and every replica shows the run ended with the
runtime's output. While it
streamed a download past the run's deadline: the run's keep-alive lapses with it, and the
reaper fails the run."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.embedded import EmbeddedRedis
from store.reaper import REAPED_ERROR, reap_overdue
from tests.support.backends import Backends
from tests.support.processes import Processes, process_env, setup_agent, wait_until_ready
from tests.support.store_runs import wait_until_past
from tests.support.tokens import ADMIN


async def _first_run_of(db: asyncpg.Pool, agent_id: int, *, bound_s: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while loop.time() < deadline:
        run_id = await db.fetchval("SELECT id FROM runs WHERE agent_id = $1", agent_id)
        if run_id is not None:
            return int(run_id)
        await asyncio.sleep(0.01)
    raise AssertionError(f"agent {agent_id} has no run after {bound_s} s")


async def _waits_on_the_row_lock(db: asyncpg.Pool, *, bound_s: float) -> None:
    """Until a statement recording run events waits for a row lock (the test's)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while loop.time() < deadline:
        waiting = await db.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND query LIKE '%AS status_before%'"""
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no run event statement waited on the lock in {bound_s} s")


async def _run_on(
    http: aiohttp.ClientSession, base: str, agent: dict[str, object], run_id: int
) -> dict[str, object]:
    url = f"{base}/api/agents/{agent['id']}/runs/{run_id}"
    async with http.get(url, headers=agent["auth"]) as resp:  # type: ignore[arg-type]
        assert resp.status == 200
        body: dict[str, object] = await resp.json()
        return body


async def test_a_gateway_killed_between_recording_an_end_and_answering_loses_nothing(
    processes: Processes,
    backends: Backends,
    runtime: TestServer,
    db: asyncpg.Pool,
    dedicated_redis: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    """Replica one has the runtime's answer and sends the statement that records the run's end;
    the statement waits on the run's row (locked on purpose) and replica one is frozen
    (SIGSTOP) meanwhile. The lock goes, the statement commits in PostgreSQL, and replica one is
    killed with SIGKILL before it could read the reply, let alone answer. The caller's
    connection drops; replica two shows the run completed with the runtime's output, once."""
    async with aiohttp.ClientSession() as http:
        await _kill_one_mid_answer(
            processes, backends, runtime, db, dedicated_redis.url, http, tmp_path
        )


async def _kill_one_mid_answer(
    processes: Processes,
    backends: Backends,
    runtime: TestServer,
    db: asyncpg.Pool,
    redis_url: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    env_one = process_env(backends, REDIS_URL=redis_url)
    env_two = process_env(backends, REDIS_URL=redis_url)
    one = processes.start("serve", env=env_one, log=tmp_path / "one.log")
    processes.start("serve", env=env_two, log=tmp_path / "two.log")
    processes.start("consume", env=env_one, log=tmp_path / "consume.log")
    base_one = f"http://127.0.0.1:{env_one['GATEWAY_PORT']}"
    base_two = f"http://127.0.0.1:{env_two['GATEWAY_PORT']}"
    await wait_until_ready(http, base_one)
    await wait_until_ready(http, base_two)
    # The runtime answers after a pause: time to lock the run row before its end is written.
    webhook = str(runtime.make_url("/webhook/json").with_query(delay_ms="1500"))
    agent = await setup_agent(http, base_one, webhook, output_kind="json")

    async def call() -> int:
        async with http.post(
            f"{base_one}/api/agents/{agent['id']}/runs/trigger-and-wait",
            json={"input": {"result": {"answer": 42}}},
            headers=agent["auth"],
        ) as resp:
            return resp.status

    caller = asyncio.create_task(call())
    run_id = await _first_run_of(db, int(agent["id"]), bound_s=10)
    async with db.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
        try:
            await _waits_on_the_row_lock(db, bound_s=15)
            os.kill(one.pid, signal.SIGSTOP)
        finally:
            await lock.rollback()
    # The frozen replica's statement commits in PostgreSQL without it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline:
        if await db.fetchval("SELECT status FROM runs WHERE id = $1", run_id) == "completed":
            break
        await asyncio.sleep(0.02)
    assert not caller.done()
    os.kill(one.pid, signal.SIGKILL)
    one.wait(timeout=10)
    with pytest.raises(aiohttp.ClientError):
        await caller

    run = await _run_on(http, base_two, agent, run_id)
    assert run["status"] == "completed"
    assert run["output_data"] == {"answer": 42}
    applied = await db.fetch("SELECT type FROM applied_events WHERE run_id = $1", run_id)
    assert [row["type"] for row in applied] == ["completed"]


async def test_a_gateway_killed_mid_download_past_the_runs_deadline_leaves_it_to_the_reaper(
    processes: Processes,
    backends: Backends,
    runtime: TestServer,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """A download outlives its run's one-second deadline, kept alive by the replica streaming
    it; then that replica is killed with SIGKILL. Nothing renews the deadline any more: once
    the lease lapses, the reaper fails the run."""
    env = process_env(backends, DOWNLOAD_LEASE_S="2")
    gateway = processes.start("serve", env=env, log=tmp_path / "serve.log")
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    async with aiohttp.ClientSession() as http:
        await wait_until_ready(http, base)
        agent = await setup_agent(
            http, base, str(runtime.make_url("/webhook/bytes").with_query(size=64 * 1024 * 1024))
        )
        async with http.patch(
            f"{base}/admin/agents/{agent['id']}", json={"running_timeout_ms": 500}, headers=ADMIN
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(
            f"{base}/api/agents/{agent['id']}/runs/trigger-and-download",
            json={"timeoutMs": 500},
            headers=agent["auth"],
        ) as resp:
            assert resp.status == 200
            run_id = int(resp.headers["X-Run-Id"])
            await resp.content.readexactly(1024 * 1024)
            # Past its own deadline, still streaming (the caller reads no more): kept alive.
            await wait_until_past(db, run_id, seconds_after_creation=2.0)
            assert run_id not in await reap_overdue(db)

            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=10)

    row = None
    for _ in range(300):
        await reap_overdue(db)
        row = await db.fetchrow("SELECT status, error FROM runs WHERE id = $1", run_id)
        if row["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert row is not None
    assert (row["status"], row["error"]) == ("failed", REAPED_ERROR)
