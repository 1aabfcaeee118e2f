"""Run lifecycle events: their shape, their idempotent application, and their publisher.

The gateway publishes each transition to a Redis Stream; the store consumer applies it to
PostgreSQL. Applying is idempotent (an ``applied_events`` row per event id) and guarded (a
terminal run never changes), so at-least-once delivery never applies anything twice.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from asyncpg.pool import PoolConnectionProxy
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

EVENT_TYPES = frozenset({"started", "output", "waiting", "completed", "failed", "cancelled"})
_UNSET: Any = object()

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
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown run event type {self.type!r}")

    @property
    def has_output(self) -> bool:
        """Whether the event carries ``output_data`` (``None`` included)."""
        return self.output_data is not _UNSET

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
            event_id=uuid.UUID(body["event_id"]),
        )


_NOT_TERMINAL = "status NOT IN ('completed', 'failed', 'cancelled')"
_KEEP_OR_SET_OUTPUT = """output_data = CASE WHEN $3 THEN $4::jsonb ELSE output_data END,
                       outputs = COALESCE($5::bigint, outputs)"""

# One guarded UPDATE per event type and how many of the parameters it takes:
# $1 run id, $2 at, $3 has output, $4 output_data, $5 outputs, $6 error, $7 duration_ms.
_APPLY_SQL: dict[str, tuple[str, int]] = {
    "started": (
        """UPDATE runs SET status = 'running', started_at = COALESCE(started_at, $2),
               updated_at = now()
           WHERE id = $1 AND status = 'queued'""",
        2,
    ),
    "output": (
        f"""UPDATE runs SET {_KEEP_OR_SET_OUTPUT},
               started_at = COALESCE(started_at, $2),
               status = CASE WHEN status = 'queued' THEN 'running' ELSE status END,
               updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        5,
    ),
    "waiting": (
        f"""UPDATE runs SET status = 'waiting', {_KEEP_OR_SET_OUTPUT},
               started_at = COALESCE(started_at, $2), updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        5,
    ),
}
for _status in ("completed", "failed", "cancelled"):
    _APPLY_SQL[_status] = (
        f"""UPDATE runs SET status = '{_status}', {_KEEP_OR_SET_OUTPUT},
               error = COALESCE($6::text, error),
               duration_ms = COALESCE($7::bigint,
                   (EXTRACT(EPOCH FROM ($2 - created_at)) * 1000)::bigint),
               started_at = COALESCE(started_at, $2),
               completed_at = $2, updated_at = now()
           WHERE id = $1 AND {_NOT_TERMINAL}""",
        7,
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
        sql, arity = _APPLY_SQL[event.type]
        args = (
            event.run_id,
            event.at,
            event.has_output,
            event.output_data if event.has_output else None,
            event.outputs,
            event.error,
            event.duration_ms,
        )
        status = await conn.execute(sql, *args[:arity])
        changed = status.endswith(" 1")
        if changed:
            await conn.execute(
                "UPDATE applied_events SET changed = true WHERE event_id = $1", event.event_id
            )
        return changed


class EventPublisher:
    """Publishes run events to the durable stream, or straight to PostgreSQL if Redis fails."""

    def __init__(self, redis: aioredis.Redis, pool: asyncpg.Pool, stream: str) -> None:
        self._redis = redis
        self._pool = pool
        self._stream = stream

    async def publish(self, event: RunEvent) -> None:
        """Hand ``event`` on durably; never drop it."""
        try:
            await self._redis.xadd(self._stream, event.encode())  # type: ignore[arg-type]
            return
        except (RedisError, OSError) as exc:
            log.warning(
                "event_publish_fallback", run_id=event.run_id, type=event.type, error=str(exc)
            )
        async with self._pool.acquire() as conn:
            await apply_event(conn, event)
