"""Handing freed heap memory back to the system once a burst of downloads or held waits has
ended.

Hundreds of downloads (or thousands of trigger-and-wait calls held) at once allocate requests,
responses, run rows and read buffers all over glibc's heap; once they end, the memory is free
inside the process but glibc keeps it (its heap only shrinks from the top, and an arena's free
pages stay mapped), so the process stays tens of MiB above its idle size. ``malloc_trim(0)``
returns every whole free page. It costs a walk over the heap (milliseconds), so it runs once
per burst, in a thread, a moment after the last stream of the burst ended. Only on glibc:
elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Iterator

import structlog

log = structlog.get_logger(__name__)

# After the burst's last stream: long enough for its responses and run updates to finish.
_SETTLE_S = 1.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim  # glibc only: musl has no malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_MALLOC_TRIM = _load_malloc_trim()
AVAILABLE = _MALLOC_TRIM is not None


def trim_now() -> bool:
    """Return free heap pages to the system now (blocking); ``True`` when glibc released any."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))


class BurstTrim:
    """Counts the streams in flight; after ``burst`` or more were in flight at once and all have
    ended, trims the heap once (in a thread, ``_SETTLE_S`` later). ``burst`` 0 turns it off."""

    def __init__(self, settle_s: float = _SETTLE_S) -> None:
        self._settle_s = settle_s
        self._active = 0
        self._peak = 0
        self._pending: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[bool] | None = None
        self.trims = 0

    @contextlib.contextmanager
    def stream(self, burst: int) -> Iterator[None]:
        """Count one stream for as long as the block runs."""
        self._active += 1
        self._peak = max(self._peak, self._active)
        if self._pending is not None:
            # The burst goes on: trim after its new end instead.
            self._pending.cancel()
            self._pending = None
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                peak, self._peak = self._peak, 0
                if AVAILABLE and burst and peak >= burst:
                    loop = asyncio.get_running_loop()
                    self._pending = loop.call_later(self._settle_s, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        if self._running is not None and not self._running.done():
            return
        self._running = loop.run_in_executor(None, trim_now)
        self._running.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[bool]) -> None:
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            log.warning("memory_trim_failed", error=repr(exc))
            return
        self.trims += 1


# One heap per process, so one counter per process (every app in it shares the heap).
BURSTS = BurstTrim()
