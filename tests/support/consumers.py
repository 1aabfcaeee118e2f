"""Store consumers in tests: the ``make_consumer`` fixture's type, the buffer they drain, and
runs' stories of events with what must hold once they are applied."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.enums import EventType
from store.event_buffer import EventBuffer
from store.redis_client import RedisClient
from store.run_events import RunEvent
from tests.support.polling import until

ConsumerFactory = Callable[..., Awaitable[StoreConsumer]]


def event_buffer(settings: Settings, redis: RedisClient) -> EventBuffer:
    """The run-event buffer a gateway with ``settings`` writes to while PostgreSQL is away."""
    return EventBuffer(redis, settings.events_stream, settings.events_partitions)


def story(run_id: int, outputs: int, start: dt.datetime) -> list[RunEvent]:
    """A run's events in the order a gateway buffers them: started, ``outputs`` outputs, then
    completed, a second apart. Applied in any other order, an output or the end would find the
    row already newer and be refused (stale, or ended): never recorded as applied."""
    step = dt.timedelta(seconds=1)
    return [
        RunEvent(run_id, EventType.STARTED, at=start),
        *(
            RunEvent(run_id, EventType.OUTPUT, at=start + (n + 1) * step, output_data={"v": n})
            for n in range(outputs)
        ),
        RunEvent(run_id, EventType.COMPLETED, at=start + (outputs + 1) * step, outputs=outputs),
    ]


async def until_ended(db: asyncpg.Pool, run_ids: list[int], *, bound_s: float = 30.0) -> None:
    """Return once every one of ``run_ids`` is terminal in PostgreSQL; fail after ``bound_s``."""

    async def all_ended() -> bool:
        ended: int = await db.fetchval(
            "SELECT count(*) FROM runs WHERE id = ANY($1) AND status = 'completed'", run_ids
        )
        return ended == len(run_ids)

    await until(all_ended, bound_s=bound_s, what="the runs did not all end in time")


async def until_drained(buffer: EventBuffer, *, bound_s: float = 10.0) -> None:
    """Return once ``buffer`` holds nothing; fail after ``bound_s``.

    A consumer removes a batch's entries after its commit and its announcements, so a run
    already ended in PostgreSQL may still have its entries in the buffer for a moment."""

    async def drained() -> bool:
        return sum(await buffer.lengths()) == 0

    await until(drained, bound_s=bound_s, what="entries were never removed from the buffer")


async def assert_applied_once_each_in_order(
    db: asyncpg.Pool, stories: dict[int, list[RunEvent]]
) -> None:
    """Every event of every story was applied exactly once, each run's in its order, and every
    run's row says what its last event said.

    ``applied_events`` holds one row per event applied (its key): every event having a row
    means none was refused, so none came after a later one of its run (see :func:`story`);
    their commit times follow each run's order."""
    run_ids = list(stories)
    rows = await db.fetch(
        "SELECT event_id, run_id, applied_at FROM applied_events WHERE run_id = ANY($1)", run_ids
    )
    applied = {row["event_id"]: row["applied_at"] for row in rows}
    for run_id, events in stories.items():
        missing = [f"{e.type} {e.at:%S}" for e in events if e.event_id not in applied]
        assert not missing, f"run {run_id}: not applied (refused or lost): {missing}"
        times = [applied[e.event_id] for e in events]
        assert times == sorted(times), f"run {run_id}: applied out of its order"
    assert len(rows) == sum(len(events) for events in stories.values())
    finals = await db.fetch(
        "SELECT id, status, output_data, outputs FROM runs WHERE id = ANY($1)", run_ids
    )
    assert {r["id"]: (r["status"], r["output_data"], r["outputs"]) for r in finals} == {
        run_id: ("completed", events[-2].output_data, len(events) - 2)
        for run_id, events in stories.items()
    }
