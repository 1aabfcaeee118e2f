"""Zero-copy socket-to-socket copying with ``os.splice`` through a pipe (Linux).

When neither connection uses TLS, the bytes of a download need never enter Python: the kernel
moves them from the runtime's socket into a pipe and from the pipe into the caller's socket.
Every copy works on duplicates of the two descriptors (so a transport closing its own
descriptor meanwhile can never make us write into a stranger's connection).

The copy itself is a generator (:func:`move_exact` and, for chunked bodies,
``gateway.http.streaming.chunked``'s forwarder) that makes non-blocking calls and says what it
waits for when both sides would block. Two drivers run it:

- a thread of its own (:func:`run_copy` with a free thread): it waits in ``poll`` and moves the
  next bytes the moment a side is ready, with no event-loop round trip between pipe moves (on
  the event loop a spliced 1 GiB spent most of its time waiting for its turn, at half a core);
- the event loop, when every splice thread is taken: it waits through ``add_reader`` /
  ``add_writer`` and yields every few MiB so other requests are served.

Byte counting, disconnects and aborts mirror the normal path: the caller leaving shows up as
:class:`CallerGone` (or as the handler's cancellation), the runtime closing early as
:class:`UpstreamClosed`, silence longer than the idle bound as :class:`SpliceStalled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import threading
from collections.abc import Callable, Generator
from enum import IntFlag
from typing import Any

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
# Linux's default pipe is 64 KiB; a larger pipe cuts the syscalls per GiB. 1 MiB is the
# default /proc/sys/fs/pipe-max-size, so it needs no privilege.
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# On the event loop: after this many bytes without waiting, yield so other requests are served.
_YIELD_EVERY = 8 * 1024 * 1024
_CALLER_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}
_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0
_MORE = os.SPLICE_F_MORE if AVAILABLE else 0


class SpliceFailure(Exception):
    """The copy stopped early; ``moved`` says how many body bytes reached the caller."""

    def __init__(self, message: str, moved: int) -> None:
        super().__init__(message)
        self.moved = moved


class CallerGone(SpliceFailure):
    """The caller's socket refused more bytes (it disconnected)."""


class UpstreamClosed(SpliceFailure):
    """The runtime's socket ended or failed before the whole body arrived (or broke framing)."""


class SpliceStalled(SpliceFailure):
    """Neither side made progress for the idle bound; ``waiting_on`` names the silent side."""

    def __init__(self, message: str, moved: int, waiting_on: str) -> None:
        super().__init__(message, moved)
        self.waiting_on = waiting_on


class Want(IntFlag):
    """What a copy waits for when both sides would block (``NOTHING``: a pause, loop only)."""

    NOTHING = 0
    READ = 1  # the runtime's socket readable
    WRITE = 2  # the caller's socket writable


Copy = Generator[Want, None, None]


def plain_socket_fd(transport: Any) -> int | None:
    """The descriptor of a transport's socket when bytes may be spliced to or from it: a live,
    non-TLS socket transport. ``None`` otherwise."""
    if transport is None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd = sock.fileno()
    return fd if isinstance(fd, int) and fd >= 0 else None


class Channel:
    """The two duplicated sockets and the pipe between them, with what has moved so far."""

    def __init__(self, src_fd: int, dst_fd: int, on_progress: Callable[[int], None] | None) -> None:
        self.src = os.dup(src_fd)
        self.dst = os.dup(dst_fd)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.capacity: int = fcntl.fcntl(self.pipe_w, _F_GETPIPE_SZ)
        self.in_pipe = 0
        # Body bytes that reached the caller's socket.
        self.moved = 0
        self.since_yield = 0
        self._on_progress = on_progress

    def close(self) -> None:
        """Close the pipe and the duplicates (the transports keep their own descriptors)."""
        for fd in (self.pipe_r, self.pipe_w, self.src, self.dst):
            os.close(fd)

    def counted(self, n: int) -> None:
        """Note ``n`` body bytes handed to the caller's socket."""
        self.moved += n
        self.since_yield += n
        if self._on_progress is not None:
            self._on_progress(n)

    def move(self, count: int, *, last: bool) -> Copy:
        """Move exactly ``count`` bytes from the runtime's socket to the caller's through the
        pipe; ``last``: nothing follows them (no ``SPLICE_F_MORE`` cork on the final bytes)."""
        to_read = count
        while to_read or self.in_pipe:
            progressed = False
            if to_read and self.in_pipe < self.capacity:
                want = min(self.capacity - self.in_pipe, to_read)
                try:
                    n = os.splice(self.src, self.pipe_w, want, flags=_FLAGS)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise UpstreamClosed(
                        f"runtime socket failed: {os.strerror(exc.errno or 0)}", self.moved
                    ) from None
                else:
                    if n == 0:
                        raise UpstreamClosed("runtime closed the connection", self.moved)
                    to_read -= n
                    self.in_pipe += n
                    progressed = True
            if self.in_pipe:
                # MSG_MORE only while more is to come: the last bytes must not wait for a cork.
                more = _MORE if to_read or not last else 0
                try:
                    n = os.splice(self.pipe_r, self.dst, self.in_pipe, flags=_FLAGS | more)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno in _CALLER_GONE:
                        raise CallerGone("caller disconnected", self.moved) from None
                    raise
                else:
                    self.in_pipe -= n
                    progressed = True
                    self.counted(n)
            if progressed:
                if self.since_yield >= _YIELD_EVERY:
                    self.since_yield = 0
                    yield Want.NOTHING
                continue
            wait = Want.WRITE if self.in_pipe else Want.NOTHING
            if to_read and self.in_pipe < self.capacity:
                wait |= Want.READ
            yield wait

    def send(self, data: bytes | bytearray | memoryview) -> Copy:
        """Write ``data`` (framing, or body bytes already read) to the caller's socket."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.dst, view)
            except BlockingIOError:
                yield Want.WRITE
                continue
            except OSError as exc:
                if exc.errno in _CALLER_GONE:
                    raise CallerGone("caller disconnected", self.moved) from None
                raise
            view = view[n:]

    def receive(self, limit: int) -> Generator[Want, None, bytes]:
        """Read up to ``limit`` bytes from the runtime's socket (framing, not body bytes)."""
        while True:
            try:
                data = os.read(self.src, limit)
            except BlockingIOError:
                yield Want.READ
                continue
            except OSError as exc:
                raise UpstreamClosed(
                    f"runtime socket failed: {os.strerror(exc.errno or 0)}", self.moved
                ) from None
            if not data:
                raise UpstreamClosed("runtime closed the connection", self.moved)
            return data


class _Threads:
    """How many splice threads run; a copy gets one only while fewer than the limit do."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.running >= limit:
                return False
            self.running += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.running -= 1


THREADS = _Threads()


async def run_copy(channel: Channel, copy: Copy, *, idle_timeout_s: float, threads: int) -> None:
    """Drive ``copy`` to its end: in a thread of its own if one of ``threads`` is free, else on
    the event loop. Cancellation stops it at once (the thread is woken and told to stop)."""
    if threads > 0 and THREADS.take(threads):
        try:
            await _in_thread(channel, copy, idle_timeout_s)
        finally:
            THREADS.give_back()
    else:
        await _on_loop(channel, copy, idle_timeout_s)


def _stalled(channel: Channel, want: Want, timeout_s: float) -> SpliceStalled:
    # Bytes waiting to be written mean the caller stopped reading; else the runtime is silent.
    waiting_on = "caller" if want & Want.WRITE else "runtime"
    return SpliceStalled(f"no progress for {timeout_s:g} s", channel.moved, waiting_on)


async def _in_thread(channel: Channel, copy: Copy, idle_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def work() -> None:
        poller = select.poll()
        poller.register(stop_r, select.POLLIN)
        registered: dict[int, int] = {}
        timeout_ms = int(idle_timeout_s * 1000)
        error: BaseException | None = None
        try:
            for want in copy:
                if not want:
                    continue
                wanted = {}
                if want & Want.READ:
                    wanted[channel.src] = select.POLLIN
                if want & Want.WRITE:
                    wanted[channel.dst] = wanted.get(channel.dst, 0) | select.POLLOUT
                for fd in list(registered):
                    if fd not in wanted:
                        poller.unregister(fd)
                        del registered[fd]
                for fd, mask in wanted.items():
                    if registered.get(fd) != mask:
                        poller.register(fd, mask)
                        registered[fd] = mask
                events = poller.poll(timeout_ms)
                if not events:
                    raise _stalled(channel, want, idle_timeout_s)
                if any(fd == stop_r for fd, _ in events):
                    return
        except BaseException as exc:  # handed to the awaiting task, raised there
            error = exc
        finally:
            copy.close()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, error)

    thread = threading.Thread(target=work, name="splice", daemon=True)
    thread.start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        # Wake the thread from poll and wait for it to let go of the descriptors.
        os.write(stop_w, b"x")
        while not done.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([done])
        raise
    finally:
        if done.done() and not done.cancelled():
            done.exception()  # retrieved: the caller got it through await already
        os.close(stop_r)
        os.close(stop_w)


async def _on_loop(channel: Channel, copy: Copy, idle_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        for want in copy:
            if not want:
                await asyncio.sleep(0)
                continue
            channel.since_yield = 0
            await _ready(loop, channel, want, idle_timeout_s)
    finally:
        copy.close()


async def _ready(
    loop: asyncio.AbstractEventLoop, channel: Channel, want: Want, timeout_s: float
) -> None:
    """Wait until the runtime's socket is readable or the caller's writable (idle-bounded)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if want & Want.READ:
        loop.add_reader(channel.src, wake)
    if want & Want.WRITE:
        loop.add_writer(channel.dst, wake)
    try:
        async with asyncio.timeout(timeout_s):
            await ready
    except TimeoutError:
        raise _stalled(channel, want, timeout_s) from None
    finally:
        if want & Want.READ:
            loop.remove_reader(channel.src)
        if want & Want.WRITE:
            loop.remove_writer(channel.dst)


async def splice_copy(
    src_fd: int,
    dst_fd: int,
    count: int,
    *,
    idle_timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
    threads: int = 0,
) -> int:
    """Move exactly ``count`` bytes from socket ``src_fd`` to socket ``dst_fd``; return ``count``.

    Raises :class:`CallerGone`, :class:`UpstreamClosed` or :class:`SpliceStalled` with the
    number of bytes that reached ``dst_fd``. Cancellation stops the copy at once. ``threads``:
    the most copies that run in threads of their own at once (0: always on the event loop).
    """
    channel = Channel(src_fd, dst_fd, on_progress)
    try:
        if count > 1:
            await run_copy(
                channel,
                channel.move(count - 1, last=False),
                idle_timeout_s=idle_timeout_s,
                threads=threads,
            )
        # The last byte is moved on the event loop, right before the response is ended and the
        # run recorded with no wait between: a caller that hangs up the moment it has every
        # byte must never look like one that left early (a thread's end reaches the loop one
        # turn later, and the caller's hang-up could be seen first).
        await _on_loop(channel, channel.move(count - channel.moved, last=True), idle_timeout_s)
        return channel.moved
    finally:
        channel.close()
