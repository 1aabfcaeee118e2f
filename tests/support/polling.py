"""Waiting, with a bound, for what a process does a moment after the thing a test saw."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    *,
    bound_s: float = 20.0,
    what: str = "not reached in time",
) -> T:
    """The first truthy answer of ``check`` (a plain or an async callable), asked every 20 ms;
    fail with ``what`` after ``bound_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while True:
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer  # type: ignore[return-value]
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def until(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    bound_s: float = 20.0,
    what: str = "not reached in time",
) -> None:
    """Return once ``check`` (a plain or an async predicate) holds; fail with ``what`` after
    ``bound_s``."""
    await eventually(check, bound_s=bound_s, what=what)
