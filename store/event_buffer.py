"""The Redis buffer of run events: where an event waits while PostgreSQL cannot take it.

A run's events are recorded in PostgreSQL on the caller's path (:mod:`store.transitions`).
When PostgreSQL is away, the gateway appends the event here instead and answers; the store
consumer applies it once PostgreSQL is back.

The buffer is partitioned by run id, one Redis stream per partition, and each partition is
drained by one consumer at a time, under a lease: every event of a run is in one stream, read
in the order it was appended by the only consumer allowed to apply it, so a run's events are
applied in order whatever the number of consumers and whichever of them dies (a dead one's
lease lapses and another consumer takes the partition, with what was left in it). Every key of
a partition carries the partition's hash tag, so that on Redis Cluster each script touches one
slot and the partitions spread across the cluster's primaries.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster

from store.redis_client import RedisClient
from store.run_events import RunEvent

log = structlog.get_logger(__name__)

# Renew (ARGV[2] ms) or release (ARGV[2] = 0) a lease this consumer holds.
_RENEW_OR_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
"""

# Append to a partition's stream (KEYS[1]) unless it already holds ARGV[1] entries: the length
# and the append in one step, on the one key. 1: appended; 0: refused (nothing dropped).
_APPEND_UNLESS_FULL = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
return 1
"""

# The default cap of one partition (the EVENTS_BUFFER_MAX_PER_PARTITION setting).
DEFAULT_MAX_PER_PARTITION = 100_000


class EventBufferFull(Exception):
    """A partition of the buffer already holds its cap: the event was not held (the buffer
    never drops or trims an event it took; the caller is told to retry instead)."""

    def __init__(self, partition: int, held: int) -> None:
        super().__init__(f"run-event buffer partition {partition} holds its cap of {held} events")
        self.partition = partition
        self.held = held


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """An event read from a partition, with its entry id there (to remove it once applied)."""

    entry_id: bytes
    event: RunEvent | None  # None: the entry could not be decoded (set aside)
    error: str | None = None


class EventBuffer:
    """The partitioned streams under ``prefix`` (the ``EVENTS_STREAM`` setting)."""

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        partitions: int,
        *,
        max_per_partition: int = DEFAULT_MAX_PER_PARTITION,
    ) -> None:
        self._redis = redis
        self.prefix = prefix
        self.partitions = partitions
        self.max_per_partition = max_per_partition
        self._append_unless_full = redis.register_script(_APPEND_UNLESS_FULL)

    @property
    def redis(self) -> RedisClient:
        """The client the buffer speaks through."""
        return self._redis

    def partition_of(self, run_id: int) -> int:
        """The partition that holds ``run_id``'s events."""
        return run_id % self.partitions

    def stream_key(self, partition: int) -> str:
        """The stream of ``partition``; its hash tag is the partition's own."""
        return f"{{{self.prefix}:p{partition}}}"

    def lease_key(self, partition: int) -> str:
        """Who drains ``partition`` now (same hash tag as its stream)."""
        return f"{self.stream_key(partition)}:lease"

    @property
    def consumers_key(self) -> str:
        """The consumers alive, with when each was last seen (for a fair share of partitions)."""
        return f"{{{self.prefix}}}:consumers"

    async def append(self, event: RunEvent) -> None:
        """Hold ``event`` until the consumer applies it (one script, on one key).

        Raises :class:`EventBufferFull` when its partition already holds ``max_per_partition``
        events: the buffer refuses the new event rather than trim one not yet applied.
        """
        partition = self.partition_of(event.run_id)
        args: list[Any] = [self.max_per_partition]
        for name, value in event.encode().items():
            args += [name, value]
        appended = await self._append_unless_full(keys=[self.stream_key(partition)], args=args)
        if not appended:
            raise EventBufferFull(partition, self.max_per_partition)

    async def read(self, partition: int, count: int) -> list[BufferedEvent]:
        """The oldest ``count`` entries of ``partition``, in order."""
        entries: Any = await self._redis.xrange(self.stream_key(partition), count=count)
        return [_decode(entry_id, fields) for entry_id, fields in entries]

    @property
    def blocking_reads(self) -> bool:
        """Whether :meth:`read_partitions` can wait for entries: one blocking read covers
        every partition only where they are all on one server (not on a Redis Cluster)."""
        return not isinstance(self._redis, RedisCluster)

    async def read_partitions(
        self, partitions: list[int], count: int, *, block_ms: int | None = None
    ) -> dict[int, list[BufferedEvent]]:
        """The oldest ``count`` entries of each of ``partitions`` (one round trip per node).

        ``block_ms`` (only where :attr:`blocking_reads`): when every one of them is empty, wait
        up to that long for an entry in any of them (one ``XREAD BLOCK``). Applied entries are
        removed, so the oldest entries are those after ``0-0``.
        """
        if block_ms is not None and self.blocking_reads:
            answer: Any = await self._redis.xread(
                {self.stream_key(partition): "0-0" for partition in partitions},
                count=count,
                block=block_ms,
            )
            found: dict[int, list[BufferedEvent]] = {partition: [] for partition in partitions}
            by_key = {self.stream_key(partition): partition for partition in partitions}
            for key, entries in answer or []:
                name = key.decode() if isinstance(key, bytes) else key
                found[by_key[name]] = [_decode(entry_id, fields) for entry_id, fields in entries]
            return found
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.xrange(self.stream_key(partition), count=count)
            replies: list[Any] = await pipe.execute()
        return {
            partition: [_decode(entry_id, fields) for entry_id, fields in entries]
            for partition, entries in zip(partitions, replies, strict=True)
        }

    async def remove_entries(self, entry_ids: dict[str, list[bytes]]) -> None:
        """Remove applied entries, by stream key (one round trip per node)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ids in entry_ids.items():
                if ids:
                    pipe.xdel(key, *ids)
            await pipe.execute()

    async def read_legacy(self, count: int) -> list[BufferedEvent]:
        """The oldest ``count`` entries of the single stream (named ``prefix``) that releases
        before 0.1.0 published every event to: left over from a rolling upgrade."""
        entries: Any = await self._redis.xrange(self.prefix, count=count)
        return [_decode(entry_id, fields) for entry_id, fields in entries]

    async def lengths(self) -> list[int]:
        """How many events each partition holds."""
        return list(
            await asyncio.gather(
                *(self._redis.xlen(self.stream_key(p)) for p in range(self.partitions))
            )
        )


def _decode(entry_id: bytes, fields: dict[bytes, bytes]) -> BufferedEvent:
    try:
        return BufferedEvent(entry_id, RunEvent.decode(fields))
    except (KeyError, ValueError, TypeError) as exc:
        return BufferedEvent(entry_id, None, error=str(exc))


class PartitionLeases:
    """The partitions one consumer drains, each under a lease that lapses if it dies.

    Every live consumer aims at an equal share: it takes free partitions up to
    ``ceil(partitions / consumers alive)`` and gives back what it holds beyond that, so a new
    consumer gets work and a dead one's partitions are taken over within one lease.
    """

    def __init__(self, buffer: EventBuffer, redis: RedisClient, name: str, lease_s: float):
        self._buffer = buffer
        self._redis = redis
        self._name = name
        self._lease_ms = max(1, int(lease_s * 1000))
        self._renew_or_release = redis.register_script(_RENEW_OR_RELEASE)
        # The partitions held, with the fencing token of this consumer's lease on each (taken
        # from PostgreSQL before the first batch is applied: None until then).
        self.held: dict[int, int | None] = {}

    @property
    def lease_ms(self) -> int:
        """How long a lease lasts without renewal."""
        return self._lease_ms

    async def refresh(self) -> dict[int, int | None]:
        """Renew what is held, take a fair share of what is free, give back the surplus.
        Returns the partitions held now, with their tokens."""
        alive = await self._consumers_alive()
        renewed = await asyncio.gather(*(self.renew(partition) for partition in sorted(self.held)))
        for partition, kept in zip(sorted(self.held), renewed, strict=True):
            if not kept:
                log.warning("event_partition_lease_lost", partition=partition, consumer=self._name)
                del self.held[partition]
        share = math.ceil(self._buffer.partitions / max(1, alive))
        for partition in sorted(self.held, reverse=True)[: max(0, len(self.held) - share)]:
            await self.release(partition)
        # Start the search at a place of this consumer's own, so that consumers starting
        # together do not all ask for the same partitions first.
        start = hash(self._name) % self._buffer.partitions
        order = [(start + i) % self._buffer.partitions for i in range(self._buffer.partitions)]
        for partition in order:
            if len(self.held) >= share:
                break
            if partition in self.held:
                continue
            taken = await self._redis.set(
                self._buffer.lease_key(partition), self._name, nx=True, px=self._lease_ms
            )
            if taken:
                self.held[partition] = None
        return dict(self.held)

    async def release(self, partition: int) -> None:
        """Give ``partition`` back now (another consumer may take it at once)."""
        self.held.pop(partition, None)
        await self._renew_or_release(keys=[self._buffer.lease_key(partition)], args=[self._name, 0])

    async def release_all(self) -> None:
        """Give every partition back, and leave the consumers alive (on a clean stop)."""
        for partition in list(self.held):
            await self.release(partition)
        await self._redis.zrem(self._buffer.consumers_key, self._name)

    async def renew(self, partition: int) -> bool:
        """Renew this consumer's lease on ``partition``; whether it still held it."""
        reply = await self._renew_or_release(
            keys=[self._buffer.lease_key(partition)], args=[self._name, self._lease_ms]
        )
        return bool(reply)

    async def _consumers_alive(self) -> int:
        now_ms = int(time.time() * 1000)
        key = self._buffer.consumers_key
        await self._redis.zadd(key, {self._name: now_ms + self._lease_ms})
        await self._redis.zremrangebyscore(key, "-inf", now_ms)
        return int(await self._redis.zcard(key))
