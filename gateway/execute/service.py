"""Workflow execute: one request runs an agent's workflow, answering with its result or
streaming its output live.

The request body is the input (coerced against the agent's input format, files stored) plus
two controls: ``stream`` and ``selectedOutputs``. An agent whose ``output_kind`` is ``stream``
runs on a runtime that streams (an n8n Webhook node in "Streaming" response mode): each chunk
of a selected block becomes a frame as it arrives. Any other agent runs as trigger-and-wait
does, and its result is the one final event.

Domain code: no ``aiohttp.web`` here. :meth:`ExecuteService.events` yields
:class:`ChunkFrame` s and then exactly one :class:`Outcome`; the HTTP layer shapes them into
Server-Sent Events or one JSON answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import asyncpg
import structlog

from adapters.base import (
    WINDOW_ELAPSED,
    RunResult,
    RuntimeAdapter,
    RuntimeFailure,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    StreamChunk,
    TriggerPayload,
)
from gateway.background import BackgroundTasks
from gateway.errors import (
    ApiError,
    BadRequest,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    RuntimeInvocationFailed,
    ServiceUnavailable,
    Unprocessable,
)
from gateway.execute.bodies import STREAMED_ATTRIBUTE, load_controls
from gateway.execute.input_files import FileService
from gateway.execute.input_format import (
    CONTROL_KEYS,
    CoercedInput,
    FileBoundExceeded,
    FileBounds,
    FilesTooLarge,
    InputFormatError,
    InputProblems,
    coerce_input,
    parse_input_format,
)
from gateway.runs.creation import RunCreation
from gateway.runs.lookups import RunLookups
from gateway.runs.outputs import lift_outputs
from gateway.runs.recording import MAX_ERROR_LEN, RunTransitions
from gateway.runs.triggers import TriggerService
from gateway.runs.waits import SETTLE_S, RunWaiters
from gateway.settings import Settings
from gateway.storage.blobs import BlobStoreError
from store import agents, run_files, runs
from store.enums import EventType, OutputKind, RunStatus, TriggerKind
from store.jsonb import jsonb_problem
from store.models import Agent, Run
from store.run_events import RunEvent

log = structlog.get_logger(__name__)

EXECUTE_KINDS = (OutputKind.JSON, OutputKind.STREAM)
# A usage report shows the buckets of at most this many of an organisation's workflows.
MAX_REPORTED_WORKFLOWS = 100


def block_key(name: str) -> str:
    """A block name as ``selectedOutputs`` match it: case-insensitive, spaces ignored."""
    return "".join(name.split()).lower()


@dataclass(frozen=True, slots=True)
class Block:
    """A declared block of an agent's workflow (an n8n node that streams)."""

    id: str
    name: str

    @property
    def key(self) -> str:
        """The block's name, normalised."""
        return block_key(self.name)


def agent_blocks(agent: Agent) -> list[Block]:
    """The agent's declared blocks (entries that are not ``{id, name}`` are skipped)."""
    blocks = []
    for item in agent.blocks or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            block_id = item.get("id")
            blocks.append(Block(str(block_id) if block_id else item["name"], item["name"]))
    return blocks


@dataclass(frozen=True, slots=True)
class Selection:
    """Which blocks' chunks are streamed: all of them, or the selected ones."""

    ids: frozenset[str] | None = None
    keys: frozenset[str] = frozenset()

    def selects(self, chunk: StreamChunk) -> bool:
        """Whether ``chunk``'s block is selected (matched by node id or by name)."""
        if self.ids is None:
            return True
        return chunk.node_id in self.ids or block_key(chunk.node_name) in self.keys


def resolve_selected_outputs(agent: Agent, raw: list[str] | None) -> Selection:
    """``selectedOutputs`` (``["blockName.attribute", ...]``, checked by the body's schema)
    resolved against the agent's declared blocks; an unknown block or attribute is a 400
    listing what is known."""
    if not raw:
        return Selection()
    blocks = agent_blocks(agent)
    by_key = {b.key: b for b in blocks}
    by_id = {b.id: b for b in blocks}
    known = [b.name for b in blocks]
    chosen: list[Block] = []
    for entry in raw:
        name, dot, attribute = entry.partition(".")
        block = by_id.get(name) or by_key.get(block_key(name))
        if block is None or not name.strip():
            listing = ", ".join(f"{b.key} ({b.name})" for b in blocks) or "none declared"
            raise BadRequest(
                f"Unknown block '{name}' in selectedOutputs; known blocks: {listing}",
                extra={
                    "details": {"selectedOutputs": [f"Unknown block '{name}'."]},
                    "knownBlocks": known,
                },
            )
        if not dot or attribute != STREAMED_ATTRIBUTE:
            raise BadRequest(
                f"selectedOutputs entry '{entry}' must be '<block>.{STREAMED_ATTRIBUTE}': "
                f"a block streams its {STREAMED_ATTRIBUTE}",
                extra={"details": {"selectedOutputs": [f"Unknown output '{entry}'."]}},
            )
        chosen.append(block)
    return Selection(ids=frozenset(b.id for b in chosen), keys=frozenset(b.key for b in chosen))


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    """A checked execute request: its controls and its coerced input."""

    stream: bool
    selection: Selection
    coerced: CoercedInput


@dataclass(frozen=True, slots=True)
class Execution:
    """A started execute: the run, what its runtime receives, and its time bounds."""

    agent: Agent
    adapter: RuntimeAdapter
    run: Run
    payload: TriggerPayload
    request: ExecuteRequest
    started: float
    deadline: float
    window_ms: int

    @property
    def streams(self) -> bool:
        """Whether the runtime streams the run's output (else it answers once)."""
        return self.agent.output_kind == OutputKind.STREAM and self.adapter.streams


# A NamedTuple, as adapters.base.StreamChunk: one per streamed chunk.
class ChunkFrame(NamedTuple):
    """A piece of a block's output, to pass on at once."""

    block_id: str
    chunk: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execute ended (the last event): what workflow execute's execution result reports.

    ``timed_out`` when the run was still going at the end of the window (it goes on).
    """

    run_id: int
    agent_id: int
    status: str
    success: bool
    output: Any
    error: str | None
    duration_ms: int
    timed_out: bool = False


class _Collector:
    """The streamed text of each block, kept (up to a bound) for the run's output."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._parts: dict[str, list[str]] = {}
        self._truncated: set[str] = set()

    def add(self, chunk: StreamChunk) -> None:
        parts = self._parts.setdefault(chunk.node_id, [])
        if self._size + len(chunk.content) > self._limit:
            self._truncated.add(chunk.node_id)
            return
        parts.append(chunk.content)
        self._size += len(chunk.content)

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for block_id, parts in self._parts.items():
            entry: dict[str, Any] = {STREAMED_ATTRIBUTE: "".join(parts)}
            if block_id in self._truncated:
                entry["truncated"] = True
            out[block_id] = entry
        return out


class _ReadTimer:
    """A time bound on each read of a runtime's stream, with one timer for the whole stream.

    ``asyncio.timeout`` around every read schedules and cancels a timer per chunk, a fifth of
    the gateway's CPU in a burst of small chunks. Here one timer is pushed back lazily: when it
    fires early (chunks came meanwhile), it is set again for the current read's bound; only a
    read still waiting past its bound is cancelled, and it raises ``TimeoutError``.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._due = 0.0
        self._reading = False
        self._expired = False

    async def read(self, chunks: AsyncIterator[Any], seconds: float) -> Any:
        """The next item of ``chunks``; ``TimeoutError`` when it takes over ``seconds``."""
        task = self._task
        if task is None:
            # Always the same task: the one that iterates the execution's events.
            task = self._task = asyncio.current_task()
            assert task is not None
        self._due = self._loop.time() + seconds
        if self._handle is None or self._handle.when() > self._due:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(self._due, self._fire)
        cancelling = task.cancelling()
        self._reading = True
        try:
            return await anext(chunks)
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._reading = False
            self._expired = False

    def close(self) -> None:
        """Drop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if not self._reading or self._task is None:
            return  # the next read sets it again
        if self._loop.time() < self._due:
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self._expired = True
        self._task.cancel()


class ExecuteService:
    """Checks execute requests, starts their runs and drives them to an outcome."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        lookups: RunLookups,
        creation: RunCreation,
        transitions: RunTransitions,
        triggers: TriggerService,
        waiters: RunWaiters,
        files: FileService,
        background: BackgroundTasks,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._lookups = lookups
        self._creation = creation
        self._transitions = transitions
        self._triggers = triggers
        self._waiters = waiters
        self._files = files
        self._background = background

    def check_eligible(self, agent: Agent) -> RuntimeAdapter:
        """403/422 unless the agent may be executed from outside; its runtime adapter."""
        self._lookups.check_eligible(agent, output_kinds=EXECUTE_KINDS)
        adapter = self._lookups.adapter_for(agent)
        if agent.output_kind == OutputKind.STREAM and not adapter.streams:
            raise Unprocessable(
                f"Agent output_kind is 'stream' but its runtime ({adapter.kind}) cannot stream"
            )
        return adapter

    def is_deployed(self, agent: Agent) -> bool:
        """Whether the agent can be executed now (what a workflow's ``isDeployed`` reports)."""
        try:
            self.check_eligible(agent)
        except ApiError:
            return False
        return True

    async def task(self, org_id: uuid.UUID, task_id: int) -> Run:
        """The run an async execute answered with, for its organisation only (404 otherwise)."""
        run = await runs.get_run(self._pool, task_id)
        if run is None or run.org_id != org_id:
            raise NotFound("Task not found")
        return run

    async def org_agent_ids(self, org_id: uuid.UUID) -> list[int]:
        """The organisation's agents (those whose buckets a usage report shows)."""
        return await agents.agent_ids_in_org(self._pool, org_id, limit=MAX_REPORTED_WORKFLOWS)

    def parse(self, agent: Agent, body: Mapping[str, Any]) -> ExecuteRequest:
        """The request's controls and its input coerced against the agent's input format.

        400 naming each bad field, 413 naming each file over the per-file limit.
        """
        controls = load_controls({k: body[k] for k in CONTROL_KEYS if k in body})
        stream: bool = controls["stream"]
        selection = resolve_selected_outputs(agent, controls["selectedOutputs"])
        try:
            declared = parse_input_format(agent.input_format)
        except InputFormatError as exc:
            raise Unprocessable(f"The agent's input_format is invalid: {exc}") from None
        values = {k: v for k, v in body.items() if k not in CONTROL_KEYS}
        # The input is stored with the run: what jsonb cannot hold is refused here, not by
        # PostgreSQL once the run is being created.
        unstorable = {
            key: [f"cannot be stored: {problem}"]
            for key, value in values.items()
            if (problem := jsonb_problem({key: value})) is not None
        }
        if unstorable:
            raise BadRequest(
                "Invalid input: " + "; ".join(f"{k!r} {m[0]}" for k, m in unstorable.items()),
                extra={"details": unstorable},
            )
        try:
            coerced = coerce_input(
                declared,
                values,
                max_file_bytes=self._settings.max_file_bytes,
                bounds=FileBounds(
                    max_files=self._settings.execute_max_files,
                    max_files_per_field=self._settings.execute_max_files_per_field,
                    max_total_bytes=self._settings.execute_max_files_bytes,
                ),
            )
        except FileBoundExceeded as exc:
            raise PayloadTooLarge(
                exc.summary(),
                extra={"limit": {"setting": exc.setting, "value": exc.limit, "actual": exc.actual}},
            ) from None
        except InputProblems as exc:
            raise BadRequest(exc.summary(), extra={"details": exc.problems}) from None
        except FilesTooLarge as exc:
            raise PayloadTooLarge(
                exc.summary(),
                extra={
                    "files": [
                        {"field": f.field, "index": f.position, "name": f.name, "size": f.size}
                        for f in exc.files
                    ],
                    "maxFileBytes": exc.limit,
                },
            ) from None
        return ExecuteRequest(stream=stream, selection=selection, coerced=coerced)

    async def start(
        self, agent: Agent, adapter: RuntimeAdapter, request: ExecuteRequest
    ) -> Execution:
        """Create the run, store its input files and build what the runtime receives."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        window_ms = max(1, min(agent.running_timeout_ms, self._settings.hard_ceiling_ms))
        coerced = request.coerced
        recorded = {
            **coerced.extra,
            **{k: self._files.placeholder(v) for k, v in coerced.values.items()},
        }
        run = await self._creation.create(
            agent,
            input_data=recorded,
            user_id=None,
            window_ms=window_ms,
            trigger_kind=TriggerKind.EXECUTE,
        )
        # File references become file objects; uploads, once stored, too.
        values = {k: self._files.placeholder(v) for k, v in coerced.values.items()}
        if coerced.uploads:
            try:
                values = await self._files.store(run.id, agent.org_id, coerced)
            except BlobStoreError as exc:
                log.error("input_files_not_stored", run_id=run.id, error=str(exc))
                await self._transitions.fail(run.id, "Input files could not be stored")
                raise ServiceUnavailable(
                    "Input files could not be stored; try again shortly",
                    extra={"runId": run.id},
                    headers={"Retry-After": "1"},
                ) from None
            except asyncio.CancelledError:
                self._cancel_detached(run, "Caller disconnected while its files were stored")
                raise
            full_input = {**agent.default_input, **coerced.extra, **values}
            await run_files.set_run_input(self._pool, run.id, full_input)
            run = dataclasses.replace(run, input=full_input)
        payload = dataclasses.replace(
            self._creation.trigger_payload(agent, run), fields=values if coerced.declared else {}
        )
        # The uploads' encoded data is not needed any more: a long stream must not keep it.
        request = dataclasses.replace(
            request, coerced=CoercedInput(values, coerced.extra, declared=coerced.declared)
        )
        return Execution(
            agent=agent,
            adapter=adapter,
            run=run,
            payload=payload,
            request=request,
            started=started,
            deadline=started + window_ms / 1000,
            window_ms=window_ms,
        )

    def events(
        self,
        execution: Execution,
        *,
        cancel_on_leave: bool = True,
        leave_reason: Callable[[], str | None] = lambda: None,
    ) -> AsyncGenerator[ChunkFrame | Outcome, None]:
        """The execution's frames as they come, then its :class:`Outcome`.

        Raises 500/504 (``ApiError``) when the runtime could not be invoked or did not answer
        in time; the run is failed then. Closing the iterator early cancels the run and drops
        the runtime's connection at once; an answered run is only left to go on when not
        ``cancel_on_leave`` (an async execute cut by the gateway's stop, as a trigger's). A
        streamed run cancelled so is recorded with ``leave_reason()`` when it gives one.
        """
        if execution.streams:
            return self._streamed(execution, leave_reason)
        return self._answered(execution, cancel_on_leave=cancel_on_leave)

    async def _answered(
        self, ex: Execution, *, cancel_on_leave: bool
    ) -> AsyncGenerator[ChunkFrame | Outcome, None]:
        """A runtime that answers once (or reports through callbacks): wait for the end."""
        waited = await self._triggers.run_and_wait(
            ex.agent,
            ex.adapter,
            ex.run,
            deadline=ex.deadline,
            payload=ex.payload,
            cancel_on_leave=cancel_on_leave,
        )
        yield self._outcome_of(ex, waited.run)

    async def _streamed(
        self, ex: Execution, leave_reason: Callable[[], str | None]
    ) -> AsyncGenerator[ChunkFrame | Outcome, None]:
        """A runtime that streams: pass each selected chunk on as it arrives."""
        run = ex.run
        loop = asyncio.get_running_loop()
        ended = False
        frames = 0
        try:
            await self._transitions.publish(RunEvent(run.id, EventType.STARTED))
            try:
                stream = await ex.adapter.open_stream(
                    ex.agent.runtime, ex.payload, wait_s=max(0.001, ex.deadline - loop.time())
                )
            except RuntimeTimeout:
                ended = True
                await self._transitions.fail(run.id, WINDOW_ELAPSED)
                raise GatewayTimeout(WINDOW_ELAPSED, extra={"runId": run.id}) from None
            except (RuntimeUnavailable, RuntimeRefused, RuntimeUnsupported) as exc:
                ended = True
                message = f"Runtime invocation failed: {exc}"
                await self._transitions.fail(run.id, message)
                raise RuntimeInvocationFailed(message, extra={"runId": run.id}) from None
            collector = _Collector(self._settings.max_result_body)
            answer: RunResult | None = None
            failure: str | None = None
            idle_s = self._settings.stream_idle_timeout_s
            timer = _ReadTimer()
            try:
                chunks = aiter(stream)
                while True:
                    left = ex.deadline - loop.time()
                    if left <= 0:
                        failure = f"Workflow did not finish within {ex.window_ms / 1000:g} s"
                        break
                    try:
                        item = await timer.read(chunks, min(idle_s, left))
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if ex.deadline - loop.time() <= 0:
                            failure = f"Workflow did not finish within {ex.window_ms / 1000:g} s"
                        else:
                            failure = (
                                f"Runtime sent nothing for {idle_s:g} s mid-stream "
                                f"after {frames} frames"
                            )
                        break
                    except (aiohttp.ClientError, RuntimeFailure) as exc:
                        failure = (
                            f"Runtime stream broke after {frames} frames: "
                            f"{exc.__class__.__name__}: {exc}"
                        )
                        break
                    if isinstance(item, RunResult):
                        answer = item
                        break
                    if item.kind == "error":
                        failure = f"{item.node_name}: {item.content or 'the node failed'}"
                        break
                    if item.kind != "item" or not item.content:
                        continue
                    if not ex.request.selection.selects(item):
                        continue
                    collector.add(item)
                    frames += 1
                    yield ChunkFrame(item.node_id, item.content)
            finally:
                timer.close()
                stream.close()
            ended = True
            outcome = await self._finish_stream(ex, collector, answer, failure)
            yield outcome
        except (asyncio.CancelledError, GeneratorExit):
            if not ended:
                # The caller left (or the gateway is stopping) mid-run.
                reason = leave_reason() or f"Caller disconnected after {frames} frames"
                self._cancel_detached(run, reason)
            raise
        except Exception as exc:
            if not ended:
                log.error("execute_internal_error", run_id=run.id, exc_info=exc)
                self._background.spawn(
                    self._transitions.fail(
                        run.id, f"Gateway error mid-stream: {exc.__class__.__name__}"
                    ),
                    name=f"fail-run-{run.id}",
                )
            raise

    async def _finish_stream(
        self,
        ex: Execution,
        collector: _Collector,
        answer: RunResult | None,
        failure: str | None,
    ) -> Outcome:
        run = ex.run
        duration_ms = self._elapsed_ms(ex)
        output: Any = collector.output()
        if failure is not None:
            event = RunEvent(
                run.id, EventType.FAILED, error=failure[:MAX_ERROR_LEN], duration_ms=duration_ms
            )
            if output:
                # What was streamed before the failure is kept with the run.
                event = dataclasses.replace(event, output_data=output)
        elif answer is not None and answer.status == RunStatus.RUNNING:
            # The workflow took the run and reports through callbacks: wait for its end.
            ended = await self._waiters.wait(run.id, deadline=ex.deadline)
            return self._outcome_of(ex, ended or await runs.current(self._pool, run))
        elif answer is not None and answer.status == RunStatus.FAILED:
            event = RunEvent(
                run.id,
                EventType.FAILED,
                error=(answer.error or "The runtime reported the run failed")[:MAX_ERROR_LEN],
                duration_ms=duration_ms,
            )
        else:
            if answer is not None:
                output = answer.output
            event = RunEvent(
                run.id,
                EventType.COMPLETED,
                output_data=output,
                outputs=lift_outputs(output),
                duration_ms=duration_ms,
            )
        # Recorded even if the caller leaves right now: the run's end is known.
        if await asyncio.shield(self._transitions.publish(event)):
            return Outcome(
                run_id=run.id,
                agent_id=run.agent_id,
                status=event.type,
                success=event.type == EventType.COMPLETED,
                output=event.stored_output,
                error=event.error,
                duration_ms=duration_ms,
            )
        # The run ended another way first (cancelled, or an output that could not be stored).
        settle = asyncio.get_running_loop().time() + SETTLE_S
        return self._outcome_of(
            ex,
            await self._waiters.wait(run.id, deadline=settle)
            or await runs.current(self._pool, run),
        )

    def _outcome_of(self, ex: Execution, run: Run) -> Outcome:
        """The outcome a run row tells (terminal, or still going when the window closed)."""
        duration = run.duration_ms if run.duration_ms is not None else self._elapsed_ms(ex)
        if not run.terminal:
            return Outcome(
                run_id=run.id,
                agent_id=run.agent_id,
                status=run.status,
                success=False,
                output=None,
                error=(
                    f"The run did not finish within {ex.window_ms / 1000:g} s; it goes on: "
                    f"poll GET /api/agents/{run.agent_id}/runs/{run.id}"
                ),
                duration_ms=duration,
                timed_out=True,
            )
        error = run.error
        if run.status == RunStatus.CANCELLED and not error:
            error = "The run was cancelled"
        return Outcome(
            run_id=run.id,
            agent_id=run.agent_id,
            status=run.status,
            success=run.status == RunStatus.COMPLETED,
            output=run.output_data,
            error=None if run.status == RunStatus.COMPLETED else error,
            duration_ms=duration,
        )

    @staticmethod
    def _elapsed_ms(ex: Execution) -> int:
        return max(0, int((asyncio.get_running_loop().time() - ex.started) * 1000))

    def _cancel_detached(self, run: Run, reason: str) -> None:
        """Record that the caller left: the run is cancelled, with the reason."""
        log.info("execute_caller_left", run_id=run.id, reason=reason)
        self._background.spawn(
            self._transitions.publish(RunEvent(run.id, EventType.CANCELLED, error=reason)),
            name=f"cancel-run-{run.id}",
        )
