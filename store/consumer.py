"""The store consumer: reads run events from the Redis Stream and applies them to PostgreSQL.

Runs as its own process (``agent-gateway consume``). It reads with a consumer group, applies
each event in a transaction, acknowledges only after commit, and reclaims events that a dead
consumer left pending, so none is lost and (with the idempotent apply) none is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from store.events import (
    RunEvent,
    announce_terminal,
    apply_event,
    apply_events,
    terminal_channel,
)
from store.reaper import reap_overdue

log = structlog.get_logger(__name__)

# KEYS[1] stream; ARGV[1] group, ARGV[2] channel, ARGV[3] n, then n entry ids, then the ids of
# the runs that just ended. Acknowledged entries are deleted: the stream holds what is pending.
# unpack() is limited by Lua's stack, so the ids go in slices.
_ACK_AND_ANNOUNCE = """
local n = tonumber(ARGV[3])
local step = 500
for first = 4, 3 + n, step do
  local last = math.min(first + step - 1, 3 + n)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
end
for i = 4 + n, #ARGV do
  redis.call('PUBLISH', ARGV[2], ARGV[i])
end
return n
"""

# The outcome of an event PostgreSQL refused to store: acknowledged and logged, not retried.
_SET_ASIDE = object()
# A batch that deadlocked with another consumer's is tried again this many times in all.
_DEADLOCK_RETRIES = 3


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


@dataclass(slots=True)
class _Batch:
    """Entries read together: the events to apply, and the ids to acknowledge as they are."""

    size: int
    events: list[tuple[bytes, RunEvent]] = field(default_factory=list)
    done: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class ConsumerStats:
    """Counters a test or the metrics endpoint can read."""

    applied: int = 0
    duplicates: int = 0
    refused: int = 0
    reclaimed: int = 0
    poison: int = 0
    reaped: int = 0


class StoreConsumer:
    """Applies the run-event stream to PostgreSQL until :meth:`stop` is called."""

    def __init__(
        self,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        *,
        stream: str,
        group: str,
        name: str | None = None,
        batch: int = 500,
        block_ms: int = 1000,
        reclaim_idle_ms: int = 30_000,
        reap_every_s: float = 15.0,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._stream = stream
        self._group = group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._batch = batch
        self._block_ms = block_ms
        self._reclaim_idle_ms = reclaim_idle_ms
        self._reap_every_s = reap_every_s
        self._stopping = asyncio.Event()
        self.stats = ConsumerStats()
        self._ack_script = redis.register_script(_ACK_AND_ANNOUNCE)
        self._ahead: asyncio.Future[_Batch] | None = None
        # time.monotonic() of the loop's last turn (a liveness signal: it turns at least every
        # block_ms, or every second while Redis or PostgreSQL is away).
        self.heartbeat = time.monotonic()

    @property
    def stream(self) -> str:
        """The stream this consumer reads."""
        return self._stream

    @property
    def group(self) -> str:
        """The consumer group it reads in."""
        return self._group

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`run`."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped. Redis or PostgreSQL outages are waited out, not fatal."""
        await self._until_ready()
        # Our own pending entries first (a restart under the same name), then new ones.
        await self._drain_pending("0")
        next_reclaim = next_reap = 0.0
        loop = asyncio.get_running_loop()
        read_again = False
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            try:
                if read_again:
                    # What this consumer read but could not apply is applied first.
                    await self._drain_pending("0")
                    read_again = False
                if loop.time() >= next_reclaim:
                    await self._reclaim()
                    next_reclaim = loop.time() + self._reclaim_idle_ms / 2000
                if loop.time() >= next_reap:
                    # Pending events first, then the reaper: an event already on its way
                    # wins over the deadline.
                    await self.consume_once(block_ms=None)
                    if reaped := await reap_overdue(self._pool):
                        self.stats.reaped += len(reaped)
                        log.warning("runs_reaped", run_ids=reaped)
                        await announce_terminal(self._redis, self._stream, reaped)
                    next_reap = loop.time() + self._reap_every_s
                await self.consume_once(block_ms=self._block_ms)
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("consumer_backoff", error=str(exc), consumer=self.name)
                await self._drop_ahead()
                await self._sleep(1.0)
                read_again = True
        await self._finish_ahead()

    async def consume_once(self, *, block_ms: int | None = None) -> int:
        """Read and apply one batch of new events; return how many were handled.

        A full batch means more are waiting: the next one is read and decoded while this one
        is applied (and applied only after it, so the order holds).
        """
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            batch = await ahead
        else:
            batch = await self._read_new(block_ms)
        if batch.size >= self._batch and not self._stopping.is_set():
            self._ahead = asyncio.ensure_future(self._read_new(None))
        try:
            await self._apply_batch(batch)
        except BaseException:
            # The batch stays pending; the one read ahead must not overtake it.
            await self._drop_ahead()
            raise
        return batch.size

    async def _read_new(self, block_ms: int | None) -> _Batch:
        reply: Any = await self._redis.xreadgroup(
            self._group, self.name, {self._stream: ">"}, count=self._batch, block=block_ms
        )
        return self._decode([entry for _stream, entries in reply or [] for entry in entries])

    async def _drop_ahead(self) -> None:
        """Forget the batch read ahead: its entries stay pending and are read again in order."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await ahead

    async def _finish_ahead(self) -> None:
        """Apply the batch read ahead, if any (on the way out)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            try:
                await self._apply_batch(await ahead)
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Still pending: whoever reads this consumer's entries next applies them.
                log.warning("consumer_stop_left_pending", error=str(exc), consumer=self.name)

    async def _until_ready(self) -> None:
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            try:
                await self.ensure_group()
                return
            except (RedisError, OSError) as exc:
                log.warning("consumer_waiting_for_redis", error=str(exc))
                await self._sleep(1.0)

    async def _drain_pending(self, start: str) -> None:
        while not self._stopping.is_set():
            reply = await self._redis.xreadgroup(
                self._group, self.name, {self._stream: start}, count=self._batch
            )
            if not await self._apply_reply(reply):
                return

    async def _reclaim(self) -> None:
        """Take over entries another consumer read but never acknowledged."""
        cursor = "0-0"
        while not self._stopping.is_set():
            result = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self.name,
                min_idle_time=self._reclaim_idle_ms,
                start_id=cursor,
                count=self._batch,
            )
            cursor, entries = result[0], result[1]
            if entries:
                self.stats.reclaimed += len(entries)
                await self._apply_entries(entries)
            if cursor in (b"0-0", "0-0"):
                return

    async def _apply_reply(self, reply: object) -> int:
        count = 0
        for _stream, entries in reply or []:  # type: ignore[attr-defined]
            count += len(entries)
            await self._apply_entries(entries)
        return count

    async def _apply_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        await self._apply_batch(self._decode(entries))

    def _decode(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> _Batch:
        batch = _Batch(size=len(entries))
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                batch.done.append(entry_id)
                continue
            try:
                batch.events.append((entry_id, RunEvent.decode(fields)))
            except (KeyError, ValueError, TypeError) as exc:
                # An entry nobody can decode is set aside, not retried forever.
                self.stats.poison += 1
                log.error("consumer_poison_event", entry_id=entry_id, error=str(exc))
                batch.done.append(entry_id)
        return batch

    async def _apply_batch(self, batch: _Batch) -> None:
        """Apply a batch in one transaction, then acknowledge it in one round trip."""
        outcomes = await self._apply_events([event for _id, event in batch.events])
        done = list(batch.done)
        ended: list[int] = []
        for (entry_id, event), outcome in zip(batch.events, outcomes, strict=True):
            if outcome is _SET_ASIDE:
                self.stats.poison += 1
            elif outcome is None:
                self.stats.duplicates += 1
            elif outcome:
                self.stats.applied += 1
                if event.terminal:
                    ended.append(event.run_id)
            else:
                self.stats.refused += 1
            done.append(entry_id)
        # Acknowledged only after the transaction committed; waiters on every replica
        # learn that the run ended once its row says so.
        await self._ack(done, ended_runs=ended)

    async def _apply_events(self, events: list[RunEvent]) -> list[object]:
        """The outcome of each event; :data:`_SET_ASIDE` for one PostgreSQL will never take.

        An outage (or a deadlock, retried) propagates: nothing is acknowledged, the batch is
        read again. An event PostgreSQL refuses (a value it cannot store) fails the batch's
        transaction; the batch is then applied event by event, so that only that event is set
        aside (acknowledged, logged) and the others are applied.
        """
        if not events:
            return []
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                async with self._pool.acquire() as conn:
                    return list(await apply_events(conn, events))
            except asyncpg.TransactionRollbackError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not _refused(exc):
                    raise
                log.warning("consumer_batch_refused", size=len(events), error=str(exc))
                break
        outcomes: list[object] = []
        async with self._pool.acquire() as conn:
            for event in events:
                try:
                    outcomes.append(await apply_event(conn, event))
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
                    outcomes.append(_SET_ASIDE)
        return outcomes

    async def _ack(self, entry_ids: list[bytes], *, ended_runs: list[int]) -> None:
        if not entry_ids:
            return
        # One script call: a batch's acknowledgement and its announcements are one round
        # trip and one reply, whatever the batch size.
        args: list[bytes | str | int] = [self._group, terminal_channel(self._stream)]
        args += [len(entry_ids), *entry_ids, *ended_runs]
        await self._ack_script(keys=[self._stream], args=args)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
