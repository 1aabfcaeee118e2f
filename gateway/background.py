"""Tasks that must outlive the request that started them (e.g. recording a run's failure
after the caller hung up), tracked so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class BackgroundTasks:
    """A set of fire-and-forget tasks that are awaited, with a bound, on shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun: a task cancelled from now on is cancelled by it."""
        return self._stopping

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` detached from the current task's cancellation."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(exc))

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, bound_s: float) -> None:
        """Wait up to ``bound_s`` seconds for every task, then cancel what is left."""
        self._stopping = True
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=bound_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
