"""Request bodies, validated with marshmallow. Every failure becomes a 400 naming the field."""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from adapters.base import loads_json
from gateway.errors import BadRequest
from gateway.input_format import InputFormatError, parse_input_format
from store.jsonb import jsonb_problem


class StrictNumber(fields.Field):  # type: ignore[type-arg]
    """A JSON number, never a string or a boolean, finite."""

    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if not math.isfinite(value):
            raise self.make_error("invalid")
        return float(value)


class JsonObject(fields.Dict):
    """A JSON object (a ``dict``); anything else is refused with a clear message."""

    default_error_messages = {"invalid": "Must be a JSON object."}


class StorableBody(Schema):
    """A body PostgreSQL must be able to store as given (no ``\u0000`` in any string)."""

    @validates_schema(pass_original=True)
    def _storable(self, data: dict[str, Any], original_data: Any, **_: Any) -> None:
        if (problem := jsonb_problem(original_data)) is not None:
            raise ValidationError(f"The body cannot be stored: it {problem}.")


class TriggerBody(StorableBody):
    """The body of the trigger endpoints (seeds 000 and 002)."""

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
    """``POST /api/runs/{runId}/callback``: what ``createAgentClient``'s methods send (seed 001).

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


_NAME = fields.String(required=True, validate=validate.Length(min=1, max=200))


_EXTERNAL_RUN_ID = fields.String(required=True, validate=validate.Length(min=1, max=255))


def _check_error(value: Any) -> None:
    """A failure reason: a string, or ``{message, name?, stack?}`` as ``fail()`` sends it."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        raise ValidationError("Must be a string or an object with a string 'message'.")


class RegisterBody(StorableBody):
    """``POST /api/agents/{agentId}/runs/register`` (seed 001 ``registerRun``)."""

    class Meta:
        unknown = EXCLUDE

    externalRunId = _EXTERNAL_RUN_ID


class IngestBody(StorableBody):
    """``POST /api/agents/{agentId}/runs/ingest`` (seed 001 ``ingestRun``).

    ``outputs`` is not validated: anything but a non-negative integer is dropped silently.
    """

    class Meta:
        unknown = EXCLUDE

    externalRunId = _EXTERNAL_RUN_ID
    status = fields.String(
        required=True,
        validate=validate.OneOf(
            ["queued", "running", "waiting", "completed", "failed", "cancelled"]
        ),
    )
    output = fields.Raw(allow_none=True)
    outputs = fields.Raw(allow_none=True)
    error = fields.Raw(allow_none=True)

    @validates("error")
    def _error(self, value: Any, **_: Any) -> None:
        _check_error(value)


class CredentialBody(StorableBody):
    """``POST /admin/orgs/{orgId}/credentials``: the data is any JSON object, sealed at rest."""

    class Meta:
        unknown = RAISE

    name = _NAME
    type = fields.String(required=True, validate=validate.Length(min=1, max=100))
    data = JsonObject(required=True)


class OrgBody(StorableBody):
    """``POST /admin/orgs``."""

    class Meta:
        unknown = RAISE

    name = _NAME


class UserBody(StorableBody):
    """``POST /admin/orgs/{orgId}/users``."""

    class Meta:
        unknown = RAISE

    email = fields.Email(required=True)


class RuntimeConfig(Schema):
    """An agent's runtime: ``n8n`` (a webhook) or ``trigger.dev`` (a task)."""

    class Meta:
        unknown = RAISE

    kind = fields.String(required=True, validate=validate.OneOf(["n8n", "trigger.dev"]))
    webhook_url = fields.String()
    headers = fields.Dict(keys=fields.String(), values=fields.String())
    api_url = fields.String()
    task_id = fields.String(validate=validate.Length(min=1, max=512))
    secret_key = fields.String(validate=validate.Length(min=1, max=1024))

    @validates("webhook_url")
    def _webhook(self, value: str, **_: Any) -> None:
        _http_url(value)

    @validates("headers")
    def _headers(self, value: dict[str, str], **_: Any) -> None:
        # Sent on every invocation: a CR or LF would split the request (header injection).
        for name, header_value in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValidationError(f"Header name {name[:100]!r} is not an HTTP token.")
            if not _HEADER_VALUE.fullmatch(header_value):
                raise ValidationError(
                    f"Header {name!r} has a control character (CR, LF or NUL) in its value."
                )

    @validates("api_url")
    def _api(self, value: str, **_: Any) -> None:
        _http_url(value)

    @validates_schema
    def _fields_of_kind(self, data: dict[str, Any], **_: Any) -> None:
        # Required even in a PATCH: a runtime given is a whole runtime.
        if "kind" not in data:
            raise ValidationError({"kind": ["Missing data for required field."]})
        needed = ["webhook_url"] if data["kind"] == "n8n" else ["api_url", "task_id", "secret_key"]
        missing = [n for n in needed if n not in data]
        if missing:
            raise ValidationError({n: ["Missing data for required field."] for n in missing})


# RFC 9110: a field name is a token; a value is visible characters, spaces and tabs.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]{0,8192}")


def _http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("Must be an http(s) URL.")


class BlockBody(Schema):
    """A block of an agent's workflow that streams: an n8n node's id and name."""

    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class AgentBody(StorableBody):
    """``POST /admin/orgs/{orgId}/agents`` and, partially, ``PATCH /admin/agents/{id}``."""

    class Meta:
        unknown = RAISE

    name = _NAME
    managed_by = fields.String(validate=validate.OneOf(["platform", "standalone"]))
    status = fields.String(validate=validate.OneOf(["active", "paused", "archived"]))
    allow_external_triggers = fields.Boolean(truthy={True}, falsy={False})
    output_kind = fields.String(validate=validate.OneOf(["json", "file_download", "stream"]))
    runtime = fields.Nested(RuntimeConfig, required=True)
    default_input = JsonObject()
    input_format = fields.Raw(allow_none=True)
    running_timeout_ms = fields.Integer(strict=True, validate=validate.Range(min=1, max=86_400_000))
    blocks = fields.List(fields.Nested(BlockBody), validate=validate.Length(max=100))

    @validates("input_format")
    def _input_format(self, value: Any, **_: Any) -> None:
        try:
            parse_input_format(value)
        except InputFormatError as exc:
            raise ValidationError(str(exc)) from None

    @validates("blocks")
    def _blocks(self, value: list[dict[str, Any]], **_: Any) -> None:
        # marshmallow calls this with what deserialized even when an entry did not: that
        # entry's own error is reported already.
        if not all("id" in b and "name" in b for b in value):
            return
        # selectedOutputs name blocks case-insensitively, spaces ignored: two blocks must not
        # look alike that way (nor share an id).
        keys = ["".join(b["name"].split()).lower() for b in value]
        if len(set(keys)) != len(keys) or len({b["id"] for b in value}) != len(value):
            raise ValidationError("Block ids and names (ignoring case and spaces) must be unique.")


def load(schema: Schema, data: Any, *, partial: bool = False) -> dict[str, Any]:
    """Validate ``data`` against ``schema``; a failure is a 400 that lists each bad field.

    ``partial``: any of the schema's own fields may be left out; a nested value given (a
    block) must still be whole.
    """
    try:
        # Named fields, not True: marshmallow would pass True on to nested schemas too.
        result: dict[str, Any] = schema.load(
            data, partial=tuple(schema.fields) if partial else False
        )
    except ValidationError as exc:
        raise BadRequest("Invalid request body", extra={"details": exc.messages}) from None
    return result


def parse_json_object(raw: bytes, *, allow_empty: bool) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("Request body must be a JSON object")
    try:
        value = loads_json(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("Request body must be a JSON object")
    return value
