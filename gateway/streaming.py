"""Copying a runtime's body to the caller, chunk by chunk, never buffering it.

Memory per stream is bounded by the client's read buffer plus one chunk in the socket's
write buffer: ``StreamResponse.write`` waits for the caller to drain before the next read.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from aiohttp import web

from gateway.app_keys import LIFECYCLE
from gateway.request_info import note_streamed_bytes
from gateway.runs import DownloadStart, RunService

log = structlog.get_logger(__name__)


async def send_download(
    request: web.Request, start: DownloadStart, runs: RunService, *, idle_timeout_s: float
) -> web.StreamResponse:
    """Stream ``start``'s body to the caller and record how the run ended.

    The caller leaves: the upstream request is closed at once and the run fails. The runtime
    dies or stalls mid-body: the caller's connection is aborted, so a truncated file can never
    pass for a whole one, and the run fails.
    """
    upstream = start.upstream
    response = web.StreamResponse(status=200, headers=start.headers)
    sent = 0
    failure: str | None = None
    caller_gone = False
    # Which side the idle timer is waiting on, so that a stall is blamed correctly.
    waiting_on = "runtime"
    loop = asyncio.get_running_loop()
    # Rescheduling a timer per chunk is measurable at 1 GB/s; a coarser step is not.
    reschedule_step = min(1.0, idle_timeout_s / 4)
    try:
        await response.prepare(request)
        await response.write(start.first_chunk)
        sent = len(start.first_chunk)
        last_progress = loop.time()
        async with asyncio.timeout_at(last_progress + idle_timeout_s) as idle:
            async for chunk in upstream.content.iter_any():
                waiting_on = "caller"
                try:
                    await response.write(chunk)
                except ConnectionError:
                    caller_gone = True
                    break
                waiting_on = "runtime"
                sent += len(chunk)
                now = loop.time()
                if now - last_progress >= reschedule_step:
                    last_progress = now
                    idle.reschedule(now + idle_timeout_s)
        if not caller_gone:
            await response.write_eof()
    except asyncio.CancelledError:
        # The caller disconnected and the handler was cancelled (handler_cancellation=True),
        # or the drain timeout passed while the process was stopping.
        upstream.close()
        note_streamed_bytes(request, sent)
        if request.app[LIFECYCLE].cancelling:
            reason = f"Gateway shut down mid-stream after {sent} bytes (drain timeout passed)"
        else:
            reason = f"Caller disconnected after {sent} bytes"
        runs.fail_detached(start.run, reason)
        raise
    except ConnectionError:
        caller_gone = True
    except TimeoutError:
        who = "Runtime sent nothing" if waiting_on == "runtime" else "Caller read nothing"
        failure = f"{who} for {idle_timeout_s:g} s mid-stream after {sent} bytes"
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        failure = f"Runtime stream broke after {sent} bytes: {exc.__class__.__name__}: {exc}"
    except Exception as exc:
        # A bug, but the run must still end and the caller must not get a "complete" file.
        log.error("download_internal_error", run_id=start.run.id, exc_info=exc)
        failure = f"Gateway error mid-stream after {sent} bytes: {exc.__class__.__name__}"

    note_streamed_bytes(request, sent)
    if caller_gone:
        upstream.close()
        await runs.fail(start.run.id, f"Caller disconnected after {sent} bytes")
        return response
    if failure is not None:
        upstream.close()
        # No clean end of body: the caller must see a broken transfer.
        if request.transport is not None:
            request.transport.abort()
        log.warning("download_aborted", run_id=start.run.id, reason=failure)
        await runs.fail(start.run.id, failure)
        return response
    upstream.release()
    await runs.finish_download(start, sent)
    return response
