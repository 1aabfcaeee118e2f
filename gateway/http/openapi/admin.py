"""``/admin``: what an agent settings page calls, with ``Authorization: Bearer $ADMIN_TOKEN``."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.components import (
    TOO_LARGE,
    UNAVAILABLE,
    Json,
    error,
    headers,
    json_body,
    json_response,
    param,
    ref,
)
from store.enums import AgentStatus, ManagedBy, OutputKind, ResultDelivery, RuntimeKind
from store.models import AGENT_SETTABLE_FIELDS

TAG = {
    "name": "admin",
    "description": "Organisations, ingest keys, members and agents. "
    "`Authorization: Bearer <ADMIN_TOKEN>`; disabled (401) while `ADMIN_TOKEN` is unset.",
}

_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_HTTP_URL = {"type": "string", "format": "uri", "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]+)?/"}
_AGENT_FIELDS: Json = {
    "name": _NAME,
    "managed_by": {"enum": [kind.value for kind in ManagedBy]},
    "status": {"enum": [status.value for status in AgentStatus]},
    "allow_external_triggers": {"type": "boolean"},
    "output_kind": {"enum": [kind.value for kind in OutputKind]},
    "runtime": ref("RuntimeConfig"),
    "default_input": {"type": "object"},
    "input_format": {"description": "Any JSON value describing the agent's input."},
    "running_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
    "blocks": {
        "type": "array",
        "maxItems": 100,
        "description": "The workflow's blocks that stream (n8n nodes), which a workflow "
        "execute's `selectedOutputs` name. Ids, and names ignoring case and spaces, are unique.",
        "items": {
            "type": "object",
            "required": ["id", "name"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 200},
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
    },
    "credential_ids": {
        "type": "array",
        "maxItems": 1000,
        "items": {"type": "string", "format": "uuid"},
        "description": "The credentials this agent's runs may resolve (each one of the agent's "
        "organisation; another is a 400). None unless granted: any other credential answers "
        "403 to the agent. Deleting a credential takes it off every list.",
    },
}

_CREDENTIAL_INFO: Json = {
    "type": "object",
    "required": ["id", "name", "type", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "type": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

SCHEMAS: dict[str, Json] = {
    "RuntimeConfig": {
        "description": "Where the agent runs.",
        "oneOf": [
            {
                "type": "object",
                "title": "n8n",
                "required": ["kind", "webhook_url"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"const": RuntimeKind.N8N.value},
                    "webhook_url": _HTTP_URL,
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Sent with every call (e.g. header auth); sealed at rest "
                        "(bound to the agent), never shown back (`***`).",
                    },
                    "result_delivery": {
                        "enum": [delivery.value for delivery in ResultDelivery],
                        "default": ResultDelivery.RESPONSE.value,
                        "description": "How the workflow delivers a run's result: `response`, "
                        "in the webhook's answer (a Respond to Webhook node); `callback`, "
                        "through the payload's `callbackUrl`, when any 2xx answer only "
                        "acknowledges the run. Either way 202, 204, an empty body and n8n's "
                        '`200 {"message": "Workflow was started"}` acknowledge the run.',
                    },
                },
            },
            {
                "type": "object",
                "title": "trigger.dev",
                "required": ["kind", "api_url", "task_id", "secret_key"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"const": RuntimeKind.TRIGGER_DEV.value},
                    "api_url": _HTTP_URL,
                    "task_id": {"type": "string", "minLength": 1, "maxLength": 512},
                    "secret_key": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 1024,
                        "description": "Sealed at rest (bound to the agent); never shown "
                        "back (`***`).",
                    },
                },
            },
        ],
    },
    "AgentBody": {
        "type": "object",
        "required": ["name", "runtime"],
        "additionalProperties": False,
        "properties": _AGENT_FIELDS,
    },
    "AgentPatch": {
        "type": "object",
        "description": "Any of the agent's fields.",
        "additionalProperties": False,
        "properties": _AGENT_FIELDS,
    },
    "Agent": {
        "type": "object",
        "required": ["id", "org_id", *AGENT_SETTABLE_FIELDS, "created_at", "updated_at"],
        "properties": {
            "id": {"type": "integer"},
            "org_id": {"type": "string", "format": "uuid"},
            **_AGENT_FIELDS,
            "runtime": {
                "type": "object",
                "required": ["kind"],
                "description": "As configured, with `secret_key` and `headers` (sealed at "
                "rest) shown as `***`.",
                "properties": {"kind": {"enum": [kind.value for kind in RuntimeKind]}},
            },
            "input_format": {},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "api_key": {
                "type": "string",
                "description": "The agent API key (`agk_...`), in the create and rotate "
                "answers only.",
            },
        },
    },
}

_SECURITY: list[Json] = [{"adminToken": []}]
_UNAUTHORIZED = error("Missing or invalid admin token, or the admin API is disabled.")
_BAD = error("The body is not a JSON object, or a field is invalid (`details`).")


def _operation(operation_id: str, summary: str, **parts: Any) -> Json:
    responses = {
        **parts.pop("responses"),
        "400": _BAD,
        "401": _UNAUTHORIZED,
        "413": TOO_LARGE,
        "503": UNAVAILABLE,
    }
    return {
        "tags": [TAG["name"]],
        "operationId": operation_id,
        "summary": summary,
        "security": _SECURITY,
        "responses": responses,
        **parts,
    }


_ORG_NOT_FOUND = error("No such organisation.")

PATHS: dict[str, Json] = {
    "/admin/orgs": {
        "parameters": [param("X-Request-Id")],
        "post": _operation(
            "createOrg",
            "Create an organisation",
            requestBody=json_body(
                {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": _NAME},
                }
            ),
            responses={
                "201": json_response(
                    "Created.",
                    {
                        "type": "object",
                        "required": ["id", "name"],
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "name": {"type": "string"},
                        },
                    },
                )
            },
        ),
    },
    "/admin/orgs/{orgId}/keys": {
        "parameters": [param("orgId"), param("X-Request-Id")],
        "post": _operation(
            "createIngestKey",
            "Create an ingest key (shown once)",
            requestBody=json_body({"type": "object"}, required=False),
            responses={
                "201": json_response(
                    "The key, shown this once.",
                    {
                        "type": "object",
                        "required": ["id", "key"],
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "key": {"type": "string", "description": "`igk_...`"},
                        },
                    },
                ),
                "404": _ORG_NOT_FOUND,
            },
        ),
    },
    "/admin/orgs/{orgId}/keys/{keyId}": {
        "parameters": [param("orgId"), param("keyId"), param("X-Request-Id")],
        "delete": _operation(
            "revokeIngestKey",
            "Revoke an ingest key",
            description="The key is refused (401) on every replica within a second: each "
            "replica's key cache hears of the change from PostgreSQL, and `AUTH_CACHE_TTL_S` "
            "bounds it should that notice be lost. Revoking a key again changes nothing.",
            responses={
                "204": {"description": "Revoked.", "headers": headers()},
                "404": error("The organisation has no such key."),
            },
        ),
    },
    "/admin/orgs/{orgId}/users": {
        "parameters": [param("orgId"), param("X-Request-Id")],
        "post": _operation(
            "createUser",
            "Add a member to an organisation",
            requestBody=json_body(
                {
                    "type": "object",
                    "required": ["email"],
                    "additionalProperties": False,
                    "properties": {"email": {"type": "string", "format": "email"}},
                }
            ),
            responses={
                "201": json_response(
                    "The user (created, or found by email) is a member.",
                    {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string", "format": "uuid"}},
                    },
                ),
                "404": _ORG_NOT_FOUND,
            },
        ),
    },
    "/admin/orgs/{orgId}/agents": {
        "parameters": [param("orgId"), param("X-Request-Id")],
        "post": _operation(
            "createAgent",
            "Create an agent (its API key shown once)",
            requestBody=json_body(ref("AgentBody")),
            responses={
                "201": json_response("The agent, with `api_key`.", ref("Agent")),
                "404": _ORG_NOT_FOUND,
            },
        ),
    },
    "/admin/orgs/{orgId}/credentials": {
        "parameters": [param("orgId"), param("X-Request-Id")],
        "get": _operation(
            "listCredentials",
            "List an organisation's credentials (never their data)",
            responses={
                "200": json_response("Oldest first.", {"type": "array", "items": _CREDENTIAL_INFO}),
                "404": _ORG_NOT_FOUND,
            },
        ),
        "post": _operation(
            "createCredential",
            "Store a credential (its data never shown back)",
            description="The data is sealed at rest (AES-256-GCM under a key derived from "
            "`SECRET_KEY`, bound to the row); a run of an agent that lists it in its "
            "`credential_ids` reads it with `GET /api/credentials/{credentialId}/resolve`.",
            requestBody=json_body(
                {
                    "type": "object",
                    "required": ["name", "type", "data"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _NAME,
                        "type": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 100,
                            "examples": ["api_key"],
                        },
                        "data": {"type": "object", "description": "Any JSON object."},
                    },
                }
            ),
            responses={
                "201": json_response(
                    "Stored.",
                    {
                        "type": "object",
                        "required": ["id", "name", "type"],
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "name": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                ),
                "404": _ORG_NOT_FOUND,
            },
        ),
    },
    "/admin/orgs/{orgId}/credentials/{credentialId}": {
        "parameters": [param("orgId"), param("credentialId"), param("X-Request-Id")],
        "delete": _operation(
            "deleteCredential",
            "Delete a credential",
            description="Gone at once for every run (404), and taken off every agent's "
            "`credential_ids`.",
            responses={
                "204": {"description": "Deleted.", "headers": headers()},
                "404": error("The organisation has no such credential."),
            },
        ),
    },
    "/admin/orgs/{orgId}/credentials/{credentialId}/data": {
        "parameters": [param("orgId"), param("credentialId"), param("X-Request-Id")],
        "put": _operation(
            "rotateCredential",
            "Replace a credential's data (same id)",
            description="The new data is sealed like the first; agents keep their grant and "
            "the next resolve answers the new data.",
            requestBody=json_body(
                {
                    "type": "object",
                    "required": ["data"],
                    "additionalProperties": False,
                    "properties": {"data": {"type": "object", "description": "Any JSON object."}},
                }
            ),
            responses={
                "200": json_response("The credential (never its data).", _CREDENTIAL_INFO),
                "404": error("The organisation has no such credential."),
            },
        ),
    },
    "/admin/agents/{agentId}/api-key": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "rotateAgentKey",
            "Give an agent a new API key (shown once)",
            description="The old key is refused (401) on every replica within a second, "
            "for callbacks and credential resolves alike; runs triggered from now on carry "
            "the new one. A run in flight that still holds the old key can no longer report.",
            requestBody=json_body({"type": "object"}, required=False),
            responses={
                "200": json_response("The agent, with its new `api_key`.", ref("Agent")),
                "404": error("No such agent."),
            },
        ),
    },
    "/admin/agents/{agentId}": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "patch": _operation(
            "updateAgent",
            "Change an agent",
            requestBody=json_body(ref("AgentPatch")),
            responses={
                "200": json_response("The agent.", ref("Agent")),
                "404": error("No such agent."),
            },
        ),
    },
}
