"""Run lifecycle events: their shape, their idempotent application, and their publisher.

The gateway publishes each transition to a Redis Stream; the store consumer applies it to
PostgreSQL. Applying is idempotent (an ``applied_events`` row per event id) and guarded (a
terminal run never changes), so at-least-once delivery never applies anything twice.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from asyncpg.pool import PoolConnectionProxy
from redis.exceptions import RedisError

from store.models import TERMINAL_STATUSES

log = structlog.get_logger(__name__)

EVENT_TYPES = frozenset({"started", "output", "waiting", "completed", "failed", "cancelled"})
_UNSET: Any = object()
# How long the first terminal event of a run is remembered in Redis. Afterwards the run row
# (terminal by then) is what refuses later events.
_TERMINAL_CLAIM_MS = 24 * 3600 * 1000

Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One transition of one run. ``at`` is when it happened at the gateway."""

    run_id: int
    type: str
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
        return self.type in TERMINAL_STATUSES

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
            type=body["type"],
            at=dt.datetime.fromisoformat(body["at"]),
            output_data=body.get("output_data", _UNSET),
            outputs=body.get("outputs"),
            error=body.get("error"),
            duration_ms=body.get("duration_ms"),
            waiting_for=body.get("waiting_for"),
            event_id=uuid.UUID(body["event_id"]),
        )


_NOT_TERMINAL = "status NOT IN ('completed', 'failed', 'cancelled')"
_KEEP_OR_SET_OUTPUT = """output_data = CASE WHEN $3 THEN $4::jsonb ELSE output_data END,
                       outputs = COALESCE($5::bigint, outputs)"""

# One guarded UPDATE per event type and the parameters it takes, in order. Every statement
# starts with $1 run id, $2 at; those that set the output go on with $3 has output,
# $4 output_data, $5 outputs. started/output move a queued run to running and resume a waiting
# one (running <-> waiting).
_OUTPUT_ARGS = ("run_id", "at", "has_output", "stored_output", "outputs")
_APPLY_SQL: dict[str, tuple[str, tuple[str, ...]]] = {
    "started": (
        """UPDATE runs SET status = 'running', started_at = COALESCE(started_at, $2),
               waiting_for = NULL, updated_at = now()
           WHERE id = $1 AND status IN ('queued', 'waiting')""",
        ("run_id", "at"),
    ),
    "output": (
        f"""UPDATE runs SET {_KEEP_OR_SET_OUTPUT},
               started_at = COALESCE(started_at, $2),
               status = 'running', waiting_for = NULL, updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        _OUTPUT_ARGS,
    ),
    "waiting": (
        f"""UPDATE runs SET status = 'waiting', {_KEEP_OR_SET_OUTPUT},
               waiting_for = $6::jsonb,
               started_at = COALESCE(started_at, $2), updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        (*_OUTPUT_ARGS, "waiting_for"),
    ),
}
for _status in ("completed", "failed", "cancelled"):
    # Without a measured duration, a run lasted from its start (its creation if it never
    # started) to this event, as seed 002's example shows.
    _APPLY_SQL[_status] = (
        f"""UPDATE runs SET status = '{_status}', {_KEEP_OR_SET_OUTPUT},
               error = COALESCE($6::text, error),
               duration_ms = COALESCE($7::bigint, GREATEST(0,
                   (EXTRACT(EPOCH FROM ($2 - COALESCE(started_at, created_at))) * 1000)::bigint)),
               started_at = COALESCE(started_at, $2),
               completed_at = $2, follow_at = NULL, updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        (*_OUTPUT_ARGS, "error", "duration_ms"),
    )


async def apply_event(conn: Connection, event: RunEvent) -> bool | None:
    """Apply ``event`` once, in its own transaction.

    Returns ``None`` when the event was already applied, otherwise whether the run changed
    (``False`` when the guard refused it, e.g. a late event for a terminal run).
    """
    async with conn.transaction():
        fresh = await conn.fetchval(
            """INSERT INTO applied_events (event_id, run_id, type, changed)
               VALUES ($1, $2, $3, false) ON CONFLICT (event_id) DO NOTHING RETURNING true""",
            event.event_id,
            event.run_id,
            event.type,
        )
        if not fresh:
            return None
        sql, names = _APPLY_SQL[event.type]
        status = await conn.execute(sql, *(getattr(event, name) for name in names))
        changed = status.endswith(" 1")
        if changed:
            await conn.execute(
                "UPDATE applied_events SET changed = true WHERE event_id = $1", event.event_id
            )
        return changed


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
# 409 without waiting for the store consumer).
_CLAIM_AND_ADD = """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
  return 1
end
return 0
"""


class EventPublisher:
    """Publishes run events to the durable stream, or straight to PostgreSQL if Redis fails."""

    def __init__(
        self,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        stream: str,
        *,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._stream = stream
        self._claim_and_add = redis.register_script(_CLAIM_AND_ADD)
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
        fields = event.encode()
        try:
            if not event.terminal:
                await self._redis.xadd(self._stream, fields)  # type: ignore[arg-type]
                self._observe(event.type, "stream")
                return True
            added = await self._claim_and_add(
                keys=[self._stream, _terminal_claim_key(self._stream, event.run_id)],
                args=[fields["event"], event.type, _TERMINAL_CLAIM_MS],
            )
            self._observe(event.type, "stream" if added else "refused")
            return bool(added)
        except (RedisError, OSError) as exc:
            self._observe(event.type, "redis_failed")
            log.warning(
                "event_publish_fallback", run_id=event.run_id, type=event.type, error=str(exc)
            )
        try:
            async with self._pool.acquire() as conn:
                outcome = await apply_event(conn, event)
        except BaseException:
            self._observe(event.type, "failed")
            raise
        self._observe(event.type, "refused" if outcome is False else "database")
        if outcome and event.terminal:
            await announce_terminal(self._redis, self._stream, [event.run_id])
        return outcome is not False
