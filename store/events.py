"""Run lifecycle events: their shape, their idempotent application, and their publisher.

The gateway publishes each transition to a Redis Stream; the store consumer applies it to
PostgreSQL. Applying is idempotent (an ``applied_events`` row per event id) and guarded (a
terminal run never changes), so at-least-once delivery never applies anything twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from asyncpg.pool import PoolConnectionProxy
from redis.exceptions import RedisError

from store.enums import TERMINAL_EVENTS, EventType
from store.group_commit import GroupCommit
from store.models import Run
from store.runs import QUALIFIED_RUN_COLUMNS, RUN_COLUMNS, run_from_row

log = structlog.get_logger(__name__)

EVENT_TYPES = frozenset(EventType)
_UNSET: Any = object()
# How long the first terminal event of a run is remembered in Redis. Afterwards the run row
# (terminal by then) is what refuses later events.
_TERMINAL_CLAIM_MS = 24 * 3600 * 1000

Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One transition of one run. ``at`` is when it happened at the gateway."""

    run_id: int
    type: EventType
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    output_data: Any = _UNSET
    outputs: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    waiting_for: dict[str, Any] | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown run event type {self.type!r}")

    @property
    def terminal(self) -> bool:
        """Whether this event ends the run."""
        return self.type in TERMINAL_EVENTS

    @property
    def has_output(self) -> bool:
        """Whether the event carries ``output_data`` (``None`` included)."""
        return self.output_data is not _UNSET

    @property
    def stored_output(self) -> Any:
        """``output_data`` as stored: ``None`` when the event carries none."""
        return self.output_data if self.has_output else None

    def encode(self) -> dict[str, str]:
        """The event as Redis Stream fields."""
        body: dict[str, Any] = {
            "event_id": str(self.event_id),
            "run_id": self.run_id,
            "type": self.type,
            "at": self.at.isoformat(),
            "outputs": self.outputs,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "waiting_for": self.waiting_for,
        }
        if self.has_output:
            body["output_data"] = self.output_data
        return {"event": json.dumps(body, separators=(",", ":"))}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, str]) -> RunEvent:
        """Rebuild an event from Redis Stream fields."""
        raw = fields.get(b"event") or fields.get("event")  # type: ignore[call-overload]
        if not isinstance(raw, bytes | str):
            raise ValueError("stream entry has no 'event' field")
        body = json.loads(raw)
        return cls(
            run_id=int(body["run_id"]),
            type=EventType(body["type"]),
            at=dt.datetime.fromisoformat(body["at"]),
            output_data=body.get("output_data", _UNSET),
            outputs=body.get("outputs"),
            error=body.get("error"),
            duration_ms=body.get("duration_ms"),
            waiting_for=body.get("waiting_for"),
            event_id=uuid.UUID(body["event_id"]),
        )


_NOT_TERMINAL = "r.status NOT IN ('completed', 'failed', 'cancelled')"
_KEEP_OR_SET_OUTPUT = """output_data = CASE WHEN e.has_output THEN e.output_data::jsonb
                                       ELSE r.output_data END,
                       outputs = COALESCE(e.outputs, r.outputs)"""


@dataclass(frozen=True, slots=True)
class _Apply:
    """One guarded, set-based UPDATE: the events it takes are unnested into ``e``."""

    sql: str
    columns: tuple[tuple[str, str], ...]  # (event attribute, PostgreSQL array type)

    def args(self, events: list[RunEvent]) -> list[list[Any]]:
        """One array per column, in the statement's parameter order."""
        return [[_column(event, name) for event in events] for name, _type in self.columns]


def _column(event: RunEvent, name: str) -> Any:
    # JSON travels as text and is cast in SQL: arrays of jsonb would need a codec per array.
    if name == "output_json":
        return None if event.stored_output is None else json.dumps(event.stored_output)
    if name == "waiting_json":
        return None if event.waiting_for is None else json.dumps(event.waiting_for)
    return getattr(event, name)


# The name each event attribute has in ``e``.
_ALIAS = {"output_json": "output_data", "waiting_json": "waiting_for", "type": "status"}


def _apply(
    set_clause: str, guard: str, columns: tuple[tuple[str, str], ...], returning: str = "r.id"
) -> _Apply:
    params = ", ".join(f"${i}::{kind}[]" for i, (_name, kind) in enumerate(columns, start=1))
    aliases = ", ".join(_ALIAS.get(name, name) for name, _kind in columns)
    return _Apply(
        f"""UPDATE runs AS r SET {set_clause}
            FROM unnest({params}) AS e({aliases})
            WHERE r.id = e.run_id AND {guard}
            RETURNING {returning}""",
        columns,
    )


_BASE = (("run_id", "bigint"), ("at", "timestamptz"))
_OUTPUT = (*_BASE, ("has_output", "boolean"), ("output_json", "text"), ("outputs", "bigint"))
# Without a measured duration, a run lasted from its start (its creation if it never
# started) to this event, as trigger-and-wait's example shows.
_END_SET = f"""status = e.status, {_KEEP_OR_SET_OUTPUT},
           error = COALESCE(e.error, r.error),
           duration_ms = COALESCE(e.duration_ms, GREATEST(0,
               (EXTRACT(EPOCH FROM (e.at - COALESCE(r.started_at, r.created_at))) * 1000)::bigint)),
           started_at = COALESCE(r.started_at, e.at),
           completed_at = e.at, follow_at = NULL, updated_at = now()"""
_END = (*_OUTPUT, ("type", "text"), ("error", "text"), ("duration_ms", "bigint"))
_RETURNING_ENDED = f"{QUALIFIED_RUN_COLUMNS}, e.event_id AS ended_event_id"
# One statement per kind of transition. started/output move a queued run to running and resume
# a waiting one (running <-> waiting); an end is final. ``r`` is the row as it was before the
# statement, ``e`` the event.
_APPLY: dict[str, _Apply] = {
    "started": _apply(
        """status = 'running', started_at = COALESCE(r.started_at, e.at),
           waiting_for = NULL, updated_at = now()""",
        "r.status IN ('queued', 'waiting')",
        _BASE,
    ),
    "output": _apply(
        f"""{_KEEP_OR_SET_OUTPUT}, started_at = COALESCE(r.started_at, e.at),
           status = 'running', waiting_for = NULL, updated_at = now()""",
        _NOT_TERMINAL,
        _OUTPUT,
    ),
    "waiting": _apply(
        f"""status = 'waiting', {_KEEP_OR_SET_OUTPUT}, waiting_for = e.waiting_for::jsonb,
           started_at = COALESCE(r.started_at, e.at), updated_at = now()""",
        _NOT_TERMINAL,
        (*_OUTPUT, ("waiting_json", "text")),
    ),
    "end": _apply(_END_SET, _NOT_TERMINAL, _END),
}


# The ends of runs applied by the replica that recorded them, in one statement: the rows change
# and the events are marked applied together (the store consumer then finds them applied and
# skips them). The rows are locked first, in id order, as apply_events locks them: an UPDATE
# joined to its events takes its row locks in whatever order its plan reads the rows, and the
# store consumer, applying the same events from the stream at the same moment, then deadlocked
# with it (PostgreSQL broke the tie after its deadlock_timeout, 1 s). The UPDATE runs before the
# INSERT (which reads its rows), so each run's lock comes before its applied_events key.
_END_WITH_ID = (*_END, ("event_id", "uuid"))
_ENDED = _apply(
    _END_SET, f"{_NOT_TERMINAL} AND r.id IN (SELECT id FROM locked)", _END_WITH_ID, _RETURNING_ENDED
)
_END_AND_MARK_APPLIED = f"""
WITH locked AS MATERIALIZED (
  SELECT id FROM runs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE),
ended AS ({_ENDED.sql}),
marked AS (
  INSERT INTO applied_events (event_id, run_id, type, changed)
  SELECT ended_event_id, id, status, true FROM ended
  ON CONFLICT (event_id) DO NOTHING)
SELECT {RUN_COLUMNS} FROM ended"""


async def apply_ends_returning(
    db: Connection | asyncpg.Pool, events: Sequence[RunEvent]
) -> list[Run]:
    """Apply terminal ``events`` (at most one per run) in one round trip; the terminal rows of
    the runs they ended (a run that had already ended is absent: its event changes nothing,
    and the store consumer records it as refused when it reads it from the stream)."""
    ordered = sorted(events, key=lambda event: event.run_id)
    columns = [[_column(event, name) for event in ordered] for name, _kind in _END_WITH_ID]
    rows = await db.fetch(_END_AND_MARK_APPLIED, *columns)
    return [run_from_row(row) for row in rows]


def _statement_kind(event: RunEvent) -> str:
    return "end" if event.terminal else event.type


async def apply_events(conn: Connection, events: list[RunEvent]) -> list[bool | None]:
    """Apply ``events`` (in stream order) in one transaction, each at most once.

    Returns one outcome per event, as :func:`apply_event` does: ``None`` when the event was
    already applied (before, or earlier in this list), otherwise whether its run changed
    (``False`` when the guard refused it, e.g. a late event for a terminal run).

    The result is the same as applying the events one by one: they are applied in rounds,
    round ``k`` holding the ``k``-th new event of every run, so that each set-based UPDATE
    touches a run at most once and sees what the rounds before it did.
    """
    outcomes: list[bool | None] = [None] * len(events)
    first: dict[uuid.UUID, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.event_id, index)
    if not first:
        return outcomes
    async with conn.transaction():
        # Lock the runs first, in id order: batches of two consumers never deadlock on them,
        # and whoever applies an event of a run holds that run until it commits, so the
        # check below sees every application of these events that came before this one.
        await conn.execute(
            "SELECT 1 FROM runs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
            sorted({events[i].run_id for i in first.values()}),
        )
        done = await conn.fetch(
            "SELECT event_id FROM applied_events WHERE event_id = ANY($1::uuid[])", list(first)
        )
        applied = {row["event_id"] for row in done}
        fresh = sorted(i for event_id, i in first.items() if event_id not in applied)
        if not fresh:
            return outcomes
        rounds: list[list[int]] = []
        seen_in_run: dict[int, int] = {}
        for index in fresh:
            k = seen_in_run.get(events[index].run_id, 0)
            seen_in_run[events[index].run_id] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(index)
        for round_ in rounds:
            by_kind: dict[str, list[int]] = {}
            for index in round_:
                by_kind.setdefault(_statement_kind(events[index]), []).append(index)
            for kind, indexes in by_kind.items():
                statement = _APPLY[kind]
                batch = [events[i] for i in indexes]
                rows = await conn.fetch(statement.sql, *statement.args(batch))
                updated = {int(row["id"]) for row in rows}
                for index in indexes:
                    outcomes[index] = events[index].run_id in updated
        # ON CONFLICT: an event of a run that does not exist was not serialised by a lock;
        # applying it changed nothing, so whoever recorded it first is as good.
        await conn.execute(
            """INSERT INTO applied_events (event_id, run_id, type, changed)
               SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::boolean[])
               ON CONFLICT (event_id) DO NOTHING""",
            [events[i].event_id for i in fresh],
            [events[i].run_id for i in fresh],
            [events[i].type for i in fresh],
            [bool(outcomes[i]) for i in fresh],
        )
    return outcomes


async def apply_event(conn: Connection, event: RunEvent) -> bool | None:
    """Apply ``event`` once, in its own transaction.

    Returns ``None`` when the event was already applied, otherwise whether the run changed
    (``False`` when the guard refused it, e.g. a late event for a terminal run).
    """
    return (await apply_events(conn, [event]))[0]


def terminal_channel(stream: str) -> str:
    """The pub/sub channel on which the ids of runs that just became terminal are announced."""
    return f"{stream}:terminal"


def _terminal_claim_key(stream: str, run_id: int) -> str:
    return f"{stream}:terminal-claim:{run_id}"


async def announce_terminal(redis: aioredis.Redis, stream: str, run_ids: list[int]) -> None:
    """Wake whoever waits for these runs, on every replica. Best effort: waiters re-check."""
    if not run_ids:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.publish(terminal_channel(stream), str(run_id))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("terminal_announce_failed", run_ids=run_ids, error=str(exc))


# Only the first terminal event of a run enters the stream: whichever replica records a run's
# end first wins, atomically, and every later one is told so at once (a late callback gets its
# 409 without waiting for the store consumer). The reply says whether events of the run before
# its end went through the stream (the marker _ADD_OPEN sets): 2 then, 1 when none did.
_CLAIM_AND_ADD = """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return 2
  end
  return 1
end
return 0
"""
# A transition before a run's end, and the marker that says the run has one in the stream.
_ADD_OPEN = """
redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""
# The claim's reply when the end may be applied by the replica that claimed it: no event of
# the run before it can still be on its way through the stream (applied after the end, it
# would be refused, and what it carried lost).
_CLAIMED_ALONE = 1


def _open_key(stream: str, run_id: int) -> str:
    return f"{stream}:open:{run_id}"


class EventPublisher:
    """Publishes run events to the durable stream, or straight to PostgreSQL if Redis fails."""

    def __init__(
        self,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        stream: str,
        *,
        observe: Callable[[str, str], None] | None = None,
        on_end: Callable[[int, Run | None], None] | None = None,
    ) -> None:
        """With ``on_end``, a run's end this publisher claims is also applied to PostgreSQL at
        once (see :meth:`_apply_end`) and ``on_end`` is told at once: with the terminal row, or
        with ``None`` when the row must be read (it was written another way). Without it, the
        store consumer alone applies ends."""
        self._redis = redis
        self._on_end = on_end
        self._pool = pool
        self._stream = stream
        self._claim_and_add = redis.register_script(_CLAIM_AND_ADD)
        self._add_open = redis.register_script(_ADD_OPEN)
        self._announcing: set[asyncio.Task[None]] = set()
        self._ends = None if on_end is None else GroupCommit(self._record_ends)
        # Told (event type, outcome) for every event: "stream", "database" (written straight
        # to PostgreSQL), "refused" (a late end), "redis_failed" (then the database is tried)
        # or "failed" (not recorded at all).
        self._observe = observe or (lambda event_type, outcome: None)

    @property
    def stream(self) -> str:
        """The stream events go to."""
        return self._stream

    async def claimed_end(self, run_id: int) -> str | None:
        """The type of the terminal event a run's end was claimed with, if any (``None`` also
        when Redis cannot say: the run row is the other witness)."""
        try:
            value = await self._redis.get(_terminal_claim_key(self._stream, run_id))
        except (RedisError, OSError):
            return None
        return value.decode() if isinstance(value, bytes) else None

    async def publish(self, event: RunEvent) -> bool:
        """Hand ``event`` on durably; never drop it.

        Returns ``False`` when a terminal event comes too late: the run already has its end
        (recorded or on its way), so this one will change nothing.
        """
        if event.terminal and self._ends is not None:
            return await self._ends.submit(event)
        fields = event.encode()
        try:
            if not event.terminal:
                await self._add_open(
                    keys=[self._stream, _open_key(self._stream, event.run_id)],
                    args=[fields["event"], _TERMINAL_CLAIM_MS],
                )
                self._observe(event.type, "stream")
                return True
            added = await self._claim_and_add(
                keys=self._claim_keys(event), args=self._claim_args(event, fields)
            )
            self._observe(event.type, "stream" if added else "refused")
            return bool(added)
        except (RedisError, OSError) as exc:
            self._redis_failed(event, exc)
        return await self._publish_to_database(event)

    def _claim_keys(self, event: RunEvent) -> list[str]:
        return [
            self._stream,
            _terminal_claim_key(self._stream, event.run_id),
            _open_key(self._stream, event.run_id),
        ]

    def _claim_args(self, event: RunEvent, fields: dict[str, str]) -> list[str | int]:
        return [fields["event"], event.type, _TERMINAL_CLAIM_MS]

    def _redis_failed(self, event: RunEvent, exc: Exception) -> None:
        self._observe(event.type, "redis_failed")
        log.warning("event_publish_fallback", run_id=event.run_id, type=event.type, error=str(exc))

    async def _publish_to_database(self, event: RunEvent) -> bool:
        """Redis failed: apply ``event`` straight to PostgreSQL (the store is the truth)."""
        try:
            async with self._pool.acquire() as conn:
                outcome = await apply_event(conn, event)
        except BaseException:
            self._observe(event.type, "failed")
            raise
        self._observe(event.type, "refused" if outcome is False else "database")
        if outcome and event.terminal:
            if self._on_end is not None:
                self._on_end(event.run_id, None)
            await announce_terminal(self._redis, self._stream, [event.run_id])
        return outcome is not False

    async def _record_ends(self, events: Sequence[RunEvent]) -> list[bool]:
        """Claim the ends of ``events`` (submitted together) in one Redis round trip, then
        apply those that may be applied here in one PostgreSQL statement and tell ``on_end``.

        The runs' rows say the end once this returns (unless PostgreSQL failed: then the
        store consumer applies them from the stream and announces them)."""
        try:
            replies = await self._claim_all(events)
        except (RedisError, OSError) as exc:
            for event in events:
                self._redis_failed(event, exc)
            return [await self._publish_to_database(event) for event in events]
        alone = []
        for event, reply in zip(events, replies, strict=True):
            self._observe(event.type, "stream" if reply else "refused")
            if reply == _CLAIMED_ALONE:
                alone.append(event)
        if alone:
            await self._apply_ends(alone)
        return [bool(reply) for reply in replies]

    async def _claim_all(self, events: Sequence[RunEvent]) -> list[int]:
        if len(events) == 1:
            event = events[0]
            reply = await self._claim_and_add(
                keys=self._claim_keys(event), args=self._claim_args(event, event.encode())
            )
            return [int(reply)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                await self._claim_and_add(
                    keys=self._claim_keys(event),
                    args=self._claim_args(event, event.encode()),
                    client=pipe,
                )
            return [int(reply) for reply in await pipe.execute()]

    async def _apply_ends(self, events: list[RunEvent]) -> None:
        """Apply ends this process has just put in the stream, so that its waiters (told at
        once) and a read on any replica see them without waiting for the store consumer.

        Best effort: the events are durably in the stream, and the consumer applies them
        (again, idempotently: it finds them applied) whatever happens here.
        """
        assert self._on_end is not None
        try:
            ended = await apply_ends_returning(self._pool, events)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning(
                "run_end_apply_deferred", run_ids=[e.run_id for e in events], error=str(exc)
            )
            return
        for run in ended:
            self._on_end(run.id, run)
        if ended:
            # Other replicas' waiters; nobody's answer waits for it.
            task = asyncio.create_task(
                announce_terminal(self._redis, self._stream, [run.id for run in ended])
            )
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    async def flush(self) -> None:
        """Wait for the announcements still on their way (before the Redis client closes)."""
        if self._announcing:
            await asyncio.wait(set(self._announcing))
