"""Recording what happens to a run, top to bottom, in one place.

Whatever reports a transition (a runtime's answer, a callback, a cancel, a download that
finished), :meth:`RunRecorder.record` does the same five steps:

1. **make it storable**: free text without NULs, an output PostgreSQL can hold (an output it
   cannot hold fails the run with the reason instead);
2. **record it** on the run's row in PostgreSQL, one statement for every event submitted at
   about the same moment (:class:`store.group_commit.GroupCommit`), guarded so that a run that
   has ended never changes; the row is the record, so the 2xx that follows is what the next
   read shows, on any replica;
3. if PostgreSQL cannot be reached, **hold it in the Redis buffer** instead
   (:mod:`store.event_buffer`): the store consumer applies it, in the run's order, once
   PostgreSQL is back; a partition that already holds its cap refuses it
   (:class:`store.event_buffer.EventBufferFull`, a 503 to the caller), never trimming one
   held;
4. **answer this process's waiters** with the terminal row at once;
5. **announce the end** to the other replicas' waiters, after the answer (best effort: a
   waiter that misses it finds the end at its next recheck).

:class:`RunTransitions` is what the use cases record through: an event, a runtime's result, a
failure, and a failure or an end that must be recorded though its request is being cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
from redis.exceptions import RedisError

from adapters.base import RunResult
from gateway.background import BackgroundTasks
from gateway.ops import tracing
from gateway.ops.metrics import (
    EVENT_DATABASE_FAILED,
    EVENT_FAILED,
    EVENT_REFUSED,
    EVENT_VIA_BUFFER,
    EVENT_VIA_DATABASE,
)
from gateway.runs.outputs import lift_outputs
from gateway.runs.waits import RunWaiters
from store import runs
from store.announcements import announce_terminal
from store.enums import EventType, RunStatus, event_to
from store.event_buffer import EventBuffer, EventBufferFull
from store.group_commit import GroupCommit
from store.jsonb import jsonb_problem, storable_text
from store.run_events import RunEvent
from store.transitions import Outcome, Transition, record_events

log = structlog.get_logger(__name__)

# The run's error column holds a short reason.
MAX_ERROR_LEN = 2000
_T = TypeVar("_T")

# PostgreSQL cannot take the statement now (the same statement may pass later).
_DATABASE_AWAY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


# What each outcome counts as (anything else: recorded in PostgreSQL).
_OBSERVED = {
    Outcome.BUFFERED: EVENT_VIA_BUFFER,
    Outcome.ENDED: EVENT_REFUSED,
    Outcome.STALE: EVENT_REFUSED,
}


class RunRecorder:
    """Records run transitions for this process (see the module's steps)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        buffer: EventBuffer,
        waiters: RunWaiters,
        *,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._buffer = buffer
        self._waiters = waiters
        self._observe = observe or (lambda event_type, outcome: None)
        self._commits: GroupCommit[RunEvent, Transition | EventBufferFull] = GroupCommit(
            self._write
        )
        self._announcing: set[asyncio.Task[None]] = set()

    async def record(self, event: RunEvent) -> Transition:
        """Record ``event``; what it did (see :class:`store.transitions.Outcome`)."""
        event = storable(event)
        with tracing.span(
            "run event apply",
            attributes={
                "agent_gateway.run.id": str(event.run_id),
                "agent_gateway.event": event.type,
            },
        ) as span:
            transition = await self._commits.submit(event)
            if isinstance(transition, EventBufferFull):
                # Not recorded and not held: the caller is told (503), nothing is dropped.
                raise transition
            span.set_attribute("agent_gateway.event.outcome", str(transition.outcome))
        self._observe(event.type, _OBSERVED.get(transition.outcome, EVENT_VIA_DATABASE))
        return transition

    async def _write(self, events: Sequence[RunEvent]) -> Sequence[Transition | EventBufferFull]:
        """Steps 2 to 5 for the events submitted together."""
        try:
            transitions = await record_events(self._pool, events)
        except _DATABASE_AWAY as exc:
            log.warning(
                "run_events_buffered", runs=sorted({e.run_id for e in events}), error=str(exc)
            )
            return await self._hold_all(events)
        ended = [run for t in transitions if (run := t.ended_run) is not None]
        for run in ended:
            self._waiters.deliver(run)
        if ended:
            self._announce([run.id for run in ended])
        return transitions

    async def _hold_all(self, events: Sequence[RunEvent]) -> list[Transition | EventBufferFull]:
        """PostgreSQL failed: keep the events in the buffer, in order, one at a time. Once a
        partition refuses one (it holds its cap), the batch's later events for it are refused
        too, so that none is held after an earlier one its caller must send again."""
        full: dict[int, EventBufferFull] = {}
        results: list[Transition | EventBufferFull] = []
        for event in events:
            self._observe(event.type, EVENT_DATABASE_FAILED)
            partition = self._buffer.partition_of(event.run_id)
            refused = full.get(partition)
            if refused is None:
                try:
                    await self._buffer.append(event)
                except EventBufferFull as exc:
                    log.warning("run_event_buffer_full", run_id=event.run_id, error=str(exc))
                    refused = full[partition] = exc
                except (RedisError, OSError):
                    self._observe(event.type, EVENT_FAILED)
                    raise
            if refused is not None:
                self._observe(event.type, EVENT_FAILED)
                results.append(refused)
            else:
                results.append(Transition(Outcome.BUFFERED))
        return results

    def _announce(self, run_ids: list[int]) -> None:
        # Other replicas' waiters, one message for the batch; nobody's answer waits for it.
        redis = self._buffer.redis
        task = asyncio.create_task(announce_terminal(redis, self._buffer.prefix, run_ids))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def flush(self) -> None:
        """Wait for the announcements still on their way (before the Redis client closes)."""
        if self._announcing:
            await asyncio.wait(set(self._announcing))


def storable(event: RunEvent) -> RunEvent:
    """``event`` as PostgreSQL can hold it.

    The free text a runtime or caller wrote (a failure reason, what a run waits for) loses its
    NULs; an output PostgreSQL cannot store fails the run with the reason rather than being
    refused by the statement that records it.
    """
    error = None if event.error is None else storable_text(event.error)
    waiting_for = event.waiting_for
    if waiting_for is not None:
        waiting_for = {
            key: storable_text(value) if isinstance(value, str) else value
            for key, value in waiting_for.items()
        }
    if error != event.error or waiting_for != event.waiting_for:
        event = dataclasses.replace(event, error=error, waiting_for=waiting_for)
    if event.has_output and (problem := jsonb_problem(event.output_data)):
        log.warning("run_output_refused", run_id=event.run_id, problem=problem)
        event = RunEvent(
            event.run_id,
            EventType.FAILED,
            at=event.at,
            error=f"OutputNotStorable: the output {problem}",
            duration_ms=event.duration_ms,
        )
    return event


class RunTransitions:
    """Records what happens to runs, for every use case (through :class:`RunRecorder`)."""

    def __init__(
        self, *, pool: asyncpg.Pool, recorder: RunRecorder, background: BackgroundTasks
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._background = background

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
        # A runtime that names a run queued has at least taken it: it counts as started.
        kind = event_to(result.status) or EventType.STARTED
        if kind == EventType.COMPLETED:
            event = RunEvent(run_id, kind, outputs=lift_outputs(result.output), **output)
        elif kind == EventType.FAILED:
            reason = result.error or "The runtime reported the run failed"
            log.info("run_failed", run_id=run_id, reason=reason[:300])
            event = RunEvent(run_id, kind, error=reason[:MAX_ERROR_LEN], **output)
        elif kind == EventType.STARTED:
            event = RunEvent(run_id, kind)
        else:
            event = RunEvent(run_id, kind, **output)
        return await self.publish(event)

    async def fail(self, run_id: int, reason: str, *, output_data: Any = None) -> bool:
        """Record that a run failed, with ``reason``; ``False`` when it had already ended."""
        result = RunResult(
            RunStatus.FAILED, output=output_data, has_output=output_data is not None, error=reason
        )
        return await self.record_result(run_id, result)

    def fail_detached(self, run_id: int, reason: str) -> None:
        """Record a failure from a task that is being cancelled (the caller left)."""
        self._background.spawn(self.fail(run_id, reason), name=f"fail-run-{run_id}")

    async def record_surely(self, record: Coroutine[Any, Any, _T], *, name: str) -> _T:
        """Await ``record`` (a run's end, recorded once its response is out) so that it
        completes even if the request is cancelled meanwhile: a caller that hangs up the
        moment its last byte arrives cancels the handler, and the run must still end. It
        runs as background work (waited for on shutdown)."""
        return await asyncio.shield(self._background.spawn(record, name=name))
