"""The run service: eligibility, run creation, runtime invocation and run transitions.

Domain code: it speaks in agents, runs and events, and knows nothing of ``aiohttp.web``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import asyncpg
import structlog

from adapters.base import (
    RunResult,
    RuntimeAdapter,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
    read_bounded,
)
from gateway.background import BackgroundTasks
from gateway.errors import (
    ApiError,
    BadGateway,
    Conflict,
    Forbidden,
    GatewayTimeout,
    NotFound,
    RuntimeInvocationFailed,
    ServiceUnavailable,
    Unprocessable,
)
from gateway.ops import tracing
from gateway.runs import filenames
from gateway.runs.outputs import header_outputs, lift_outputs
from gateway.runs.recording import RunRecorder
from gateway.security.apikeys import agent_api_key, derive_agent_api_key
from gateway.security.keyring import key_ring
from gateway.security.tokens import CredentialsTokens
from gateway.settings import Settings
from store import orgs, runs
from store.enums import (
    AgentStatus,
    EventType,
    ManagedBy,
    OutputKind,
    RunStatus,
    TriggerKind,
)
from store.jsonb import storable_text
from store.lookup_cache import LookupCache
from store.models import Agent, Run
from store.run_events import RunEvent
from store.transitions import Outcome

log = structlog.get_logger(__name__)

# A runtime's error body is read for the 502 message only up to this size.
_MAX_ERROR_BODY = 64 * 1024
# The run's error column holds a short reason.
MAX_ERROR_LEN = 2000
_T = TypeVar("_T")


class _KeyTaken(Exception):
    """The Idempotency-Key is bound to another run."""


class IdempotentReplay(Exception):
    """The Idempotency-Key already names a run: that run is the answer."""

    def __init__(self, run: Run) -> None:
        super().__init__(run.id)
        self.run = run


class DownloadAcknowledged(Exception):
    """The runtime took a download's run without a file: it reports through callbacks (an n8n
    "Workflow was started", a 202/204, or any 2xx of an agent whose ``result_delivery`` is
    ``callback``). The run goes on, driven by its callbacks and in the end its deadline."""

    def __init__(self, run: Run) -> None:
        super().__init__(run.id)
        self.run = run


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


@dataclass(slots=True)
class DownloadStart:
    """A download whose runtime answered with a file: what the file is and the body to copy."""

    run: Run
    upstream: aiohttp.ClientResponse
    first_chunk: bytes
    file: DownloadFile
    outputs: int | None


class RunService:
    """Starts runs and records what happens to them."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        recorder: RunRecorder,
        adapters: Mapping[str, RuntimeAdapter],
        background: BackgroundTasks,
        tokens: CredentialsTokens,
        lookups: LookupCache | None = None,
    ) -> None:
        self._settings = settings
        self._ring = key_ring(settings)
        self._tokens = tokens
        self._pool = pool
        # Agent rows, read through the process's cache (uncached when none is given).
        self.lookups = lookups or LookupCache(pool)
        self._recorder = recorder
        self._adapters = adapters
        self._background = background

    async def agent_for(self, org_id: uuid.UUID, agent_id: int) -> Agent:
        """The agent, if it belongs to ``org_id``; otherwise 404 (never reveal it exists)."""
        agent = await self.lookups.agent_in_org(agent_id, org_id)
        if agent is None:
            raise NotFound("Agent not found")
        return agent

    def check_eligible(self, agent: Agent, *, output_kinds: Collection[str]) -> None:
        """Raise 403/422 unless ``agent`` may be triggered from outside for this kind of run."""
        if not agent.allow_external_triggers:
            raise Forbidden(
                "External triggers are disabled for this agent (allow_external_triggers is off)"
            )
        problems = []
        if agent.managed_by != ManagedBy.PLATFORM:
            problems.append(f"managed_by is '{agent.managed_by}', not 'platform'")
        if agent.status != AgentStatus.ACTIVE:
            problems.append(f"status is '{agent.status}', not 'active'")
        if agent.output_kind not in output_kinds:
            if agent.output_kind == OutputKind.FILE_DOWNLOAD:
                problems.append("output_kind is 'file_download': use trigger-and-download")
            else:
                allowed = "' or '".join(sorted(output_kinds))
                problems.append(f"output_kind is '{agent.output_kind}', not '{allowed}'")
        if problems:
            raise Unprocessable("Agent is not eligible for this endpoint: " + "; ".join(problems))

    def wait_window_ms(self, agent: Agent, timeout_ms: float | None) -> int:
        """``min(timeoutMs or default, agent.running_timeout_ms, hard ceiling)``."""
        asked = self._settings.default_wait_ms if timeout_ms is None else timeout_ms
        return max(1, int(min(asked, agent.running_timeout_ms, self._settings.hard_ceiling_ms)))

    async def get_run(self, org_id: uuid.UUID, agent_id: int, run_id: int) -> Run:
        """A run of one of the organisation's agents; 404 otherwise."""
        await self.agent_for(org_id, agent_id)
        run = await runs.get_run_of_agent(self._pool, agent_id, run_id)
        if run is None:
            raise NotFound("Run not found")
        return run

    async def create_run(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        window_ms: int,
        trigger_kind: str,
        idempotency: tuple[str, bytes] | None = None,
        started: bool = False,
    ) -> Run:
        """Insert the run row (already ``running`` when ``started``: the caller invokes the
        runtime at once); the caller's input is merged over the agent's default input.

        With ``idempotency`` (a key and the hash of the request), a key already bound to a run
        in the last 24 h raises :class:`IdempotentReplay` with that run, and nothing is created;
        the same key with a different request is a 422.
        """
        merged = {**agent.default_input, **input_data}
        created_by = None
        if user_id is not None and await orgs.is_member(self._pool, agent.org_id, user_id):
            created_by = user_id
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(
            milliseconds=window_ms + agent.running_timeout_ms
        )
        # Its callbacks, later and elsewhere, are recorded in the trace the run starts in.
        trace_parent = tracing.current_traceparent()
        if idempotency is None:
            # One statement: no transaction to open and commit around it.
            return await runs.insert_run(
                self._pool,
                agent=agent,
                input_data=merged,
                created_by=created_by,
                deadline=deadline,
                trigger_kind=trigger_kind,
                started=started,
                trace_parent=trace_parent,
            )
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                run = await runs.insert_run(
                    conn,
                    agent=agent,
                    input_data=merged,
                    created_by=created_by,
                    deadline=deadline,
                    trigger_kind=trigger_kind,
                    started=started,
                    trace_parent=trace_parent,
                )
                if not await runs.claim_idempotency_key(
                    conn,
                    agent_id=agent.id,
                    key=idempotency[0],
                    request_hash=idempotency[1],
                    run_id=run.id,
                ):
                    raise _KeyTaken  # rolls the new run back: this call creates nothing
            return run
        except _KeyTaken:
            pass
        # Another request holds the key (maybe one that committed a moment ago).
        assert idempotency is not None
        key, request_hash = idempotency
        existing = await self.idempotent_run(agent, key, request_hash)
        if existing is None:
            raise ServiceUnavailable(
                "Idempotency-Key is being used by a request still in progress",
                headers={"Retry-After": "1"},
            )
        raise IdempotentReplay(existing)

    async def idempotent_run(self, agent: Agent, key: str, request_hash: bytes) -> Run | None:
        """The run that ``key`` named for this agent in the last 24 h, if any.

        The same key sent with a different request is refused (422): it cannot name two runs.
        """
        found = await runs.find_idempotent_run(self._pool, agent_id=agent.id, key=key)
        if found is None:
            return None
        run_id, bound_hash = found
        if bound_hash != request_hash:
            raise Unprocessable(
                "Idempotency-Key was already used with a different request body",
                extra={"runId": run_id},
            )
        return await runs.get_run(self._pool, run_id)

    def download_replayed(self, run: Run) -> Conflict:
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

    def trigger_payload(self, agent: Agent, run: Run) -> TriggerPayload:
        """The body a runtime receives for ``run``."""
        created_ms = int(run.created_at.timestamp() * 1000)
        return TriggerPayload(
            run_id=run.id,
            agent_id=agent.id,
            input=run.input,
            agent_api_key=self._agent_api_key(agent),
            callback_url=f"{self._settings.public_base_url}/api/runs/{run.id}/callback",
            # The token lasts while the run may: a long run keeps its credentials to the end.
            credentials_token=self._tokens.issue(
                run.id, at_least_s=run.seconds_to_deadline()
            ).token,
            idempotency_key=f"agent-gateway-run-{run.id}-{created_ms}",
            trace_headers=tracing.outbound_headers(),
        )

    def _agent_api_key(self, agent: Agent) -> str:
        key = agent_api_key(self._ring, agent.api_key_salt, agent.api_key_hash)
        if key is None:
            # Made under a key that was retired: its callbacks will be refused until an
            # operator rotates it (docs/operations.md, "Rotating SECRET_KEY").
            log.error("agent_key_under_retired_secret", agent_id=agent.id)
            return derive_agent_api_key(self._ring.primary, agent.api_key_salt)
        return key

    def adapter_for(self, agent: Agent) -> RuntimeAdapter:
        """The adapter of the agent's runtime kind; 422 when no adapter serves it."""
        return self._adapter(agent)

    def _adapter(self, agent: Agent) -> RuntimeAdapter:
        adapter = self._adapters.get(str(agent.runtime.get("kind")))
        if adapter is None:
            raise Unprocessable(
                f"Agent runtime kind {agent.runtime.get('kind')!r} is not supported"
            )
        return adapter

    async def start_download(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        timeout_ms: float | None,
        accept_encoding: str | None,
        idempotency: tuple[str, bytes] | None = None,
    ) -> DownloadStart:
        """Create the run, invoke the runtime, and return once it has begun sending a file.

        Raises 504 (no headers in the window), 500 (runtime unreachable) or 502 (the runtime
        answered JSON, an error status or nothing); in each case the run is marked failed.
        With ``idempotency``, a key that already names a run is a 409
        (:meth:`download_replayed`) and nothing is started.
        """
        window_ms = self.wait_window_ms(agent, timeout_ms)
        started = time.monotonic()
        try:
            run = await self.create_run(
                agent,
                input_data=input_data,
                user_id=user_id,
                window_ms=window_ms,
                trigger_kind=TriggerKind.DOWNLOAD,
                started=True,
                idempotency=idempotency,
            )
        except IdempotentReplay as replay:
            raise self.download_replayed(replay.run) from None
        payload = self.trigger_payload(agent, run)
        adapter = self._adapter(agent)
        try:
            upstream = await adapter.open_download(
                agent.runtime, payload, wait_s=window_ms / 1000, accept_encoding=accept_encoding
            )
        except RuntimeTimeout as exc:
            await self.fail(run.id, str(exc))
            raise GatewayTimeout(str(exc), extra={"runId": run.id}) from None
        except (RuntimeUnavailable, RuntimeRefused, RuntimeUnsupported) as exc:
            message = f"Runtime invocation failed: {exc}"
            await self.fail(run.id, message)
            raise RuntimeInvocationFailed(message, extra={"runId": run.id}) from None
        except asyncio.CancelledError:
            self.fail_detached(run, "Caller disconnected before the runtime answered")
            raise
        try:
            first = await self._first_bytes(
                run, upstream, started, window_ms / 1000, adapter, agent.runtime
            )
        except BaseException:
            upstream.close()
            raise
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
        file = DownloadFile(
            filename=filename,
            disposition=disposition,
            content_type=content_type or "application/octet-stream",
            mime_type=filenames.media_type(content_type),
            content_length=length,
            # An empty Content-Encoding says nothing: it is not passed on.
            content_encoding=upstream.headers.get("Content-Encoding") or None,
        )
        return DownloadStart(
            run=run,
            upstream=upstream,
            first_chunk=first,
            file=file,
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
    ) -> bytes:
        """The first chunk of a file answer; anything else fails the run and raises, but an
        acknowledgement, which leaves the run to its callbacks (:class:`DownloadAcknowledged`).

        The first bytes are read before any header goes to the caller, while the status can
        still change: a JSON answer, an error status or an empty body is no file.
        """
        acknowledged = DownloadAcknowledged(dataclasses.replace(run, status=RunStatus.RUNNING))
        if adapter.acknowledges(runtime, upstream.status, None):
            raise acknowledged
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
                        raise acknowledged
                    failure: ApiError = BadGateway(message, extra={"runId": run.id})
                elif first := await upstream.content.readany():
                    return first
                else:
                    failure = BadGateway(
                        "RuntimeReturnedEmptyBody: the runtime answered without a file",
                        extra={"runId": run.id},
                    )
        except TimeoutError:
            failure = GatewayTimeout(
                "Runtime did not respond within the wait window", extra={"runId": run.id}
            )
        except aiohttp.ClientError as exc:
            failure = BadGateway(
                f"Runtime response broke before the first byte: {exc!r}", extra={"runId": run.id}
            )
        except asyncio.CancelledError:
            self.fail_detached(run, "Caller disconnected before the runtime answered")
            raise
        await self.fail(run.id, failure.message, output_data=output_data)
        raise failure

    async def finish_download(self, start: DownloadStart, size_bytes: int) -> None:
        """Record a download that was sent whole: metadata only, never the bytes."""
        await self.publish(
            RunEvent(
                start.run.id,
                EventType.COMPLETED,
                output_data={
                    "kind": OutputKind.FILE_DOWNLOAD.value,
                    "filename": start.file.filename,
                    "mimeType": start.file.mime_type,
                    "sizeBytes": size_bytes,
                },
                outputs=start.outputs,
            )
        )

    @contextlib.asynccontextmanager
    async def kept_alive(self, run: Run) -> AsyncIterator[None]:
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

    async def publish(self, event: RunEvent) -> bool:
        """Record a transition (:meth:`RunRecorder.record`); ``False`` when the run had
        already ended, so that the event changed nothing."""
        return (await self._recorder.record(event)).outcome is not Outcome.ENDED

    async def was_cancelled(self, run_id: int) -> bool:
        """Whether the run's row says it was cancelled."""
        run = await runs.get_run(self._pool, run_id)
        return run is not None and run.status == RunStatus.CANCELLED

    async def record_result(self, run_id: int, result: RunResult) -> bool:
        """Record what the runtime says about a run; ``False`` when the run had ended.

        A run's ``duration_ms`` is from its start to this end, as the store computes it.
        """
        output: dict[str, Any] = {"output_data": result.output} if result.has_output else {}
        if result.status == RunStatus.COMPLETED:
            event = RunEvent(
                run_id,
                EventType.COMPLETED,
                outputs=lift_outputs(result.output),
                **output,
            )
        elif result.status == RunStatus.FAILED:
            reason = result.error or "The runtime reported the run failed"
            log.info("run_failed", run_id=run_id, reason=reason[:300])
            event = RunEvent(run_id, EventType.FAILED, error=reason[:MAX_ERROR_LEN], **output)
        elif result.status == RunStatus.CANCELLED:
            event = RunEvent(run_id, EventType.CANCELLED, **output)
        elif result.status == RunStatus.WAITING:
            event = RunEvent(run_id, EventType.WAITING, **output)
        else:
            event = RunEvent(run_id, EventType.STARTED)
        return await self.publish(event)

    async def fail(self, run_id: int, reason: str, *, output_data: Any = None) -> bool:
        """Record that a run failed, with ``reason``; ``False`` when it had already ended."""
        result = RunResult(
            RunStatus.FAILED, output=output_data, has_output=output_data is not None, error=reason
        )
        return await self.record_result(run_id, result)

    def fail_detached(self, run: Run, reason: str) -> None:
        """Record a failure from a task that is being cancelled (the caller left)."""
        self._background.spawn(self.fail(run.id, reason), name=f"fail-run-{run.id}")

    async def record_surely(self, record: Coroutine[Any, Any, _T], *, name: str) -> _T:
        """Await ``record`` (a run's end, recorded once its response is out) so that it
        completes even if the request is cancelled meanwhile: a caller that hangs up the
        moment its last byte arrives cancels the handler, and the run must still end. It
        runs as background work (waited for on shutdown)."""
        return await asyncio.shield(self._background.spawn(record, name=name))


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
