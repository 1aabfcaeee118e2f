"""Redis Cluster: the keys a script touches together share a hash tag, and owners spread.

These run on a real three-primary cluster in every pass: the session's own when it runs
against one (``TEST_REDIS=cluster``), else one this module starts from the same binary.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError

from devkit.embedded import EmbeddedRedisCluster
from gateway.http.access.agent_buckets import EXECUTIONS, RUN_REPORTS, SYNC_RUNS, TRIGGERS
from gateway.security.key_guard import KeyGuard
from gateway.security.ratelimit import RateLimiter, Take, bucket_key
from store.consumer import StoreConsumer
from store.enums import EventType
from store.event_buffer import EventBuffer
from store.models import Agent
from store.redis_client import connect_redis, slot_of
from store.run_events import RunEvent
from tests.support.backends import Backends
from tests.support.store_runs import new_run

AGENTS = range(1, 25)


@pytest.fixture(scope="module")
def cluster_url(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node of a three-primary Redis Cluster."""
    if backends.redis_cluster:
        yield backends.redis_url
        return
    cluster = EmbeddedRedisCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect_redis(cluster_url, cluster=True)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


def _primary_of(cluster: RedisCluster, key: str) -> str:
    node = cluster.get_node_from_key(key)
    assert node is not None
    return str(node.name)


async def test_the_cluster_has_three_primaries_sharing_the_slots(cluster: RedisCluster) -> None:
    primaries = cluster.get_primaries()
    assert len(primaries) == 3
    info = await cluster.cluster_info()
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_slots_ok"]) == 16384


async def test_an_agents_buckets_share_one_slot_and_agents_spread_over_every_primary(
    cluster: RedisCluster,
) -> None:
    limiter = RateLimiter(cluster, fail_open=False)
    owners = set()
    for agent_id in AGENTS:
        buckets = (TRIGGERS, SYNC_RUNS, RUN_REPORTS, EXECUTIONS)
        keys = [bucket_key(f"agent:{agent_id}:{bucket.name}") for bucket in buckets]
        # What the server itself says, not only the client's hash.
        slots = {int(await cluster.cluster_keyslot(key)) for key in keys}
        assert slots == {slot_of(keys[0])}
        owners.add(_primary_of(cluster, keys[0]))
        # A take lands on the primary that owns the agent's slot, through the cluster client.
        decision = await limiter.take(f"agent:{agent_id}:trigger", limit=5, window_s=60)
        assert decision.allowed
        assert await cluster.exists(keys[0]) == 1
    assert owners == {node.name for node in cluster.get_primaries()}
    await cluster.delete(*(bucket_key(f"agent:{a}:trigger") for a in AGENTS))


async def test_a_script_over_keys_of_different_tags_is_refused_crossslot(
    cluster: RedisCluster,
) -> None:
    """What the hash tags prevent: Redis refuses one script over two slots."""
    # Owners no other test uses: their buckets do not exist, whatever ran before.
    owner = uuid.uuid4().int % 10**15
    first = bucket_key(f"agent:{owner}:trigger")
    second = next(
        key
        for other in range(owner + 1, owner + 100)
        if slot_of(key := bucket_key(f"agent:{other}:trigger")) != slot_of(first)
    )
    node = cluster.get_node_from_key(first)
    assert node is not None
    # Straight to the node that owns the first key, past the cluster client's own check.
    direct = Redis(host=node.host, port=node.port)
    try:
        with pytest.raises(ClusterCrossSlotError):  # the server answered CROSSSLOT
            await direct.eval("return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, first, second)
        # The same two buckets of one owner are one slot: the script runs.
        assert (
            await direct.eval(
                "return redis.call('EXISTS', KEYS[1], KEYS[2])",
                2,
                first,
                bucket_key(f"agent:{owner}:sync"),
            )
            == 0
        )
    finally:
        await direct.aclose()


async def test_the_key_guards_look_and_an_agents_take_keep_their_order_across_slots(
    cluster: RedisCluster,
) -> None:
    """The look at an address and the take from an agent cannot share a slot; on a cluster
    they are two calls, and a refused look still leaves the agent's bucket untouched."""
    limiter = RateLimiter(cluster, fail_open=False)
    guard = KeyGuard(limiter, limit=1, window_s=600)
    address = "203.0.113.77"
    agent = Take("agent:9001:trigger", 5, 60)
    assert slot_of(bucket_key(guard.look(address).bucket)) != slot_of(bucket_key(agent.bucket))
    try:
        looked, took = await limiter.take_in_order(guard.look(address), agent)
        assert looked.allowed
        assert took.allowed
        assert took.remaining == 4
        assert (await guard.failed(address)).allowed  # the address's one attempt, spent
        decisions = await limiter.take_in_order(guard.look(address), agent)
        assert [d.allowed for d in decisions] == [False]
        (after,) = await limiter.take_in_order(Take(agent.bucket, 5, 60, cost=0))
        assert after.remaining == 4
    finally:
        await cluster.delete(bucket_key(agent.bucket), bucket_key(guard.look(address).bucket))


async def test_the_event_buffer_partitions_spread_over_every_primary_and_drain_there(
    cluster: RedisCluster, db: asyncpg.Pool, agent: Agent
) -> None:
    """Held while PostgreSQL was away: each partition's stream and lease share its slot, the
    partitions land on all three primaries, and a consumer on the cluster applies them."""
    buffer = EventBuffer(cluster, f"cluster-test:{uuid.uuid4().hex}", 16)
    for partition in range(buffer.partitions):
        stream, lease = buffer.stream_key(partition), buffer.lease_key(partition)
        assert int(await cluster.cluster_keyslot(stream)) == int(
            await cluster.cluster_keyslot(lease)
        )
    owners = {_primary_of(cluster, buffer.stream_key(p)) for p in range(buffer.partitions)}
    assert owners == {node.name for node in cluster.get_primaries()}

    run_ids = [await new_run(db, agent) for _ in range(32)]
    for run_id in run_ids:
        await buffer.append(RunEvent(run_id, EventType.OUTPUT, output_data={"v": 1}))
        await buffer.append(RunEvent(run_id, EventType.COMPLETED, outputs=1))
    consumer = StoreConsumer(cluster, db, buffer=buffer, name="on-the-cluster")
    await consumer.leases.refresh()
    assert len(consumer.leases.held) == buffer.partitions
    while await consumer.consume_once():
        pass

    rows = await db.fetch("SELECT status, output_data FROM runs WHERE id = ANY($1)", run_ids)
    assert {(r["status"], r["output_data"]["v"]) for r in rows} == {("completed", 1)}
    assert sum(await buffer.lengths()) == 0
    await consumer.leases.release_all()
