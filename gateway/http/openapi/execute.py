"""``POST /api/workflows/{workflowId}/execute``: workflow execute, JSON or SSE."""

from __future__ import annotations

from marshmallow import Schema

from gateway.execute import bodies
from gateway.http import response_bodies
from gateway.http.openapi.components import (
    RATE_LIMITED,
    Json,
    error,
    headers,
    json_body,
    json_response,
    param,
    ref,
)

TAG = {
    "name": "workflow execute",
    "description": "Sim-compatible workflow execution: run an agent's workflow and get its "
    "result, or its output live "
    "as Server-Sent Events. `X-API-Key: <ingest key>` (`Authorization: Bearer <ingest key>` "
    "works too).",
}

SCHEMAS: dict[str, type[Schema]] = {
    "ExecuteBody": bodies.ExecuteBody,
    "ExecuteFile": bodies.ExecuteFile,
    "ExecuteResult": response_bodies.ExecuteResult,
    "ExecuteTimedOut": response_bodies.ExecuteTimedOut,
    "ExecuteAccepted": response_bodies.ExecuteAccepted,
    "JobStatus": response_bodies.JobStatusView,
    "WorkflowStatus": response_bodies.WorkflowStatus,
    "UsageBucket": response_bodies.UsageBucket,
    "UsageLimits": response_bodies.UsageLimits,
    "ExecuteChunkFrame": response_bodies.ExecuteChunkFrame,
    "ExecuteDoneFrame": response_bodies.ExecuteDoneFrame,
    "ExecuteErrorFrame": response_bodies.ExecuteErrorFrame,
}

_STREAM = """\
Server-Sent Events (`text/event-stream`), each `id: <n>`, `data: <JSON>` and a blank line \
(`n` the frame's number in the execution: 1, 2, …, the terminator's included), written \
as the workflow produces them: an `ExecuteChunkFrame` per piece of a selected block's \
output; then one `ExecuteDoneFrame` (or, when anything failed once headers were out, one \
`ExecuteErrorFrame`); then `data: [DONE]`. A `: ping` comment follows every \
`SSE_PING_INTERVAL_S` of silence. Headers go out with the first frame or the first ping; a \
failure before that is an ordinary JSON error response. A cut stream is resumed on any \
replica with `GET /api/workflows/{workflowId}/executions/{executionId}/stream` and \
`Last-Event-ID` (the `Link` header names it); a caller who leaves has its run cancelled \
after `EXECUTE_DISCONNECT_GRACE_S` unless someone follows it there. For example:

`id: 1`
`data: {"blockId":"12c24471-1b12-52f1-be64-3ff98b1de492","chunk":"One"}`

`id: 2`
`data: {"event":"done","success":true,"output":{"12c24471-1b12-52f1-be64-3ff98b1de492":\
{"content":"One"}},"metadata":{"duration":812}}`

`id: 3`
`data: [DONE]`"""

# One event of the stream, as OpenAPI 3.2 (``itemSchema``) and tools reading a 3.1 document's
# event-stream ``schema`` per event describe it: its fields, ``data`` holding JSON.
JSON_SCHEMAS: dict[str, Json] = {}
JSON_SCHEMAS["ExecuteEvent"] = {
    "type": "object",
    "description": "One Server-Sent Event of the stream (its `id:` and `data:` fields; no "
    "`event:` field is sent).",
    "required": ["id", "data"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[1-9][0-9]*$",
            "description": "The frame's number in the execution (1, 2, …): what "
            "`Last-Event-ID` names to resume after it.",
        },
        "event": {
            "const": "message",
            "description": "No `event:` field is sent: every event is a `message`.",
        },
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": {
                "contentMediaType": "application/json",
                "contentSchema": {
                    "oneOf": [
                        ref("ExecuteChunkFrame"),
                        ref("ExecuteDoneFrame"),
                        ref("ExecuteErrorFrame"),
                    ]
                },
            },
        },
    },
}


_RUN_HEADERS = {
    **headers("X-Run-Id"),
    "Cache-Control": {
        "schema": {"const": "no-cache"},
        "description": "The event stream only.",
    },
    "X-Accel-Buffering": {
        "schema": {"const": "no"},
        "description": "The event stream only: nginx passes each event on at once.",
    },
    "Link": {
        "schema": {"type": "string"},
        "description": "The event stream only: `<…/executions/{executionId}/stream>; "
        'rel="resume"`, where a cut stream is resumed.',
    },
}
# Every execute answer once the workflow is found (429 included) tells its bucket, in the
# IETF headers and in the x-ratelimit-* headers Sim's SDKs read.
_BUCKET_HEADERS: Json = {
    "RateLimit-Policy": {
        "description": "The workflow's execute bucket: `<limit>;w=<window seconds>`.",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": "`limit=<n>, remaining=<n>, reset=<seconds>`: seconds until the "
        "next token when empty, else until the bucket is full.",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {"description": "The bucket's limit.", "schema": {"type": "string"}},
    "X-RateLimit-Remaining": {
        "description": "Executions left in the bucket.",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Reset": {
        "description": "When `RateLimit`'s `reset` comes, as a Unix time in seconds.",
        "schema": {"type": "string"},
    },
}


def _with_bucket(response: Json) -> Json:
    """``response`` with the bucket's headers (a 429's own keep their required flag)."""
    return {**response, "headers": {**_BUCKET_HEADERS, **response.get("headers", {})}}


_WITH_RUN = "(`runId`; the run is failed). With `stream`, only while no header is out; later, "
_WITH_RUN += "an `ExecuteErrorFrame`."

_WORKFLOW_ID = {
    "name": "workflowId",
    "in": "path",
    "required": True,
    "description": "The agent's id. Anything but a positive integer names no workflow (404).",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}
_UNAUTHORIZED = error(
    "No key in `X-API-Key` (or `Authorization: Bearer`), or one that names no organisation."
)
_EXECUTION_MODE = {
    "name": "X-Execution-Mode",
    "in": "header",
    "required": False,
    "description": "`async` (Sim's SDKs send it for `async` executions): answer 202 with a "
    "task id at once; the run goes on as a `trigger` does. Any other value: as if absent.",
    "schema": {"type": "string", "examples": ["async"]},
}

PATHS: dict[str, Json] = {
    "/api/workflows/{workflowId}/execute": {
        "parameters": [_WORKFLOW_ID, param("X-Request-Id"), _EXECUTION_MODE],
        "post": {
            "tags": [TAG["name"]],
            "operationId": "executeWorkflow",
            "summary": "Run a workflow: its result, or its output live",
            "description": "The workflow is an agent, with the agent API's tenancy and "
            "eligibility rules; each execute is a run (`trigger_kind = 'execute'`, visible "
            "with `GET /api/agents/{agentId}/runs/{runId}?include=input`). The window is "
            "`min(running_timeout_ms, HARD_CEILING_MS)`. The body is parsed as it arrives, "
            "never held whole. Errors come in this order: 401, 404, 403/422, 413/400, 429; "
            "a large body (over `EXECUTE_LARGE_BODY_BYTES`, or chunked) takes its token "
            "first (429 before it is read) and one of the replica's "
            "`EXECUTE_MAX_LARGE_BODIES` slots (503 with `Retry-After` when none is free). "
            "The agent's own bucket: `EXECUTE_RATE_LIMIT` per `EXECUTE_RATE_WINDOW_S`; every "
            "answer once the workflow is found tells it (`RateLimit`, `RateLimit-Policy`, "
            "`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`).",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "requestBody": json_body(ref("ExecuteBody"), required=False),
            "responses": {
                "200": _with_bucket(
                    {
                        "description": "The run ended in the window: the result (`success: "
                        "false` with `error` when it failed or was cancelled). With `stream: "
                        "true`: " + _STREAM,
                        "headers": _RUN_HEADERS,
                        "content": {
                            "application/json": {"schema": ref("ExecuteResult")},
                            "text/event-stream": {"schema": ref("ExecuteEvent")},
                        },
                    }
                ),
                "202": _with_bucket(
                    json_response(
                        "`X-Execution-Mode: async`: the task, at once (`ExecuteAccepted`; "
                        "`stream` is ignored). Otherwise, without `stream`: the window elapsed "
                        "first; the run goes on, poll it with "
                        "`GET /api/agents/{agentId}/runs/{runId}` (`ExecuteTimedOut`).",
                        {"oneOf": [ref("ExecuteAccepted"), ref("ExecuteTimedOut")]},
                        "X-Run-Id",
                    )
                ),
                "400": _with_bucket(
                    error(
                        "The body is not a JSON object (or not valid JSON; a number must fit "
                        "a 64-bit integer or a double); `stream` is not a boolean; "
                        "`selectedOutputs` is not a list of at most 100 `<block>.content` "
                        "strings, or names an unknown block (`knownBlocks` lists the declared "
                        "ones); a value cannot be coerced to its field's type, or a "
                        "`required` field is missing; a file is malformed; a value PostgreSQL "
                        "cannot store (a `\\u0000`, nesting deeper than 200 levels) "
                        "(`details` names each field)."
                    )
                ),
                "401": _UNAUTHORIZED,
                "403": _with_bucket(error("`allow_external_triggers` is off for this agent.")),
                "404": error("No such workflow for this key (another organisation's included)."),
                "413": _with_bucket(
                    error(
                        "The body is over `EXECUTE_MAX_REQUEST_BODY` (refused before it is "
                        "read whole), or a file is over `MAX_FILE_BYTES` decoded (`files` and "
                        "`maxFileBytes`; the message names each file and its size), or the "
                        "files are over `EXECUTE_MAX_FILES_PER_FIELD`, `EXECUTE_MAX_FILES` or "
                        "`EXECUTE_MAX_FILES_BYTES` (`limit`: `{setting, value, actual}`; "
                        "nothing is stored)."
                    )
                ),
                "422": _with_bucket(
                    error(
                        "The agent is not `managed_by: platform`, not `active`, or its "
                        "`output_kind` is not `json` or `stream` (the message lists which); a "
                        "`stream` agent's runtime cannot stream; or the agent's "
                        "`input_format` is invalid."
                    )
                ),
                "429": _with_bucket(
                    {
                        **RATE_LIMITED,
                        "description": "The agent's execute bucket is empty (across every "
                        "replica). `retryAfterMs` in the body; Sim's SDKs read `Retry-After`.",
                    }
                ),
                "500": _with_bucket(error("The runtime could not be invoked " + _WITH_RUN)),
                "503": _with_bucket(
                    error(
                        "PostgreSQL or Redis cannot be reached, or the input files could not "
                        "be stored (`runId`; the run is failed), or this replica already "
                        "reads `EXECUTE_MAX_LARGE_BODIES` large bodies; retry shortly.",
                        "Retry-After",
                    )
                ),
                "504": _with_bucket(
                    error("The runtime sent no answer within the window " + _WITH_RUN)
                ),
            },
        },
    },
    "/api/workflows/{workflowId}/executions/{executionId}/stream": {
        "parameters": [
            {
                **_WORKFLOW_ID,
                "description": "The agent's id: the workflow the execution ran. Anything but a "
                "positive integer names no execution (404).",
            },
            {
                "name": "executionId",
                "in": "path",
                "required": True,
                "description": "The execution's run id (`X-Run-Id`; an async execute's "
                "`taskId`). Anything but a positive integer names no execution (404).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            },
            param("X-Request-Id"),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The `id:` of the last frame the caller has (what an "
                "EventSource sends when it reconnects): the frames after it come. None: from "
                "the first frame.",
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            },
            {
                "name": "lastEventId",
                "in": "query",
                "required": False,
                "description": "The same, for a client that cannot set the header (the header "
                "wins).",
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            },
        ],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "followExecution",
            "summary": "Resume a cut execute stream, or follow an execution live",
            "description": "The frames of an execute (streamed, answered or async) after "
            "`Last-Event-ID`, the ones kept first, then the live ones as the replica running "
            "it produces them, up to the same `done` (or error) frame and `data: [DONE]`; "
            "each once, in order, with its `id:`. Any replica answers: every frame is kept in "
            "Redis for `EXECUTE_STREAM_RETENTION_S` after the execution's last one (at least "
            "the last `EXECUTE_STREAM_MAX_FRAMES`). Reading it counts as following the "
            "execution: a run whose caller left is not cancelled while someone does "
            "(`EXECUTE_DISCONNECT_GRACE_S`). Execute's auth and tenancy.",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "responses": {
                "200": {
                    "description": "The frames after `Last-Event-ID` (see `executeWorkflow`'s "
                    "event stream), `: ping` comments in silences.",
                    "headers": {
                        **headers(),
                        "Cache-Control": _RUN_HEADERS["Cache-Control"],
                        "X-Accel-Buffering": _RUN_HEADERS["X-Accel-Buffering"],
                    },
                    "content": {"text/event-stream": {"schema": ref("ExecuteEvent")}},
                },
                "204": {
                    "description": "`Last-Event-ID` is the terminator's or later: nothing is "
                    "left (an EventSource stops reconnecting).",
                    "headers": headers("X-Run-Id"),
                },
                "400": error("`Last-Event-ID` (or `lastEventId`) is not a whole number."),
                "401": _UNAUTHORIZED,
                "404": error(
                    "`Execution not found`: no execute with this id of this workflow for this "
                    "key (another organisation's, or a run started otherwise, included)."
                ),
                "410": error(
                    "The execution's frames are no longer kept (its retention passed: "
                    "`runId`, `status`), or those right after `Last-Event-ID` were trimmed "
                    "(`firstEventId`, the oldest kept); read the run instead."
                ),
                "503": error("Redis cannot be reached; retry shortly.", "Retry-After"),
            },
        },
    },
    "/api/workflows/{workflowId}/status": {
        "parameters": [_WORKFLOW_ID, param("X-Request-Id")],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "getWorkflowStatus",
            "summary": "Whether a workflow can be executed now",
            "description": "Sim's workflow status (its SDKs' `getWorkflowStatus` and "
            "`validateWorkflow`), with execute's auth and tenancy.",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "responses": {
                "200": json_response("The workflow's status.", ref("WorkflowStatus")),
                "401": _UNAUTHORIZED,
                "404": error("No such workflow for this key (another organisation's included)."),
            },
        },
    },
    "/api/jobs/{taskId}": {
        "parameters": [
            {
                "name": "taskId",
                "in": "path",
                "required": True,
                "description": "An async execute's `taskId`. Anything but a positive integer "
                "names no task (404).",
                "schema": {"type": "string"},
            },
            param("X-Request-Id"),
        ],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "getJobStatus",
            "summary": "An async execute's task: its status, then its output or error",
            "description": "Sim's job status (its SDKs' `getJobStatus`). The task is the "
            "run; its organisation's keys only.",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "responses": {
                "200": json_response("The task.", ref("JobStatus")),
                "401": _UNAUTHORIZED,
                "404": error(
                    "`Task not found`: no such task for this key (another organisation's included)."
                ),
            },
        },
    },
    "/api/users/me/usage-limits": {
        "parameters": [param("X-Request-Id")],
        "get": {
            "tags": [TAG["name"]],
            "operationId": "getUsageLimits",
            "summary": "What the key's organisation may still execute",
            "description": "Sim's usage limits (its SDKs' `getUsageLimits`): the execute "
            "buckets of the organisation's workflows, read without taking from them.",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "responses": {
                "200": json_response("The organisation's limits.", ref("UsageLimits")),
                "401": _UNAUTHORIZED,
            },
        },
    },
}
