"""The store consumer applies buffered events in batches: the same outcome as one by one,
nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.settings import Settings
from store import transitions
from store.consumer import StoreConsumer
from store.models import Agent
from store.run_events import RunEvent
from store.transitions import Outcome, apply_buffered, new_lease_token, record_events
from tests.support.consumers import event_buffer
from tests.support.store_runs import new_run


async def run_row(db: asyncpg.Pool, run_id: int) -> dict[str, object]:
    row = await db.fetchrow(
        """SELECT status, output_data, outputs, error, waiting_for, started_at, completed_at,
                  duration_ms FROM runs WHERE id = $1""",
        run_id,
    )
    assert row is not None
    return dict(row)


async def consumer(
    redis_client: aioredis.Redis, db: asyncpg.Pool, settings: Settings, name: str, **kw: int
) -> StoreConsumer:
    """A consumer holding every partition (the only one)."""
    worker = StoreConsumer(
        redis_client, db, buffer=event_buffer(settings, redis_client), name=name, **kw
    )
    await worker.leases.refresh()
    return worker


async def add(redis_client: aioredis.Redis, settings: Settings, *events: RunEvent) -> None:
    """Hold events in the buffer as they are, duplicates and late ends included."""
    buffer = event_buffer(settings, redis_client)
    for event in events:
        await buffer.append(event)


async def buffered(redis_client: aioredis.Redis, settings: Settings) -> int:
    return sum(await event_buffer(settings, redis_client).lengths())


async def test_a_batch_leaves_every_run_as_applying_its_events_one_by_one_would(
    db: asyncpg.Pool, agent: Agent
) -> None:
    at = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)

    def story(run_id: int) -> list[RunEvent]:
        step = dt.timedelta(seconds=1)
        return [
            RunEvent(run_id, "started", at=at),
            RunEvent(run_id, "output", at=at + step, output_data={"step": 1}, outputs=1),
            RunEvent(run_id, "waiting", at=at + 2 * step, waiting_for={"tokenId": "t"}),
            RunEvent(run_id, "output", at=at + 3 * step, output_data={"step": 2}),
            RunEvent(run_id, "completed", at=at + 4 * step, outputs=3),
            RunEvent(run_id, "failed", at=at + 5 * step, error="too late"),
            RunEvent(run_id, "output", at=at + 6 * step, output_data={"step": 3}),
        ]

    one_by_one, batched, other = [await new_run(db, agent) for _ in range(3)]
    token = await new_lease_token(db, "test:batches", 0)
    async with db.acquire() as conn:
        sequential = [
            (await record_events(conn, [e]))[0].outcome is Outcome.APPLIED
            for e in story(one_by_one)
        ]
        # Interleaved with another run's events, as a partition would carry them.
        mine, theirs = story(batched), story(other)
        mixed = [e for pair in zip(mine, theirs, strict=True) for e in pair]
        outcomes = [
            t.outcome is Outcome.APPLIED
            for t in await apply_buffered(conn, mixed, stream="test:batches", tokens={0: token})
        ]

    assert outcomes[0::2] == sequential == [True, True, True, True, True, False, False]
    assert await run_row(db, batched) == await run_row(db, one_by_one)
    finished = await run_row(db, batched)
    assert finished["status"] == "completed"
    assert finished["output_data"] == {"step": 2}
    assert finished["outputs"] == 3
    assert finished["duration_ms"] == 4000


async def test_the_same_event_twice_in_one_batch_is_applied_once(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    run_id = await new_run(db, agent)
    started = RunEvent(run_id, "started")
    progress = RunEvent(run_id, "output", output_data={"n": 1}, outputs=1)
    c1 = await consumer(redis_client, db, settings, "c1")
    await add(redis_client, settings, started, progress, progress, progress)

    assert await c1.consume_once() == 4

    assert (c1.stats.applied, c1.stats.duplicates) == (2, 2)
    assert await db.fetchval("SELECT count(*) FROM applied_events WHERE run_id = $1", run_id) == 2
    assert (await run_row(db, run_id))["output_data"] == {"n": 1}
    assert await buffered(redis_client, settings) == 0


async def test_a_late_event_in_the_same_batch_as_the_end_changes_nothing(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    run_id = await new_run(db, agent)
    c1 = await consumer(redis_client, db, settings, "c1")
    await add(
        redis_client,
        settings,
        RunEvent(run_id, "started"),
        RunEvent(run_id, "completed", output_data={"answer": 42}, outputs=1),
        RunEvent(run_id, "output", output_data={"answer": "late"}, outputs=7),
        RunEvent(run_id, "cancelled"),
    )

    await c1.consume_once()

    row = await run_row(db, run_id)
    assert (row["status"], row["output_data"], row["outputs"]) == ("completed", {"answer": 42}, 1)
    assert (c1.stats.applied, c1.stats.refused) == (2, 2)
    assert await buffered(redis_client, settings) == 0


async def test_one_event_postgresql_refuses_does_not_hold_back_the_rest_of_its_batch(
    db: asyncpg.Pool, agent: Agent, settings: Settings, redis_client: aioredis.Redis
) -> None:
    good, bad = await new_run(db, agent), await new_run(db, agent)
    c1 = await consumer(redis_client, db, settings, "c1")
    await add(
        redis_client,
        settings,
        RunEvent(good, "started"),
        # jsonb cannot hold \u0000: PostgreSQL refuses this one whatever happens.
        RunEvent(bad, "completed", output_data={"text": "nul \x00 inside"}),
        RunEvent(good, "completed", output_data={"ok": True}),
    )

    assert await c1.consume_once() == 3

    assert (await run_row(db, good))["status"] == "completed"
    assert (await run_row(db, bad))["status"] == "queued"
    assert (c1.stats.applied, c1.stats.poison) == (2, 1)
    assert await buffered(redis_client, settings) == 0


async def test_a_batch_applied_but_not_acknowledged_is_not_applied_again_when_redelivered(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_ids = [await new_run(db, agent) for _ in range(3)]
    crashing = await consumer(redis_client, db, settings, "c1")
    for run_id in run_ids:
        await add(
            redis_client,
            settings,
            RunEvent(run_id, "started"),
            RunEvent(run_id, "output", output_data={"v": run_id}, outputs=1),
        )

    async def redis_gone(*_: object) -> None:
        raise ConnectionError("the consumer died before removing what it applied")

    monkeypatch.setattr(crashing.buffer, "remove_entries", redis_gone)
    with pytest.raises(ConnectionError):
        await crashing.consume_once()
    await crashing.leases.release_all()
    monkeypatch.undo()
    # Every partition's batch was applied (side by side) and none removed.
    assert crashing.stats.applied == 6

    # A consumer starts again and takes the partitions with what is left in them.
    restarted = await consumer(redis_client, db, settings, "c2", poll_ms=20)
    task = asyncio.create_task(restarted.run())
    try:
        for _ in range(200):
            if restarted.stats.duplicates + restarted.stats.applied == 6:
                break
            await asyncio.sleep(0.02)
    finally:
        restarted.stop()
        await asyncio.wait_for(task, 5)

    assert (restarted.stats.applied, restarted.stats.duplicates) == (0, 6)
    for run_id in run_ids:
        row = await run_row(db, run_id)
        assert (row["status"], row["output_data"]) == ("running", {"v": run_id})
    assert (
        await db.fetchval("SELECT count(*) FROM applied_events WHERE run_id = ANY($1)", run_ids)
        == 6
    )
    assert await buffered(redis_client, settings) == 0


async def test_a_batch_cut_off_mid_transaction_is_applied_whole_when_redelivered(
    db: asyncpg.Pool,
    agent: Agent,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_ids = [await new_run(db, agent) for _ in range(3)]
    crashing = await consumer(redis_client, db, settings, "c1")
    for run_id in run_ids:
        await add(
            redis_client,
            settings,
            RunEvent(run_id, "started"),
            RunEvent(run_id, "completed", outputs=2),
        )
    # The connection dies inside the batch's transaction, after the lease was checked.
    monkeypatch.setattr(
        transitions,
        "_APPLY_BUFFERED",
        "SELECT pg_terminate_backend(pg_backend_pid()) "
        "FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::boolean[], "
        "$6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::text[])",
    )
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await crashing.consume_once()
    assert {(await run_row(db, r))["status"] for r in run_ids} == {"queued"}
    monkeypatch.undo()
    await crashing.leases.release_all()

    restarted = await consumer(redis_client, db, settings, "c2", poll_ms=20)
    task = asyncio.create_task(restarted.run())
    try:
        for _ in range(200):
            if restarted.stats.applied == 6:
                break
            await asyncio.sleep(0.02)
    finally:
        restarted.stop()
        await asyncio.wait_for(task, 5)

    assert {(await run_row(db, r))["status"] for r in run_ids} == {"completed"}
    assert {(await run_row(db, r))["outputs"] for r in run_ids} == {2}
    assert await buffered(redis_client, settings) == 0
