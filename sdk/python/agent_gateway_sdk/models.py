"""Typed results of the SDK's calls."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class TriggeredRun:
    """``trigger_run``'s answer: the run was accepted and is starting."""

    run_id: int
    status: str
    # True when an Idempotency-Key named a run that already existed: nothing new started.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Run:
    """A run row, as ``trigger_run_and_wait`` and the poll target return it."""

    run_id: int
    agent_id: int
    status: str
    output_data: Any
    outputs: int | None
    error: str | None
    duration_ms: int | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    created_at: dt.datetime | None
    timed_out: Literal[False] = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Run:
        """The run from the gateway's JSON."""
        return cls(
            run_id=int(body["runId"]),
            agent_id=int(body["agentId"]),
            status=str(body["status"]),
            output_data=body.get("output_data"),
            outputs=body.get("outputs"),
            error=body.get("error"),
            duration_ms=body.get("duration_ms"),
            started_at=_time(body.get("started_at")),
            completed_at=_time(body.get("completed_at")),
            created_at=_time(body.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The wait window ended first; the run carries on (poll it, or wait for its callback)."""

    run_id: int
    agent_id: int
    status: str
    timed_out: Literal[True] = True


@dataclass(frozen=True, slots=True)
class CancelledRun:
    """``cancel_run``'s answer: the run is cancelled."""

    run_id: int
    status: str


@dataclass(frozen=True, slots=True)
class RegisteredRun:
    """``register_run``'s answer."""

    run_id: int
    credentials_token: str
    expires_in_seconds: int


@dataclass(frozen=True, slots=True)
class IngestedRun:
    """``ingest_run``'s answer: the run the report landed on and its status now."""

    run_id: int
    status: str
    created: bool


@dataclass(frozen=True, slots=True)
class CallbackAccepted:
    """A runtime callback the gateway recorded."""

    run_id: int
    status: str


@dataclass(frozen=True, slots=True)
class Credential:
    """A resolved credential. ``data`` is secret: never log it."""

    id: str
    name: str
    type: str
    data: Any

    def __repr__(self) -> str:
        return f"Credential(id={self.id!r}, name={self.name!r}, type={self.type!r}, data=***)"
