"""The admin API's bodies: organisations, users and agents with their runtimes."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from gateway.execute.input_format import InputFormatError, parse_input_format
from gateway.validation import NAME, JsonObject, StorableBody
from store.enums import AgentStatus, ManagedBy, OutputKind, ResultDelivery, RuntimeKind


class OrgBody(StorableBody):
    """``POST /admin/orgs``."""

    class Meta:
        unknown = RAISE

    name = NAME


class UserBody(StorableBody):
    """``POST /admin/orgs/{orgId}/users``."""

    class Meta:
        unknown = RAISE

    email = fields.Email(required=True)


_HTTP_URL = {"format": "uri", "description": "An http(s) URL."}


class RuntimeConfig(Schema):
    """An agent's runtime: ``n8n`` (a webhook) or ``trigger.dev`` (a task).

    ``result_delivery`` (n8n only, :class:`~store.enums.ResultDelivery`, ``response`` when
    omitted) says whether the webhook's answer is the run's result or only acknowledges a run
    that reports through its callbacks.
    """

    class Meta:
        unknown = RAISE
        description = "Where the agent runs."
        # What _fields_of_kind checks, for readers of the OpenAPI document.
        json_schema = {
            "oneOf": [
                {
                    "title": RuntimeKind.N8N.value,
                    "properties": {"kind": {"const": RuntimeKind.N8N.value}},
                    "required": ["webhook_url"],
                },
                {
                    "title": RuntimeKind.TRIGGER_DEV.value,
                    "properties": {"kind": {"const": RuntimeKind.TRIGGER_DEV.value}},
                    "required": ["api_url", "task_id", "secret_key"],
                    "not": {"required": ["result_delivery"]},
                },
            ]
        }

    kind = fields.String(required=True, validate=validate.OneOf([k.value for k in RuntimeKind]))
    webhook_url = fields.String(metadata=_HTTP_URL)
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": "n8n: sent with every call (e.g. header auth); sealed at rest (bound "
            "to the agent), never shown back (`***`)."
        },
    )
    result_delivery = fields.String(
        validate=validate.OneOf([d.value for d in ResultDelivery]),
        metadata={
            "default": ResultDelivery.RESPONSE.value,
            "description": "n8n only. How the workflow delivers a run's result: `response`, "
            "in the webhook's answer (a Respond to Webhook node); `callback`, through the "
            "payload's `callbackUrl`, when any 2xx answer only acknowledges the run. Either way "
            '202, 204, an empty body and n8n\'s `200 {"message": "Workflow was started"}` '
            "acknowledge the run.",
        },
    )
    api_url = fields.String(metadata=_HTTP_URL)
    task_id = fields.String(validate=validate.Length(min=1, max=512))
    secret_key = fields.String(
        validate=validate.Length(min=1, max=1024),
        metadata={
            "description": "Trigger.dev: sealed at rest (bound to the agent); never shown back "
            "(`***`)."
        },
    )

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
        needed = (
            ["webhook_url"]
            if data["kind"] == RuntimeKind.N8N
            else ["api_url", "task_id", "secret_key"]
        )
        missing = [n for n in needed if n not in data]
        if missing:
            raise ValidationError({n: ["Missing data for required field."] for n in missing})
        if "result_delivery" in data and data["kind"] != RuntimeKind.N8N:
            # A Trigger.dev task's result is its return value, read from Trigger.dev itself.
            raise ValidationError({"result_delivery": ["Only an n8n runtime takes this field."]})


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

    name = NAME
    managed_by = fields.String(validate=validate.OneOf([kind.value for kind in ManagedBy]))
    status = fields.String(validate=validate.OneOf([status.value for status in AgentStatus]))
    allow_external_triggers = fields.Boolean(truthy={True}, falsy={False})
    output_kind = fields.String(validate=validate.OneOf([kind.value for kind in OutputKind]))
    runtime = fields.Nested(RuntimeConfig, required=True)
    default_input = JsonObject()
    input_format = fields.Raw(
        allow_none=True, metadata={"description": "Any JSON value describing the agent's input."}
    )
    running_timeout_ms = fields.Integer(strict=True, validate=validate.Range(min=1, max=86_400_000))
    blocks = fields.List(
        fields.Nested(BlockBody),
        validate=validate.Length(max=100),
        metadata={
            "description": "The workflow's blocks that stream (n8n nodes), which a workflow "
            "execute's `selectedOutputs` name. Ids, and names ignoring case and spaces, are "
            "unique."
        },
    )
    credential_ids = fields.List(
        fields.UUID(),
        validate=validate.Length(max=1000),
        metadata={
            "description": "The credentials this agent's runs may resolve (each one of the "
            "agent's organisation; another is a 400). None unless granted: any other credential "
            "answers 403 to the agent. Deleting a credential takes it off every list."
        },
    )

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


# Built once: the admin service validates every body with these.
ORG_BODY = OrgBody()
USER_BODY = UserBody()
AGENT_BODY = AgentBody()
