"""A run event: one transition of one run, as the gateway learned it.

Recorded in PostgreSQL by :mod:`store.transitions` (or, while PostgreSQL is away, held in the
Redis buffer of :mod:`store.event_buffer` as the JSON :meth:`RunEvent.encode` makes).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from store import jsonb
from store.enums import TERMINAL_EVENTS, EventType

EVENT_TYPES = frozenset(EventType)
_UNSET: Any = object()


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
        return {"event": jsonb.dumps(body)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, str]) -> RunEvent:
        """Rebuild an event from Redis Stream fields."""
        raw = fields.get(b"event") or fields.get("event")  # type: ignore[call-overload]
        if not isinstance(raw, bytes | str):
            raise ValueError("stream entry has no 'event' field")
        body = jsonb.loads(raw)
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
