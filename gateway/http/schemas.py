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

    input = JsonObject(load_default=dict)
    userId = fields.UUID(load_default=None, allow_none=True)
    timeoutMs = StrictNumber(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False, error="Must be a positive number."),
    )


class CallbackBody(Schema):
    """``POST /api/runs/{runId}/callback``: what the agent SDK's ``createAgentClient`` sends.

    ``outputs`` is not validated here: a value that is not a non-negative integer is dropped
    silently, as everywhere else.
    """

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.OneOf(["started", "output", "waiting"]))
    complete = fields.Boolean(truthy={True}, falsy={False}, load_default=False)
    failed = fields.Boolean(truthy={True}, falsy={False}, load_default=False)
    output = fields.Raw(allow_none=True)
    outputs = fields.Raw(allow_none=True)
    error = fields.Raw(allow_none=True)
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


_EXTERNAL_RUN_ID = fields.String(required=True, validate=validate.Length(min=1, max=255))


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

    externalRunId = _EXTERNAL_RUN_ID


class IngestBody(StorableBody):
    """``POST /api/agents/{agentId}/runs/ingest`` (the agent SDK's ``ingestRun``).

    ``outputs`` is not validated: anything but a non-negative integer is dropped silently.
    """

    class Meta:
        unknown = EXCLUDE

    externalRunId = _EXTERNAL_RUN_ID
    status = fields.String(
        required=True,
        validate=validate.OneOf([status.value for status in RunStatus]),
    )
    output = fields.Raw(allow_none=True)
    outputs = fields.Raw(allow_none=True)
    error = fields.Raw(allow_none=True)

    @validates("error")
    def _error(self, value: Any, **_: Any) -> None:
        _check_error(value)
