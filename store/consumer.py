"""The store consumer: applies the events the Redis buffer holds, runs the reaper and retention.

Runs as its own process (``agent-gateway consume``). Events reach the buffer only while
PostgreSQL cannot take them on the caller's path (:mod:`store.event_buffer`). The consumer
holds leases on a fair share of the buffer's partitions and drains each in order: a batch is
applied in one transaction under the partition's lease, and removed from the stream only after
the commit. A consumer that dies mid-batch leaves the batch in the stream; whoever takes the
partition next applies it again, which changes nothing that was already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import structlog
from redis.exceptions import RedisError

from store.announcements import announce_terminal
from store.event_buffer import BufferedEvent, EventBuffer, PartitionLeases
from store.reaper import reap_overdue
from store.redis_client import RedisClient
from store.retention import (
    RETENTION_KINDS,
    BlobDeleter,
    RetentionPolicy,
    expire_idempotency_keys,
    expire_input_files,
    expire_packages,
    expire_runs,
)
from store.run_events import RunEvent
from store.transitions import LeaseLost, Outcome, Transition, apply_buffered, new_lease_token

log = structlog.get_logger(__name__)

# How soon an idle consumer looks at its partitions again, at first (then up to CONSUMER_POLL_MS).
_FIRST_POLL_S = 0.005
# The partition whose holder also drains the stream releases before 0.1.0 published to.
_LEGACY_PARTITION = 0
# A batch that deadlocked or hit a serialisation failure is tried again this many times in all.
_CONFLICT_RETRIES = 3
# Errors that say PostgreSQL is away, busy or in a conflict: the same batch may pass later.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
)


def _refused(exc: Exception) -> bool:
    """Whether the data itself was refused, so that applying the same event can never pass:
    PostgreSQL rejected a value, or asyncpg could not encode one (a ``ValueError``)."""
    if isinstance(exc, asyncpg.InterfaceError):
        return isinstance(exc, ValueError)
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _TRANSIENT)


@dataclass(frozen=True, slots=True)
class _Batch:
    """Entries read from one stream: a partition's, or the pre-0.1.0 one (under partition 0)."""

    partition: int
    key: str
    entries: list[BufferedEvent]


@dataclass(slots=True)
class ConsumerStats:
    """Counters a test or the metrics endpoint can read."""

    applied: int = 0
    duplicates: int = 0
    refused: int = 0
    poison: int = 0
    reaped: int = 0
    leases_lost: int = 0
    # Rows deleted by retention, by kind (store/retention.py).
    expired: dict[str, int] = field(default_factory=dict)


class StoreConsumer:
    """Drains the buffer's partitions into PostgreSQL until :meth:`stop` is called."""

    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        *,
        buffer: EventBuffer,
        name: str | None = None,
        batch: int = 500,
        poll_ms: int = 1000,
        lease_s: float = 10.0,
        reap_every_s: float = 15.0,
        retention: RetentionPolicy | None = None,
        blobs: BlobDeleter | None = None,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self.buffer = buffer
        # Unique even where containers share a host name and a PID (1).
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._batch = batch
        self._poll_s = poll_ms / 1000
        self._reap_every_s = reap_every_s
        self._retention = retention or RetentionPolicy()
        # Runs and input files name blobs: without a blob store they are kept (see _expire).
        self._blobs = blobs
        if blobs is None and (self._retention.runs_days or self._retention.input_files_days):
            log.warning("retention_without_blob_store", kept=["runs", "input_files"])
        self.leases = PartitionLeases(buffer, redis, self.name, lease_s)
        self._stopping = asyncio.Event()
        # A batch and a lease refresh (or the reaper) never run at once.
        self._turn = asyncio.Lock()
        self._legacy_seen_empty = False
        # Whether the leases were refreshed once (before: no partition held is no idle turn).
        self._ready = False
        self.stats = ConsumerStats()
        # time.monotonic() of the loop's last turn (a liveness signal: it turns at least every
        # poll interval, or every second while Redis or PostgreSQL is away).
        self.heartbeat = time.monotonic()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the batches in hand, give the partitions back, then return from :meth:`run`."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped. Redis or PostgreSQL outages are waited out, not fatal.

        Batches are applied in this loop; the leases are renewed and the reaper and retention
        run in a task of their own, so that none of them holds up a turn. A batch and a lease
        refresh never overlap (one lock): the leases of a consumer whose batch is stuck lapse,
        and another consumer takes its partitions.
        """
        maintenance = asyncio.create_task(self._maintain(), name=f"consumer-leases-{self.name}")
        # Where the buffer is one Redis server, a turn waits in one blocking read over every
        # partition held, so an event is read the moment it is appended. On a cluster (the
        # partitions spread over nodes) an idle consumer looks again after _FIRST_POLL_S,
        # doubling up to the poll interval: a buffer filling up is drained within
        # milliseconds, an empty one costs one read per partition per interval.
        blocking = self.buffer.blocking_reads
        block_ms = max(1, int(self._poll_s * 1000))
        idle_s = _FIRST_POLL_S
        try:
            while not self._stopping.is_set():
                self.heartbeat = time.monotonic()
                try:
                    if not self.leases.held:
                        await self._sleep(min(self._poll_s, 0.05) if self._ready else idle_s)
                        continue
                    moved = await self.consume_once(block_ms=block_ms if blocking else None)
                    if moved or blocking:
                        idle_s = _FIRST_POLL_S
                    else:
                        await self._sleep(idle_s)
                        idle_s = min(idle_s * 2, self._poll_s)
                except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("consumer_backoff", error=str(exc), consumer=self.name)
                    await self._sleep(1.0)
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
        with contextlib.suppress(RedisError, OSError):
            await self.leases.release_all()

    async def _maintain(self) -> None:
        """Renew the leases (a fair share), then the reaper and retention, each on its period."""
        loop = asyncio.get_running_loop()
        next_reap = next_refresh = 0.0
        refresh_s = self.leases.lease_ms / 3000
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_refresh:
                    async with self._turn:
                        await self.leases.refresh()
                    # Streams of releases before 0.1.0 are looked at again once per refresh.
                    self._legacy_seen_empty = False
                    self._ready = True
                    next_refresh = loop.time() + refresh_s
                if loop.time() >= next_reap:
                    # After the batch in hand: an event already on its way wins over the
                    # deadline.
                    async with self._turn:
                        await self._reap()
                    await self._expire()
                    next_reap = loop.time() + self._reap_every_s
                await self._sleep(max(0.0, min(next_refresh, next_reap) - loop.time()))
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("consumer_maintenance_backoff", error=str(exc), consumer=self.name)
                await self._sleep(1.0)

    async def consume_once(self, *, block_ms: int | None = None) -> int:
        """Apply a batch from every partition held, all in one transaction; how many entries
        were handled. ``block_ms``: wait that long for an entry when there is none (one
        blocking read over the partitions; only where the buffer is one Redis server)."""
        held = sorted(self.leases.held)
        if not held:
            return 0
        batches: list[_Batch] = []
        # A release before 0.1.0 published every event to one stream: whoever drains
        # partition 0 drains what a rolling upgrade left there too, under its lease (first:
        # its events are older than any of the same run in the partitions). Read until it is
        # found empty, then again after each lease refresh.
        if _LEGACY_PARTITION in self.leases.held and not self._legacy_seen_empty:
            legacy = await self.buffer.read_legacy(self._batch)
            if legacy:
                batches.append(_Batch(_LEGACY_PARTITION, self.buffer.prefix, legacy))
                block_ms = None
            else:
                self._legacy_seen_empty = True
        read = await self.buffer.read_partitions(held, self._batch, block_ms=block_ms)
        batches += [
            _Batch(partition, self.buffer.stream_key(partition), entries)
            for partition, entries in read.items()
            if entries
        ]
        if not batches:
            return 0
        async with self._turn:
            return await self._apply(batches)

    async def _token(self, partition: int) -> int:
        """This consumer's fencing token on ``partition`` (taken once per lease)."""
        token = self.leases.held.get(partition)
        if token is None:
            # Taken only while the lease is still this consumer's: a token taken after the
            # lease passed on would fence off the consumer that holds it now.
            if not await self.leases.renew(partition):
                raise LeaseLost({partition})
            token = await new_lease_token(self._pool, self.buffer.prefix, partition)
            self.leases.held[partition] = token
        return token

    async def _reap(self) -> None:
        if reaped := await reap_overdue(self._pool):
            self.stats.reaped += len(reaped)
            log.warning("runs_reaped", run_ids=reaped)
            await announce_terminal(self._redis, self.buffer.prefix, reaped)

    async def _expire(self) -> None:
        """Retention: one bounded batch of each kind per turn of the reaper."""
        policy, limit = self._retention, self._retention.limit
        self._count("idempotency_keys", await expire_idempotency_keys(self._pool, limit=limit))
        self._count(
            "packages", await expire_packages(self._pool, days=policy.packages_days, limit=limit)
        )
        if self._blobs is None:
            return
        self._count(
            "input_files",
            await expire_input_files(
                self._pool, self._blobs, days=policy.input_files_days, limit=limit
            ),
        )
        self._count(
            "runs", await expire_runs(self._pool, self._blobs, days=policy.runs_days, limit=limit)
        )

    def _count(self, kind: str, deleted: int) -> None:
        assert kind in RETENTION_KINDS
        if deleted:
            self.stats.expired[kind] = self.stats.expired.get(kind, 0) + deleted
            log.info("retention_deleted", kind=kind, rows=deleted)

    def _fenced(self, partition: int) -> None:
        self.stats.leases_lost += 1
        self.leases.held.pop(partition, None)
        log.warning("event_partition_fenced", partition=partition, consumer=self.name)

    async def _apply(self, batches: list[_Batch]) -> int:
        """Apply ``batches`` in one transaction, then remove them from their streams."""
        tokens: dict[int, int] = {}
        for partition in dict.fromkeys(batch.partition for batch in batches):
            try:
                tokens[partition] = await self._token(partition)
            except LeaseLost:
                self._fenced(partition)
        batches = [batch for batch in batches if batch.partition in tokens]
        events: list[RunEvent] = []
        for batch in batches:
            for entry in batch.entries:
                if entry.event is None:
                    # An entry nobody can decode is set aside, not retried forever.
                    self.stats.poison += 1
                    log.error("consumer_poison_event", entry_id=entry.entry_id, error=entry.error)
                else:
                    events.append(entry.event)
        try:
            transitions = await self._apply_events(tokens, events)
        except LeaseLost as lost:
            for partition in lost.partitions:
                self._fenced(partition)
            return 0
        ended: list[int] = []
        for event, transition in zip(events, transitions, strict=True):
            if transition is None:
                self.stats.poison += 1
            elif transition.outcome is Outcome.DUPLICATE:
                self.stats.duplicates += 1
            elif transition.outcome is Outcome.APPLIED:
                self.stats.applied += 1
                if transition.ended:
                    ended.append(event.run_id)
            else:
                self.stats.refused += 1
        # Waiters on every replica learn of the ends once the rows say them: first, as the
        # removal (an XDEL per partition) is no part of the lag they see; the entries are
        # removed only after the commit.
        await announce_terminal(self._redis, self.buffer.prefix, ended)
        removed: dict[str, list[bytes]] = {}
        for batch in batches:
            removed.setdefault(batch.key, []).extend(entry.entry_id for entry in batch.entries)
        await self.buffer.remove_entries(removed)
        return sum(len(batch.entries) for batch in batches)

    async def _apply_events(
        self, tokens: dict[int, int], events: list[RunEvent]
    ) -> list[Transition | None]:
        """The transition of each event; ``None`` for one PostgreSQL will never take.

        An outage propagates: nothing is removed, the batch is read again. An event PostgreSQL
        refuses (a value it cannot store) fails the batch's transaction; the batch is then
        applied event by event, so that only that event is set aside (logged, removed) and the
        others are applied, in order.
        """
        if not events:
            return []
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self._pool.acquire() as conn:
                    applied = await apply_buffered(
                        conn, events, stream=self.buffer.prefix, tokens=tokens
                    )
                return list(applied)
            except asyncpg.TransactionRollbackError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not _refused(exc):
                    raise
                log.warning("consumer_batch_refused", size=len(events), error=str(exc))
                break
        transitions: list[Transition | None] = []
        async with self._pool.acquire() as conn:
            for event in events:
                try:
                    [one] = await apply_buffered(
                        conn, [event], stream=self.buffer.prefix, tokens=tokens
                    )
                    transitions.append(one)
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    if not _refused(exc):
                        raise
                    log.error(
                        "consumer_event_set_aside",
                        event_id=str(event.event_id),
                        run_id=event.run_id,
                        type=event.type,
                        error=str(exc),
                    )
                    transitions.append(None)
        return transitions

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
