"""A store consumer dies holding events: the others take its partitions over, and every run's
row ends up as the last event sent for it says, in order, whatever the timing of the kill."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from devkit.embedded import EmbeddedRedis, free_port, stop_process
from store import agents, orgs
from store.enums import EventType
from store.event_buffer import EventBuffer
from store.run_events import RunEvent
from tests.support.backends import Backends
from tests.support.processes import Processes, process_env
from tests.support.prometheus import metric_sum
from tests.support.store_runs import new_run

RUNS = 120
OUTPUTS = 8
PARTITIONS = 16
PREFIX = "runs:events"  # what a ``consume`` process drains (EVENTS_STREAM's default)


async def _scrape(http: aiohttp.ClientSession, url: str) -> str:
    for _ in range(100):
        try:
            async with http.get(url) as resp:
                return await resp.text()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answers at {url}")


async def _held_events(redis: aioredis.Redis, buffer: EventBuffer, consumer: str) -> int:
    """Events in the partitions ``consumer`` holds a lease on."""
    held = 0
    for partition in range(PARTITIONS):
        if await redis.get(buffer.lease_key(partition)) == consumer.encode():
            held += int(await redis.xlen(buffer.stream_key(partition)))
    return held


async def test_killing_a_consumer_holding_events_leaves_every_run_as_its_last_event(
    dedicated_redis: EmbeddedRedis,
    processes: Processes,
    backends: Backends,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """Runs report eight outputs each and then complete without one (the agent SDK's
    ``output()`` … ``complete()``), all held in the buffer as while PostgreSQL is away, fed at
    a steady pace to two ``consume`` processes. One is frozen while its partitions fill up,
    then killed with SIGKILL while it holds them; a third starts. Every run ends with the last
    output and count it sent, each applied once."""
    org_id = await orgs.create_org(db, "Consumer dies")
    agent = await agents.create_agent(
        db,
        org_id,
        b"salt",
        uuid.uuid4().bytes,
        {"name": "a", "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"}},
    )
    run_ids = [await new_run(db, agent) for _ in range(RUNS)]
    env = process_env(
        backends,
        REDIS_URL=dedicated_redis.url,
        CONSUMER_LEASE_S="3",
        CONSUMER_POLL_MS="20",
        EVENTS_PARTITIONS=str(PARTITIONS),
    )
    ports = {name: str(free_port()) for name in ("first", "second", "third")}
    for name in ("first", "second"):
        env["CONSUMER_PORT"] = ports[name]
        processes.start("consume", "--name", name, env=env, log=tmp_path / f"{name}.log")
    first = processes.children[0]
    redis = aioredis.Redis.from_url(dedicated_redis.url)
    buffer = EventBuffer(redis, PREFIX, PARTITIONS)

    fed_first_step = asyncio.Event()

    async def feed() -> None:
        # Every run's events in its order, runs interleaved: about 1,000 events in 2 s.
        for step in range(OUTPUTS):
            for run_id in run_ids:
                await buffer.append(
                    RunEvent(run_id, EventType.OUTPUT, output_data={"v": step}, outputs=step)
                )
            fed_first_step.set()
            await asyncio.sleep(0.2)
        for run_id in run_ids:
            await buffer.append(RunEvent(run_id, EventType.COMPLETED))

    # Both hold a share before anything is fed or killed.
    for _ in range(1000):
        leases = [await redis.get(buffer.lease_key(p)) for p in range(PARTITIONS)]
        if {b"first", b"second"} <= set(leases):
            break
        await asyncio.sleep(0.02)
    assert {b"first", b"second"} <= set(leases), leases
    feeding = asyncio.create_task(feed())
    try:
        # Frozen once the feed is under way: what reaches its partitions from then on waits.
        await fed_first_step.wait()
        first.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)  # its partitions fill up while it is frozen
        held = await _held_events(redis, buffer, "first")
        first.send_signal(signal.SIGKILL)
        assert first.wait(5) == -signal.SIGKILL
        killed_at = sum(await buffer.lengths())
        env["CONSUMER_PORT"] = ports["third"]
        processes.start("consume", "--name", "third", env=env, log=tmp_path / "third.log")
        await feeding

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            finished = await db.fetchval(
                "SELECT count(*) FROM runs WHERE id = ANY($1) AND status = 'completed'", run_ids
            )
            if finished == RUNS and not sum(await buffer.lengths()):
                break
            await asyncio.sleep(0.1)
        assert sum(await buffer.lengths()) == 0
    finally:
        feeding.cancel()
        await redis.aclose()

    rows = await db.fetch(
        "SELECT id, status, output_data, outputs FROM runs WHERE id = ANY($1)", run_ids
    )
    last = OUTPUTS - 1
    assert {(r["status"], tuple(r["output_data"].items()), r["outputs"]) for r in rows} == {
        ("completed", (("v", last),), last)
    }
    applied = await db.fetchval(
        "SELECT count(*) FROM applied_events WHERE run_id = ANY($1)", run_ids
    )
    assert applied == RUNS * (OUTPUTS + 1), "every event applied once, none refused as stale"
    assert held > 0, "the killed consumer held events"

    async with aiohttp.ClientSession() as http:
        texts = [
            await _scrape(http, f"http://127.0.0.1:{ports[name]}/metrics")
            for name in ("second", "third")
        ]
    took = [
        metric_sum(text, "agent_gateway_store_events_total", outcome="applied") for text in texts
    ]
    assert sum(took) >= held, "the survivors applied what the dead one held"
    for child in processes.children[1:]:
        assert stop_process(child) == 0
    print(  # docs/reliability.md quotes these figures
        f"\nconsumer killed holding {held} events of its partitions ({killed_at} buffered in "
        f"all): {RUNS} runs x {OUTPUTS + 1} events, {applied} applied once each, every run "
        f"completed with its last output; survivors applied {[int(t) for t in took]}"
    )
