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
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from store.events import RunEvent, announce_terminal, apply_event, terminal_channel
from store.reaper import reap_overdue

log = structlog.get_logger(__name__)


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
        batch: int = 100,
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
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            try:
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
                await self._sleep(1.0)

    async def consume_once(self, *, block_ms: int | None = None) -> int:
        """Read and apply one batch of new events; return how many were handled."""
        reply = await self._redis.xreadgroup(
            self._group, self.name, {self._stream: ">"}, count=self._batch, block=block_ms
        )
        return await self._apply_reply(reply)

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
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                await self._ack(entry_id)
                continue
            try:
                event = RunEvent.decode(fields)
            except (KeyError, ValueError, TypeError) as exc:
                # An entry nobody can decode is set aside, not retried forever.
                self.stats.poison += 1
                log.error("consumer_poison_event", entry_id=entry_id, error=str(exc))
                await self._ack(entry_id)
                continue
            async with self._pool.acquire() as conn:
                outcome = await apply_event(conn, event)
            ended = False
            if outcome is None:
                self.stats.duplicates += 1
            elif outcome:
                self.stats.applied += 1
                ended = event.terminal
            else:
                self.stats.refused += 1
            # Acknowledged only after the transaction committed; waiters on every replica
            # learn that the run ended once its row says so.
            await self._ack(entry_id, ended_run=event.run_id if ended else None)

    async def _ack(self, entry_id: bytes, *, ended_run: int | None = None) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, self._group, entry_id)
            pipe.xdel(self._stream, entry_id)
            if ended_run is not None:
                pipe.publish(terminal_channel(self._stream), str(ended_run))
            await pipe.execute()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
