"""Copying a runtime's body to the caller, chunk by chunk, never buffering it.

Memory per stream is bounded by the client's read buffer plus one chunk in the socket's
write buffer: ``StreamResponse.write`` waits for the caller to drain before the next read.

When the body has a ``Content-Length`` and neither side uses TLS, the rest of the body after
the first bytes is moved socket to socket by the kernel (``gateway.http.splice``); the outcome
(bytes counted, the caller leaving, the runtime failing, stalls) is recorded the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from gateway.http import chunked, memory_trim, splice
from gateway.http.keys import LIFECYCLE, SETTINGS
from gateway.http.request_info import note_streamed_bytes
from gateway.ops import tracing
from gateway.runs.service import DownloadFile, DownloadStart, RunService

log = structlog.get_logger(__name__)

# How often the caller's socket is checked for aiohttp's last bytes before splicing begins.
_FLUSH_POLL_S = 0.002


@dataclass(slots=True)
class _Progress:
    """How far a copy got, and which side the idle timer waits on (to blame a stall)."""

    sent: int = 0
    waiting_on: str = "runtime"
    caller_gone: bool = False
    spliced: bool = False


class _Stalled(Exception):
    """Nothing moved for the idle bound."""


async def send_download(
    request: web.Request,
    start: DownloadStart,
    runs: RunService,
    *,
    idle_timeout_s: float,
    allow_splice: bool = True,
) -> web.StreamResponse:
    """Stream ``start``'s body to the caller and record how the run ended.

    The caller leaves: the upstream request is closed at once and the run fails. The runtime
    dies or stalls mid-body: the caller's connection is aborted, so a truncated file can never
    pass for a whole one, and the run fails. However long the body takes, the reaper leaves
    the run alone while it streams (:meth:`RunService.kept_alive`), until its end is recorded.
    """
    # The body's relay, first byte to last, in its own span (the request's covers more).
    with tracing.span("download stream", attributes={"agent_gateway.run.id": str(start.run.id)}):
        burst = request.app[SETTINGS].stream_trim_burst
        async with runs.kept_alive(start.run):
            with memory_trim.BURSTS.stream(burst):
                return await _send(
                    request, start, runs, idle_timeout_s=idle_timeout_s, allow_splice=allow_splice
                )


async def _send(
    request: web.Request,
    start: DownloadStart,
    runs: RunService,
    *,
    idle_timeout_s: float,
    allow_splice: bool,
) -> web.StreamResponse:
    upstream = start.upstream
    response = web.StreamResponse(status=200, headers=download_headers(start.run.id, start.file))
    progress = _Progress()
    failure: str | None = None
    try:
        await response.prepare(request)
        await response.write(start.first_chunk)
        progress.sent = len(start.first_chunk)
        spliceable = _spliceable(request, start) if allow_splice else None
        if spliceable is not None:
            await _copy_spliced(request, response, start, spliceable, progress, idle_timeout_s)
        else:
            await _copy_chunks(response, upstream, progress, idle_timeout_s)
        if not progress.caller_gone:
            await response.write_eof()
    except asyncio.CancelledError:
        # The caller disconnected and the handler was cancelled (handler_cancellation=True),
        # or the drain timeout passed while the process was stopping.
        upstream.close()
        note_streamed_bytes(request, progress.sent)
        if request.app[LIFECYCLE].cancelling:
            reason = (
                f"Gateway shut down mid-stream after {progress.sent} bytes (drain timeout passed)"
            )
        else:
            reason = f"Caller disconnected after {progress.sent} bytes"
        runs.fail_detached(start.run, reason)
        raise
    except ConnectionError:
        progress.caller_gone = True
    except (TimeoutError, _Stalled):
        who = "Runtime sent nothing" if progress.waiting_on == "runtime" else "Caller read nothing"
        failure = f"{who} for {idle_timeout_s:g} s mid-stream after {progress.sent} bytes"
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        failure = (
            f"Runtime stream broke after {progress.sent} bytes: {exc.__class__.__name__}: {exc}"
        )
    except splice.UpstreamClosed as exc:
        failure = f"Runtime stream broke after {progress.sent} bytes: {exc}"
    except Exception as exc:
        # A bug, but the run must still end and the caller must not get a "complete" file.
        log.error("download_internal_error", run_id=start.run.id, exc_info=exc)
        failure = f"Gateway error mid-stream after {progress.sent} bytes: {exc.__class__.__name__}"

    note_streamed_bytes(request, progress.sent)
    run_id = start.run.id
    # Each end below is recorded with record_surely: the caller's connection is gone or about to
    # go, and with it (handler cancellation) this task.
    if progress.caller_gone:
        upstream.close()
        reason = f"Caller disconnected after {progress.sent} bytes"
        await runs.record_surely(runs.fail(run_id, reason), name=f"fail-run-{run_id}")
        return response
    if failure is not None:
        upstream.close()
        # No clean end of body: the caller must see a broken transfer.
        if request.transport is not None:
            request.transport.abort()
        log.warning("download_aborted", run_id=run_id, reason=failure)
        await runs.record_surely(runs.fail(run_id, failure), name=f"fail-run-{run_id}")
        return response
    if progress.spliced:
        # The runtime connection's parser never saw the spliced bytes: it cannot be reused.
        upstream.close()
    else:
        upstream.release()
    log.info(
        "download_sent",
        run_id=run_id,
        bytes=progress.sent,
        path="splice" if progress.spliced else "copy",
    )
    # The caller may hang up as soon as its last byte arrived.
    await runs.record_surely(
        runs.finish_download(start, progress.sent), name=f"finish-run-{run_id}"
    )
    return response


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
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    progress: _Progress,
    idle_timeout_s: float,
) -> None:
    """The portable path: read what has arrived, write it, let ``write`` apply backpressure."""
    loop = asyncio.get_running_loop()
    # Rescheduling a timer per chunk is measurable at 1 GB/s; a coarser step is not.
    reschedule_step = min(1.0, idle_timeout_s / 4)
    last_progress = loop.time()
    async with asyncio.timeout_at(last_progress + idle_timeout_s) as idle:
        async for chunk in upstream.content.iter_any():
            progress.waiting_on = "caller"
            try:
                await response.write(chunk)
            except ConnectionError:
                progress.caller_gone = True
                return
            progress.waiting_on = "runtime"
            progress.sent += len(chunk)
            now = loop.time()
            if now - last_progress >= reschedule_step:
                last_progress = now
                idle.reschedule(now + idle_timeout_s)


@dataclass(frozen=True, slots=True)
class _Sockets:
    runtime_fd: int
    # ``None``: a chunked body (forwarded with its framing re-emitted).
    length: int | None


def _spliceable(request: web.Request, start: DownloadStart) -> _Sockets | None:
    """Both sockets, when the rest of this body may move socket to socket; else ``None``."""
    length = start.file.content_length
    upstream = start.upstream
    if not splice.AVAILABLE:
        return None
    if length is None and "chunked" not in upstream.headers.get("Transfer-Encoding", ""):
        return None
    connection = upstream.connection
    if connection is None or upstream.url.scheme != "http" or upstream.content.is_eof():
        return None
    runtime_fd = splice.plain_socket_fd(connection.transport)
    if runtime_fd is None or splice.plain_socket_fd(request.transport) is None:
        return None
    return _Sockets(runtime_fd, None if length is None else int(length))


async def _copy_spliced(
    request: web.Request,
    response: web.StreamResponse,
    start: DownloadStart,
    sockets: _Sockets,
    progress: _Progress,
    idle_timeout_s: float,
) -> None:
    """Hand what aiohttp already read to the caller, then splice the rest of the body."""
    upstream = start.upstream
    connection = upstream.connection
    assert connection is not None
    assert connection.protocol is not None
    # Take every byte aiohttp holds. Draining may resume its parser, which feeds bytes it had
    # held back, so drain until nothing is left; then stop it reading the socket for good.
    held: list[bytes] = []
    while chunk := upstream.content.read_nowait():
        held.append(chunk)
    if upstream.content.is_eof():
        # The whole body had already arrived: nothing is left in the socket.
        await _write_all(response, held, progress)
        return
    connection.protocol.pause_reading()
    framing: chunked.ChunkFraming | None = None
    if sockets.length is None:
        # Spliced only under our own chunk headers, and only from a known place in the framing.
        if response.headers.get("Transfer-Encoding") == "chunked":
            framing = chunked.take_over(connection.protocol, upstream.content.total_bytes)
        if framing is None:
            connection.protocol.resume_reading()
            await _write_all(response, held, progress)
            if not progress.caller_gone:
                await _copy_chunks(response, upstream, progress, idle_timeout_s)
            return
        remaining = 1
    else:
        remaining = sockets.length - upstream.content.total_bytes
    await _write_all(response, held, progress)
    if progress.caller_gone or remaining <= 0:
        return
    caller = request.transport
    assert caller is not None
    # aiohttp must have handed every byte it wrote to the kernel before we write beside it.
    # asyncio has no event for "write buffer empty" (the protocol's resume_writing belongs to
    # aiohttp), so poll; on loopback the buffer is almost always empty already.
    async with asyncio.timeout(idle_timeout_s):
        progress.waiting_on = "caller"
        while caller.get_write_buffer_size():  # noqa: ASYNC110
            await asyncio.sleep(_FLUSH_POLL_S)
    caller_fd = splice.plain_socket_fd(caller)
    if caller_fd is None:
        raise ConnectionResetError("the caller's connection closed")
    progress.spliced = True

    def count(n: int) -> None:
        progress.sent += n

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
        progress.caller_gone = True
    except splice.SpliceStalled as exc:
        progress.waiting_on = exc.waiting_on
        raise _Stalled(str(exc)) from None


async def _write_all(
    response: web.StreamResponse, chunks: list[bytes], progress: _Progress
) -> None:
    for chunk in chunks:
        progress.waiting_on = "caller"
        try:
            await response.write(chunk)
        except ConnectionError:
            progress.caller_gone = True
            return
        progress.sent += len(chunk)
    progress.waiting_on = "runtime"
