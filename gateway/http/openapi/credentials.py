"""``GET /api/credentials/{credentialId}/resolve``: a run's code reads a credential."""

from __future__ import annotations

from marshmallow import Schema

from gateway.http import response_bodies
from gateway.http.openapi.components import (
    UNAUTHORIZED,
    UNAVAILABLE,
    Json,
    error,
    headers,
    json_response,
    param,
    ref,
)

TAG = {
    "name": "credentials",
    "description": "What a run's own code reads (the agent SDK's `createAgentClient`): its "
    "organisation's credentials, while the run lasts. `Authorization: Bearer <agentApiKey>` "
    "and `X-Credentials-Token: <credentialsToken>`, both from the trigger payload (or the "
    "token from `register`). Credentials are stored with `POST /admin/orgs/{orgId}/"
    "credentials`.",
}

SCHEMAS: dict[str, type[Schema]] = {"Credential": response_bodies.Credential}

_NO_STORE = {
    "Cache-Control": {
        "required": True,
        "schema": {"const": "no-store"},
        "description": "The answer is a secret: no cache may keep it.",
    },
    "Pragma": {"required": True, "schema": {"const": "no-cache"}},
}

PATHS: dict[str, Json] = {
    "/api/credentials/{credentialId}/resolve": {
        "parameters": [
            {
                "name": "credentialId",
                "in": "path",
                "required": True,
                "description": "The credential's id (a UUID); anything else names nothing (404).",
                "schema": {"type": "string", "format": "uuid"},
            },
            {
                "name": "X-Credentials-Token",
                "in": "header",
                "required": True,
                "description": "`crt_<runId>_<expiry>_<nonce>_<keyId>_<mac>`, issued by this "
                "gateway's "
                "`SECRET_KEY` (any replica verifies it) for one run.",
                "schema": {"type": "string"},
            },
            param("X-Request-Id"),
        ],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "resolveCredential",
            "summary": "Read a credential for a run",
            "description": "Checked in this order: the agent API key (401), the agent is "
            "active (403), the token (401), the token's run (403), the credential (404), the "
            "agent's grant of it, its `credential_ids` (403). Each refusal leaves one "
            "`credential_resolve_refused` log line with its reason; keys, tokens and data "
            "never reach a log.",
            "security": [{"agentKey": []}],
            "responses": {
                "200": {
                    **json_response("The credential, opened.", ref("Credential")),
                    "headers": {**headers(), **_NO_STORE},
                },
                "401": {
                    **UNAUTHORIZED,
                    "description": "No agent API key or one that names no agent; or no "
                    "`X-Credentials-Token`, an altered one, one this gateway's `SECRET_KEY` "
                    "did not issue, or one that has expired.",
                },
                "403": error(
                    "The agent is paused or archived; the token is for a run of another agent "
                    "(or organisation), or its run has ended; or the credential is not on the "
                    "agent's `credential_ids`."
                ),
                "404": error(
                    "No such credential in the agent's organisation: another organisation's, "
                    "an unknown or a malformed id get the same answer."
                ),
                "500": error(
                    "The stored credential cannot be opened with this gateway's `SECRET_KEY` "
                    "(the key was changed, or the row altered): an operator's problem."
                ),
                "503": UNAVAILABLE,
            },
        },
    },
}
