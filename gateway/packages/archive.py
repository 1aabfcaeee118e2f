"""ZIP archives streamed from async sources: never assembled in memory or on disk.

`zipstream-ng` writes the archive: stored entries with data descriptors (so no entry has to be
read twice for its CRC), Zip64 records whenever an entry, an offset or the central directory
needs them, and the archive's exact length known before the first byte (every entry's size is
given up front). It is a synchronous generator, and the entries' bytes come from async
iterators (blob store reads), so:

- the generator runs in a worker thread of this module's own pool, one step (up to
  :data:`STEP_BYTES` of output) at a time, and only when the caller asks for more, so a slow
  reader holds no thread;
- when it needs an entry's next chunk, that thread asks the event loop for it
  (``run_coroutine_threadsafe``) and waits, at most ``read_timeout_s``.

The pool is private on purpose: the blob store's own file reads use the loop's default
executor, and a step waiting on such a read must never hold a thread that read needs.

Domain code: no ``aiohttp.web`` here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from zipstream import ZipStream

# A worker step gathers output up to this size, and a source is read this far ahead, in one
# hop each between the loop and the worker: hops, not bytes, are what an archive costs.
STEP_BYTES = 1024 * 1024
PULL_BYTES = 1024 * 1024
# Steps of all archives share these threads; a step is short (one chunk), so they interleave.
ARCHIVE_THREADS = 8

OpenChunks = Callable[[], AsyncIterator[bytes]]


class ArchiveError(RuntimeError):
    """The archive could not be completed (a source failed, stalled or changed size)."""


class _Aborted(Exception):
    """Raised in the worker thread once the archive's reader has gone."""


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One file of an archive: its path inside the ZIP, its exact size, and its bytes, either
    given (``data``) or read when the entry is reached (``open``)."""

    path: str
    size: int
    data: bytes | None = None
    open: OpenChunks | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.open is None):
            raise ValueError("an entry needs exactly one of data and open")
        if self.data is not None and len(self.data) != self.size:
            raise ValueError(f"entry {self.path}: size {self.size} != {len(self.data)} bytes")


class _Source:
    """An entry's async chunks, seen from the worker thread as a plain iterator."""

    def __init__(
        self,
        entry: ArchiveEntry,
        open_chunks: OpenChunks,
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
        timeout_s: float,
    ) -> None:
        self._entry = entry
        self._open = open_chunks
        self._loop = loop
        self._stop = stop
        self._timeout_s = timeout_s
        # Opened on the loop when the writer reaches the entry, closed there too.
        self.chunks: AsyncIterator[bytes] | None = None
        self._read = 0
        # Chunks fetched and not yet handed to the writer (last one first), and whether the
        # source has ended.
        self._ready: list[bytes] = []
        self._ended = False

    async def _pull(self) -> list[bytes]:
        """The entry's next chunks, about :data:`PULL_BYTES` of them (none: the end)."""
        if self.chunks is None:
            self.chunks = self._open()
        pulled: list[bytes] = []
        size = 0
        while size < PULL_BYTES:
            chunk = await anext(self.chunks, None)
            if chunk is None:
                if self._read != self._entry.size:
                    raise self._size_changed()
                break
            if chunk:
                self._read += len(chunk)
                # Checked before the bytes go out: an archive never carries a wrong entry.
                if self._read > self._entry.size:
                    raise self._size_changed()
                pulled.append(chunk)
                size += len(chunk)
        return pulled

    def _size_changed(self) -> ArchiveError:
        which = "more" if self._read > self._entry.size else "fewer"
        return ArchiveError(
            f"{self._entry.path}: its source holds {which} than the {self._entry.size} bytes "
            "it was declared with"
        )

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if not self._ready:
            if self._ended:
                raise StopIteration
            if self._stop.is_set():
                raise _Aborted
            # One round trip to the loop fetches several chunks: hops cost more than bytes.
            future = asyncio.run_coroutine_threadsafe(self._pull(), self._loop)
            try:
                self._ready = future.result(timeout=self._timeout_s)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise ArchiveError(
                    f"{self._entry.path}: no data for {self._timeout_s:g} s from its source"
                ) from None
            self._ready.reverse()
            if not self._ready:
                self._ended = True
                raise StopIteration
        return self._ready.pop()


@dataclass(slots=True)
class StreamedArchive:
    """An archive ready to stream: its exact length, and :meth:`chunks` to produce it once."""

    size: int
    _zip: ZipStream
    _sources: list[_Source]
    _executor: concurrent.futures.ThreadPoolExecutor
    _stop: threading.Event

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The archive's bytes, step by step. Closing the iterator early (the reader left)
        stops the worker at its next read and closes every source it opened.

        Raises :class:`ArchiveError` when a source fails, stalls, or yields a different number
        of bytes than its entry declared.
        """
        produced = self._zip.finalize()
        step: concurrent.futures.Future[list[bytes]] | None = None
        try:
            while True:
                try:
                    step = self._executor.submit(_step, produced)
                except RuntimeError:
                    raise ArchiveError("the archiver has been stopped") from None
                try:
                    pieces = await asyncio.wrap_future(step)
                except _Aborted:
                    return
                except ArchiveError:
                    raise
                except Exception as exc:
                    raise ArchiveError(f"{exc.__class__.__name__}: {exc}") from exc
                if not pieces:
                    return
                for piece in pieces:
                    yield piece
        finally:
            self._stop.set()
            if step is not None and not step.done():
                # The worker is mid-step (its reader left): it stops at its next read, which
                # the loop, free again, serves; then the generator can be closed.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(step)), 30)
            with contextlib.suppress(Exception):
                produced.close()
            for source in self._sources:
                if source.chunks is not None:
                    aclose = getattr(source.chunks, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()


def _step(produced: Iterator[bytes]) -> list[bytes]:
    """Run the writer until it has produced about :data:`STEP_BYTES` (or has finished)."""
    pieces: list[bytes] = []
    size = 0
    for piece in produced:
        if piece:
            pieces.append(piece)
            size += len(piece)
            if size >= STEP_BYTES:
                break
    return pieces


class Archiver:
    """Builds :class:`StreamedArchive` s; owns the worker threads they share."""

    def __init__(self, *, read_timeout_s: float, threads: int = ARCHIVE_THREADS) -> None:
        self._read_timeout_s = read_timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="archive"
        )

    def archive(self, entries: Sequence[ArchiveEntry]) -> StreamedArchive:
        """An archive of ``entries`` in order (paths must be unique and already safe)."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        # sized=True: the length is known now, and nothing may be compressed.
        archive = ZipStream(sized=True)
        sources: list[_Source] = []
        seen: set[str] = set()
        for entry in entries:
            if entry.path in seen:
                raise ValueError(f"duplicate entry {entry.path}")
            seen.add(entry.path)
            data: Any
            if entry.data is not None:
                data = entry.data
            else:
                assert entry.open is not None
                source = _Source(entry, entry.open, loop, stop, self._read_timeout_s)
                sources.append(source)
                data = source
            archive.add(data, entry.path, size=entry.size)
        return StreamedArchive(len(archive), archive, sources, self._executor, stop)

    def close(self) -> None:
        """Stop the worker threads (an archive still streaming fails at its next step)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
