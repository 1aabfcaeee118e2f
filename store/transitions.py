"""Run transitions in PostgreSQL: what an event does to its run's row.

One set-based UPDATE takes any number of events (at most one per run) and moves each run as
its event says (``_SET``), guarded: a terminal run never changes (a late event is refused),
``started`` only moves a run that is queued or waiting. The rows are locked in id order first,
so two statements over overlapping runs never deadlock; whoever commits first is first in the
run's order. Several events of one run go in rounds (the ``k``-th of every run in round ``k``).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from store import jsonb
from store.models import Run
from store.run_events import RunEvent
from store.runs import QUALIFIED_RUN_COLUMNS, RUN_COLUMNS, run_from_row

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
    """One event's outcome, with the run's row after it when it was applied on the caller's
    path (a buffered event's answer carries only whether it ended its run: ``ended``)."""

    outcome: Outcome
    run: Run | None = None
    ended: bool = False

    @property
    def ended_run(self) -> Run | None:
        """The terminal row, when this event ended its run."""
        if self.outcome is Outcome.APPLIED and self.run is not None and self.run.terminal:
            return self.run
        return None


_TERMINAL = "('completed', 'failed', 'cancelled')"
_TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
_RUN_COLUMN_NAMES = tuple(name.strip() for name in RUN_COLUMNS.split(","))
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
# ``locked`` takes the row locks in id order before the UPDATE (which would take them in
# whatever order its plan reads the rows; the UPDATE waits for it through its IN) and says
# what each run was before. Every event a row took is marked in ``applied_events``: the run's
# history of applied events, and what tells a buffered event read again after a crash from a
# new one. No two of the statement's CTEs are joined to each other (the planner takes each
# for 100 rows and joins them by nested loops, quadratic in a large batch): the answer is the
# before rows and the changed rows one after the other (UNION ALL), matched to the events by
# run id in Python. The runs are named by their ids ($2) as well as joined, so that the
# planner reads them by index even while its statistics lag behind the table.
_RECORD = f"""
WITH e AS MATERIALIZED (SELECT * FROM {_UNNEST}),
locked AS MATERIALIZED (
  SELECT e.run_id, r.status AS status_before
  FROM runs AS r JOIN e ON e.run_id = r.id
  WHERE r.id = ANY($2::bigint[]) ORDER BY r.id FOR UPDATE OF r),
changed AS (
  UPDATE runs AS r SET {_SET}
  FROM e WHERE r.id = e.run_id AND r.id = ANY($2::bigint[])
    AND r.id IN (SELECT run_id FROM locked) AND {_GUARD}
  RETURNING {QUALIFIED_RUN_COLUMNS}, e.event_id AS changed_event_id,
            e.type AS changed_event_type),
marked AS (
  INSERT INTO applied_events (event_id, run_id, type, changed)
  SELECT changed_event_id, id, changed_event_type, true FROM changed
  ON CONFLICT (event_id) DO NOTHING)
SELECT run_id AS event_run_id, status_before,
       {", ".join(f"NULL AS {name}" for name in _RUN_COLUMN_NAMES)}
FROM locked
UNION ALL
SELECT NULL, NULL, {RUN_COLUMNS} FROM changed"""


def _arguments(events: Sequence[RunEvent]) -> list[list[Any]]:
    def value(event: RunEvent, name: str) -> Any:
        if name == "output_data":
            return None if event.stored_output is None else jsonb.dumps(event.stored_output)
        if name == "waiting_for":
            return None if event.waiting_for is None else jsonb.dumps(event.waiting_for)
        return getattr(event, name)

    return [[value(event, name) for event in events] for name, _kind in _EVENT_COLUMNS]


def _transition(
    run_id: int, before: Mapping[int, asyncpg.Record], changed: Mapping[int, asyncpg.Record]
) -> Transition:
    if (row := changed.get(run_id)) is not None:
        values = {key: value for key, value in row.items() if key in _RUN_COLUMN_NAMES}
        run = run_from_row(values)  # type: ignore[arg-type]
        return Transition(Outcome.APPLIED, run, run.terminal)
    if (was := before.get(run_id)) is None:
        return Transition(Outcome.MISSING)
    if was["status_before"] in _TERMINAL_STATUSES:
        return Transition(Outcome.ENDED)
    return Transition(Outcome.UNCHANGED)


# Events one statement takes at most (a consumer's turn holds every partition's batch).
_STATEMENT_EVENTS = 500


async def _record(db: Connection | asyncpg.Pool, events: Sequence[RunEvent]) -> list[Transition]:
    """``events`` through :data:`_RECORD` in rounds: round ``k`` holds the ``k``-th event of
    every run, so that one statement changes a run at most once and sees the rounds before."""
    transitions: list[Transition | None] = [None] * len(events)
    for round_ in _rounds(events, range(len(events))):
        for start in range(0, len(round_), _STATEMENT_EVENTS):
            chunk = round_[start : start + _STATEMENT_EVENTS]
            rows = await db.fetch(_RECORD, *_arguments([events[i] for i in chunk]))
            before = {int(r["event_run_id"]): r for r in rows if r["event_run_id"] is not None}
            changed = {int(r["id"]): r for r in rows if r["id"] is not None}
            for index in chunk:
                transitions[index] = _transition(events[index].run_id, before, changed)
    return [t for t in transitions if t is not None]


def _rounds(events: Sequence[RunEvent], indexes: Sequence[int]) -> list[list[int]]:
    """``indexes`` (into ``events``) in rounds: the ``k``-th event of every run in round ``k``."""
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for index in indexes:
        run_id = events[index].run_id
        k = seen.get(run_id, 0)
        seen[run_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(index)
    return rounds


async def record_events(
    db: Connection | asyncpg.Pool, events: Sequence[RunEvent]
) -> list[Transition]:
    """Record ``events`` (in the order given) on their runs' rows: one statement, one round
    trip, unless a run has several events here (then one statement per event of that run)."""
    return await _record(db, events)


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


# A buffered event's statement: the plain UPDATE of each run it moves (the consumer's
# transaction has locked the runs and sorted out what was applied before; a non-terminal
# event older than the row's last one is refused), answering which runs changed and how. The
# runs are named by their ids ($2) as well as joined, as in _RECORD: a backlog is applied just
# after an outage, when the statistics may still say nearly every run has ended, and planned
# from those alone the join read the whole table once per event (a nested loop over a
# sequential scan: 400 events over 40,000 runs took 4.5 s; by id, 9 ms).
_APPLY_BUFFERED = f"""
UPDATE runs AS r SET {_SET}
FROM {_UNNEST}
WHERE r.id = e.run_id AND r.id = ANY($2::bigint[]) AND {_GUARD}
  AND (e.type IN {_TERMINAL} OR r.event_at IS NULL OR e.at > r.event_at)
RETURNING r.id, r.status, r.event_at"""


# The batch transaction's planner: no nested loops. A consumer's connection plans
# _APPLY_BUFFERED once for every batch after its first five (PostgreSQL's generic plan), and
# that plan takes the events for 10 rows whatever their number; with statistics that say the
# runs have ended, it joined a batch's runs (read by id) to its events by a nested loop, one
# pass over the events per run: 500 events took 93 ms, 3,000 in one statement 3.9 s (hash
# join: 12 and 56 ms). Only this transaction's statements are planned so; none of the others
# joins anything.
_BATCH_PLANNING = "SET LOCAL enable_nestloop = off"


async def apply_buffered(
    conn: Connection, events: Sequence[RunEvent], *, stream: str, tokens: Mapping[int, int]
) -> list[Transition]:
    """Apply events taken from the partitions of the buffer ``stream`` (each partition's in
    its order) in one transaction, under the consumer's lease token on each partition
    (``tokens``; :class:`LeaseLost` naming the partitions whose lease was taken over meanwhile:
    then nothing is applied). Applying the same events again changes nothing more: an event
    found in ``applied_events`` is a duplicate, an end finds its run ended, any other event
    finds the row at least as new.

    The same outcome as applying them one by one, in a few set-based statements: the runs are
    locked in id order (two consumers' batches never deadlock) and read, the events already
    applied are looked up by key, then round ``k`` updates every run with its ``k``-th event.
    """
    transitions: list[Transition | None] = [None] * len(events)
    async with conn.transaction():
        await conn.execute(_BATCH_PLANNING)
        if lost := await _superseded(conn, stream, tokens):
            raise LeaseLost(lost)
        rows = await conn.fetch(
            """SELECT id, status, event_at FROM runs WHERE id = ANY($1::bigint[])
               ORDER BY id FOR UPDATE""",
            sorted({event.run_id for event in events}),
        )
        status = {int(row["id"]): str(row["status"]) for row in rows}
        last_at = {int(row["id"]): row["event_at"] for row in rows}
        done = {
            row["event_id"]
            for row in await conn.fetch(
                "SELECT event_id FROM applied_events WHERE event_id = ANY($1::uuid[])",
                [event.event_id for event in events],
            )
        }
        fresh: list[int] = []
        for index, event in enumerate(events):
            if event.event_id in done:
                transitions[index] = Transition(Outcome.DUPLICATE)
            elif event.run_id not in status:
                transitions[index] = Transition(Outcome.MISSING)
            else:
                fresh.append(index)
            done.add(event.event_id)  # the same event twice in one batch: once
        rounds = _rounds(events, fresh)
        applied: list[RunEvent] = []
        for round_ in rounds:
            for start in range(0, len(round_), _STATEMENT_EVENTS):
                chunk = round_[start : start + _STATEMENT_EVENTS]
                changed = {
                    int(row["id"]): row
                    for row in await conn.fetch(
                        _APPLY_BUFFERED, *_arguments([events[i] for i in chunk])
                    )
                }
                for index in chunk:
                    event = events[index]
                    run_id = event.run_id
                    if (row := changed.get(run_id)) is not None:
                        status[run_id], last_at[run_id] = str(row["status"]), row["event_at"]
                        ended = status[run_id] in _TERMINAL_STATUSES
                        transitions[index] = Transition(Outcome.APPLIED, ended=ended)
                        applied.append(event)
                    elif status[run_id] in _TERMINAL_STATUSES:
                        transitions[index] = Transition(Outcome.ENDED)
                    elif last_at[run_id] is not None and event.at <= last_at[run_id]:
                        transitions[index] = Transition(Outcome.STALE)
                    else:
                        transitions[index] = Transition(Outcome.UNCHANGED)
        if applied:
            await conn.execute(
                """INSERT INTO applied_events (event_id, run_id, type, changed)
                   SELECT *, true FROM unnest($1::uuid[], $2::bigint[], $3::text[])
                   ON CONFLICT (event_id) DO NOTHING""",
                [event.event_id for event in applied],
                [event.run_id for event in applied],
                [str(event.type) for event in applied],
            )
    return [t for t in transitions if t is not None]
