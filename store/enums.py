"""The closed sets the store, the adapters, the schemas and the OpenAPI document share.

``StrEnum`` members are strings, so rows, JSON bodies and comparisons with plain values work
unchanged; the lists of accepted values are read from here instead of being written out.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's state: queued -> running <-> waiting -> completed | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether a run in this state has ended (and so will never change again)."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
IN_FLIGHT_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})


class EventType(StrEnum):
    """One transition of a run, as runtimes report it and the store applies it."""

    STARTED = "started"
    OUTPUT = "output"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The transitions that end a run (the statuses of the same names).
TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})

# The status each transition moves a run to: ``started`` and ``output`` both mean running, every
# other event names its status. The one table both directions are read from
# (:func:`status_after`, :func:`event_to`); store/transitions.py applies the same rule in SQL.
_STATUS_AFTER = {
    EventType.STARTED: RunStatus.RUNNING,
    EventType.OUTPUT: RunStatus.RUNNING,
    EventType.WAITING: RunStatus.WAITING,
    EventType.COMPLETED: RunStatus.COMPLETED,
    EventType.FAILED: RunStatus.FAILED,
    EventType.CANCELLED: RunStatus.CANCELLED,
}
# The event that moves a run to each status (the first listed above: ``started`` for running).
_EVENT_TO = {status: event for event, status in reversed(_STATUS_AFTER.items())}


def status_after(event: EventType) -> RunStatus:
    """The status ``event`` moves a run to."""
    return _STATUS_AFTER[event]


def event_to(status: RunStatus, *, with_output: bool = False) -> EventType | None:
    """The event that moves a run to ``status``; ``None`` for ``queued`` (no event goes back
    there). A run reported running with an output moves by ``output``."""
    if status == RunStatus.RUNNING and with_output:
        return EventType.OUTPUT
    return _EVENT_TO.get(status)


class OutputKind(StrEnum):
    """What an agent's run gives back: inline JSON, a file streamed through, or a live stream."""

    JSON = "json"
    FILE_DOWNLOAD = "file_download"
    STREAM = "stream"


class TriggerKind(StrEnum):
    """How a run was started (``runs.trigger_kind``)."""

    TRIGGER = "trigger"
    WAIT = "wait"
    DOWNLOAD = "download"
    EXECUTE = "execute"
    EXTERNAL = "external"
    INGEST = "ingest"


class RuntimeKind(StrEnum):
    """The workflow runtimes an agent can run on (``runtime.kind``)."""

    N8N = "n8n"
    TRIGGER_DEV = "trigger.dev"


class ResultDelivery(StrEnum):
    """How an agent's workflow delivers a run's result (``runtime.result_delivery``).

    ``response``: in the webhook's answer (a "Respond to Webhook" node, or "When Last Node
    Finishes"). ``callback``: through the run's callback URL; any 2xx answer to the webhook call
    only acknowledges the run, which then waits for its callbacks (and its deadline).
    """

    RESPONSE = "response"
    CALLBACK = "callback"


class AgentStatus(StrEnum):
    """Whether an agent takes runs."""

    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class ManagedBy(StrEnum):
    """Who manages an agent: the platform, or the caller on its own."""

    PLATFORM = "platform"
    STANDALONE = "standalone"


class JobStatus(StrEnum):
    """An async execute's task as ``GET /api/jobs/{taskId}`` names its state (Sim's names)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def of(cls, status: RunStatus) -> JobStatus:
        """The task state of a run in ``status``."""
        return _JOB_STATUS_OF_RUN[status]


_JOB_STATUS_OF_RUN = {
    RunStatus.QUEUED: JobStatus.QUEUED,
    RunStatus.RUNNING: JobStatus.PROCESSING,
    RunStatus.WAITING: JobStatus.PROCESSING,
    RunStatus.COMPLETED: JobStatus.COMPLETED,
    RunStatus.FAILED: JobStatus.FAILED,
    RunStatus.CANCELLED: JobStatus.CANCELLED,
}
