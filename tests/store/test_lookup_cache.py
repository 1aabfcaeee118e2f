"""The lookup cache on its own: misses are never kept, and a read that an invalidation overtook
is not stored."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from store import orgs
from store.lookup_cache import LookupCache
from store.models import Agent
from tests.support.backends import Backends


@pytest.fixture
async def cache(db: asyncpg.Pool, backends: Backends) -> AsyncIterator[LookupCache]:
    """A serving cache (its listener connected) with a TTL no test outlives."""
    lookups = LookupCache(db, ttl_s=300, size=100, database_url=backends.database_url)
    listening = asyncio.create_task(lookups.listen())
    for _ in range(500):
        if lookups.serving:
            break
        await asyncio.sleep(0.01)
    assert lookups.serving
    yield lookups
    listening.cancel()
    await asyncio.wait([listening])


async def test_a_key_unknown_a_moment_ago_works_as_soon_as_it_is_created(
    db: asyncpg.Pool, cache: LookupCache
) -> None:
    org_id = await orgs.create_org(db, "New key")
    key_hash = hashlib.sha256(uuid.uuid4().bytes).digest()
    assert await cache.org_for_ingest_key(key_hash) is None

    await orgs.create_ingest_key(db, org_id, key_hash, "igk_test")

    assert await cache.org_for_ingest_key(key_hash) == org_id
    hits = cache.stats.hits
    assert await cache.org_for_ingest_key(key_hash) == org_id
    assert cache.stats.hits == hits + 1


async def test_an_agent_is_never_answered_for_another_organisation(
    db: asyncpg.Pool, cache: LookupCache, agent: Agent
) -> None:
    assert await cache.agent_in_org(agent.id, agent.org_id) == agent
    hits = cache.stats.hits
    assert await cache.agent_in_org(agent.id, uuid.uuid4()) is None
    assert cache.stats.hits == hits + 1, "answered from memory, and still refused"


async def test_a_read_an_invalidation_overtook_is_not_stored(
    db: asyncpg.Pool, cache: LookupCache, agent: Agent
) -> None:
    """The read is held on purpose (the table locked by another transaction); the agent's
    invalidation comes while it waits. What that read brings back may be the row before the
    change, so the next lookup reads again."""
    async with db.acquire() as locker:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        read = asyncio.create_task(cache.agent_in_org(agent.id, agent.org_id))
        for _ in range(500):
            if await db.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                break
            await asyncio.sleep(0.01)
        assert not read.done(), "the read waits for the lock"
        cache.invalidate_agent(agent.id)
        await transaction.rollback()
    assert await read == agent

    misses = cache.stats.misses
    assert await cache.agent_in_org(agent.id, agent.org_id) == agent
    assert cache.stats.misses == misses + 1, "the overtaken read was not kept"
    assert await cache.agent_in_org(agent.id, agent.org_id) == agent
    assert cache.stats.misses == misses + 1, "this one was"


async def _reads_waiting(observer: asyncpg.Connection, count: int) -> int:
    """How many reads wait on the locked table, once ``count`` do or a moment has passed."""
    waiting = 0
    for _ in range(100):
        waiting = await observer.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
        if waiting >= count:
            break
        await asyncio.sleep(0.01)
    return int(waiting)


async def test_a_burst_of_lookups_missing_one_agent_shares_one_read(
    db: asyncpg.Pool, cache: LookupCache, agent: Agent, backends: Backends
) -> None:
    """Fifty calls for an agent not yet cached arrive while its row cannot be read (the table
    locked on purpose): one query waits for the row, not one per call, and all fifty get the
    agent. A call that begins after the agent was invalidated reads the row again."""
    observer = await asyncpg.connect(backends.database_url)
    try:
        async with db.acquire() as locker:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
            burst = [
                asyncio.create_task(cache.agent_in_org(agent.id, agent.org_id)) for _ in range(50)
            ]
            # Time for a read per call to reach the lock, were there one per call (the pool
            # has three connections besides the locker's).
            await asyncio.sleep(0.3)
            assert await _reads_waiting(observer, 1) == 1
            cache.invalidate_agent(agent.id)
            after = asyncio.create_task(cache.agent_in_org(agent.id, agent.org_id))
            assert await _reads_waiting(observer, 2) == 2
            await transaction.rollback()
        assert await asyncio.gather(*burst, after) == [agent] * 51
    finally:
        await observer.close()
