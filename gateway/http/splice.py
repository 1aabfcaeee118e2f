"""Zero-copy socket-to-socket copying with ``os.splice`` through a pipe (Linux).

When the runtime's body has a ``Content-Length`` and neither connection uses TLS, the bytes of a
download need never enter Python: the kernel moves them from the runtime's socket into a pipe
and from the pipe into the caller's socket. The copy runs on the event loop: both calls are
non-blocking, and between them the loop waits for the sockets to become readable or writable on
duplicates of their descriptors (so a transport closing its own descriptor meanwhile can never
make us write into a stranger's connection).

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
from collections.abc import Callable
from typing import Any

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
# Linux's default pipe is 64 KiB; a larger pipe halves the syscalls per GiB. 1 MiB is the
# default /proc/sys/fs/pipe-max-size, so it needs no privilege.
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# After this many bytes without waiting, yield to the loop so other requests are served.
_YIELD_EVERY = 8 * 1024 * 1024
_CALLER_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


class SpliceFailure(Exception):
    """The copy stopped before ``count`` bytes; ``moved`` says how many reached the caller."""

    def __init__(self, message: str, moved: int) -> None:
        super().__init__(message)
        self.moved = moved


class CallerGone(SpliceFailure):
    """The caller's socket refused more bytes (it disconnected)."""


class UpstreamClosed(SpliceFailure):
    """The runtime's socket ended or failed before the whole body arrived."""


class SpliceStalled(SpliceFailure):
    """Neither side made progress for the idle bound; ``waiting_on`` names the silent side."""

    def __init__(self, message: str, moved: int, waiting_on: str) -> None:
        super().__init__(message, moved)
        self.waiting_on = waiting_on


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


async def splice_copy(
    src_fd: int,
    dst_fd: int,
    count: int,
    *,
    idle_timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Move exactly ``count`` bytes from socket ``src_fd`` to socket ``dst_fd``; return ``count``.

    Raises :class:`CallerGone`, :class:`UpstreamClosed` or :class:`SpliceStalled` with the
    number of bytes that reached ``dst_fd``. Cancellation stops the copy at once.
    """
    loop = asyncio.get_running_loop()
    src = os.dup(src_fd)
    dst = os.dup(dst_fd)
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, _PIPE_SIZE)
        capacity = fcntl.fcntl(pipe_w, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        moved = 0  # bytes that reached the caller
        in_pipe = 0
        since_yield = 0
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while moved < count:
            progressed = False
            want_read = moved + in_pipe < count and in_pipe < capacity
            if want_read:
                try:
                    want = min(capacity - in_pipe, count - moved - in_pipe)
                    n = os.splice(src, pipe_w, want, flags=flags)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise UpstreamClosed(
                        f"runtime socket failed: {os.strerror(exc.errno or 0)}", moved
                    ) from None
                else:
                    if n == 0:
                        raise UpstreamClosed("runtime closed the connection", moved)
                    in_pipe += n
                    progressed = True
            if in_pipe:
                # MSG_MORE only while more is to come: the last bytes must not wait for a cork.
                more = os.SPLICE_F_MORE if moved + in_pipe < count else 0
                try:
                    n = os.splice(pipe_r, dst, in_pipe, flags=flags | more)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno in _CALLER_GONE:
                        raise CallerGone("caller disconnected", moved) from None
                    raise
                else:
                    in_pipe -= n
                    moved += n
                    since_yield += n
                    progressed = True
                    if on_progress is not None:
                        on_progress(n)
            if progressed:
                if since_yield >= _YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
                continue
            # Both sides would block: wait for whichever can move bytes next.
            since_yield = 0
            readable = moved + in_pipe < count and in_pipe < capacity
            await _ready(
                loop,
                read_fd=src if readable else None,
                write_fd=dst if in_pipe else None,
                timeout_s=idle_timeout_s,
                moved=moved,
            )
        return moved
    finally:
        for fd in (pipe_r, pipe_w, src, dst):
            os.close(fd)


async def _ready(
    loop: asyncio.AbstractEventLoop,
    *,
    read_fd: int | None,
    write_fd: int | None,
    timeout_s: float,
    moved: int,
) -> None:
    """Wait until ``read_fd`` is readable or ``write_fd`` writable (idle-bounded)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if read_fd is not None:
        loop.add_reader(read_fd, wake)
    if write_fd is not None:
        loop.add_writer(write_fd, wake)
    try:
        async with asyncio.timeout(timeout_s):
            await ready
    except TimeoutError:
        # Bytes waiting in the pipe mean the caller stopped reading; else the runtime is silent.
        waiting_on = "caller" if write_fd is not None else "runtime"
        raise SpliceStalled(f"no progress for {timeout_s:g} s", moved, waiting_on) from None
    finally:
        if read_fd is not None:
            loop.remove_reader(read_fd)
        if write_fd is not None:
            loop.remove_writer(write_fd)
