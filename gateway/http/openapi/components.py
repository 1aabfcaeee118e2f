"""Parameters, headers, security schemes, response rows and bodies shared by the route
groups, and helpers to cite them.

A route group's module builds its operations from these helpers, so that adding a route is a
local edit there (see ``gateway/http/openapi/__init__.py``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema

from gateway.http import response_bodies

Json = dict[str, Any]


def ref(name: str) -> Json:
    """``{"$ref": "#/components/schemas/<name>"}``."""
    return {"$ref": f"#/components/schemas/{name}"}


def param(name: str) -> str:
    """A reference to a shared parameter (apispec writes the ``$ref`` for its name)."""
    return name


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


def json_response(description: str, schema: Json | type[Schema], *header_names: str) -> Json:
    """A JSON response with ``schema``."""
    return {
        "description": description,
        "headers": headers(*header_names),
        "content": {"application/json": {"schema": schema}},
    }


def error(description: str, *header_names: str) -> Json:
    """An error row: ``{"error": ...}`` (with ``runId`` and more where they apply)."""
    return json_response(description, ref("Error"), *header_names)


def json_body(schema: Json | type[Schema], *, required: bool = True, description: str = "") -> Json:
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

SECURITY_SCHEMES: dict[str, Json] = {
    "ingestKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An organisation's ingest key (`igk_...`).",
    },
    "agentKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The agent API key from the run's trigger payload (`agk_...`).",
    },
    "v0Key": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "An ingest key, bare (`Authorization: igk_...`), as the /v0 job "
        "package clients send it; `Bearer igk_...` works too.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An organisation's ingest key (`igk_...`), in the header Sim's SDKs "
        "send it in.",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator's `ADMIN_TOKEN`.",
    },
}

# Public operations: no credential of any kind (an empty requirement overrides any default).
PUBLIC: list[Json] = []

# Response bodies shared by the route groups (request bodies are each group's own).
SCHEMAS: dict[str, type[Schema]] = {
    "Error": response_bodies.Error,
    "Run": response_bodies.Run,
    "RunAccepted": response_bodies.RunAccepted,
    "RunTimedOut": response_bodies.RunTimedOut,
}
