"""Workflow execute's body: its two controls, declared, and the shape of a file value.

The body is parsed as it arrives (``gateway.http.parsing.large_bodies``); what validates its
controls is :data:`EXECUTE_BODY`. Every other key is the input itself, coerced against the
agent's input format (``gateway.execute.input_format``), which is why unknown keys are kept out
of the controls rather than refused.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from gateway.errors import BadRequest

MAX_SELECTED_OUTPUTS = 100
# The one attribute of a block that is streamed: the text it produces.
STREAMED_ATTRIBUTE = "content"


class ExecuteBody(Schema):
    """``POST /api/workflows/{workflowId}/execute``: the controls (the rest is the input)."""

    class Meta:
        unknown = EXCLUDE
        description = (
            "The input itself, plus two controls (`stream`, `selectedOutputs`). When the agent "
            "declares an `input_format`, each declared field is coerced to its type: `number` "
            'from `"3"`, `"0.5"`, `"1e3"`; `boolean` from `true/false/1/0/yes/no/on/off`; '
            "`string` from a number or a boolean; `json` from an object, an array or a string "
            "holding one; `files` from one `ExecuteFile` or a list of them; `null` is kept. "
            "Undeclared keys are passed on under `input` only. With no input format, the whole "
            "body (less the controls) is the input."
        )
        json_schema = {"additionalProperties": {"description": "An input value."}}

    stream = fields.Boolean(
        truthy={True},
        falsy={False},
        load_default=False,
        metadata={
            "default": False,
            "description": "`true`: answer with Server-Sent Events as the workflow produces "
            "output.",
        },
    )
    selectedOutputs = fields.List(
        fields.String(),
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=MAX_SELECTED_OUTPUTS),
        metadata={
            "description": "Which blocks to stream (all when absent or empty): "
            f"`<blockName>.{STREAMED_ATTRIBUTE}`, the block named by its declared name "
            "(case-insensitive, spaces ignored) or id; see the agent's `blocks`.",
            "examples": [[f"agent1.{STREAMED_ATTRIBUTE}"]],
            "json_schema": {"items": {"type": "string", "pattern": r"^[^.]+\.content$"}},
        },
    )


EXECUTE_BODY = ExecuteBody()


def load_controls(body: dict[str, Any]) -> dict[str, Any]:
    """``stream`` and ``selectedOutputs`` validated by :data:`EXECUTE_BODY` (the block names
    are resolved against the agent later); a 400 says what is wrong, as it always has."""
    try:
        controls: dict[str, Any] = EXECUTE_BODY.load(body)
    except ValidationError as exc:
        problems = exc.messages_dict
        if "stream" in problems:
            raise BadRequest(
                "stream must be true or false",
                extra={"details": {"stream": ["Must be true or false."]}},
            ) from None
        if _too_many(body.get("selectedOutputs")):
            raise BadRequest(
                f"selectedOutputs may name at most {MAX_SELECTED_OUTPUTS} outputs"
            ) from None
        raise BadRequest(
            'selectedOutputs must be a list of "blockName.attribute" strings',
            extra={"details": {"selectedOutputs": ["Must be a list of strings."]}},
        ) from None
    return controls


def _too_many(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(s, str) for s in value)
        and len(value) > MAX_SELECTED_OUTPUTS
    )


class ExecuteFile(Schema):
    """One value of a ``files`` field (coerced by ``gateway.execute.input_format``, which
    reports each problem with its field and position)."""

    class Meta:
        unknown = EXCLUDE
        description = (
            "A value of a `files` field: a base64 data URL (stored, at most `MAX_FILE_BYTES` "
            "decoded, handed to the runtime as `{url, name, size, type, uploadedAt, expiresAt}` "
            "with `url` a signed `GET /files/{key}` URL) or an http(s) URL (passed on as "
            "`{url, name, size, type}`, never fetched)."
        )

    type = fields.String(
        validate=validate.OneOf(["file", "url"]),
        metadata={"description": "Default: `file` for a `data:` URL, else `url`."},
    )
    data = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={
            "examples": ["data:application/pdf;base64,JVBERi0xLjQK"],
            "description": "`data:<type>;base64,<data>` (line-wrapped base64 and "
            "percent-encoded data URLs are fine), or an http(s) URL.",
        },
    )
    name = fields.String()
    mime = fields.String(metadata={"examples": ["application/pdf"]})
    size = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "A `url` file's size, passed on when given."},
    )
