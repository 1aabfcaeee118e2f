"""An execution's frames: numbered, handed to its caller live, kept for a resume on any replica.

Every execute runs in a *feed* (:meth:`ExecutionFeeds.start`), a task of its own rather than
the caller's request: it numbers each frame (1, 2, …; the SSE ``id:``), hands it to the caller
attached, if any, through a :class:`FeedQueue` (bounded in bytes: a slow caller slows the
runtime down; a burst reaches the caller in a few writes, not one per frame), and keeps it in
the frame log (``store.execution_frames``, a Redis stream per execution). Keeping is off the
caller's path: frames wait in a list that one flusher per execution sends in one
round trip per batch (what came in ``_LINGER_S`` or while the last call was out), so a burst,
or a frame every millisecond, costs a few Redis calls, not one per frame.

The caller leaving detaches it (:meth:`ExecutionFeeds.left`): the run goes on for
``EXECUTE_DISCONNECT_GRACE_S`` and is then cancelled unless someone follows it on the resume
route; with 0 it is cancelled at once. An async execute is a feed with nobody attached.

:meth:`ExecutionFeeds.follow` reads the frames after a ``Last-Event-ID`` (the missed ones, then
the live ones as the replica running the execution keeps them), up to the terminator.

Domain code: no ``aiohttp.web``. The HTTP layer gives the renderers (the frames' JSON).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
import structlog
from redis.exceptions import RedisError

from gateway.background import BackgroundTasks
from gateway.errors import ApiError, Gone, NotFound, ServiceUnavailable
from gateway.execute.service import ChunkFrame, Outcome
from gateway.settings import Settings
from store import runs
from store.enums import RunStatus, TriggerKind
from store.execution_frames import TERMINATOR, FrameLog
from store.models import Run

log = structlog.get_logger(__name__)

# Frames sent to Redis in one call at most (a burst is sent in several).
_BATCH = 512
# Frames wait this long for others before they are sent (paced frames share a call).
_LINGER_S = 0.01
# A flush still going when the execution ends gets this long before its frames are dropped.
_FLUSH_BOUND_S = 5.0
# A follower reads up to this many frames per call and renews its lease this often.
_READ_COUNT = 256
_FOLLOW_LEASE_MS = 6_000
_FOLLOW_REFRESH_S = 2.0
# A run that ended without its end in the log (its replica died) is ended from its row after
# this long; a run that ended this long ago with nothing kept has had its frames expire.
_SETTLE_S = 3.0


# A NamedTuple, as adapters.base.StreamChunk: one per frame.
class Frame(NamedTuple):
    """One SSE frame: its number in the execution (the ``id:``) and its data."""

    number: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """The execution failed: ``frame`` says so in band; ``error`` is the answer to a caller
    who has received nothing yet."""

    error: BaseException
    frame: Frame


class _End:
    pass


END = _End()
"""After the terminator: nothing more comes."""

FeedItem = Frame | Failed | _End
Render = Callable[[ChunkFrame | Outcome], bytes]
RenderError = Callable[[BaseException], bytes]

# The frames' data a feed holds for its caller before the producer waits (a burst is written
# in a few large writes; a slow caller still slows the runtime down).
FEED_HOLD_BYTES = 64 * 1024


class FeedQueue:
    """Frames on their way to one reader, taken all at once.

    A put waits while the data held reaches ``limit`` bytes (so a slow reader slows the
    producer down, and memory per stream is about ``limit`` plus one frame); :meth:`take`
    hands over everything held, so that a burst costs one write per batch, not per frame.
    """

    def __init__(self, limit: int = FEED_HOLD_BYTES) -> None:
        self._limit = limit
        self._items: collections.deque[FeedItem] = collections.deque()
        self._held = 0
        self._reader: asyncio.Future[None] | None = None
        self._writers: collections.deque[asyncio.Future[None]] = collections.deque()

    def empty(self) -> bool:
        """Whether nothing is held."""
        return not self._items

    def offer(self, item: FeedItem) -> bool:
        """Hold ``item`` for the reader now if what is held is under the limit; whether it was
        (when not, :meth:`put` waits for room)."""
        if self._held >= self._limit:
            return False
        self._hold(item)
        return True

    async def put(self, item: FeedItem) -> None:
        """Hold ``item`` for the reader, once what is held is under the limit."""
        while self._held >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._writers.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._writers.remove(waiter)
                raise
        self._hold(item)

    def _hold(self, item: FeedItem) -> None:
        self._items.append(item)
        self._held += _size(item)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def take(self) -> list[FeedItem]:
        """Everything held, oldest first (nothing waits)."""
        items = list(self._items)
        self._items.clear()
        self._held = 0
        while self._writers:
            waiter = self._writers.popleft()
            if not waiter.done():
                waiter.set_result(None)
        return items

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until something is held (one reader); ``False`` when ``timeout_s`` passed first."""
        if self._items:
            return True
        loop = asyncio.get_running_loop()
        reader = self._reader = loop.create_future()
        # A plain timer on the future, not asyncio.timeout: the writer waits once per frame
        # in a stream the caller keeps up with, and a timeout's context costs a tenth of the
        # gateway's CPU there.
        timer = None if timeout_s is None else loop.call_later(timeout_s, _time_out, reader)
        try:
            await reader
        finally:
            self._reader = None
            if timer is not None:
                timer.cancel()
        return bool(self._items)

    async def get(self) -> FeedItem:
        """The oldest item held, once there is one."""
        await self.wait()
        item = self._items.popleft()
        self._held -= _size(item)
        if self._held < self._limit:
            while self._writers:
                waiter = self._writers.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        return item


def _time_out(reader: asyncio.Future[None]) -> None:
    if not reader.done():
        reader.set_result(None)


def _size(item: FeedItem) -> int:
    if isinstance(item, Frame):
        return len(item.data)
    if isinstance(item, Failed):
        return len(item.frame.data)
    return 0


class Feed:
    """One execution's frames as it runs."""

    def __init__(
        self,
        run_id: int,
        frame_log: FrameLog,
        *,
        render: Render,
        render_error: RenderError,
        attached: bool,
    ) -> None:
        self.run_id = run_id
        self.queue = FeedQueue()
        self.outcome: Outcome | None = None
        self.chunks = 0
        self.task: asyncio.Task[None] | None = None
        self._log = frame_log
        self._render = render
        self._render_error = render_error
        self._attached = attached
        self._pending: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._broken = False
        self._leave_reason: str | None = None

    @property
    def attached(self) -> bool:
        """Whether a caller takes the frames live."""
        return self._attached

    def detach(self, reason: str) -> None:
        """The caller left: frames are only kept from now on (a put waiting is let through)."""
        self._attached = False
        self._leave_reason = reason
        self.queue.take()

    @property
    def leave_reason(self) -> str | None:
        """Why the run is cancelled, once its caller left (``None`` before)."""
        return self._leave_reason

    async def pump(self, events: AsyncGenerator[ChunkFrame | Outcome, None]) -> None:
        """Number, keep and hand on every event, then the terminator."""
        flusher = asyncio.create_task(self._flush(), name=f"execute-frames-{self.run_id}")
        number = 0
        try:
            try:
                async with contextlib.aclosing(events) as items:
                    async for event in items:
                        number += 1
                        frame = Frame(number, self._render(event))
                        if isinstance(event, Outcome):
                            self.outcome = event
                        else:
                            self.chunks += 1
                        self._keep(frame)
                        await self._hand(frame)
            except asyncio.CancelledError:
                # Cancelled (nobody came back in time, or the gateway stops): followers end too.
                reason = self._leave_reason or "The gateway stopped"
                self._keep(Frame(number + 1, self._render_error(ApiError(reason))))
                self._keep(Frame(number + 2, TERMINATOR))
                raise
            except Exception as exc:
                number += 1
                frame = Frame(number, self._render_error(exc))
                self._keep(frame)
                await self._hand(Failed(exc, frame))
            number += 1
            done = Frame(number, TERMINATOR)
            self._keep(done)
            await self._hand(done)
            await self._hand(END)
        finally:
            self._closed = True
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(flusher), _FLUSH_BOUND_S)
            flusher.cancel()

    def _keep(self, frame: Frame) -> None:
        if not self._broken:
            self._pending.append((frame.number, frame.data))
            self._wake.set()

    async def _hand(self, item: FeedItem) -> None:
        # Without waiting on the queue while there is room (most of a burst).
        if self._attached and not self.queue.offer(item):
            await self.queue.put(item)

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closed:
                await asyncio.sleep(_LINGER_S)
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                for start in range(0, len(batch), _BATCH):
                    await self._log.append(self.run_id, batch[start : start + _BATCH])
            except (RedisError, OSError) as exc:
                # The live caller is not affected; a resume finds the frames that were kept
                # (and is told that the rest is gone).
                log.warning("execute_frames_not_kept", run_id=self.run_id, error=repr(exc))
                self._broken = True
                self._pending = []
                return
            if self._closed and not self._pending:
                return


class ExecutionFeeds:
    """Starts executions' feeds, lets their callers leave, and lets anyone follow them."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        frame_log: FrameLog,
        background: BackgroundTasks,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._log = frame_log
        self._background = background

    def start(
        self,
        run_id: int,
        events: Callable[[Callable[[], str | None]], AsyncGenerator[ChunkFrame | Outcome, None]],
        *,
        render: Render,
        render_error: RenderError,
        attached: bool,
    ) -> Feed:
        """Run an execution's events in a feed of their own (``attached``: a caller takes
        its frames live). ``events`` is given where to read why the run is cancelled, once its
        caller left."""
        feed = Feed(run_id, self._log, render=render, render_error=render_error, attached=attached)
        pump = feed.pump(events(lambda: feed.leave_reason))
        feed.task = self._background.spawn(pump, name=f"execute-{run_id}")
        return feed

    def left(self, feed: Feed) -> None:
        """The caller left before the end: cancel the run now, or after the grace period
        unless someone follows it."""
        task = feed.task
        if task is None or task.done():
            return
        grace_s = self._settings.execute_disconnect_grace_s
        if grace_s <= 0:
            feed.detach(f"Caller disconnected after {feed.chunks} frames")
            task.cancel()
            return
        feed.detach(
            f"Caller disconnected after {feed.chunks} frames and nobody followed the "
            f"execution within {grace_s:g} s"
        )
        log.info("execute_caller_left", run_id=feed.run_id, grace_s=grace_s)
        self._background.spawn(self._watch(feed, task, grace_s), name=f"grace-{feed.run_id}")

    async def _watch(self, feed: Feed, task: asyncio.Task[None], grace_s: float) -> None:
        await asyncio.wait({task}, timeout=grace_s)
        while not task.done():
            try:
                followed = await self._log.followed(feed.run_id)
            except (RedisError, OSError):
                followed = True  # cannot tell: let it run (its window still bounds it)
            if not followed:
                task.cancel()
                return
            await asyncio.wait({task}, timeout=_FOLLOW_REFRESH_S)

    async def open_follow(
        self, org_id: uuid.UUID, workflow_id: int, run_id: int, after: int, *, render: Render
    ) -> AsyncIterator[Frame] | None:
        """The frames of an execution after frame ``after``, to its end; ``None`` when the
        terminator was ``after`` or before (nothing is left).

        404 for no such execution of this workflow and organisation; 410 when its frames (or
        those right after ``after``) are no longer kept.
        """
        run = await runs.get_run(self._pool, run_id)
        if (
            run is None
            or run.org_id != org_id
            or run.agent_id != workflow_id
            or not await runs.started_as(self._pool, run_id, TriggerKind.EXECUTE)
        ):
            raise NotFound("Execution not found")
        try:
            bounds = await self._log.bounds(run_id)
        except (RedisError, OSError):
            raise ServiceUnavailable(
                "The execution's frames cannot be read now; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        if bounds is None:
            if run.terminal and _ended_before(run, _SETTLE_S):
                raise Gone(
                    f"The frames of execution {run_id} are no longer kept (they are kept "
                    f"EXECUTE_STREAM_RETENTION_S = {self._settings.execute_stream_retention_s} s "
                    "after the last one)",
                    extra={"runId": run_id, "status": run.status},
                )
        else:
            first, last, ended = bounds
            if after + 1 < first:
                raise Gone(
                    f"Frames {after + 1} to {first - 1} of execution {run_id} are no longer "
                    f"kept; the oldest kept is {first}",
                    extra={"runId": run_id, "firstEventId": first},
                )
            if ended and after >= last:
                return None
        return self._follow(run, after, render)

    async def _follow(self, run: Run, after: int, render: Render) -> AsyncIterator[Frame]:
        run_id = run.id
        loop = asyncio.get_running_loop()
        block_ms = int(1000 * min(_FOLLOW_REFRESH_S, self._settings.sse_ping_interval_s))
        recheck_s = self._settings.wait_recheck_s
        renewed = checked = loop.time()
        ended_seen: float | None = None
        await self._log.follow(run_id, _FOLLOW_LEASE_MS)
        while True:
            frames = await self._log.read(run_id, after, count=_READ_COUNT, block_ms=block_ms)
            now = loop.time()
            if now - renewed >= _FOLLOW_REFRESH_S:
                await self._log.follow(run_id, _FOLLOW_LEASE_MS)
                renewed = now
            for frame in frames:
                number, data = frame
                if number != after + 1:
                    raise ApiError(
                        f"Frames {after + 1} to {number - 1} of execution {run_id} were not kept"
                    )
                after = number
                yield Frame(number, data)
                if data == TERMINATOR:
                    return
            if frames:
                ended_seen = None
                continue
            if now - checked < recheck_s:
                continue
            # Nothing new: has the run ended without its end reaching the log (its replica died)?
            checked = now
            row = await runs.get_run(self._pool, run_id)
            if row is None or not row.terminal:
                continue
            if ended_seen is None:
                ended_seen = now
            elif now - ended_seen >= _SETTLE_S:
                yield Frame(after + 1, render(outcome_of_row(row)))
                yield Frame(after + 2, TERMINATOR)
                return


def outcome_of_row(run: Run) -> Outcome:
    """The outcome an ended run's row tells (a follower ending a run whose end was not kept)."""
    completed = run.status == RunStatus.COMPLETED
    return Outcome(
        run_id=run.id,
        agent_id=run.agent_id,
        status=run.status,
        success=completed,
        output=run.output_data,
        error=None if completed else (run.error or f"The run ended {run.status}"),
        duration_ms=run.duration_ms or 0,
    )


def _ended_before(run: Run, seconds: float) -> bool:
    ended = run.completed_at
    return ended is None or dt.datetime.now(dt.UTC) - ended > dt.timedelta(seconds=seconds)
