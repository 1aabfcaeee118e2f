"""``/admin``: what an agent settings page calls, with ``Authorization: Bearer $ADMIN_TOKEN``."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema

from gateway.admin import bodies
from gateway.http import response_bodies
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
from gateway.security.credentials import CredentialBody, CredentialDataBody

TAG = {
    "name": "admin",
    "description": "Organisations, ingest keys, members and agents. "
    "`Authorization: Bearer <ADMIN_TOKEN>`; disabled (401) while `ADMIN_TOKEN` is unset.",
}

SCHEMAS: dict[str, type[Schema] | Schema] = {
    "RuntimeConfig": bodies.RuntimeConfig,
    "AgentBody": bodies.AgentBody,
    # The same schema, loaded with partial=True by the PATCH: any of the fields.
    "AgentPatch": bodies.AgentBody(partial=True),
    "Agent": response_bodies.Agent,
    "CredentialInfo": response_bodies.CredentialInfo,
}
# What the schema alone does not say of a component.
SCHEMA_DESCRIPTIONS = {"AgentPatch": "Any of the agent's fields."}

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
            requestBody=json_body(bodies.OrgBody),
            responses={"201": json_response("Created.", response_bodies.OrgCreated)},
        ),
    },
    "/admin/orgs/{orgId}/keys": {
        "parameters": [param("orgId"), param("X-Request-Id")],
        "post": _operation(
            "createIngestKey",
            "Create an ingest key (shown once)",
            requestBody=json_body({"type": "object"}, required=False),
            responses={
                "201": json_response("The key, shown this once.", response_bodies.IngestKeyCreated),
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
            requestBody=json_body(bodies.UserBody),
            responses={
                "201": json_response(
                    "The user (created, or found by email) is a member.",
                    response_bodies.UserAdded,
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
                "200": json_response(
                    "Oldest first.", {"type": "array", "items": response_bodies.CredentialInfo}
                ),
                "404": _ORG_NOT_FOUND,
            },
        ),
        "post": _operation(
            "createCredential",
            "Store a credential (its data never shown back)",
            description="The data is sealed at rest (AES-256-GCM under a key derived from "
            "`SECRET_KEY`, bound to the row); a run of an agent that lists it in its "
            "`credential_ids` reads it with `GET /api/credentials/{credentialId}/resolve`.",
            requestBody=json_body(CredentialBody),
            responses={
                "201": json_response("Stored.", response_bodies.CredentialStored),
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
            requestBody=json_body(CredentialDataBody),
            responses={
                "200": json_response(
                    "The credential (never its data).", response_bodies.CredentialInfo
                ),
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
