"""The store consumer: at-least-once delivery, idempotent and guarded application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.events import EventPublisher, RunEvent, apply_event, terminal_channel
from store.models import Agent
from store.reaper import REAPED_ERROR, reap_overdue
from tests.support.backends import Backends
from tests.support.store_runs import new_run


async def run_row(db: asyncpg.Pool, run_id: int) -> dict[str, object]:
    row = await db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    assert row is not None
    return dict(row)


async def test_the_same_event_applied_twice_changes_nothing_the_second_time(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    done = RunEvent(run_id, "completed", output_data={"ok": True}, outputs=2, duration_ms=40)

    async with db.acquire() as conn:
        first = await apply_event(conn, done)
        after_first = await run_row(db, run_id)
        second = await apply_event(conn, done)

    assert first is True
    assert second is None
    assert await run_row(db, run_id) == after_first
    assert after_first["status"] == "completed"
    assert after_first["output_data"] == {"ok": True}
    assert after_first["outputs"] == 2
    assert await db.fetchval("SELECT count(*) FROM applied_events WHERE run_id = $1", run_id) == 1


async def test_a_terminal_run_is_never_changed_by_a_later_event(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    async with db.acquire() as conn:
        assert await apply_event(conn, RunEvent(run_id, "started")) is True
        assert await apply_event(conn, RunEvent(run_id, "completed", output_data={"v": 1}))
        terminal = await run_row(db, run_id)
        for late in (
            RunEvent(run_id, "failed", error="late failure"),
            RunEvent(run_id, "output", output_data={"v": 2}, outputs=9),
            RunEvent(run_id, "waiting"),
            RunEvent(run_id, "started"),
            RunEvent(run_id, "cancelled"),
        ):
            assert await apply_event(conn, late) is False, late.type

    assert await run_row(db, run_id) == terminal


async def test_events_published_reach_the_row_through_the_consumer_exactly_once(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    backends: Backends,
    redis_client: aioredis.Redis,
) -> None:
    publisher = EventPublisher(redis_client, db, settings.events_stream)
    consumer = StoreConsumer(
        redis_client, db, stream=settings.events_stream, group=settings.events_group, name="c1"
    )
    await consumer.ensure_group()
    run_ids = [await new_run(db, agent) for _ in range(20)]
    for run_id in run_ids:
        await publisher.publish(RunEvent(run_id, "started"))
        await publisher.publish(RunEvent(run_id, "completed", outputs=1))

    while await consumer.consume_once(block_ms=10):
        pass

    assert consumer.stats.applied == 40
    statuses = await db.fetch("SELECT status FROM runs WHERE id = ANY($1)", run_ids)
    assert {r["status"] for r in statuses} == {"completed"}
    assert await redis_client.xlen(settings.events_stream) == 0


async def test_events_a_dead_consumer_left_pending_are_reclaimed_by_another(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    publisher = EventPublisher(redis_client, db, settings.events_stream)
    dead = StoreConsumer(
        redis_client, db, stream=settings.events_stream, group=settings.events_group, name="dead"
    )
    await dead.ensure_group()
    run_id = await new_run(db, agent)
    await publisher.publish(RunEvent(run_id, "completed", outputs=3))
    # "dead" reads the entry and dies before applying it.
    await redis_client.xreadgroup(
        settings.events_group, "dead", {settings.events_stream: ">"}, count=10
    )

    survivor = StoreConsumer(
        redis_client,
        db,
        stream=settings.events_stream,
        group=settings.events_group,
        name="survivor",
        reclaim_idle_ms=50,
        block_ms=20,
    )
    task = asyncio.create_task(survivor.run())
    try:
        for _ in range(200):
            if (await run_row(db, run_id))["status"] == "completed":
                break
            await asyncio.sleep(0.02)
    finally:
        survivor.stop()
        await asyncio.wait_for(task, 5)

    assert (await run_row(db, run_id))["outputs"] == 3
    assert survivor.stats.reclaimed == 1
    pending = await redis_client.xpending(settings.events_stream, settings.events_group)
    assert pending["pending"] == 0


@pytest.fixture
async def unreachable_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    yield client
    await client.aclose()


async def test_an_event_redis_cannot_take_is_written_to_postgresql_instead(
    db: asyncpg.Pool, agent: Agent, unreachable_redis: aioredis.Redis
) -> None:
    publisher = EventPublisher(unreachable_redis, db, "nowhere")
    run_id = await new_run(db, agent)

    await publisher.publish(RunEvent(run_id, "failed", error="runtime exploded"))

    row = await run_row(db, run_id)
    assert row["status"] == "failed"
    assert row["error"] == "runtime exploded"


async def test_an_undecodable_entry_is_set_aside_not_retried_forever(
    db: asyncpg.Pool, settings: Settings, redis_client: aioredis.Redis
) -> None:
    consumer = StoreConsumer(
        redis_client, db, stream=settings.events_stream, group=settings.events_group, name="c1"
    )
    await consumer.ensure_group()
    await redis_client.xadd(settings.events_stream, {"event": "{not json"})

    await consumer.consume_once(block_ms=10)

    assert consumer.stats.poison == 1
    assert await redis_client.xlen(settings.events_stream) == 0


async def test_the_reaper_fails_runs_past_their_deadline_and_nothing_else(
    db: asyncpg.Pool, agent: Agent
) -> None:
    overdue, current = await new_run(db, agent), await new_run(db, agent)
    finished = await new_run(db, agent)
    async with db.acquire() as conn:
        await apply_event(conn, RunEvent(finished, "completed"))
    await db.execute(
        "UPDATE runs SET deadline = now() - interval '1 second' WHERE id = ANY($1)",
        [overdue, finished],
    )

    reaped = await reap_overdue(db)

    assert overdue in reaped
    assert current not in reaped
    assert finished not in reaped
    row = await run_row(db, overdue)
    assert (row["status"], row["error"]) == ("failed", REAPED_ERROR)
    assert (await run_row(db, current))["status"] == "queued"
    assert (await run_row(db, finished))["status"] == "completed"


async def test_only_the_first_end_of_a_run_enters_the_stream(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    publisher = EventPublisher(redis_client, db, settings.events_stream)
    run_id = await new_run(db, agent)

    first = await publisher.publish(RunEvent(run_id, "completed", output_data={"v": 1}))
    second = await publisher.publish(RunEvent(run_id, "failed", error="late"))
    progress = await publisher.publish(RunEvent(run_id, "output", output_data={"v": 2}))

    assert (first, second, progress) == (True, False, True)
    assert await publisher.claimed_end(run_id) == "completed"
    entries = await redis_client.xrange(settings.events_stream)
    assert [RunEvent.decode(fields).type for _id, fields in entries] == ["completed", "output"]


async def test_applying_an_end_is_announced_to_waiters_on_every_replica(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    publisher = EventPublisher(redis_client, db, settings.events_stream)
    consumer = StoreConsumer(
        redis_client, db, stream=settings.events_stream, group=settings.events_group, name="c1"
    )
    await consumer.ensure_group()
    run_id = await new_run(db, agent)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(terminal_channel(settings.events_stream))
    try:
        await publisher.publish(RunEvent(run_id, "started"))
        await publisher.publish(RunEvent(run_id, "cancelled"))
        while await consumer.consume_once(block_ms=10):
            pass
        messages = []
        for _ in range(10):  # a subscribe confirmation reads as None: keep listening a while
            if (message := await pubsub.get_message(timeout=0.1)) is not None:
                messages.append(message["data"])
    finally:
        await pubsub.aclose()

    assert messages == [str(run_id).encode()]  # the end only, once
    assert (await run_row(db, run_id))["status"] == "cancelled"


async def test_waiting_records_what_the_run_waits_for_and_output_resumes_it(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    waiting_for = {"tokenId": "tok_9", "description": "Approve"}
    async with db.acquire() as conn:
        await apply_event(conn, RunEvent(run_id, "started"))
        await apply_event(conn, RunEvent(run_id, "waiting", waiting_for=waiting_for))
        paused = await run_row(db, run_id)
        await apply_event(conn, RunEvent(run_id, "output", output_data={"step": 2}))
        resumed = await run_row(db, run_id)

    assert (paused["status"], paused["waiting_for"]) == ("waiting", waiting_for)
    assert (resumed["status"], resumed["waiting_for"], resumed["output_data"]) == (
        "running",
        None,
        {"step": 2},
    )
