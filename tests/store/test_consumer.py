"""The store consumer: the events held in the Redis buffer while PostgreSQL was away reach their
runs in order, whatever the number of consumers and whichever of them stops or stalls."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis

from gateway.settings import Settings
from store.announcements import parse_announcement, terminal_channel
from store.consumer import StoreConsumer
from store.enums import EventType
from store.event_buffer import EventBuffer
from store.models import Agent
from store.reaper import REAPED_ERROR, reap_overdue
from store.run_events import RunEvent
from store.transitions import record_events
from tests.support.consumers import ConsumerFactory, event_buffer, until_drained
from tests.support.polling import until
from tests.support.store_runs import new_run

OUTPUTS_PER_RUN = 6


async def final_rows(db: asyncpg.Pool, run_ids: list[int]) -> dict[int, tuple[object, ...]]:
    rows = await db.fetch(
        "SELECT id, status, output_data, outputs FROM runs WHERE id = ANY($1)", run_ids
    )
    return {r["id"]: (r["status"], r["output_data"], r["outputs"]) for r in rows}


async def buffer_outputs_then_complete(buffer: EventBuffer, run_ids: list[int]) -> None:
    """What a gateway holds while PostgreSQL is away for runs whose agents report several
    outputs and then ``complete()`` without one (the agent SDK's usual ending)."""
    for step in range(OUTPUTS_PER_RUN):
        for run_id in run_ids:
            await buffer.append(
                RunEvent(run_id, EventType.OUTPUT, output_data={"v": step}, outputs=step)
            )
    for run_id in run_ids:
        await buffer.append(RunEvent(run_id, EventType.COMPLETED))


def last_sent(run_ids: list[int]) -> dict[int, tuple[object, ...]]:
    last = OUTPUTS_PER_RUN - 1
    return {run_id: ("completed", {"v": last}, last) for run_id in run_ids}


async def test_two_consumers_leave_every_run_as_its_last_event_says(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    make_consumer: ConsumerFactory,
) -> None:
    run_ids = [await new_run(db, agent) for _ in range(60)]
    first = await make_consumer(batch=7, lease_s=0.6)
    second = await make_consumer(batch=7, lease_s=0.6)
    # Both hold a share before anything arrives: 60 runs in a row cover every partition.
    half = settings.events_partitions // 2
    await until(lambda: len(first.leases.held) == len(second.leases.held) == half)
    await buffer_outputs_then_complete(event_buffer(settings, redis_client), run_ids)

    await until(lambda: _all_ended(db, run_ids))
    # A turn counts what it applied after its commit and removes the entries after that.
    await until_drained(event_buffer(settings, redis_client))
    assert await final_rows(db, run_ids) == last_sent(run_ids)
    assert first.stats.applied > 0, "both took a share"
    assert second.stats.applied > 0, "both took a share"
    assert first.stats.applied + second.stats.applied == len(run_ids) * (OUTPUTS_PER_RUN + 1)


async def _all_ended(db: asyncpg.Pool, run_ids: list[int]) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM runs WHERE id = ANY($1) AND status = 'completed'", run_ids
    )
    return bool(count == len(run_ids))


async def test_a_consumer_stalled_past_its_lease_applies_nothing_after_its_successor(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    make_consumer: ConsumerFactory,
) -> None:
    """The forced interleaving: consumer A has read a run's first output and stalls (a long GC
    pause, a frozen VM) past its lease; B takes the partition and applies the run's outputs and
    its end; then A wakes up with its stale batch."""
    buffer = event_buffer(settings, redis_client)
    run_ids = [await new_run(db, agent) for _ in range(20)]
    for run_id in run_ids:
        await buffer.append(RunEvent(run_id, EventType.OUTPUT, output_data={"v": 0}, outputs=0))

    stalled = asyncio.Event()
    wake = asyncio.Event()
    a = StoreConsumer(redis_client, db, buffer=buffer, name="a", poll_ms=20, lease_s=0.5)
    apply_for_real = a._apply_events

    async def stall_then_apply(*args: object, **kwargs: object) -> object:
        stalled.set()
        await wake.wait()
        return await apply_for_real(*args, **kwargs)  # type: ignore[arg-type]

    a._apply_events = stall_then_apply  # type: ignore[method-assign]
    running_a = asyncio.create_task(a.run())
    try:
        await asyncio.wait_for(stalled.wait(), 10)
        # The rest of every run arrives while A is stalled with the first output in hand.
        for step in range(1, OUTPUTS_PER_RUN):
            for run_id in run_ids:
                await buffer.append(
                    RunEvent(run_id, EventType.OUTPUT, output_data={"v": step}, outputs=step)
                )
        for run_id in run_ids:
            await buffer.append(RunEvent(run_id, EventType.COMPLETED))
        await asyncio.sleep(0.7)  # A's leases lapse
        b = await make_consumer(name="b", lease_s=0.5)
        await until(lambda: _all_ended(db, run_ids))
        await until_drained(buffer)  # B has counted all it applied
        wake.set()
        await until(lambda: a.stats.leases_lost >= 1)
    finally:
        wake.set()
        a.stop()
        await asyncio.wait_for(running_a, 10)

    assert await final_rows(db, run_ids) == last_sent(run_ids)
    assert b.stats.applied == len(run_ids) * (OUTPUTS_PER_RUN + 1)
    assert a.stats.applied == 0


async def test_a_consumer_that_dies_holding_partitions_hands_them_on_after_its_lease(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    make_consumer: ConsumerFactory,
) -> None:
    buffer = event_buffer(settings, redis_client)
    dead = StoreConsumer(redis_client, db, buffer=buffer, name="dead", lease_s=1.0)
    await dead.leases.refresh()  # it takes every partition, then dies without a word
    assert len(dead.leases.held) == settings.events_partitions
    run_ids = [await new_run(db, agent) for _ in range(30)]
    await buffer_outputs_then_complete(buffer, run_ids)

    heir = await make_consumer(name="heir", lease_s=1.0)

    await until(lambda: _all_ended(db, run_ids))
    assert await final_rows(db, run_ids) == last_sent(run_ids)
    assert len(heir.leases.held) == settings.events_partitions


async def test_consumers_share_the_partitions_and_a_stopped_one_gives_its_share_back(
    settings: Settings, redis_client: aioredis.Redis, make_consumer: ConsumerFactory
) -> None:
    first = await make_consumer(name="first", lease_s=0.6)
    second = await make_consumer(name="second", lease_s=0.6)
    half = settings.events_partitions // 2

    await until(lambda: len(first.leases.held) == len(second.leases.held) == half)
    assert not set(first.leases.held) & set(second.leases.held)

    second.stop()
    await until(lambda: len(first.leases.held) == settings.events_partitions)


async def test_an_undecodable_entry_is_set_aside_not_retried_forever(
    db: asyncpg.Pool, settings: Settings, redis_client: aioredis.Redis
) -> None:
    buffer = event_buffer(settings, redis_client)
    consumer = StoreConsumer(redis_client, db, buffer=buffer, name="c1")
    await redis_client.xadd(buffer.stream_key(0), {"event": "{not json"})
    await consumer.leases.refresh()

    await consumer.consume_once()

    assert consumer.stats.poison == 1
    assert await redis_client.xlen(buffer.stream_key(0)) == 0


async def test_an_end_applied_from_the_buffer_is_announced_to_every_replica(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    buffer = event_buffer(settings, redis_client)
    consumer = StoreConsumer(redis_client, db, buffer=buffer, name="c1")
    run_id = await new_run(db, agent)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(terminal_channel(settings.events_stream))
    try:
        await buffer.append(RunEvent(run_id, EventType.STARTED))
        await buffer.append(RunEvent(run_id, EventType.CANCELLED))
        await consumer.leases.refresh()
        while await consumer.consume_once():
            pass
        announced: list[int] = []
        for _ in range(10):  # a subscribe confirmation reads as None: keep listening a while
            if (message := await pubsub.get_message(timeout=0.1)) is not None:
                announced += parse_announcement(message["data"])
    finally:
        await pubsub.aclose()

    assert announced == [run_id]  # the end only, once
    assert (await final_rows(db, [run_id]))[run_id][0] == "cancelled"


async def test_events_an_older_release_left_in_its_single_stream_are_applied(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    make_consumer: ConsumerFactory,
) -> None:
    """A rolling upgrade from 0.0.x: old replicas published every event to one stream (named
    as the prefix), read by a consumer group; the new consumers drain what is left there."""
    run_id = await new_run(db, agent)
    for event in (
        RunEvent(run_id, EventType.STARTED),
        RunEvent(run_id, EventType.OUTPUT, output_data={"v": 1}),
        RunEvent(run_id, EventType.COMPLETED, outputs=1),
    ):
        await redis_client.xadd(settings.events_stream, event.encode())  # type: ignore[arg-type]
    await redis_client.xgroup_create(settings.events_stream, "store", id="0")

    await make_consumer()

    await until(lambda: _all_ended(db, [run_id]))
    assert await final_rows(db, [run_id]) == {run_id: ("completed", {"v": 1}, 1)}
    assert await redis_client.xlen(settings.events_stream) == 0


async def test_the_reaper_fails_runs_past_their_deadline_and_nothing_else(
    db: asyncpg.Pool, agent: Agent
) -> None:
    overdue, current = await new_run(db, agent), await new_run(db, agent)
    finished = await new_run(db, agent)
    await record_events(db, [RunEvent(finished, EventType.COMPLETED)])
    await db.execute(
        "UPDATE runs SET deadline = now() - interval '1 second' WHERE id = ANY($1)",
        [overdue, finished],
    )

    reaped = await reap_overdue(db)

    assert overdue in reaped
    assert current not in reaped
    assert finished not in reaped
    rows = await db.fetch("SELECT id, status, error FROM runs WHERE id = ANY($1)", reaped)
    assert {(r["id"], r["status"], r["error"]) for r in rows} >= {(overdue, "failed", REAPED_ERROR)}
    assert (await final_rows(db, [current]))[current][0] == "queued"
    assert (await final_rows(db, [finished]))[finished][0] == "completed"
