"""The run service: eligibility, run creation, runtime invocation and run transitions.

Domain code: it speaks in agents, runs and events, and knows nothing of ``aiohttp.web``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import structlog

from adapters.base import (
    RuntimeAdapter,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
)
from gateway import downloads
from gateway.apikeys import derive_agent_api_key
from gateway.background import BackgroundTasks
from gateway.errors import (
    ApiError,
    BadGateway,
    Forbidden,
    GatewayTimeout,
    NotFound,
    RuntimeInvocationFailed,
    Unprocessable,
)
from gateway.settings import Settings
from store import queries
from store.events import EventPublisher, RunEvent
from store.models import Agent, Run

log = structlog.get_logger(__name__)

# A runtime's error body is read for the 502 message only up to this size.
_MAX_ERROR_BODY = 64 * 1024


@dataclass(slots=True)
class DownloadStart:
    """A download whose runtime answered with a file: the headers to send and the body to copy."""

    run: Run
    upstream: aiohttp.ClientResponse
    first_chunk: bytes
    headers: dict[str, str]
    filename: str
    mime_type: str
    outputs: int | None
    started: float  # monotonic clock when the run was created


class RunService:
    """Starts runs and records what happens to them."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: EventPublisher,
        adapters: Mapping[str, RuntimeAdapter],
        background: BackgroundTasks,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._publisher = publisher
        self._adapters = adapters
        self._background = background

    async def agent_for(self, org_id: uuid.UUID, agent_id: int) -> Agent:
        """The agent, if it belongs to ``org_id``; otherwise 404 (never reveal it exists)."""
        agent = await queries.get_agent_in_org(self._pool, agent_id, org_id)
        if agent is None:
            raise NotFound("Agent not found")
        return agent

    def check_eligible(self, agent: Agent, *, output_kind: str | None) -> None:
        """Raise 403/422 unless ``agent`` may be triggered from outside for this kind of run."""
        if not agent.allow_external_triggers:
            raise Forbidden(
                "External triggers are disabled for this agent (allow_external_triggers is off)"
            )
        problems = []
        if agent.managed_by != "platform":
            problems.append(f"managed_by is '{agent.managed_by}', not 'platform'")
        if agent.status != "active":
            problems.append(f"status is '{agent.status}', not 'active'")
        if output_kind is not None and agent.output_kind != output_kind:
            problems.append(f"output_kind is '{agent.output_kind}', not '{output_kind}'")
        if problems:
            raise Unprocessable("Agent is not eligible for this endpoint: " + "; ".join(problems))

    def wait_window_ms(self, agent: Agent, timeout_ms: float | None) -> int:
        """``min(timeoutMs or default, agent.running_timeout_ms, hard ceiling)``."""
        asked = self._settings.default_wait_ms if timeout_ms is None else timeout_ms
        return max(1, int(min(asked, agent.running_timeout_ms, self._settings.hard_ceiling_ms)))

    async def get_run(self, org_id: uuid.UUID, agent_id: int, run_id: int) -> Run:
        """A run of one of the organisation's agents; 404 otherwise."""
        await self.agent_for(org_id, agent_id)
        run = await queries.get_run_of_agent(self._pool, agent_id, run_id)
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
    ) -> Run:
        """Insert the run row; the caller's input is merged over the agent's default input."""
        merged = {**agent.default_input, **input_data}
        created_by = None
        if user_id is not None and await queries.is_member(self._pool, agent.org_id, user_id):
            created_by = user_id
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(
            milliseconds=window_ms + agent.running_timeout_ms
        )
        return await queries.insert_run(
            self._pool,
            agent=agent,
            input_data=merged,
            created_by=created_by,
            deadline=deadline,
            trigger_kind=trigger_kind,
        )

    def trigger_payload(self, agent: Agent, run: Run) -> TriggerPayload:
        """The body a runtime receives for ``run``."""
        return TriggerPayload(
            run_id=run.id,
            agent_id=agent.id,
            input=run.input,
            agent_api_key=derive_agent_api_key(self._settings.secret_key, agent.api_key_salt),
            callback_url=f"{self._settings.public_base_url}/api/runs/{run.id}/callback",
        )

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
    ) -> DownloadStart:
        """Create the run, invoke the runtime, and return once it has begun sending a file.

        Raises 504 (no headers in the window), 500 (runtime unreachable) or 502 (the runtime
        answered JSON, an error status or nothing); in each case the run is marked failed.
        """
        window_ms = self.wait_window_ms(agent, timeout_ms)
        started = time.monotonic()
        run = await self.create_run(
            agent,
            input_data=input_data,
            user_id=user_id,
            window_ms=window_ms,
            trigger_kind="download",
        )
        payload = self.trigger_payload(agent, run)
        await self._publisher.publish(RunEvent(run.id, "started"))
        adapter = self._adapter(agent)
        try:
            upstream = await adapter.open_download(
                agent.runtime, payload, wait_s=window_ms / 1000, accept_encoding=accept_encoding
            )
        except RuntimeTimeout as exc:
            await self.fail(run, str(exc), started=started)
            raise GatewayTimeout(str(exc), extra={"runId": run.id}) from None
        except (RuntimeUnavailable, RuntimeUnsupported) as exc:
            await self.fail(run, str(exc), started=started)
            raise RuntimeInvocationFailed(str(exc), extra={"runId": run.id}) from None
        except asyncio.CancelledError:
            self.fail_detached(
                run, "Caller disconnected before the runtime answered", started=started
            )
            raise
        try:
            first = await self._first_bytes(run, upstream, started, window_ms / 1000)
        except BaseException:
            upstream.close()
            raise
        content_type = upstream.headers.get("Content-Type")

        raw_disposition = upstream.headers.get("Content-Disposition")
        filename = downloads.filename_from_disposition(raw_disposition)
        if filename is None:
            filename = downloads.derive_filename(agent.name, run.id, content_type)
            disposition = downloads.synthesized_disposition(filename)
        else:
            disposition = raw_disposition or ""
        headers = {
            "Content-Type": content_type or "application/octet-stream",
            "Content-Disposition": disposition,
            "X-Run-Id": str(run.id),
            "Cache-Control": "no-store",
        }
        length = upstream.headers.get("Content-Length")
        if length is not None and "chunked" not in upstream.headers.get("Transfer-Encoding", ""):
            headers["Content-Length"] = length
        if encoding := upstream.headers.get("Content-Encoding"):
            headers["Content-Encoding"] = encoding
        return DownloadStart(
            run=run,
            upstream=upstream,
            first_chunk=first,
            headers=headers,
            filename=filename,
            mime_type=downloads.media_type(content_type),
            outputs=downloads.parse_outputs(upstream.headers.get("X-Outputs")),
            started=started,
        )

    async def _first_bytes(
        self, run: Run, upstream: aiohttp.ClientResponse, started: float, wait_s: float
    ) -> bytes:
        """The first chunk of a file answer; anything else fails the run and raises.

        The first bytes are read before any header goes to the caller, while the status can
        still change: a JSON answer, an error status or an empty body is no file.
        """
        # The rest of the window, but at least the idle bound: the runtime has answered.
        bound_s = max(wait_s - (time.monotonic() - started), self._settings.stream_idle_timeout_s)
        output_data: Any = None
        try:
            async with asyncio.timeout(bound_s):
                if upstream.status >= 300 or downloads.is_json(
                    upstream.headers.get("Content-Type")
                ):
                    message, output_data = await _describe_non_file(upstream)
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
            self.fail_detached(
                run, "Caller disconnected before the runtime answered", started=started
            )
            raise
        await self.fail(run, failure.message, started=started, output_data=output_data)
        raise failure

    async def finish_download(self, start: DownloadStart, size_bytes: int) -> None:
        """Record a download that was sent whole: metadata only, never the bytes."""
        await self._publisher.publish(
            RunEvent(
                start.run.id,
                "completed",
                output_data={
                    "kind": "file_download",
                    "filename": start.filename,
                    "mimeType": start.mime_type,
                    "sizeBytes": size_bytes,
                },
                outputs=start.outputs,
                duration_ms=_elapsed_ms(start.started),
            )
        )

    async def fail(self, run: Run, reason: str, *, started: float, output_data: Any = None) -> None:
        """Record that ``run`` failed, with ``reason``."""
        extra: dict[str, Any] = {} if output_data is None else {"output_data": output_data}
        event = RunEvent(
            run.id, "failed", error=reason[:2000], duration_ms=_elapsed_ms(started), **extra
        )
        log.info("run_failed", run_id=run.id, agent_id=run.agent_id, reason=reason[:300])
        await self._publisher.publish(event)

    def fail_detached(self, run: Run, reason: str, *, started: float) -> None:
        """Record a failure from a task that is being cancelled (the caller left)."""
        self._background.spawn(self.fail(run, reason, started=started), name=f"fail-run-{run.id}")


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _describe_non_file(upstream: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The failure message for a runtime that answered something other than a file, and the
    JSON it sent (``None`` when there was none)."""
    raw = await upstream.content.read(_MAX_ERROR_BODY)
    parsed: Any = None
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = None
    if parsed is not None:
        return "WorkflowReturnedJson: " + json.dumps(parsed, ensure_ascii=False), parsed
    if downloads.is_json(upstream.headers.get("Content-Type")):
        return f"WorkflowReturnedInvalidJson: HTTP {upstream.status}", None
    return f"RuntimeHttpError: HTTP {upstream.status} {upstream.reason or ''}".rstrip(), None
