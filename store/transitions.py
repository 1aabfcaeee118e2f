"""Run transitions in PostgreSQL: what an event does to its run's row.

One statement takes any number of events (at most one per run) and moves each run as its event
says, guarded: a terminal run never changes (a late event is refused), ``started`` only moves a
run that is queued or waiting. The rows are locked in id order first, so two statements over
overlapping runs never deadlock; whoever commits first is first in the run's order.

Two callers use it:

- :func:`record_events`, on the caller's path (the gateway, group-committed): the row is the
  record, in one round trip, and the 2xx that follows is true on every replica at once.
- :func:`apply_buffered`, in the store consumer, for events held in the Redis buffer while
  PostgreSQL was away. Those may come after newer events of the same run were recorded
  directly, so a non-terminal buffered event older than the row's last event is refused
  (an end is never refused for its age: a run must not lose its end), and the consumer's
  lease on the partition is checked in the same transaction (see :func:`apply_buffered`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from store.models import Run
from store.run_events import RunEvent
from store.runs import QUALIFIED_RUN_COLUMNS, run_from_row

Connection = asyncpg.Connection | PoolConnectionProxy


class Outcome(enum.StrEnum):
    """What recording one event did."""

    APPLIED = "applied"  # the run's row now says it
    UNCHANGED = "unchanged"  # nothing to change (a run already running told it started)
    ENDED = "ended"  # the run had already ended: refused
    STALE = "stale"  # a buffered event older than what the row already says: refused
    DUPLICATE = "duplicate"  # a buffered event applied before (read again after a crash)
    MISSING = "missing"  # no such run
    BUFFERED = "buffered"  # PostgreSQL was away: held in the Redis buffer, applied later


@dataclass(frozen=True, slots=True)
class Transition:
    """One event's outcome, with the run's row after it when it was applied."""

    outcome: Outcome
    run: Run | None = None

    @property
    def ended_run(self) -> Run | None:
        """The terminal row, when this event ended its run."""
        if self.outcome is Outcome.APPLIED and self.run is not None and self.run.terminal:
            return self.run
        return None


_TERMINAL = "('completed', 'failed', 'cancelled')"
# The event's columns, one array each ($1..$10), unnested into ``e``. JSON travels as text and
# is cast in SQL: arrays of jsonb would need a codec per array.
_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"),
    ("run_id", "bigint"),
    ("type", "text"),
    ("at", "timestamptz"),
    ("has_output", "boolean"),
    ("output_data", "text"),
    ("outputs", "bigint"),
    ("error", "text"),
    ("duration_ms", "bigint"),
    ("waiting_for", "text"),
)
_UNNEST = "unnest({}) AS e({})".format(
    ", ".join(f"${i}::{kind}[]" for i, (_name, kind) in enumerate(_EVENT_COLUMNS, start=1)),
    ", ".join(name for name, _kind in _EVENT_COLUMNS),
)
# Without a measured duration, a run lasted from its start (its creation if it never started)
# to its end, as trigger-and-wait's example shows.
_SET = f"""
    status = CASE WHEN e.type IN ('started', 'output') THEN 'running' ELSE e.type END,
    output_data = CASE WHEN e.has_output THEN e.output_data::jsonb ELSE r.output_data END,
    outputs = COALESCE(e.outputs, r.outputs),
    waiting_for = CASE WHEN e.type = 'waiting' THEN e.waiting_for::jsonb
                       WHEN e.type IN ('started', 'output') THEN NULL
                       ELSE r.waiting_for END,
    error = CASE WHEN e.type IN {_TERMINAL} THEN COALESCE(e.error, r.error) ELSE r.error END,
    duration_ms = CASE WHEN e.type IN {_TERMINAL} THEN COALESCE(e.duration_ms, GREATEST(0,
                      (EXTRACT(EPOCH FROM (e.at - COALESCE(r.started_at, r.created_at)))
                       * 1000)::bigint))
                  ELSE r.duration_ms END,
    started_at = COALESCE(r.started_at, e.at),
    completed_at = CASE WHEN e.type IN {_TERMINAL} THEN e.at ELSE r.completed_at END,
    follow_at = CASE WHEN e.type IN {_TERMINAL} THEN NULL ELSE r.follow_at END,
    event_at = GREATEST(r.event_at, e.at),
    updated_at = now()"""
_GUARD = f"""r.status NOT IN {_TERMINAL}
    AND (e.type <> 'started' OR r.status IN ('queued', 'waiting'))"""
# A buffered event must not have been applied before, and unless it is an end it must be newer
# than the last event the row took.
_NOT_STALE = f"""NOT e.applied_before
    AND (e.type IN {_TERMINAL} OR r.event_at IS NULL OR e.at > r.event_at)"""


def _statement(guard: str) -> str:
    # ``locked`` takes the row locks in id order before the UPDATE (which would take them in
    # whatever order its plan reads the rows) and says what each run was before. Every event
    # a row took is marked in ``applied_events``: the run's history of applied events, and
    # what tells a buffered event read again after a crash from a new one. The UPDATE runs
    # before the INSERT (which reads its rows), so each run's lock comes before its key.
    return f"""
WITH e AS MATERIALIZED (
  SELECT e.*, EXISTS (SELECT 1 FROM applied_events a WHERE a.event_id = e.event_id)
              AS applied_before
  FROM {_UNNEST}),
locked AS MATERIALIZED (
  SELECT id, status, event_at FROM runs WHERE id IN (SELECT run_id FROM e) ORDER BY id FOR UPDATE),
changed AS (
  UPDATE runs AS r SET {_SET}
  FROM e WHERE r.id = e.run_id AND r.id IN (SELECT id FROM locked) AND {guard}
  RETURNING {QUALIFIED_RUN_COLUMNS}),
marked AS (
  INSERT INTO applied_events (event_id, run_id, type, changed)
  SELECT e.event_id, e.run_id, e.type, true FROM e JOIN changed ON changed.id = e.run_id
  ON CONFLICT (event_id) DO NOTHING)
SELECT e.run_id AS event_run_id, e.applied_before, locked.status AS status_before,
       (locked.event_at IS NOT NULL AND e.at <= locked.event_at) AS older, changed.*
FROM e LEFT JOIN locked ON locked.id = e.run_id LEFT JOIN changed ON changed.id = e.run_id"""


_RECORD = _statement(_GUARD)
_APPLY_BUFFERED = _statement(f"{_GUARD} AND {_NOT_STALE}")


def _arguments(events: Sequence[RunEvent]) -> list[list[Any]]:
    def value(event: RunEvent, name: str) -> Any:
        if name == "output_data":
            return None if event.stored_output is None else json.dumps(event.stored_output)
        if name == "waiting_for":
            return None if event.waiting_for is None else json.dumps(event.waiting_for)
        return getattr(event, name)

    return [[value(event, name) for event in events] for name, _kind in _EVENT_COLUMNS]


def _transition(row: asyncpg.Record, *, buffered: bool) -> Transition:
    if row["status_before"] is None:
        return Transition(Outcome.MISSING)
    if row["id"] is not None:
        values = {key: value for key, value in row.items() if key not in _EXTRA_COLUMNS}
        return Transition(Outcome.APPLIED, run_from_row(values))  # type: ignore[arg-type]
    if buffered and row["applied_before"]:
        return Transition(Outcome.DUPLICATE)
    if row["status_before"] in ("completed", "failed", "cancelled"):
        return Transition(Outcome.ENDED)
    if buffered and row["older"]:
        return Transition(Outcome.STALE)
    return Transition(Outcome.UNCHANGED)


_EXTRA_COLUMNS = frozenset({"event_run_id", "applied_before", "status_before", "older"})


async def _run(
    db: Connection | asyncpg.Pool, statement: str, events: Sequence[RunEvent], *, buffered: bool
) -> list[Transition]:
    """``events`` through ``statement`` in rounds: round ``k`` holds the ``k``-th event of
    every run, so that one statement changes a run at most once and sees the rounds before."""
    transitions: list[Transition | None] = [None] * len(events)
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for index, event in enumerate(events):
        k = seen.get(event.run_id, 0)
        seen[event.run_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(index)
    for round_ in rounds:
        batch = [events[i] for i in round_]
        rows = await db.fetch(statement, *_arguments(batch))
        by_run = {int(row["event_run_id"]): row for row in rows}
        for index in round_:
            transitions[index] = _transition(by_run[events[index].run_id], buffered=buffered)
    return [t for t in transitions if t is not None]


async def record_events(
    db: Connection | asyncpg.Pool, events: Sequence[RunEvent]
) -> list[Transition]:
    """Record ``events`` (in the order given) on their runs' rows: one statement, one round
    trip, unless a run has several events here (then one statement per event of that run)."""
    return await _run(db, _RECORD, events, buffered=False)


async def new_lease_token(db: Connection | asyncpg.Pool, stream: str, partition: int) -> int:
    """A token for a consumer that has just taken ``partition`` of the buffer ``stream``:
    larger than every earlier one, so that every earlier holder is fenced off."""
    token = await db.fetchval(
        """INSERT INTO event_partition_leases AS l (stream, partition, token) VALUES ($1, $2, 1)
           ON CONFLICT (stream, partition) DO UPDATE SET token = l.token + 1, taken_at = now()
           RETURNING token""",
        stream,
        partition,
    )
    return int(token)


async def _superseded(conn: Connection, stream: str, tokens: Mapping[int, int]) -> set[int]:
    """Of the partitions in ``tokens``, those whose newest lease is no longer the given token.
    FOR UPDATE: a new token cannot be taken while this transaction applies under the old one."""
    rows = await conn.fetch(
        """SELECT partition, token FROM event_partition_leases
           WHERE stream = $1 AND partition = ANY($2::integer[]) ORDER BY partition FOR UPDATE""",
        stream,
        list(tokens),
    )
    newest = {int(row["partition"]): int(row["token"]) for row in rows}
    return {partition for partition, token in tokens.items() if newest.get(partition) != token}


class LeaseLost(Exception):
    """A partition's lease passed to another consumer: nothing was applied."""

    def __init__(self, partitions: set[int]) -> None:
        super().__init__(sorted(partitions))
        self.partitions = partitions


async def apply_buffered(
    conn: Connection, events: Sequence[RunEvent], *, stream: str, tokens: Mapping[int, int]
) -> list[Transition]:
    """Apply events taken from the partitions of the buffer ``stream`` (each partition's in
    its order) in one transaction, under the consumer's lease token on each partition
    (``tokens``; :class:`LeaseLost` naming the partitions whose lease was taken over meanwhile:
    then nothing is applied). Applying the same events again changes nothing more: an end
    finds its run ended, any other event finds the row at least as new."""
    async with conn.transaction():
        if lost := await _superseded(conn, stream, tokens):
            raise LeaseLost(lost)
        return await _run(conn, _APPLY_BUFFERED, events, buffered=True)
