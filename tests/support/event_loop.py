"""The test's own event loop made busy, as a burst of requests makes a replica's."""

from __future__ import annotations

import asyncio
import time


def block_the_loop_once_under_way(seconds: float) -> None:
    """Block the running event loop for ``seconds`` (a synchronous sleep) as soon as what a
    task created just before this call starts is under way.

    A task created now takes its first step in the loop's next turn, and the tasks it starts
    (``asyncio.gather`` of checks, say) take theirs in the turn after: the sleep is queued to
    run in that turn, right after them. Their requests are sent and their timers set when the
    loop stops turning; their answers arrive in time and wait unread, as they do while a
    CPU-bound burst keeps the loop busy.
    """
    loop = asyncio.get_running_loop()
    loop.call_soon(loop.call_soon, time.sleep, seconds)
