"""Waiting for runs to end, across replicas.

The store consumer announces on a Redis pub/sub channel each run it has just made terminal
(the reaper and the publisher's PostgreSQL fallback do the same). Each replica holds one
subscription and wakes its own waiters; a waiter then reads the run row, which is the truth.
A lost announcement only costs the recheck interval: every waiter re-reads its row that often.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from store import runs
from store.models import Run

log = structlog.get_logger(__name__)


class RunWaiters:
    """Lets requests wait for a run to become terminal, woken by whichever replica saw it."""

    def __init__(
        self, redis: aioredis.Redis, pool: asyncpg.Pool, *, channel: str, recheck_s: float
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._channel = channel
        self._recheck_s = recheck_s
        self._waiting: defaultdict[int, set[asyncio.Event]] = defaultdict(set)

    def __len__(self) -> int:
        """How many waits are in progress in this process."""
        return sum(len(events) for events in self._waiting.values())

    async def wait(
        self,
        run_id: int,
        *,
        deadline: float,
        interrupt: asyncio.Future[Any] | None = None,
    ) -> Run | None:
        """The run once it is terminal; ``None`` when the loop time ``deadline`` passes first
        or ``interrupt`` completes first (so that the caller can act on it)."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        self._waiting[run_id].add(woken)
        try:
            while True:
                woken.clear()
                run = await runs.get_run(self._pool, run_id)
                if run is None or run.terminal:
                    return run
                remaining = deadline - loop.time()
                if remaining <= 0 or (interrupt is not None and interrupt.done()):
                    return None
                wake = asyncio.ensure_future(woken.wait())
                watched: set[asyncio.Future[Any]] = {wake}
                if interrupt is not None:
                    watched.add(interrupt)
                try:
                    await asyncio.wait(
                        watched,
                        timeout=min(remaining, self._recheck_s),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    wake.cancel()
        finally:
            events = self._waiting[run_id]
            events.discard(woken)
            if not events:
                del self._waiting[run_id]

    def wake(self, run_id: int) -> None:
        """Wake the waiters of ``run_id`` in this process."""
        for event in self._waiting.get(run_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def listen(self) -> None:
        """Follow the announcements until cancelled; reconnect after a Redis outage."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # Announcements made while unsubscribed are lost: every waiter re-reads.
                self._wake_all()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message.get("data"))
                    _stop_if_cancelled()
            except (RedisError, OSError) as exc:
                _stop_if_cancelled()
                log.warning("run_waiters_reconnecting", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, data: object) -> None:
        try:
            run_id = int(data)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return
        self.wake(run_id)


def _stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop.

    redis-py's timed read can swallow a cancellation that lands as its timeout fires (or turn
    it into a connection error); the request is still pending on the task, so honour it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
