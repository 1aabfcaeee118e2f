"""Retention: the store consumer deletes what is no longer anyone's, in bounded batches."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from store.models import Agent
from store.retention import expire_idempotency_keys
from tests.support.consumers import ConsumerFactory
from tests.support.store_runs import new_run


async def bind(db: asyncpg.Pool, agent: Agent, *, age: str) -> str:
    """An Idempotency-Key binding of a new run, made ``age`` ago; its key."""
    key = uuid.uuid4().hex
    await db.execute(
        """INSERT INTO idempotency_keys (agent_id, key, request_hash, run_id, created_at)
           VALUES ($1, $2, '\\x00', $3, now() - $4::text::interval)""",
        agent.id,
        key,
        await new_run(db, agent),
        age,
    )
    return key


async def keys_left(db: asyncpg.Pool, agent: Agent) -> set[str]:
    rows = await db.fetch("SELECT key FROM idempotency_keys WHERE agent_id = $1", agent.id)
    return {row["key"] for row in rows}


async def test_idempotency_keys_past_their_24_hours_are_deleted_in_bounded_batches(
    db: asyncpg.Pool, agent: Agent
) -> None:
    expired = {await bind(db, agent, age="25 hours") for _ in range(3)}
    young = await bind(db, agent, age="23 hours")

    assert await expire_idempotency_keys(db, limit=2) == 2
    assert len(await keys_left(db, agent) & expired) == 1
    while await expire_idempotency_keys(db, limit=2):
        pass

    assert await keys_left(db, agent) == {young}
    # The runs they named stay: only the binding expired.
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent.id) == 4


async def test_the_consumer_expires_idempotency_keys_and_counts_them(
    db: asyncpg.Pool, agent: Agent, make_consumer: ConsumerFactory
) -> None:
    old = await bind(db, agent, age="2 days")
    young = await bind(db, agent, age="1 minute")

    consumer = await make_consumer(reap_every_s=0.05)
    for _ in range(200):
        if old not in await keys_left(db, agent):
            break
        await asyncio.sleep(0.02)

    assert await keys_left(db, agent) == {young}
    assert consumer.stats.expired.get("idempotency_keys", 0) >= 1
