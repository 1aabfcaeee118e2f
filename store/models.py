"""Plain records for the rows the gateway works with."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from store.enums import TERMINAL_STATUSES, AgentStatus, ManagedBy, OutputKind, RunStatus

# The agent's fields an operator sets (the admin API and the console command), in the order the
# API documents them. The admin body schema and the OpenAPI document are tested against it.
AGENT_SETTABLE_FIELDS = (
    "name",
    "managed_by",
    "status",
    "allow_external_triggers",
    "output_kind",
    "runtime",
    "default_input",
    "input_format",
    "running_timeout_ms",
    "blocks",
    "credential_ids",
)


@dataclass(frozen=True, slots=True)
class Org:
    """An organisation: the tenant that owns ingest keys, members and agents."""

    id: uuid.UUID
    name: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class IngestKey:
    """An ingest key as the store knows it: never the key, only its first characters."""

    id: uuid.UUID
    org_id: uuid.UUID
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent: what a run executes, on which runtime, under which rules."""

    id: int
    org_id: uuid.UUID
    name: str
    managed_by: ManagedBy
    status: AgentStatus
    allow_external_triggers: bool
    output_kind: OutputKind
    runtime: dict[str, Any]
    default_input: dict[str, Any]
    input_format: Any
    running_timeout_ms: int
    created_at: dt.datetime
    updated_at: dt.datetime
    api_key_salt: bytes = field(repr=False)
    # The workflow's blocks that stream output: [{"id": ..., "name": ...}] (migration 0003).
    blocks: list[dict[str, Any]] = field(default_factory=list)
    # The credentials this agent's runs may resolve (migration 0008); none unless granted.
    credential_ids: list[uuid.UUID] = field(default_factory=list)
    # The digest of the agent's API key: says which key of the ring derived it.
    api_key_hash: bytes = field(repr=False, default=b"")


@dataclass(frozen=True, slots=True)
class Run:
    """A run row (``gateway.http.views.run_view`` shapes it for the API)."""

    id: int
    agent_id: int
    org_id: uuid.UUID
    status: RunStatus
    input: dict[str, Any]
    output_data: Any
    outputs: int | None
    error: str | None
    duration_ms: int | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    created_at: dt.datetime
    created_by: uuid.UUID | None
    external_run_id: str | None
    runtime_run_id: str | None
    deadline: dt.datetime | None
    waiting_for: dict[str, Any] | None = None
    # The W3C traceparent the run was started in (migration 0009), when tracing was on: its
    # callbacks are recorded in that trace.
    trace_parent: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (and so will never change again)."""
        return self.status in TERMINAL_STATUSES

    def seconds_to_deadline(self) -> float:
        """How long until the reaper may end the run (0 when it has no deadline or is past it)."""
        if self.deadline is None:
            return 0.0
        return max(0.0, (self.deadline - dt.datetime.now(dt.UTC)).total_seconds())


def iso(value: dt.datetime | None) -> str | None:
    """An ISO 8601 UTC timestamp with milliseconds and ``Z``, as the API prints them."""
    if value is None:
        return None
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
