"""``POST /api/runs/{runId}/callback``: a run's runtime reports on it with the agent API key."""

from __future__ import annotations

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
from gateway.runs.callbacks import STATUSES_AFTER

TAG = {
    "name": "callbacks",
    "description": "What a run's own code reports (seed 001 `createAgentClient`). "
    "`Authorization: Bearer <agentApiKey from the trigger payload>`.",
}

SCHEMAS: dict[str, Json] = {
    "CallbackBody": {
        "type": "object",
        "description": "`started()`: `{type: started}`; `output()`: `{type: output, output, "
        "outputs?}`; `complete()`: the same with `complete: true`; `fail()`: `{type: output, "
        "failed: true, error: {message, name?, stack?}}`; `waiting()`: `{type: waiting, "
        "tokenId, description, output?}`. An `outputs` that is not a non-negative integer is "
        "dropped.",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["started", "output", "waiting"]},
            "complete": {"type": "boolean"},
            "failed": {"type": "boolean"},
            "output": {"description": "Any JSON value."},
            "outputs": {"description": "Kept when a non-negative integer."},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {"type": "string"},
                    {
                        "type": "object",
                        "required": ["message"],
                        "properties": {
                            "message": {"type": "string"},
                            "name": {"type": "string"},
                            "stack": {"type": "string"},
                        },
                    },
                ]
            },
            "tokenId": {"type": "string", "minLength": 1, "maxLength": 1024},
            "description": {"type": ["string", "null"], "maxLength": 10000},
        },
        "allOf": [
            {
                "if": {"properties": {"type": {"const": "waiting"}}},
                "then": {"required": ["tokenId"]},
            },
            {
                "if": {"properties": {"type": {"enum": ["started", "waiting"]}}},
                "then": {"properties": {"complete": {"const": False}, "failed": {"const": False}}},
            },
            {
                "not": {
                    "required": ["complete", "failed"],
                    "properties": {"complete": {"const": True}, "failed": {"const": True}},
                }
            },
        ],
    },
}

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
                    {
                        "type": "object",
                        "required": ["runId", "status"],
                        "properties": {
                            "runId": {"type": "integer"},
                            "status": {"enum": STATUSES_AFTER},
                        },
                    },
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
