"""Waiting for runs to end, across replicas.

A replica that records a run's end itself (the runtime's answer, a callback landing on it)
hands the terminal row to its own waiters at once (:meth:`RunWaiters.deliver`, called by
``gateway.runs.recording``). Every end is also announced on a Redis pub/sub channel: by the
replica that recorded it, by the store consumer (an end held in the buffer) and the reaper.
Each replica holds one subscription; the runs announced are read in one statement and their
waiters answered. A lost announcement only costs the recheck interval: every ``recheck_s``
one statement reads which of all the runs waited on have ended, however many waiters there
are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import asyncpg
import structlog
from redis.exceptions import RedisError

from gateway.ops import tracing
from store import runs
from store.announcements import parse_announcement
from store.models import Run
from store.redis_client import RedisClient

log = structlog.get_logger(__name__)

# How many run ids one recheck statement names at most.
_RECHECK_CHUNK = 10_000
# After a run's end has been claimed elsewhere (the end a request meant to record was refused),
# how long that request waits for the store to show the end before answering with what it sees.
SETTLE_S = 2.0
# Why rows of waited runs were read: a full recheck once per interval, or runs announced ended.
READ_EVERY_INTERVAL = "interval"
READ_ANNOUNCED = "announced"


class Watch:
    """One request's interest in one run's end, for as long as it is registered."""

    __slots__ = ("_ended", "run_id")

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self._ended: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()

    def settle(self, run: Run | None) -> None:
        """The run has ended (``run``), or no longer exists (``None``)."""
        if not self._ended.done():
            self._ended.set_result(run)

    @property
    def ended(self) -> bool:
        """Whether the run's end (or its absence) is known."""
        return self._ended.done()

    async def wait(
        self, *, deadline: float, interrupt: asyncio.Future[Any] | None = None
    ) -> Run | None:
        """The terminal run; ``None`` when the loop time ``deadline`` passes first or
        ``interrupt`` completes first (so that the caller can act on it), or when the run
        does not exist."""
        if not self._ended.done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or (interrupt is not None and interrupt.done()):
                return None
            watched: set[asyncio.Future[Any]] = {self._ended}
            if interrupt is not None:
                watched.add(interrupt)
            # The wait itself, in its own span (a no-op one when tracing is off).
            with tracing.span("run wait", attributes={"agent_gateway.run.id": str(self.run_id)}):
                await asyncio.wait(watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not self._ended.done():
                return None
        return self._ended.result()


class RunWaiters:
    """Lets requests wait for a run to become terminal, woken by whichever replica saw it."""

    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        *,
        channel: str,
        recheck_s: float,
        observe_read: Callable[[str, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._channel = channel
        self._recheck_s = recheck_s
        # Told (why, how many runs) for every statement that reads waited runs, for metrics.
        self._observe_read = observe_read or (lambda why, runs: None)
        self._waiting: dict[int, set[Watch]] = {}
        # Runs announced since the last read of their rows; read together.
        self._announced: set[int] = set()
        self._announcement = asyncio.Event()

    def __len__(self) -> int:
        """How many waits are in progress in this process."""
        return sum(len(watches) for watches in self._waiting.values())

    @contextlib.contextmanager
    def watch(self, run_id: int) -> Iterator[Watch]:
        """Register interest in ``run_id``'s end for the ``with`` block (the row is not read:
        the caller knows it, e.g. it has just created the run)."""
        watch = Watch(run_id)
        self._waiting.setdefault(run_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._waiting.get(run_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._waiting[run_id]

    async def wait(
        self,
        run_id: int,
        *,
        deadline: float,
        interrupt: asyncio.Future[Any] | None = None,
    ) -> Run | None:
        """The run once it is terminal; ``None`` when the loop time ``deadline`` passes first
        or ``interrupt`` completes first (so that the caller can act on it)."""
        with self.watch(run_id) as watch:
            run = await runs.get_run(self._pool, run_id)
            if run is None or run.terminal:
                return run
            return await watch.wait(deadline=deadline, interrupt=interrupt)

    def deliver(self, run: Run) -> None:
        """``run`` has ended, as this process has just recorded: answer its waiters here."""
        for watch in self._waiting.get(run.id, ()):
            watch.settle(run)

    def wake(self, run_id: int) -> None:
        """``run_id`` was announced ended: its row is read (with others announced meanwhile)
        and its waiters in this process answered."""
        if run_id in self._waiting:
            self._announced.add(run_id)
            self._announcement.set()

    async def recheck(self, run_ids: Iterable[int] | None = None) -> None:
        """Read which of ``run_ids`` (by default every run waited on) have ended, in one
        statement per chunk, and answer their waiters."""
        pending = sorted(self._waiting if run_ids is None else set(run_ids) & set(self._waiting))
        why = READ_EVERY_INTERVAL if run_ids is None else READ_ANNOUNCED
        for start in range(0, len(pending), _RECHECK_CHUNK):
            chunk = pending[start : start + _RECHECK_CHUNK]
            self._observe_read(why, len(chunk))
            for run in await runs.ended_runs(self._pool, chunk):
                self.deliver(run)

    async def keep_checking(self) -> None:
        """Answer announced runs as they come, and every run waited on once per interval."""
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._recheck_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_full - loop.time())):
                    await self._announcement.wait()
            try:
                if loop.time() >= next_full:
                    self._announced.clear()
                    self._announcement.clear()
                    next_full = loop.time() + self._recheck_s
                    await self.recheck()
                elif self._announced:
                    announced, self._announced = self._announced, set()
                    self._announcement.clear()
                    await self.recheck(announced)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # The next interval reads them all again.
                log.warning("run_waiters_recheck_failed", error=str(exc))

    def _wake_all(self) -> None:
        for run_id in self._waiting:
            self.wake(run_id)

    async def listen(self) -> None:
        """Follow the announcements until cancelled; reconnect after a Redis outage."""
        checking = asyncio.create_task(self.keep_checking(), name="run-waiters-recheck")
        try:
            await self._listen()
        finally:
            checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checking

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # Announcements made while unsubscribed are lost: every waited run is re-read.
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
                    await pubsub.aclose()

    def _dispatch(self, data: object) -> None:
        for run_id in parse_announcement(data):
            self.wake(run_id)


def _stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop.

    redis-py's timed read can swallow a cancellation that lands as its timeout fires (or turn
    it into a connection error); the request is still pending on the task, so honour it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
