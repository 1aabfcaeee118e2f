"""The run routes' request bodies, validated with marshmallow (``gateway.validation.load``)."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from gateway.validation import JsonObject, StorableBody, StrictNumber
from store.enums import RunStatus


class TriggerBody(StorableBody):
    """The body of the trigger endpoints (trigger-and-download and trigger-and-wait)."""

    class Meta:
        unknown = EXCLUDE
        description = "Every field is optional; an empty body is `{}`."

    input = JsonObject(
        load_default=dict,
        metadata={"description": "Merged over the agent's `default_input` (the caller wins)."},
    )
    userId = fields.UUID(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "Recorded as `created_by` when a member of the agent's organisation."
        },
    )
    timeoutMs = StrictNumber(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False, error="Must be a positive number."),
        metadata={
            # apispec writes any Range's bound as "minimum"; this one excludes it.
            "json_schema": {"exclusiveMinimum": 0},
            "description": "Wait window: `min(timeoutMs or 60000, running_timeout_ms, "
            "HARD_CEILING_MS)`.",
        },
    )


# A failure reason as JSON Schema says it (``_check_error`` checks it).
_ERROR_JSON_SCHEMA = {
    "oneOf": [
        {"type": "null"},
        {"type": "string"},
        {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "name": {"type": "string"},
                "stack": {"type": "string"},
            },
        },
    ]
}


class CallbackBody(Schema):
    """``POST /api/runs/{runId}/callback``: what the agent SDK's ``createAgentClient`` sends.

    ``outputs`` is not validated here: a value that is not a non-negative integer is dropped
    silently, as everywhere else.
    """

    class Meta:
        unknown = EXCLUDE
        description = (
            "`started()`: `{type: started}`; `output()`: `{type: output, output, outputs?}`; "
            "`complete()`: the same with `complete: true`; `fail()`: `{type: output, failed: "
            "true, error: {message, name?, stack?}}`; `waiting()`: `{type: waiting, tokenId, "
            "description, output?}`. An `outputs` that is not a non-negative integer is dropped."
        )
        # What _type_rules checks, for readers of the OpenAPI document.
        json_schema = {
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": "waiting"}}},
                    "then": {"required": ["tokenId"]},
                },
                {
                    "if": {"properties": {"type": {"enum": ["started", "waiting"]}}},
                    "then": {
                        "properties": {"complete": {"const": False}, "failed": {"const": False}}
                    },
                },
                {
                    "not": {
                        "required": ["complete", "failed"],
                        "properties": {"complete": {"const": True}, "failed": {"const": True}},
                    }
                },
            ]
        }

    type = fields.String(required=True, validate=validate.OneOf(["started", "output", "waiting"]))
    complete = fields.Boolean(truthy={True}, falsy={False}, load_default=False)
    failed = fields.Boolean(truthy={True}, falsy={False}, load_default=False)
    output = fields.Raw(allow_none=True, metadata={"description": "Any JSON value."})
    outputs = fields.Raw(
        allow_none=True, metadata={"description": "Kept when a non-negative integer."}
    )
    error = fields.Raw(allow_none=True, metadata={"json_schema": _ERROR_JSON_SCHEMA})
    tokenId = fields.String(validate=validate.Length(min=1, max=1024))
    description = fields.String(allow_none=True, validate=validate.Length(max=10_000))

    @validates("error")
    def _error(self, value: Any, **_: Any) -> None:
        _check_error(value)

    @validates_schema
    def _type_rules(self, data: dict[str, Any], **_: Any) -> None:
        if data["complete"] and data["failed"]:
            raise ValidationError("An output cannot be both 'complete' and 'failed'.", "failed")
        if data["type"] != "output" and (data["complete"] or data["failed"]):
            raise ValidationError(
                "Only an 'output' callback can be 'complete' or 'failed'.", "type"
            )
        if data["type"] == "waiting" and "tokenId" not in data:
            raise ValidationError("Missing data for required field.", "tokenId")


_EXTERNAL_RUN_ID = fields.String(
    required=True,
    validate=validate.Length(min=1, max=255),
    metadata={
        "description": "The runtime's own id for the run (unique per agent): a repeat names "
        "the same run."
    },
)


def _check_error(value: Any) -> None:
    """A failure reason: a string, or ``{message, name?, stack?}`` as ``fail()`` sends it."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        raise ValidationError("Must be a string or an object with a string 'message'.")


class RegisterBody(StorableBody):
    """``POST /api/agents/{agentId}/runs/register`` (the agent SDK's ``registerRun``)."""

    class Meta:
        unknown = EXCLUDE
        description = "Other keys are ignored."

    externalRunId = _EXTERNAL_RUN_ID


class IngestBody(StorableBody):
    """``POST /api/agents/{agentId}/runs/ingest`` (the agent SDK's ``ingestRun``).

    ``outputs`` is not validated: anything but a non-negative integer is dropped silently.
    """

    class Meta:
        unknown = EXCLUDE
        description = "A standalone agent's report on a run it ran itself. Other keys are ignored."

    externalRunId = _EXTERNAL_RUN_ID
    status = fields.String(
        required=True,
        validate=validate.OneOf([status.value for status in RunStatus]),
        metadata={
            "description": "`queued` creates the run if new and never moves one back; "
            "`running` starts it (with `output`: an intermediate output); `waiting`; "
            "`completed` ends it with `output`; `failed` ends it with `error`; `cancelled` "
            "ends it."
        },
    )
    output = fields.Raw(allow_none=True, metadata={"description": "Any JSON value."})
    outputs = fields.Raw(
        allow_none=True,
        metadata={
            "description": "Kept when a non-negative integer (else dropped); lifted from a "
            "top-level integer `outputs` in `output` when absent."
        },
    )
    error = fields.Raw(
        allow_none=True,
        metadata={
            "description": "`failed`: the reason, recorded as `<name>: <message>`.",
            "json_schema": _ERROR_JSON_SCHEMA,
        },
    )

    @validates("error")
    def _error(self, value: Any, **_: Any) -> None:
        _check_error(value)
