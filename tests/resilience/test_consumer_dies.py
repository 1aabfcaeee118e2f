"""The store consumer dies mid-stream: another takes over, and every event the gateway
published is applied exactly once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.exceptions import ResponseError

from devkit.embedded import EmbeddedRedis, stop_process
from tests.support.backends import Backends
from tests.support.live_gateways import LiveFactory
from tests.support.processes import Processes, process_env
from tests.support.prometheus import metric_sum

RUNS = 200


async def _held_by(redis: aioredis.Redis, consumer: str, *, bound_s: float) -> int:
    """How many events ``consumer`` holds (read, not acknowledged) once it holds any."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while loop.time() < deadline:
        try:
            summary = await redis.xpending("runs:events", "store")
        except ResponseError:
            # NOGROUP: the consumer process has not created its group yet.
            summary = {}
        for entry in summary.get("consumers") or []:
            if entry["name"] in (consumer, consumer.encode()) and int(entry["pending"]):
                return int(entry["pending"])
        await asyncio.sleep(0.002)
    return 0


async def _scrape(http: aiohttp.ClientSession, url: str) -> str:
    for _ in range(100):
        try:
            async with http.get(url) as resp:
                return await resp.text()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answers at {url}")


async def test_killing_the_consumer_loses_no_event_and_applies_none_twice(
    dedicated_redis: EmbeddedRedis,
    make_live: LiveFactory,
    processes: Processes,
    backends: Backends,
    runtime: TestServer,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """200 runs are triggered at a steady pace; a third of the way in, the consumer process
    is killed with SIGKILL and a new one (another name) starts. Every run reaches its
    terminal row once, and the events applied equal the events published."""
    live = await make_live(
        redis_url=dedicated_redis.url, events_stream="runs:events", trigger_rate_limit=100_000
    )
    env = process_env(backends, REDIS_URL=dedicated_redis.url, CONSUMER_RECLAIM_IDLE_S="1")
    first = processes.start("consume", "--name", "first", env=env, log=tmp_path / "first.log")
    caller = await live.caller()
    agent = await live.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")

    run_ids: list[int] = []

    async def trigger(i: int) -> None:
        async with live.http.post(
            live.url(f"/api/agents/{agent['id']}/runs/trigger"),
            json={"input": {"n": i}},
            headers=caller.auth,
        ) as resp:
            assert resp.status == 202, await resp.text()
            run_ids.append((await resp.json())["runId"])

    async def steady() -> None:
        # 200 runs over about 4 s, never more than 20 in flight.
        pending: set[asyncio.Task[None]] = set()
        for i in range(RUNS):
            pending.add(asyncio.create_task(trigger(i)))
            if len(pending) >= 20:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.sleep(0.02)
        await asyncio.gather(*pending)

    load = asyncio.create_task(steady())
    watch = aioredis.Redis.from_url(dedicated_redis.url)
    try:
        while len(run_ids) < RUNS // 3:
            await asyncio.sleep(0.01)
        # Kill it mid-batch: frozen while a backlog builds, let go, and frozen again the moment
        # it holds events it has read and not acknowledged. Frozen, it cannot acknowledge them,
        # so the count read then is what the SIGKILL leaves behind, whatever the timing.
        first.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        held = 0
        for _attempt in range(50):
            first.send_signal(signal.SIGCONT)
            if not await _held_by(watch, "first", bound_s=3.0):
                continue
            first.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.05)  # the stop is delivered; nothing more is acknowledged
            held = await _held_by(watch, "first", bound_s=0.01)
            if held:
                break
        first.send_signal(signal.SIGKILL)
    finally:
        await watch.aclose()
    assert first.wait(5) == -signal.SIGKILL
    assert held > 0
    killed_at = len(run_ids)
    await asyncio.sleep(0.5)
    second = processes.start("consume", "--name", "second", env=env, log=tmp_path / "second.log")
    await load

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        finished = await db.fetchval(
            "SELECT count(*) FROM runs WHERE id = ANY($1) AND status = 'completed'", run_ids
        )
        if finished == RUNS or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert finished == RUNS

    async with aiohttp.ClientSession() as http:
        published_text = await _scrape(http, live.url("/metrics"))
        consumer_text = await _scrape(http, f"http://127.0.0.1:{env['CONSUMER_PORT']}/metrics")
    published = metric_sum(published_text, "agent_gateway_run_events_published_total")
    via_database = metric_sum(
        published_text, "agent_gateway_run_events_published_total", via="database"
    )
    applied = await db.fetchval(
        "SELECT count(*) FROM applied_events WHERE run_id = ANY($1)", run_ids
    )
    ends = await db.fetch(
        """SELECT run_id, count(*) AS ends FROM applied_events
           WHERE run_id = ANY($1) AND changed AND type IN ('completed', 'failed', 'cancelled')
           GROUP BY run_id""",
        run_ids,
    )
    # Each run: "started" and "completed", published once each, applied once each.
    assert published == 2 * RUNS
    assert via_database == 0
    assert applied == published
    assert len(ends) == RUNS
    assert {row["ends"] for row in ends} == {1}
    redis = aioredis.Redis.from_url(dedicated_redis.url)
    try:
        assert await redis.xlen("runs:events") == 0
        assert (await redis.xpending("runs:events", "store"))["pending"] == 0
    finally:
        await redis.aclose()
    reclaimed = metric_sum(consumer_text, "agent_gateway_store_events_total", outcome="reclaimed")
    duplicates = metric_sum(consumer_text, "agent_gateway_store_events_total", outcome="duplicate")
    # What the dead consumer held was taken over (some of it may have reached its acknowledgement
    # by the time the signal landed).
    assert reclaimed > 0
    assert stop_process(second) == 0
    print(  # docs/reliability.md quotes these figures
        f"\nconsumer killed after {killed_at} of {RUNS} runs: {int(published)} events "
        f"published, {applied} applied, {len(ends)} runs ended once each; the dead consumer "
        f"held {held} unacknowledged, the new one reclaimed {int(reclaimed)} of them, "
        f"{int(duplicates)} already applied (skipped)"
    )
