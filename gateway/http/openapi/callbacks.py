"""``POST /api/runs/{runId}/callback``: a run's runtime reports on it with the agent API key."""

from __future__ import annotations

from marshmallow import Schema

from gateway.http import response_bodies
from gateway.http.openapi.components import (
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    Json,
    error,
    json_body,
    json_response,
    param,
    ref,
)
from gateway.http.parsing import request_bodies

TAG = {
    "name": "callbacks",
    "description": "What a run's own code reports (the agent SDK's `createAgentClient`). "
    "`Authorization: Bearer <agentApiKey from the trigger payload>`.",
}

SCHEMAS: dict[str, type[Schema]] = {"CallbackBody": request_bodies.CallbackBody}

PATHS: dict[str, Json] = {
    "/api/runs/{runId}/callback": {
        "parameters": [param("runId"), param("X-Request-Id")],
        "post": {
            "tags": [TAG["name"]],
            "operationId": "runCallback",
            "summary": "Report on a run",
            "description": "Recorded as a run event. The first end of a run wins across "
            "replicas; a later one is refused with 409.",
            "security": [{"agentKey": []}],
            "requestBody": json_body(ref("CallbackBody")),
            "responses": {
                "202": json_response(
                    "Recorded; `status` is what the run becomes.",
                    response_bodies.CallbackRecorded,
                ),
                "400": error(
                    "The body is not a valid callback (`details` names each field), or its "
                    "`output` cannot be stored (a number out of range such as `1e999`, a "
                    "`\\u0000`): refused here, the run carries on."
                ),
                "401": UNAUTHORIZED,
                "403": error("The key's agent is paused or archived: its runs cannot report."),
                "404": error("No such run, or the key is another agent's."),
                "409": error("The run has already ended (`runId`, `status`)."),
                "413": TOO_LARGE,
                "429": RATE_LIMITED,
                "503": UNAVAILABLE,
            },
        },
    },
}
