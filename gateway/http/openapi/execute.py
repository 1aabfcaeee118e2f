"""``POST /api/workflows/{workflowId}/execute``: workflow execute, JSON or SSE."""

from __future__ import annotations

from gateway.http.openapi.components import (
    IN_FLIGHT,
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
    "description": "Seed 004: run an agent's workflow and get its result, or its output live "
    "as Server-Sent Events. `X-API-Key: <ingest key>` (`Authorization: Bearer <ingest key>` "
    "works too).",
}

_DURATION = {
    "type": "object",
    "required": ["duration"],
    "properties": {"duration": {"type": "integer", "minimum": 0, "description": "ms"}},
}

SCHEMAS: dict[str, Json] = {
    "ExecuteBody": {
        "type": "object",
        "description": "The input itself, plus two controls (`stream`, `selectedOutputs`). "
        "When the agent declares an `input_format`, each declared field is coerced to its "
        'type: `number` from `"3"`, `"0.5"`, `"1e3"`; `boolean` from `true/false/1/0/'
        "yes/no/on/off`; `string` from a number or a boolean; `json` from an object, an array "
        "or a string holding one; `files` from one `ExecuteFile` or a list of them; `null` is "
        "kept. Undeclared keys are passed on under `input` only. With no input format, the "
        "whole body (less the controls) is the input.",
        "properties": {
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "`true`: answer with Server-Sent Events as the workflow "
                "produces output.",
            },
            "selectedOutputs": {
                "type": "array",
                "maxItems": 100,
                "description": "Which blocks to stream (all when absent or empty): "
                "`<blockName>.content`, the block named by its declared name (case-insensitive, "
                "spaces ignored) or id; see the agent's `blocks`.",
                "items": {"type": "string", "pattern": "^[^.]+\\.content$"},
                "examples": [["agent1.content"]],
            },
        },
        "additionalProperties": {"description": "An input value."},
    },
    "ExecuteFile": {
        "type": "object",
        "description": "A value of a `files` field: a base64 data URL (stored, at most "
        "`MAX_FILE_BYTES` decoded, handed to the runtime as `{url, name, size, type, "
        "uploadedAt, expiresAt}` with `url` a signed `GET /files/{key}` URL) or an http(s) URL "
        "(passed on as `{url, name, size, type}`, never fetched).",
        "required": ["data"],
        "properties": {
            "type": {
                "enum": ["file", "url"],
                "description": "Default: `file` for a `data:` URL, else `url`.",
            },
            "data": {
                "type": "string",
                "minLength": 1,
                "examples": ["data:application/pdf;base64,JVBERi0xLjQK"],
                "description": "`data:<type>;base64,<data>` (line-wrapped base64 and "
                "percent-encoded data URLs are fine), or an http(s) URL.",
            },
            "name": {"type": "string"},
            "mime": {"type": "string", "examples": ["application/pdf"]},
            "size": {
                "type": "integer",
                "minimum": 0,
                "description": "A `url` file's size, passed on when given.",
            },
        },
    },
    "ExecuteResult": {
        "type": "object",
        "description": "Seed 004's serialized execution result.",
        "required": ["success", "output", "error", "metadata", "runId"],
        "properties": {
            "success": {"type": "boolean"},
            "output": {
                "description": "The result: a `stream` agent's `{blockId: {content}}` (with "
                "`truncated: true` past `MAX_RESULT_BODY`), a `json` agent's result."
            },
            "error": {
                "type": ["string", "null"],
                "description": "Why the run failed or was cancelled.",
            },
            "metadata": _DURATION,
            "runId": {"type": "integer"},
        },
    },
    "ExecuteTimedOut": {
        "type": "object",
        "description": "The window elapsed first; the run goes on (poll it).",
        "required": ["runId", "status", "timedOut"],
        "properties": {
            "runId": {"type": "integer"},
            "status": {"enum": IN_FLIGHT},
            "timedOut": {"const": True},
        },
    },
    "ExecuteChunkFrame": {
        "type": "object",
        "description": "Event stream: a piece of a selected block's output, as it came.",
        "required": ["blockId", "chunk"],
        "properties": {"blockId": {"type": "string"}, "chunk": {"type": "string"}},
    },
    "ExecuteDoneFrame": {
        "type": "object",
        "description": "Event stream: the run completed.",
        "required": ["event", "success", "output", "metadata"],
        "properties": {
            "event": {"const": "done"},
            "success": {"const": True},
            "output": {"description": "As in `ExecuteResult`."},
            "metadata": _DURATION,
        },
    },
    "ExecuteErrorFrame": {
        "type": "object",
        "description": "Event stream: the run failed, was cancelled or did not finish in the "
        "window, or the runtime broke off.",
        "required": ["event", "error"],
        "properties": {"event": {"const": "error"}, "error": {"type": "string"}},
    },
}

_STREAM = """\
Server-Sent Events (`text/event-stream`), each `data: <JSON>` and a blank line, written \
as the workflow produces them: an `ExecuteChunkFrame` per piece of a selected block's \
output; then one `ExecuteDoneFrame` (or, when anything failed once headers were out, one \
`ExecuteErrorFrame`); then `data: [DONE]`. A `: ping` comment follows every \
`SSE_PING_INTERVAL_S` of silence. Headers go out with the first frame or the first ping; a \
failure before that is an ordinary JSON error response. For example:

`data: {"blockId":"12c24471-1b12-52f1-be64-3ff98b1de492","chunk":"One"}`

`data: {"event":"done","success":true,"output":{"12c24471-1b12-52f1-be64-3ff98b1de492":\
{"content":"One"}},"metadata":{"duration":812}}`

`data: [DONE]`"""

# One event of the stream, as OpenAPI 3.2 (``itemSchema``) and tools reading a 3.1 document's
# event-stream ``schema`` per event describe it: its fields, ``data`` holding JSON.
SCHEMAS["ExecuteEvent"] = {
    "type": "object",
    "description": "One Server-Sent Event of the stream (its `data:` field; no `event:` or "
    "`id:` field is sent).",
    "required": ["data"],
    "properties": {
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
}
_WITH_RUN = "(`runId`; the run is failed). With `stream`, only while no header is out; later, "
_WITH_RUN += "an `ExecuteErrorFrame`."

PATHS: dict[str, Json] = {
    "/api/workflows/{workflowId}/execute": {
        "parameters": [
            {
                "name": "workflowId",
                "in": "path",
                "required": True,
                "description": "The agent's id. Anything but a positive integer names no "
                "workflow (404).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            },
            param("X-Request-Id"),
        ],
        "post": {
            "tags": [TAG["name"]],
            "operationId": "executeWorkflow",
            "summary": "Run a workflow: its result, or its output live",
            "description": "The workflow is an agent, with the agent API's tenancy and "
            "eligibility rules; each execute is a run (`trigger_kind = 'execute'`, visible "
            "with `GET /api/agents/{agentId}/runs/{runId}?include=input`). The window is "
            "`min(running_timeout_ms, HARD_CEILING_MS)`. The body is parsed as it arrives, "
            "never held whole. Errors come in this order: 401, 404, 403/422, 413/400, 429. "
            "The agent's own bucket: `EXECUTE_RATE_LIMIT` per `EXECUTE_RATE_WINDOW_S`.",
            "security": [{"apiKey": []}, {"ingestKey": []}],
            "requestBody": json_body(ref("ExecuteBody"), required=False),
            "responses": {
                "200": {
                    "description": "The run ended in the window: the result (`success: "
                    "false` with `error` when it failed or was cancelled). With `stream: "
                    "true`: " + _STREAM,
                    "headers": _RUN_HEADERS,
                    "content": {
                        "application/json": {"schema": ref("ExecuteResult")},
                        "text/event-stream": {"schema": ref("ExecuteEvent")},
                    },
                },
                "202": json_response(
                    "Without `stream`: the window elapsed first; the run goes on, poll it "
                    "with `GET /api/agents/{agentId}/runs/{runId}`.",
                    ref("ExecuteTimedOut"),
                    "X-Run-Id",
                ),
                "400": error(
                    "The body is not a JSON object (or not valid JSON; a number must fit a "
                    "64-bit integer or a double); `stream` is not a boolean; "
                    "`selectedOutputs` is not a list of at most 100 `<block>.content` strings, "
                    "or names an unknown block (`knownBlocks` lists the declared ones); a "
                    "value cannot be coerced to its field's type, or a `required` field is "
                    "missing; a file is malformed; a value PostgreSQL cannot store (a "
                    "`\\u0000`, nesting deeper than 200 levels) (`details` names each field)."
                ),
                "401": error(
                    "No key in `X-API-Key` (or `Authorization: Bearer`), or one that names "
                    "no organisation."
                ),
                "403": error("`allow_external_triggers` is off for this agent."),
                "404": error("No such workflow for this key (another organisation's included)."),
                "413": error(
                    "The body is over `EXECUTE_MAX_REQUEST_BODY` (refused before it is read "
                    "whole), or a file is over `MAX_FILE_BYTES` decoded (`files` and "
                    "`maxFileBytes`; the message names each file and its size)."
                ),
                "422": error(
                    "The agent is not `managed_by: platform`, not `active`, or its "
                    "`output_kind` is not `json` or `stream` (the message lists which); a "
                    "`stream` agent's runtime cannot stream; or the agent's `input_format` is "
                    "invalid."
                ),
                "429": {
                    **RATE_LIMITED,
                    "description": "The agent's execute bucket is empty (across every "
                    "replica). `retryAfterMs` in the body.",
                },
                "500": error("The runtime could not be invoked " + _WITH_RUN),
                "503": error(
                    "PostgreSQL or Redis cannot be reached, or the input files could not be "
                    "stored (`runId`; the run is failed); retry shortly.",
                    "Retry-After",
                ),
                "504": error("The runtime sent no answer within the window " + _WITH_RUN),
            },
        },
    },
}
