"""Applying run ends where they are recorded (``apply_ends_returning``) beside the store
consumer, which applies the same events from the stream at the same moment."""

from __future__ import annotations

import asyncio

import asyncpg
from store.events import RunEvent, apply_ends_returning, apply_events

from store.enums import EventType
from store.models import Agent
from tests.support.store_runs import new_run

RUNS = 20


async def test_a_replica_applying_ends_never_deadlocks_with_the_consumer_applying_them_too(
    db: asyncpg.Pool, agent: Agent
) -> None:
    """The consumer locks a batch's runs in id order. A replica's batch of ends must take them
    in the same order, whatever order its plan reads the rows in: here the rows lie on disk
    out of id order (the lowest one was rewritten last) and the replica's statement is made to
    read them in that order (a sequential scan). The consumer holds the lowest run; the
    replica's statement waits for it, holding no other run, so the consumer can still take the
    highest one and commit, and both finish: no deadlock error on either side."""
    run_ids = [await new_run(db, agent) for _ in range(RUNS)]
    await db.execute("UPDATE runs SET updated_at = now() WHERE id = $1", run_ids[0])
    ends = [RunEvent(run_id, EventType.COMPLETED, output_data={"n": run_id}) for run_id in run_ids]

    async with db.acquire() as consumer, db.acquire() as replica:
        await replica.execute(
            "SET enable_indexscan = off; SET enable_bitmapscan = off; "
            "SET enable_nestloop = off; SET enable_mergejoin = off"
        )
        batch = consumer.transaction()
        await batch.start()
        try:
            await consumer.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_ids[0])
            applying = asyncio.ensure_future(apply_ends_returning(replica, ends))
            # The replica's statement is under way and waits for the lowest run.
            for _ in range(500):
                waiting = await db.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                    replica.get_server_pid(),
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting
            # It holds no other run: the consumer takes the highest one without waiting.
            await asyncio.wait_for(
                consumer.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_ids[-1]),
                timeout=30,
            )
            outcomes = await apply_events(consumer, ends[:1])
        finally:
            await batch.commit()
        ended = await asyncio.wait_for(applying, timeout=30)

    assert outcomes == [True]
    # The consumer ended the lowest run first; the replica ended every other one.
    assert sorted(run.id for run in ended) == run_ids[1:]
    rows = await db.fetch("SELECT id, status FROM runs WHERE id = ANY($1)", run_ids)
    assert {row["status"] for row in rows} == {"completed"}
