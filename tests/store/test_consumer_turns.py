"""A turn of the store consumer: read a batch, apply it in one transaction, announce the ends
it made, remove it. Waiters hear of an end before the removal; a consumer killed at any point
of a turn leaves its successor nothing that would be applied twice in effect, or out of a
run's order."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.settings import Settings
from store import transitions
from store.announcements import parse_announcement, terminal_channel
from store.consumer import StoreConsumer
from store.event_buffer import BufferedEvent, EventBuffer
from store.models import Agent
from store.run_events import RunEvent
from tests.support.consumers import (
    ConsumerFactory,
    assert_applied_once_each_in_order,
    event_buffer,
    story,
    until_drained,
    until_ended,
)
from tests.support.store_runs import new_run

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
# Bound on waiting for what a consumer must do (done in milliseconds when it does).
BOUND_S = 10.0


async def stories(
    db: asyncpg.Pool, agent: Agent, buffer: EventBuffer, runs: int, outputs: int
) -> dict[int, list[RunEvent]]:
    """``runs`` new runs with their stories held in ``buffer``, the runs' events interleaved."""
    run_ids = [await new_run(db, agent) for _ in range(runs)]
    told = {run_id: story(run_id, outputs, START) for run_id in run_ids}
    for step in range(outputs + 2):
        for events in told.values():
            await buffer.append(events[step])
    return told


async def test_a_run_end_is_announced_before_its_entries_are_removed(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Waiters learn of an end once it is committed: the removal from the stream that
    follows is not on their path."""
    buffer = event_buffer(settings, redis_client)
    told = await stories(db, agent, buffer, runs=1, outputs=0)
    c1 = StoreConsumer(redis_client, db, buffer=buffer, name="c1")
    await c1.leases.refresh()
    heard = asyncio.Event()
    remove_for_real = buffer.remove_entries
    removing: list[int] = []

    async def removed_once_heard(entry_ids: dict[str, list[bytes]]) -> None:
        removing.append(sum(len(ids) for ids in entry_ids.values()))
        await heard.wait()
        await remove_for_real(entry_ids)

    buffer.remove_entries = removed_once_heard  # type: ignore[method-assign]
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(terminal_channel(settings.events_stream))
    turn = asyncio.create_task(c1.consume_once())
    announced: list[int] = []
    try:
        async with asyncio.timeout(BOUND_S):
            while not announced:
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    announced += parse_announcement(message["data"])
        # Removal waits until the end is heard (a consumer removing first would never
        # announce: the wait above would time out), so both entries are still held here.
        assert sum(await buffer.lengths()) == 2
        heard.set()
        assert await asyncio.wait_for(turn, BOUND_S) == 2
        assert removing == [2]
    finally:
        heard.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(turn, BOUND_S)
        await pubsub.aclose()

    assert announced == list(told)
    assert sum(await buffer.lengths()) == 0


KILL_POINTS = ("in_the_transaction", "before_removal", "after_reading")


@pytest.mark.parametrize("kill_point", KILL_POINTS)
async def test_a_consumer_killed_mid_turn_leaves_its_successor_every_event_once_in_order(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    make_consumer: ConsumerFactory,
    monkeypatch: pytest.MonkeyPatch,
    kill_point: str,
) -> None:
    """Consumer A dies (its task cancelled, its leases left to lapse) on its third turn: inside
    the batch's transaction (the lease row locked), after the commit but before the removal,
    or with the batch read but not yet applied. B takes the partitions over and applies what
    is left: every event applied once in effect, each run's in its order."""
    buffer = event_buffer(settings, redis_client)
    told = await stories(db, agent, buffer, runs=24, outputs=3)
    a = StoreConsumer(redis_client, db, buffer=buffer, name="a", batch=2, poll_ms=20, lease_s=0.5)
    await a.leases.refresh()
    paused = asyncio.Event()
    calls = 0

    async def pause_on_the_third(then: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            paused.set()
            await asyncio.Event().wait()  # until A is killed here
        return await then()

    if kill_point == "in_the_transaction":
        superseded = transitions._superseded

        async def in_transaction(conn: Any, stream: str, tokens: Mapping[int, int]) -> set[int]:
            found = await superseded(conn, stream, tokens)  # the lease row is locked now
            if asyncio.current_task() is task:
                await pause_on_the_third(lambda: asyncio.sleep(0))
            return found

        monkeypatch.setattr(transitions, "_superseded", in_transaction)
    elif kill_point == "before_removal":
        remove = buffer.remove_entries

        async def pause_then_remove(entry_ids: dict[str, list[bytes]]) -> None:
            await pause_on_the_third(lambda: remove(entry_ids))

        buffer.remove_entries = pause_then_remove  # type: ignore[method-assign]
    else:
        read = buffer.read_partitions

        async def read_then_pause(
            partitions: list[int], count: int, **options: Any
        ) -> dict[int, list[BufferedEvent]]:
            found = await read(partitions, count, **options)
            if any(found.values()):
                found = await pause_on_the_third(lambda: asyncio.sleep(0, found))
            return found

        buffer.read_partitions = read_then_pause  # type: ignore[method-assign]

    task = asyncio.create_task(a.run())
    await asyncio.wait_for(paused.wait(), BOUND_S)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND_S)
    monkeypatch.undo()
    applied_by_a = await db.fetchval(
        "SELECT count(*) FROM applied_events WHERE run_id = ANY($1)", list(told)
    )
    assert 0 < applied_by_a < sum(len(events) for events in told.values()), "killed mid-way"

    b = await make_consumer(name="b", batch=3, lease_s=0.5)
    await until_ended(db, list(told))
    await until_drained(buffer)  # B removes a batch after its commit and after counting it

    await assert_applied_once_each_in_order(db, told)
    assert b.stats.refused == 0
