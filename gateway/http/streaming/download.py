"""Copying a runtime's body to the caller, chunk by chunk, never buffering it.

Memory per stream is bounded by the client's read buffer plus one chunk in the socket's
write buffer: ``StreamResponse.write`` waits for the caller to drain before the next read.

When the body has a ``Content-Length`` and neither side uses TLS, the rest of the body after
the first bytes is moved socket to socket by the kernel (``gateway.http.streaming.splice``); a
chunked body is moved the same way between chunk headers the gateway parses and writes again
(``gateway.http.streaming.chunked``). Either way this module only copies and reports what
happened (:class:`~gateway.runs.downloads.Copied`); the download service records what that
makes of the run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from gateway.http.app_keys import SETTINGS
from gateway.http.middleware.request_info import note_streamed_bytes
from gateway.http.streaming import chunked, memory_trim, splice
from gateway.runs.downloads import (
    Copied,
    CopyEnd,
    DownloadFile,
    DownloadService,
    DownloadStarted,
    RuntimeBody,
)

log = structlog.get_logger(__name__)

# How often the caller's socket is checked for aiohttp's last bytes before splicing begins.
_FLUSH_POLL_S = 0.002


class _Stalled(Exception):
    """Nothing moved for the idle bound."""


class _Copy:
    """One copy's state: which side the idle timer waits on (to blame a stall)."""

    __slots__ = ("copied", "waiting_on")

    def __init__(self, copied: Copied) -> None:
        self.copied = copied
        self.waiting_on = "runtime"


async def send_download(
    request: web.Request,
    started: DownloadStarted,
    downloads: DownloadService,
    *,
    idle_timeout_s: float,
    allow_splice: bool = True,
) -> web.StreamResponse:
    """Stream ``started``'s body to the caller; the download service records how it ended.

    The caller leaves: the copy stops at once. The runtime dies or stalls mid-body: the
    caller's connection is aborted, so a truncated file can never pass for a whole one.
    """
    response = web.StreamResponse(
        status=200, headers=download_headers(started.run.id, started.file)
    )

    async def copy(copied: Copied) -> None:
        try:
            await _copy(request, response, started, copied, idle_timeout_s, allow_splice)
        finally:
            note_streamed_bytes(request, copied.sent)

    # A burst of downloads ending leaves the heap fragmented: it is trimmed once the burst ends.
    with memory_trim.BURSTS.stream(request.app[SETTINGS].stream_trim_burst):
        await downloads.relay(started, copy)
    return response


async def _copy(
    request: web.Request,
    response: web.StreamResponse,
    started: DownloadStarted,
    copied: Copied,
    idle_timeout_s: float,
    allow_splice: bool,
) -> None:
    """Copy the body, and say in ``copied`` how far it got and how it ended."""
    state = _Copy(copied)
    try:
        await response.prepare(request)
        await response.write(started.first_chunk)
        copied.sent = len(started.first_chunk)
        spliceable = _spliceable(request, started) if allow_splice else None
        if spliceable is not None:
            await _copy_spliced(request, response, started.body, spliceable, state, idle_timeout_s)
        else:
            # Only a take-over reads the bytes the client protocol keeps of a response's start.
            started.body.forget_raw()
            await _copy_chunks(response, started.body, state, idle_timeout_s)
        if copied.end is CopyEnd.CALLER_GONE:
            return
        await response.write_eof()
        return
    except ConnectionError:
        copied.end = CopyEnd.CALLER_GONE
        return
    except (TimeoutError, _Stalled):
        copied.end = (
            CopyEnd.RUNTIME_SILENT if state.waiting_on == "runtime" else CopyEnd.CALLER_STALLED
        )
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        copied.end = CopyEnd.RUNTIME_BROKE
        copied.detail = f"{exc.__class__.__name__}: {exc}"
    except splice.UpstreamClosed as exc:
        copied.end = CopyEnd.RUNTIME_BROKE
        copied.detail = str(exc)
    except Exception as exc:
        # A bug, but the run must still end and the caller must not get a "complete" file.
        log.error("download_internal_error", run_id=started.run.id, exc_info=exc)
        copied.end = CopyEnd.GATEWAY_ERROR
        copied.detail = exc.__class__.__name__
    # No clean end of body: the caller must see a broken transfer.
    if request.transport is not None:
        request.transport.abort()


def download_headers(run_id: int, file: DownloadFile) -> dict[str, str]:
    """The response headers of a trigger-and-download: the runtime's file described as it
    described it, never cached on the way (each run is its own file)."""
    headers = {
        "Content-Type": file.content_type,
        "Content-Disposition": file.disposition,
        "X-Run-Id": str(run_id),
        "Cache-Control": "no-store",
        # The runtime's Content-Type is what the caller gets: no browser guesses another.
        "X-Content-Type-Options": "nosniff",
    }
    if file.content_length is not None:
        headers["Content-Length"] = file.content_length
    if file.content_encoding is not None:
        headers["Content-Encoding"] = file.content_encoding
    return headers


async def _copy_chunks(
    response: web.StreamResponse, body: RuntimeBody, state: _Copy, idle_timeout_s: float
) -> None:
    """The portable path: read what has arrived, write it, let ``write`` apply backpressure."""
    copied = state.copied
    loop = asyncio.get_running_loop()
    # Rescheduling a timer per chunk is measurable at 1 GB/s; a coarser step is not.
    reschedule_step = min(1.0, idle_timeout_s / 4)
    last_progress = loop.time()
    async with asyncio.timeout_at(last_progress + idle_timeout_s) as idle:
        async for chunk in body.chunks():
            state.waiting_on = "caller"
            try:
                await response.write(chunk)
            except ConnectionError:
                copied.end = CopyEnd.CALLER_GONE
                return
            state.waiting_on = "runtime"
            copied.sent += len(chunk)
            now = loop.time()
            if now - last_progress >= reschedule_step:
                last_progress = now
                idle.reschedule(now + idle_timeout_s)


@dataclass(frozen=True, slots=True)
class _Sockets:
    runtime_fd: int
    # ``None``: a chunked body (forwarded with its framing re-emitted).
    length: int | None


def _spliceable(request: web.Request, started: DownloadStarted) -> _Sockets | None:
    """Both sockets, when the rest of this body may move socket to socket; else ``None``."""
    length = started.file.content_length
    if not splice.AVAILABLE or (length is None and not started.body.chunked):
        return None
    runtime_fd = splice.plain_socket_fd(started.body.plain_transport())
    if runtime_fd is None or splice.plain_socket_fd(request.transport) is None:
        return None
    return _Sockets(runtime_fd, None if length is None else int(length))


async def _copy_spliced(
    request: web.Request,
    response: web.StreamResponse,
    body: RuntimeBody,
    sockets: _Sockets,
    state: _Copy,
    idle_timeout_s: float,
) -> None:
    """Hand what aiohttp already read to the caller, then splice the rest of the body."""
    copied = state.copied
    held, remaining = body.take_socket(sockets.length)
    framing: chunked.ChunkFraming | None = None
    chunked_rest = sockets.length is None and remaining > 0
    # Spliced only under our own chunk headers, and only from a known place in the framing.
    if chunked_rest and response.headers.get("Transfer-Encoding") == "chunked":
        framing = chunked.take_over(body.client_protocol(), body.bytes_read)
    # Read by the take-over if there was one; no other path needs them, for however long the
    # body takes.
    body.forget_raw()
    if chunked_rest and framing is None:
        body.resume_reading()
        await _write_all(response, held, state)
        if copied.end is not CopyEnd.CALLER_GONE:
            await _copy_chunks(response, body, state, idle_timeout_s)
        return
    await _write_all(response, held, state)
    if copied.end is CopyEnd.CALLER_GONE or remaining <= 0:
        return
    caller = request.transport
    assert caller is not None
    # aiohttp must have handed every byte it wrote to the kernel before we write beside it.
    # asyncio has no event for "write buffer empty" (the protocol's resume_writing belongs to
    # aiohttp), so poll; on loopback the buffer is almost always empty already.
    async with asyncio.timeout(idle_timeout_s):
        state.waiting_on = "caller"
        while caller.get_write_buffer_size():  # noqa: ASYNC110
            await asyncio.sleep(_FLUSH_POLL_S)
    caller_fd = splice.plain_socket_fd(caller)
    if caller_fd is None:
        raise ConnectionResetError("the caller's connection closed")
    copied.spliced = True

    def count(n: int) -> None:
        copied.sent += n

    threads = request.app[SETTINGS].stream_splice_threads
    try:
        if framing is None:
            await splice.splice_copy(
                sockets.runtime_fd,
                caller_fd,
                remaining,
                idle_timeout_s=idle_timeout_s,
                on_progress=count,
                threads=threads,
            )
        else:
            await chunked.forward_chunked(
                sockets.runtime_fd,
                caller_fd,
                framing,
                idle_timeout_s=idle_timeout_s,
                on_progress=count,
                threads=threads,
            )
    except splice.CallerGone:
        copied.end = CopyEnd.CALLER_GONE
    except splice.SpliceStalled as exc:
        state.waiting_on = exc.waiting_on
        raise _Stalled(str(exc)) from None


async def _write_all(response: web.StreamResponse, chunks: list[bytes], state: _Copy) -> None:
    for chunk in chunks:
        state.waiting_on = "caller"
        try:
            await response.write(chunk)
        except ConnectionError:
            state.copied.end = CopyEnd.CALLER_GONE
            return
        state.copied.sent += len(chunk)
    state.waiting_on = "runtime"
