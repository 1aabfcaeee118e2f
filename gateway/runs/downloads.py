"""Trigger-and-download: start a run whose runtime answers with a file, and record its end.

The bytes never stop here: the HTTP layer copies them to the caller
(``gateway.http.streaming.download``) and reports what happened (:class:`Copied`: how many bytes
reached the caller, and whether the copy went to the end, the caller left, or the runtime broke
or stalled). This service decides what that makes of the run: completed with the file's metadata
(never its bytes), or failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import asyncpg
import structlog

from adapters.base import (
    WINDOW_ELAPSED,
    RuntimeAdapter,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    read_bounded,
)
from gateway.errors import (
    ApiError,
    BadGateway,
    Conflict,
    GatewayTimeout,
    RuntimeInvocationFailed,
)
from gateway.ops import tracing
from gateway.ops.drain import Lifecycle
from gateway.runs import filenames
from gateway.runs.creation import IdempotencyKey, IdempotentReplay, RunCreation
from gateway.runs.lookups import RunLookups
from gateway.runs.outputs import header_outputs
from gateway.runs.recording import RunTransitions
from gateway.settings import Settings
from store import runs
from store.enums import EventType, OutputKind, RunStatus, TriggerKind
from store.jsonb import storable_text
from store.models import Agent, Run
from store.run_events import RunEvent

log = structlog.get_logger(__name__)

# A runtime's error body is read for the 502 message only up to this size.
_MAX_ERROR_BODY = 64 * 1024
# The one kind of agent this use case serves (:meth:`RunLookups.check_eligible`).
FILE_KINDS = (OutputKind.FILE_DOWNLOAD,)
_CALLER_LEFT_EARLY = "Caller disconnected before the runtime answered"


@dataclass(frozen=True, slots=True)
class DownloadFile:
    """What the caller of trigger-and-download is told about the runtime's file.

    The HTTP layer turns these into response headers; the values the runtime sent are passed on
    as they came (a length or an encoding is never recomputed: the bytes go through untouched).
    """

    # The name the run records (the runtime's, made storable, or one derived for it).
    filename: str
    # The Content-Disposition to send: the runtime's verbatim, or one naming ``filename``.
    disposition: str
    # The runtime's Content-Type (``application/octet-stream`` when it sent none).
    content_type: str
    # The bare media type the run records.
    mime_type: str
    # The runtime's Content-Length, as sent; ``None`` for a chunked body (no length known).
    content_length: str | None
    # The runtime's Content-Encoding (``gzip`` …), when the body is encoded.
    content_encoding: str | None


class RuntimeBody:
    """The rest of a runtime's file answer, as the HTTP layer may copy it: chunk by chunk, or,
    on the splice path, from the socket it arrives on."""

    __slots__ = ("_upstream",)

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        self._upstream = upstream

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (raises ``aiohttp.ClientError`` if it breaks)."""
        return self._upstream.content.iter_any()

    def plain_transport(self) -> asyncio.Transport | None:
        """The runtime connection's transport while more of the body is to come over plain
        HTTP (what the splice path moves bytes from); ``None`` otherwise."""
        connection = self._upstream.connection
        if (
            connection is None
            or self._upstream.url.scheme != "http"
            or self._upstream.content.is_eof()
        ):
            return None
        return connection.transport

    @property
    def chunked(self) -> bool:
        """Whether the runtime frames the body in chunks (``Transfer-Encoding: chunked``)."""
        return "chunked" in self._upstream.headers.get("Transfer-Encoding", "")

    @property
    def bytes_read(self) -> int:
        """How many body bytes the client has parsed so far."""
        return self._upstream.content.total_bytes

    def take_socket(self, length: int | None) -> tuple[list[bytes], int]:
        """For the splice path: the bytes the client has already read, and how many of the
        body's ``length`` are still in the socket (0 when the whole body has arrived; for a
        chunked body, ``length`` ``None``, 1 while its end is still to come).

        Draining may resume the client's parser, which feeds bytes it had held back, so it is
        drained until nothing is left; while bytes remain, it then reads the socket no more
        (they are the caller's to move, and the connection cannot be reused).
        """
        held: list[bytes] = []
        content = self._upstream.content
        while chunk := content.read_nowait():
            held.append(chunk)
        if content.is_eof():
            return held, 0
        self.client_protocol().pause_reading()
        return held, 1 if length is None else length - content.total_bytes

    def client_protocol(self) -> aiohttp.client_proto.ResponseHandler:
        """The runtime connection's client protocol: where a chunked body's framing is taken
        over from (the splice path re-emits it around spliced payloads)."""
        connection = self._upstream.connection
        assert connection is not None
        assert connection.protocol is not None
        return connection.protocol

    def forget_raw(self) -> None:
        """Let the client protocol drop the raw bytes it keeps of the response's start (only
        the splice path's take-over of a chunked body reads them)."""
        connection = self._upstream.connection
        forget = getattr(
            connection.protocol if connection is not None else None, "forget_raw", None
        )
        if forget is not None:
            forget()

    def resume_reading(self) -> None:
        """Undo :meth:`take_socket`'s pause: the client reads the rest of the body itself."""
        self.client_protocol().resume_reading()

    def end(self, *, reusable: bool) -> None:
        """Let the runtime's connection go: back to the pool when ``reusable`` (the body was
        read to its end by the client), closed otherwise. The service calls it, once."""
        if reusable:
            self._upstream.release()
        else:
            self._upstream.close()


@dataclass(frozen=True, slots=True)
class DownloadStarted:
    """A download whose runtime answered with a file: what the file is, its first bytes and
    the rest of its body."""

    run: Run
    file: DownloadFile
    first_chunk: bytes
    body: RuntimeBody
    # What the runtime's ``X-Outputs`` header said (recorded with the run's end).
    outputs: int | None


@dataclass(frozen=True, slots=True)
class DownloadAcknowledged:
    """The runtime took the run without a file: it reports through callbacks (an n8n
    "Workflow was started", a 202/204, or any 2xx of an agent whose ``result_delivery`` is
    ``callback``). The run goes on, driven by its callbacks and in the end its deadline."""

    run: Run


DownloadStart = DownloadStarted | DownloadAcknowledged


class CopyEnd(StrEnum):
    """How the HTTP layer's copy of a download's body ended."""

    # Every byte reached the caller.
    WHOLE = "whole"
    # The caller's connection closed.
    CALLER_GONE = "caller_gone"
    # Nothing came from the runtime for the idle bound.
    RUNTIME_SILENT = "runtime_silent"
    # The caller read nothing for the idle bound.
    CALLER_STALLED = "caller_stalled"
    # The runtime's body broke (``detail`` says how).
    RUNTIME_BROKE = "runtime_broke"
    # The gateway failed (``detail`` names the error).
    GATEWAY_ERROR = "gateway_error"


@dataclass(slots=True)
class Copied:
    """What the HTTP layer reports of its copy, filled in as it goes."""

    # Body bytes that reached the caller (the first chunk included).
    sent: int = 0
    end: CopyEnd = CopyEnd.WHOLE
    detail: str = ""
    # Whether the kernel moved bytes socket to socket (the connection cannot be reused).
    spliced: bool = False


Copy = Callable[[Copied], Awaitable[None]]


class DownloadService:
    """Starts trigger-and-download runs and records how each ended."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        lookups: RunLookups,
        creation: RunCreation,
        transitions: RunTransitions,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._lookups = lookups
        self._creation = creation
        self._transitions = transitions
        # Tells a stream the drain cut from one whose caller left.
        self._lifecycle = lifecycle

    async def start(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        timeout_ms: float | None,
        accept_encoding: str | None,
        idempotency: IdempotencyKey | None,
        admit: Callable[[], Awaitable[object]],
    ) -> DownloadStart:
        """Create the run, invoke the runtime, and return once it has begun sending a file
        (or has acknowledged the run without one).

        ``agent`` is one :data:`FILE_KINDS` allows (:meth:`RunLookups.check_eligible`).
        Raises 504 (no headers in the window), 500 (runtime unreachable) or 502 (the runtime
        answered JSON, an error status or nothing); in each case the run is marked failed.
        With ``idempotency``, a key that already names a run is a 409
        (:func:`download_replayed`), before ``admit``: a replay starts nothing.
        """
        existing = await self._creation.replay(agent, idempotency)
        if existing is not None:
            raise download_replayed(existing)
        await admit()
        window_ms = self._lookups.wait_window_ms(agent, timeout_ms)
        started = time.monotonic()
        created = await self._creation.create_once(
            agent,
            input_data=input_data,
            user_id=user_id,
            window_ms=window_ms,
            trigger_kind=TriggerKind.DOWNLOAD,
            started=True,
            idempotency=idempotency,
        )
        if isinstance(created, IdempotentReplay):
            raise download_replayed(created.run)
        run = created.run
        payload = self._creation.trigger_payload(agent, run)
        adapter = self._lookups.adapter_for(agent)
        try:
            upstream = await adapter.open_download(
                agent.runtime, payload, wait_s=window_ms / 1000, accept_encoding=accept_encoding
            )
        except RuntimeTimeout as exc:
            await self._transitions.fail(run.id, str(exc))
            raise GatewayTimeout(str(exc), extra={"runId": run.id}) from None
        except (RuntimeUnavailable, RuntimeRefused, RuntimeUnsupported) as exc:
            message = f"Runtime invocation failed: {exc}"
            await self._transitions.fail(run.id, message)
            raise RuntimeInvocationFailed(message, extra={"runId": run.id}) from None
        except asyncio.CancelledError:
            self._transitions.fail_detached(run.id, _CALLER_LEFT_EARLY)
            raise
        try:
            first = await self._first_bytes(
                run, upstream, started, window_ms / 1000, adapter, agent.runtime
            )
        except BaseException:
            upstream.close()
            raise
        if isinstance(first, DownloadAcknowledged):
            return first
        return DownloadStarted(
            run=run,
            file=_describe_file(agent, run, upstream),
            first_chunk=first,
            body=RuntimeBody(upstream),
            outputs=header_outputs(upstream.headers.get("X-Outputs")),
        )

    async def _first_bytes(
        self,
        run: Run,
        upstream: aiohttp.ClientResponse,
        started: float,
        wait_s: float,
        adapter: RuntimeAdapter,
        runtime: Mapping[str, Any],
    ) -> bytes | DownloadAcknowledged:
        """The first chunk of a file answer, or the acknowledgement that leaves the run to its
        callbacks; anything else fails the run and raises.

        The first bytes are read before any header goes to the caller, while the status can
        still change: a JSON answer, an error status or an empty body is no file.
        """
        acknowledged = DownloadAcknowledged(dataclasses.replace(run, status=RunStatus.RUNNING))
        if adapter.acknowledges(runtime, upstream.status, None):
            return acknowledged
        # The rest of the window, but at least the idle bound: the runtime has answered.
        bound_s = max(wait_s - (time.monotonic() - started), self._settings.stream_idle_timeout_s)
        output_data: Any = None
        try:
            async with asyncio.timeout(bound_s):
                if upstream.status >= 300 or filenames.is_json(
                    upstream.headers.get("Content-Type")
                ):
                    message, output_data = await _describe_non_file(upstream)
                    if adapter.acknowledges(runtime, upstream.status, output_data):
                        return acknowledged
                    failure: ApiError = BadGateway(message, extra={"runId": run.id})
                elif first := await upstream.content.readany():
                    return first
                else:
                    failure = BadGateway(
                        "RuntimeReturnedEmptyBody: the runtime answered without a file",
                        extra={"runId": run.id},
                    )
        except TimeoutError:
            failure = GatewayTimeout(WINDOW_ELAPSED, extra={"runId": run.id})
        except aiohttp.ClientError as exc:
            failure = BadGateway(
                f"Runtime response broke before the first byte: {exc!r}", extra={"runId": run.id}
            )
        except asyncio.CancelledError:
            self._transitions.fail_detached(run.id, _CALLER_LEFT_EARLY)
            raise
        await self._transitions.fail(run.id, failure.message, output_data=output_data)
        raise failure

    async def relay(self, started: DownloadStarted, copy: Copy) -> Copied:
        """Have ``copy`` send ``started``'s body to the caller, then record how the run ended.

        However long the body takes, the reaper leaves the run alone while it streams (its
        deadline is renewed, :meth:`_kept_alive`). A copy that went to the end completes the
        run with the file's metadata; any other end fails it with the reason, the caller
        leaving included. Each end is recorded even if the request is being cancelled.
        """
        copied = Copied()
        run = started.run
        # The body's relay, first byte to last, in its own span (the request's covers more).
        with tracing.span("download stream", attributes={"agent_gateway.run.id": str(run.id)}):
            async with self._kept_alive(run):
                try:
                    await copy(copied)
                except asyncio.CancelledError:
                    # The caller disconnected (the handler is cancelled with it) or the drain
                    # timeout passed while the process was stopping.
                    started.body.end(reusable=False)
                    self._transitions.fail_detached(run.id, self._cut_reason(copied.sent))
                    raise
                await self._record_end(started, copied)
        return copied

    def _cut_reason(self, sent: int) -> str:
        if self._lifecycle is not None and self._lifecycle.cancelling:
            return f"Gateway shut down mid-stream after {sent} bytes (drain timeout passed)"
        return f"Caller disconnected after {sent} bytes"

    async def _record_end(self, started: DownloadStarted, copied: Copied) -> None:
        run_id = started.run.id
        if copied.end != CopyEnd.WHOLE:
            started.body.end(reusable=False)
            reason = failure_reason(copied, idle_timeout_s=self._settings.stream_idle_timeout_s)
            if copied.end != CopyEnd.CALLER_GONE:
                log.warning("download_aborted", run_id=run_id, reason=reason)
            await self._transitions.record_surely(
                self._transitions.fail(run_id, reason), name=f"fail-run-{run_id}"
            )
            return
        # The runtime connection's parser never saw spliced bytes: it cannot be reused.
        started.body.end(reusable=not copied.spliced)
        log.info(
            "download_sent",
            run_id=run_id,
            bytes=copied.sent,
            path="splice" if copied.spliced else "copy",
        )
        # The caller may hang up as soon as its last byte arrived.
        await self._transitions.record_surely(
            self._transitions.publish(
                RunEvent(
                    run_id,
                    EventType.COMPLETED,
                    output_data={
                        "kind": OutputKind.FILE_DOWNLOAD.value,
                        "filename": started.file.filename,
                        "mimeType": started.file.mime_type,
                        "sizeBytes": copied.sent,
                    },
                    outputs=started.outputs,
                )
            ),
            name=f"finish-run-{run_id}",
        )

    @contextlib.asynccontextmanager
    async def _kept_alive(self, run: Run) -> AsyncIterator[None]:
        """Keep ``run`` from the reaper while the block runs (a download streaming its file).

        A download may stream for longer than its run's deadline: only the idle bound limits
        it. While the block runs the deadline is renewed, ``DOWNLOAD_LEASE_S`` ahead, whenever
        it comes within two thirds of that; nothing is written while it is further off. When
        the block ends, or this replica dies, the renewals stop, so a run whose end is never
        recorded is still reaped, at most a lease later.
        """
        renewing = asyncio.create_task(self._renew_deadline(run), name=f"keep-alive-{run.id}")
        try:
            yield
        finally:
            renewing.cancel()
            await asyncio.wait([renewing])

    async def _renew_deadline(self, run: Run) -> None:
        lease_s = self._settings.download_lease_s
        # Renewed with two thirds of a lease left: a late renewal (a busy event loop, a slow
        # statement) still lands before the reaper may act.
        margin_s = lease_s * 2 / 3
        pause_s = max(0.0, run.seconds_to_deadline() - margin_s)
        while True:
            await asyncio.sleep(pause_s)
            try:
                left_s = await runs.extend_deadline(self._pool, run.id, lease_s=lease_s)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # PostgreSQL away: try again soon, the stream itself goes on.
                log.warning("run_keep_alive_not_recorded", run_id=run.id, error=str(exc))
                pause_s = lease_s / 6
                continue
            if left_s is None:
                return  # the run has ended (cancelled, say): nothing left to keep
            pause_s = max(0.0, left_s - margin_s)


def download_replayed(run: Run) -> Conflict:
    """The answer to a trigger-and-download retried with the Idempotency-Key of ``run``:
    a download's bytes are never stored, so they cannot be sent again; the caller learns
    the run and its status (409), and no second run is started."""
    return Conflict(
        f"Idempotency-Key already started run {run.id} ({run.status}); a download's file "
        "is not stored and cannot be sent again: read the run with GET "
        f"/api/agents/{run.agent_id}/runs/{run.id}",
        extra={"runId": run.id, "status": run.status},
        headers={"Idempotent-Replayed": "true"},
    )


def failure_reason(copied: Copied, *, idle_timeout_s: float) -> str:
    """The reason a download that did not reach its end fails its run with."""
    sent = copied.sent
    match copied.end:
        case CopyEnd.CALLER_GONE:
            return f"Caller disconnected after {sent} bytes"
        case CopyEnd.RUNTIME_SILENT:
            return f"Runtime sent nothing for {idle_timeout_s:g} s mid-stream after {sent} bytes"
        case CopyEnd.CALLER_STALLED:
            return f"Caller read nothing for {idle_timeout_s:g} s mid-stream after {sent} bytes"
        case CopyEnd.RUNTIME_BROKE:
            return f"Runtime stream broke after {sent} bytes: {copied.detail}"
        case _:
            return f"Gateway error mid-stream after {sent} bytes: {copied.detail}"


def _describe_file(agent: Agent, run: Run, upstream: aiohttp.ClientResponse) -> DownloadFile:
    """The runtime's file as the caller is told of it and the run records it."""
    content_type = upstream.headers.get("Content-Type")
    raw_disposition = upstream.headers.get("Content-Disposition")
    filename = filenames.filename_from_disposition(raw_disposition)
    if filename is None or not filenames.runtime_filename_is_safe(raw_disposition or ""):
        # None given, or one a caller could not save as is (a path, a control or bidi
        # character): the contract's synthesised form, as when the runtime gave none.
        filename = filenames.derive_filename(agent.name, run.id, content_type)
        disposition = filenames.synthesized_disposition(filename)
    else:
        # Passed on to the caller verbatim, but recorded as PostgreSQL can hold it.
        filename = storable_text(filename)
        disposition = raw_disposition or ""
    length = upstream.headers.get("Content-Length")
    if "chunked" in upstream.headers.get("Transfer-Encoding", ""):
        length = None
    return DownloadFile(
        filename=filename,
        disposition=disposition,
        content_type=content_type or "application/octet-stream",
        mime_type=filenames.media_type(content_type),
        content_length=length,
        # An empty Content-Encoding says nothing: it is not passed on.
        content_encoding=upstream.headers.get("Content-Encoding") or None,
    )


async def _describe_non_file(upstream: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The failure message for a runtime that answered something other than a file, and the
    JSON it sent (``None`` when there was none)."""
    raw = await read_bounded(upstream.content, _MAX_ERROR_BODY)
    parsed: Any = None
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = None
    if parsed is not None:
        return "WorkflowReturnedJson: " + json.dumps(parsed, ensure_ascii=False), parsed
    if filenames.is_json(upstream.headers.get("Content-Type")):
        return f"WorkflowReturnedInvalidJson: HTTP {upstream.status}", None
    return f"RuntimeHttpError: HTTP {upstream.status} {upstream.reason or ''}".rstrip(), None
