"""The JSON bodies the API answers with, declared as marshmallow schemas.

``views.py`` builds each body; these schemas say what it holds, so that the OpenAPI document is
generated from them (``gateway.http.openapi``) and a test can check each view against its
schema. They are never used to serialise: a view's dict is the answer.

``Meta.description`` describes the body; a field's ``metadata["description"]`` describes the
field; ``metadata["json_schema"]`` holds what JSON Schema says that marshmallow cannot (a
``const``, an alternative), copied into the document as it stands.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from gateway.execute.service import MAX_REPORTED_WORKFLOWS
from gateway.runs.callbacks import STATUSES_AFTER
from store.enums import (
    AgentStatus,
    JobStatus,
    ManagedBy,
    OutputKind,
    RunStatus,
    RuntimeKind,
)

RUN_STATUSES = [status.value for status in RunStatus]
# A run that is still going (a wait that timed out answers with one of these).
IN_FLIGHT = [status.value for status in RunStatus if not status.terminal]
_TIMESTAMP_EXAMPLE = ["2026-03-01T12:00:05.250Z"]


def const(value: Any, **metadata: Any) -> fields.Field[Any]:
    """A field that always holds ``value`` (JSON Schema's ``const``)."""
    return fields.Constant(
        value, required=True, metadata={**metadata, "json_schema": {"const": value}}
    )


def one_of(values: list[Any], **kwargs: Any) -> fields.Field[Any]:
    """A string that is one of ``values`` (JSON Schema's ``enum``, no ``type`` of its own)."""
    return fields.Raw(validate=validate.OneOf(values), **kwargs)


def _timestamp(*, nullable: bool = False, **kwargs: Any) -> fields.DateTime:
    if nullable:
        return fields.DateTime(allow_none=True, **kwargs)
    return fields.DateTime(
        metadata={"examples": _TIMESTAMP_EXAMPLE, **kwargs.pop("metadata", {})}, **kwargs
    )


def _uuid(**kwargs: Any) -> fields.UUID:
    return fields.UUID(required=True, **kwargs)


class ResponseBody(Schema):
    """A body the API answers with. A field not named here may be added in a later version,
    so a body is not closed (no ``additionalProperties: false``)."""

    class Meta:
        unknown = EXCLUDE


# --- every route ------------------------------------------------------------------------------


class FileTooLarge(ResponseBody):
    """One file of a workflow execute over ``MAX_FILE_BYTES``."""

    field = fields.String(required=True)
    index = fields.Integer(required=True, validate=validate.Range(min=0))
    name = fields.String(required=True)
    size = fields.Integer(required=True, validate=validate.Range(min=0))


class Error(ResponseBody):
    """Every error of the agent and admin APIs."""

    class Meta(ResponseBody.Meta):
        description = "Every error of the agent and admin APIs."

    error = fields.String(required=True, metadata={"description": "What went wrong."})
    runId = fields.Integer(metadata={"description": "The run, once one exists."})
    status = one_of(RUN_STATUSES, metadata={"description": "The run's status (409)."})
    details = fields.Dict(
        metadata={"description": "Each invalid field with its messages (400)."},
    )
    retryAfterMs = fields.Integer(
        validate=validate.Range(min=0), metadata={"description": "429 only."}
    )
    requestId = fields.String(metadata={"description": "500 only: quote it to operators."})
    knownBlocks = fields.List(
        fields.String(),
        metadata={
            "description": "Workflow execute, an unknown block in `selectedOutputs` (400): "
            "the agent's declared block names."
        },
    )
    files = fields.List(
        fields.Nested(FileTooLarge),
        metadata={"description": "Workflow execute, files over `MAX_FILE_BYTES` (413): each one."},
    )
    maxFileBytes = fields.Integer(
        validate=validate.Range(min=1),
        metadata={"description": "Workflow execute (413): the per-file limit."},
    )


# --- agent runs -------------------------------------------------------------------------------


class Run(ResponseBody):
    """``views.run_view``."""

    class Meta(ResponseBody.Meta):
        description = "A run, as trigger-and-wait's 200 and the poll target show it."

    runId = fields.Integer(required=True)
    agentId = fields.Integer(required=True)
    status = one_of(RUN_STATUSES, required=True)
    output_data = fields.Raw(
        required=True,
        allow_none=True,
        metadata={
            "description": "The result (any JSON), or for a download `{kind, filename, "
            "mimeType, sizeBytes}`; `null` when there is none."
        },
    )
    outputs = fields.Integer(required=True, allow_none=True, validate=validate.Range(min=0))
    error = fields.String(required=True, allow_none=True)
    duration_ms = fields.Integer(required=True, allow_none=True, validate=validate.Range(min=0))
    started_at = _timestamp(nullable=True, required=True)
    completed_at = _timestamp(nullable=True, required=True)
    created_at = _timestamp(required=True)
    input = fields.Dict(
        metadata={
            "description": "The input the run was given (a workflow execute's names its "
            "files); with `?include=input` only."
        }
    )


class RunAccepted(ResponseBody):
    """Trigger's 202."""

    runId = fields.Integer(required=True)
    status = one_of(RUN_STATUSES, required=True)


class RunTimedOut(ResponseBody):
    """Trigger-and-wait's 202."""

    class Meta(ResponseBody.Meta):
        description = "The wait window elapsed first; the run goes on (poll it)."

    runId = fields.Integer(required=True)
    agentId = fields.Integer(required=True)
    status = one_of(IN_FLIGHT, required=True)
    timedOut = const(True)


class DownloadAcknowledged(ResponseBody):
    """Trigger-and-download's 202: the runtime only acknowledged the run."""

    runId = fields.Integer(required=True)
    agentId = fields.Integer(required=True)
    status = const(RunStatus.RUNNING.value)


class RunCancelled(ResponseBody):
    """Cancel's 200."""

    runId = fields.Integer(required=True)
    status = const(RunStatus.CANCELLED.value)


class Registration(ResponseBody):
    """Register's 200 and 201."""

    runId = fields.Integer(required=True)
    credentialsToken = fields.String(
        required=True,
        validate=validate.Regexp("^crt_"),
        metadata={
            "description": "For `X-Credentials-Token` on `GET /api/credentials/{id}/resolve`; "
            "fresh on every registration."
        },
    )
    expiresInSeconds = fields.Integer(
        required=True,
        validate=validate.Range(min=1),
        metadata={
            "description": "`CREDENTIALS_TOKEN_TTL_S`, or longer: the token lasts at least "
            "until the run's deadline."
        },
    )


class Ingested(ResponseBody):
    """Ingest's 202."""

    runId = fields.Integer(required=True)
    status = one_of(
        RUN_STATUSES,
        required=True,
        metadata={
            "description": "What the report moves the run to (for `queued`: the run's "
            "current status).",
        },
    )
    created = fields.Boolean(
        required=True, metadata={"description": "This report created the run."}
    )


class CallbackRecorded(ResponseBody):
    """A callback's 202."""

    runId = fields.Integer(required=True)
    status = one_of(STATUSES_AFTER, required=True)


# --- credentials ------------------------------------------------------------------------------


class Credential(ResponseBody):
    """``views.credential_view``: a credential opened for a run."""

    id = _uuid()
    name = fields.String(required=True)
    type = fields.String(required=True, metadata={"examples": ["api_key"]})
    data = fields.Dict(required=True, metadata={"description": "As stored (sealed at rest)."})


class CredentialInfo(ResponseBody):
    """``views.credential_info_view``: a credential as an operator lists it."""

    id = _uuid()
    name = fields.String(required=True)
    type = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class CredentialStored(ResponseBody):
    """A new credential (never its data)."""

    id = _uuid()
    name = fields.String(required=True)
    type = fields.String(required=True)


# --- admin ------------------------------------------------------------------------------------


class OrgCreated(ResponseBody):
    """A new organisation."""

    id = _uuid()
    name = fields.String(required=True)


class IngestKeyCreated(ResponseBody):
    """A new ingest key, shown this once."""

    id = _uuid()
    key = fields.String(required=True, metadata={"description": "`igk_...`"})


class UserAdded(ResponseBody):
    """A member of an organisation."""

    id = _uuid()


class AgentBlock(ResponseBody):
    """A declared block, as stored."""

    id = fields.String(required=True)
    name = fields.String(required=True)


class Agent(ResponseBody):
    """``views.agent_view`` (and ``created_agent_view``, with ``api_key``)."""

    id = fields.Integer(required=True)
    org_id = _uuid()
    name = fields.String(required=True)
    managed_by = one_of([kind.value for kind in ManagedBy], required=True)
    status = one_of([status.value for status in AgentStatus], required=True)
    allow_external_triggers = fields.Boolean(required=True)
    output_kind = one_of([kind.value for kind in OutputKind], required=True)
    runtime = fields.Dict(
        required=True,
        metadata={
            "description": "As configured, with `secret_key` and `headers` (sealed at rest) "
            "shown as `***`.",
            "json_schema": {
                "required": ["kind"],
                "properties": {"kind": {"enum": [kind.value for kind in RuntimeKind]}},
            },
        },
    )
    default_input = fields.Dict(required=True)
    input_format = fields.Raw(required=True, allow_none=True)
    running_timeout_ms = fields.Integer(
        required=True, validate=validate.Range(min=1, max=86_400_000)
    )
    blocks = fields.List(fields.Nested(AgentBlock), required=True)
    credential_ids = fields.List(fields.UUID(), required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    api_key = fields.String(
        metadata={
            "description": "The agent API key (`agk_...`), in the create and rotate answers only."
        }
    )


# --- job packages (/v0) -----------------------------------------------------------------------


class V0ErrorDetail(ResponseBody):
    """The ``error`` of a /v0 error."""

    code = fields.String(required=True, metadata={"examples": ["forbidden"]})
    message = fields.String(required=True)
    details = fields.Raw(
        required=True,
        allow_none=True,
        metadata={"description": "Anything that helps; `null` when nothing."},
    )


class V0Error(ResponseBody):
    """Every error of the /v0 API."""

    error = fields.Nested(V0ErrorDetail, required=True)


class PackageTicket(ResponseBody):
    """``views.package_ticket_view``."""

    id = fields.UUID(required=True, metadata={"description": "The job's package."})
    status = one_of(["pending", "ready"], required=True)
    signed_url = fields.String(required=True, metadata={"format": "uri"})
    workflowId = fields.String(required=True)


# --- workflow execute -------------------------------------------------------------------------


class Duration(ResponseBody):
    """How long a run took."""

    duration = fields.Integer(
        required=True, validate=validate.Range(min=0), metadata={"description": "ms"}
    )


class ExecuteResult(ResponseBody):
    """``views.execution_result_view``."""

    class Meta(ResponseBody.Meta):
        description = "Workflow execute's result, as Sim's SDKs read it."

    success = fields.Boolean(required=True)
    output = fields.Raw(
        required=True,
        allow_none=True,
        metadata={
            "description": "The result: a `stream` agent's `{blockId: {content}}` (with "
            "`truncated: true` past `MAX_RESULT_BODY`), a `json` agent's result."
        },
    )
    error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the run failed or was cancelled."},
    )
    metadata = fields.Nested(Duration, required=True)
    runId = fields.Integer(required=True)


class ExecuteTimedOut(ResponseBody):
    """Execute's 202 when the window elapsed first."""

    class Meta(ResponseBody.Meta):
        description = "The window elapsed first; the run goes on (poll it)."

    runId = fields.Integer(required=True)
    status = one_of(IN_FLIGHT, required=True)
    timedOut = const(True)


class ExecutionLinks(ResponseBody):
    """Where an async execute is followed."""

    status = fields.String(required=True, metadata={"examples": ["/api/jobs/42"]})
    stream = fields.String(
        required=True,
        metadata={
            "description": "Where its frames are followed live (SSE).",
            "examples": ["/api/workflows/7/executions/42/stream"],
        },
    )


class ExecuteAccepted(ResponseBody):
    """``views.async_execution_view``."""

    class Meta(ResponseBody.Meta):
        description = (
            "`X-Execution-Mode: async`: the run goes on as a `trigger` does; poll it with "
            "`GET /api/jobs/{taskId}` (Sim's async execution shape), or follow its frames "
            "live at `links.stream`."
        )

    success = const(True)
    taskId = fields.String(required=True, metadata={"description": "The run's id, as a string."})
    status = const(JobStatus.QUEUED.value)
    createdAt = _timestamp(required=True)
    links = fields.Nested(ExecutionLinks, required=True)


class JobMetadata(ResponseBody):
    """An async execute's task: where it ran and when."""

    workflowId = fields.String(required=True)
    runId = fields.Integer(required=True)
    startedAt = _timestamp(nullable=True, required=True)
    completedAt = _timestamp(nullable=True, metadata={"description": "Once the task has ended."})
    duration = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=0),
        metadata={"description": "ms, once the task has ended."},
    )


class JobStatusView(ResponseBody):
    """``views.job_status_view``."""

    class Meta(ResponseBody.Meta):
        description = (
            "An async execute's task (Sim's job status shape). `output` once `completed`; "
            "`error` once `failed` or `cancelled`."
        )

    success = const(True)
    taskId = fields.String(required=True)
    status = one_of(
        [status.value for status in JobStatus],
        required=True,
        metadata={
            "description": "The run's status in Sim's words: `queued`; `processing` (running "
            "or waiting); `completed`, `failed`, `cancelled`."
        },
    )
    metadata = fields.Nested(JobMetadata, required=True)
    output = fields.Raw(
        allow_none=True, metadata={"description": "The run's result, as in `ExecuteResult`."}
    )
    error = fields.String()


class WorkflowStatus(ResponseBody):
    """``views.workflow_status_view``."""

    class Meta(ResponseBody.Meta):
        description = (
            "Sim's workflow status. `isDeployed`: the agent can be executed now (the execute "
            "eligibility rules hold); `deployedAt`: the agent's last change then."
        )

    isDeployed = fields.Boolean(required=True)
    deployedAt = _timestamp(nullable=True, required=True)
    needsRedeployment = const(False, description="An agent's configuration takes effect at once.")


class UsageBucket(ResponseBody):
    """One workflow's execute bucket."""

    isLimited = fields.Boolean(required=True, metadata={"description": "No execution is left."})
    limit = fields.Integer(required=True, validate=validate.Range(min=1))
    remaining = fields.Integer(required=True, validate=validate.Range(min=0))
    windowSeconds = fields.Integer(required=True, validate=validate.Range(min=1))
    resetAt = _timestamp(
        required=True,
        metadata={"description": "When the bucket is full again (the next token, when empty)."},
    )


class RateLimits(ResponseBody):
    """The buckets of a usage report."""

    sync = fields.Nested(UsageBucket, required=True)
    # "async" is a keyword: the field is named by its data key.
    async_ = fields.Nested(UsageBucket, required=True, data_key="async")
    authType = const("api")
    workflows = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(UsageBucket),
        required=True,
        metadata={"description": "By workflow id."},
    )


class Usage(ResponseBody):
    """What a usage report says of cost."""

    class Meta(ResponseBody.Meta):
        description = "The gateway meters no cost."

    currentPeriodCost = const(0)
    limit = fields.Constant(None, required=True, metadata={"json_schema": {"type": "null"}})
    plan = const("gateway")


class UsageLimits(ResponseBody):
    """``GET /api/users/me/usage-limits``."""

    class Meta(ResponseBody.Meta):
        description = (
            "Sim's usage limits: what the key's organisation may still execute. Sync and async "
            "executes take from the same per-workflow bucket (`EXECUTE_RATE_LIMIT` per "
            "`EXECUTE_RATE_WINDOW_S`): `sync` and `async` are the same figures, the workflow "
            "with the fewest executions left; `workflows` has each one's (the first "
            f"{MAX_REPORTED_WORKFLOWS} of the organisation's workflows)."
        )

    success = const(True)
    rateLimit = fields.Nested(RateLimits, required=True)
    usage = fields.Nested(Usage, required=True)


class ExecuteChunkFrame(ResponseBody):
    """``views.execution_event_view`` of a chunk."""

    class Meta(ResponseBody.Meta):
        description = "Event stream: a piece of a selected block's output, as it came."

    blockId = fields.String(required=True)
    chunk = fields.String(required=True)


class ExecuteDoneFrame(ResponseBody):
    """``views.execution_event_view`` of a completed run."""

    class Meta(ResponseBody.Meta):
        description = "Event stream: the run completed."

    event = const("done")
    success = const(True)
    output = fields.Raw(
        required=True, allow_none=True, metadata={"description": "As in `ExecuteResult`."}
    )
    metadata = fields.Nested(Duration, required=True)


class ExecuteErrorFrame(ResponseBody):
    """``views.execution_event_view`` of a run that did not complete."""

    class Meta(ResponseBody.Meta):
        description = (
            "Event stream: the run failed, was cancelled or did not finish in the window, or "
            "the runtime broke off."
        )

    event = const("error")
    error = fields.String(required=True)


# --- operations -------------------------------------------------------------------------------


class Alive(ResponseBody):
    """``/healthz``."""

    status = const("ok")


class ReadinessChecks(ResponseBody):
    """What readiness looks at."""

    process = one_of(["ok", "draining"], required=True)
    database_pool = one_of(["open", "closing"], required=True)


class Readiness(ResponseBody):
    """``/readyz``."""

    status = one_of(["ready", "unavailable"], required=True)
    checks = fields.Nested(ReadinessChecks, required=True)


class DependencyStates(ResponseBody):
    """Each dependency's state."""

    class Meta(ResponseBody.Meta):
        description = "`ok`, or `unavailable: <error type>` (1 s bound each)."

    postgres = fields.String(required=True)
    redis = fields.String(required=True)


class Dependencies(ResponseBody):
    """``/healthz/dependencies``."""

    status = one_of(["ok", "degraded"], required=True)
    dependencies = fields.Nested(DependencyStates, required=True)
