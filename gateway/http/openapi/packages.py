"""``/v0``: job download packages (the /v0 API), errors as ``{"error": {"code", "message",
"details"}}``."""

from __future__ import annotations

from marshmallow import Schema

from gateway.http import response_bodies
from gateway.http.openapi.components import PUBLIC, Json, headers, json_response, param, ref

TAG = {
    "name": "job packages",
    "description": "A job's inputs and outputs as one ZIP behind a signed URL. "
    "`Authorization: <ingest key>` (bare; `Bearer` accepted too).",
}

SCHEMAS: dict[str, type[Schema]] = {
    "V0Error": response_bodies.V0Error,
    "PackageTicket": response_bodies.PackageTicket,
}


def _error(description: str, *header_names: str) -> Json:
    return json_response(description, ref("V0Error"), *header_names)


def _path_id(name: str, what: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id; anything but a positive integer is a 400.",
        "schema": {"type": "string"},
    }


PATHS: dict[str, Json] = {
    "/v0/workflows/{workflow_id}/jobs/{job_id}/download": {
        "parameters": [
            _path_id("workflow_id", "workflow (agent)"),
            _path_id("job_id", "job (run)"),
            param("X-Request-Id"),
        ],
        "put": {
            "tags": [TAG["name"]],
            "operationId": "createJobPackage",
            "summary": "A job's download package and a signed URL for it",
            "description": "The same `id` for every request about the same job, each with a "
            "freshly signed URL (`PACKAGE_URL_TTL_S`). `pending` while the job is in flight, "
            "`ready` once it has ended.",
            "security": [{"v0Key": []}],
            "responses": {
                "200": json_response("The package.", ref("PackageTicket")),
                "400": _error(
                    "A malformed id (`invalid_workflow_id`, `invalid_job_id`), or a job of "
                    "another workflow (`job_not_in_workflow`)."
                ),
                "401": _error("Missing or invalid API key (`unauthorized`)."),
                "403": _error(
                    "A workflow or job of another organisation, or none at all (`forbidden`)."
                ),
                "413": _error("A body over `MAX_REQUEST_BODY` (none is needed)."),
                "503": _error("PostgreSQL or Redis cannot be reached.", "Retry-After"),
            },
        },
    },
    "/v0/packages/{package_id}.zip": {
        "parameters": [
            {
                "name": "package_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            },
            {"name": "expires", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "signature", "in": "query", "required": False, "schema": {"type": "string"}},
            param("X-Request-Id"),
        ],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "fetchJobPackage",
            "security": PUBLIC,
            "summary": "The package's ZIP (the signed URL)",
            "description": "Streamed: manifest.json, input.json, inputs/, output.json, outputs/.",
            "responses": {
                "200": {
                    "description": "The ZIP, with `Content-Length` and a `Content-Disposition` "
                    "naming the job.",
                    "headers": headers(),
                    "content": {
                        "application/zip": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "403": _error(
                    "Not signed, tampered with (`invalid_signature`) or expired "
                    "(`signature_expired`)."
                ),
                "404": _error("The job no longer exists (`not_found`)."),
                "409": _error("The job is still in flight (`package_pending`)."),
                "503": _error("PostgreSQL or Redis cannot be reached.", "Retry-After"),
            },
        },
    },
}
