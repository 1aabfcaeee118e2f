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
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

import asyncpg
import structlog
from redis.exceptions import RedisError

from gateway.ops import tracing
from gateway.ops.metrics import (
    EVENT_DATABASE_FAILED,
    EVENT_FAILED,
    EVENT_REFUSED,
    EVENT_VIA_BUFFER,
    EVENT_VIA_DATABASE,
)
from gateway.runs.waits import RunWaiters
from store.announcements import announce_terminal
from store.enums import EventType
from store.event_buffer import EventBuffer, EventBufferFull
from store.group_commit import GroupCommit
from store.jsonb import jsonb_problem, storable_text
from store.run_events import RunEvent
from store.transitions import Outcome, Transition, record_events

log = structlog.get_logger(__name__)

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
