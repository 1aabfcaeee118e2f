"""Schemas, parameters and responses shared by the route groups, and helpers to cite them.

A route group's module builds its operations from these helpers, so that adding a route is a
local edit there (see ``gateway/http/openapi/__init__.py``).
"""

from __future__ import annotations

from typing import Any

from store.enums import RunStatus

Json = dict[str, Any]

RUN_STATUSES = [status.value for status in RunStatus]
# A run that is still going (a wait that timed out answers with one of these).
IN_FLIGHT = [status.value for status in RunStatus if not status.terminal]
_TIMESTAMP = {"type": "string", "format": "date-time", "examples": ["2026-03-01T12:00:05.250Z"]}
_NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}


def ref(name: str) -> Json:
    """``{"$ref": "#/components/schemas/<name>"}``."""
    return {"$ref": f"#/components/schemas/{name}"}


def param(name: str) -> Json:
    """A reference to a shared parameter."""
    return {"$ref": f"#/components/parameters/{name}"}


def _header(description: str, schema: Json, *, required: bool = False) -> Json:
    return {"description": description, "required": required, "schema": schema}


HEADERS: dict[str, Json] = {
    "X-Request-Id": _header(
        "The request's id: the caller's `X-Request-Id` when it was valid, else a new one. "
        "Every log line of the request carries it.",
        {"type": "string"},
        required=True,
    ),
    "Retry-After": _header("Seconds to wait before retrying.", {"type": "string"}, required=True),
    "RateLimit-Policy": _header(
        "The bucket: `<limit>;w=<window seconds>`.", {"type": "string"}, required=True
    ),
    "RateLimit": _header(
        "`limit=<n>, remaining=0, reset=<seconds>`.", {"type": "string"}, required=True
    ),
    "WWW-Authenticate": _header('`Bearer realm="agent-gateway"`.', {"type": "string"}),
    "X-Run-Id": _header("The id of the run.", {"type": "string"}, required=True),
}


def headers(*names: str) -> Json:
    """Response headers: ``X-Request-Id`` and the named shared ones."""
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-Id", *names)}


def json_response(description: str, schema: Json, *header_names: str) -> Json:
    """A JSON response with ``schema``."""
    return {
        "description": description,
        "headers": headers(*header_names),
        "content": {"application/json": {"schema": schema}},
    }


def error(description: str, *header_names: str) -> Json:
    """An error row: ``{"error": ...}`` (with ``runId`` and more where they apply)."""
    return json_response(description, ref("Error"), *header_names)


def json_body(schema: Json, *, required: bool = True, description: str = "") -> Json:
    """A JSON request body."""
    body: Json = {"required": required, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


UNAUTHORIZED = error("Missing or invalid bearer token.", "WWW-Authenticate")
NOT_FOUND_AGENT = error("No such agent for this key (another organisation's agent included).")
TOO_LARGE = error("The request body is over `MAX_REQUEST_BODY`.")
BAD_BODY = error(
    "The body is not a JSON object, or a field is invalid (`details` names each field)."
)
UNAVAILABLE = error("PostgreSQL or Redis cannot be reached; retry shortly.", "Retry-After")
RATE_LIMITED = error(
    "The agent's bucket is empty (the limit holds across every replica). `retryAfterMs` in "
    "the body.",
    "Retry-After",
    "RateLimit-Policy",
    "RateLimit",
)

# Rows every operation that takes a key, or a body, may answer (added by build_document).
TOO_MANY_FAILURES = error(
    "Too many failed key attempts from this client address (`AUTH_FAILURE_LIMIT` per "
    "`AUTH_FAILURE_WINDOW_S`): refused before the key is looked at, until the bucket refills.",
    "Retry-After",
)
BODY_TIMEOUT = error("The request body did not arrive within `REQUEST_BODY_TIMEOUT_S`.")

_PATH_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

PARAMETERS: dict[str, Json] = {
    "agentId": {
        "name": "agentId",
        "in": "path",
        "required": True,
        "description": "The agent's id. Anything but a positive integer names no agent (404).",
        "schema": _PATH_ID,
    },
    "runId": {
        "name": "runId",
        "in": "path",
        "required": True,
        "description": "The run's id. Anything but a positive integer names no run (404).",
        "schema": _PATH_ID,
    },
    "orgId": {
        "name": "orgId",
        "in": "path",
        "required": True,
        "description": "The organisation's id (a UUID).",
        "schema": {"type": "string", "format": "uuid"},
    },
    "keyId": {
        "name": "keyId",
        "in": "path",
        "required": True,
        "description": "The ingest key's id (a UUID, the `id` its create answer gave).",
        "schema": {"type": "string", "format": "uuid"},
    },
    "credentialId": {
        "name": "credentialId",
        "in": "path",
        "required": True,
        "description": "The credential's id (a UUID, the `id` its create answer gave).",
        "schema": {"type": "string", "format": "uuid"},
    },
    "X-Request-Id": {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "Your id for the request (1-128 of `A-Z a-z 0-9 . _ : -`), echoed back "
        "and logged; another value is replaced by a generated id.",
        "schema": {"type": "string"},
    },
    "Idempotency-Key": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "1-255 visible ASCII characters, per agent. A repeat within 24 h "
        "(across replicas) names the same run and starts nothing (what it answers depends on "
        "the route); the same key with another body, or on another trigger route, is a 422.",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
    },
}

SCHEMAS: dict[str, Json] = {
    "Error": {
        "type": "object",
        "description": "Every error of the agent and admin APIs.",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong."},
            "runId": {"type": "integer", "description": "The run, once one exists."},
            "status": {"enum": RUN_STATUSES, "description": "The run's status (409)."},
            "details": {
                "type": "object",
                "description": "Each invalid field with its messages (400).",
            },
            "retryAfterMs": {"type": "integer", "minimum": 0, "description": "429 only."},
            "requestId": {"type": "string", "description": "500 only: quote it to operators."},
            "knownBlocks": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Workflow execute, an unknown block in `selectedOutputs` (400): "
                "the agent's declared block names.",
            },
            "files": {
                "type": "array",
                "description": "Workflow execute, files over `MAX_FILE_BYTES` (413): each one.",
                "items": {
                    "type": "object",
                    "required": ["field", "index", "name", "size"],
                    "properties": {
                        "field": {"type": "string"},
                        "index": {"type": "integer", "minimum": 0},
                        "name": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "maxFileBytes": {
                "type": "integer",
                "minimum": 1,
                "description": "Workflow execute (413): the per-file limit.",
            },
        },
    },
    "RunStatus": {"enum": RUN_STATUSES},
    "Run": {
        "type": "object",
        "description": "A run, as seed 002's 200 and the poll target show it.",
        "required": [
            "runId",
            "agentId",
            "status",
            "output_data",
            "outputs",
            "error",
            "duration_ms",
            "started_at",
            "completed_at",
            "created_at",
        ],
        "properties": {
            "runId": {"type": "integer"},
            "agentId": {"type": "integer"},
            "status": ref("RunStatus"),
            "output_data": {
                "description": "The result (any JSON), or for a download `{kind, filename, "
                "mimeType, sizeBytes}`; `null` when there is none."
            },
            "outputs": {"type": ["integer", "null"], "minimum": 0},
            "error": {"type": ["string", "null"]},
            "duration_ms": {"type": ["integer", "null"], "minimum": 0},
            "started_at": _NULLABLE_TIMESTAMP,
            "completed_at": _NULLABLE_TIMESTAMP,
            "created_at": _TIMESTAMP,
            "input": {
                "type": "object",
                "description": "The input the run was given (a workflow execute's names its "
                "files); with `?include=input` only.",
            },
        },
    },
    "TriggerBody": {
        "type": "object",
        "description": "Every field is optional; an empty body is `{}`.",
        "properties": {
            "input": {
                "type": "object",
                "description": "Merged over the agent's `default_input` (the caller wins).",
            },
            "userId": {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "Recorded as `created_by` when a member of the agent's "
                "organisation.",
            },
            "timeoutMs": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "Wait window: `min(timeoutMs or 60000, running_timeout_ms, "
                "HARD_CEILING_MS)`.",
            },
        },
    },
    "RunAccepted": {
        "type": "object",
        "required": ["runId", "status"],
        "properties": {"runId": {"type": "integer"}, "status": ref("RunStatus")},
    },
    "RunTimedOut": {
        "type": "object",
        "description": "The wait window elapsed first; the run goes on (poll it).",
        "required": ["runId", "agentId", "status", "timedOut"],
        "properties": {
            "runId": {"type": "integer"},
            "agentId": {"type": "integer"},
            "status": {"enum": IN_FLIGHT},
            "timedOut": {"const": True},
        },
    },
}
