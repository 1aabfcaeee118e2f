"""``/api/agents/{agentId}/runs/...``: the agent API callers use with an ingest key."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema

from gateway.http import response_bodies
from gateway.http.openapi.components import (
    BAD_BODY,
    NOT_FOUND_AGENT,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    Json,
    error,
    headers,
    json_body,
    json_response,
    param,
    ref,
)
from gateway.http.parsing import request_bodies

TAG = {
    "name": "agent runs",
    "description": "Start runs and get their results back. `Authorization: Bearer <ingest key>`.",
}
_SECURITY: list[Json] = [{"ingestKey": []}]
_TRIGGER_BODY = json_body(ref("TriggerBody"), required=False)
_NOT_ELIGIBLE = error(
    "The agent is not `managed_by: platform`, not `active`, or its `output_kind` does not "
    "fit this endpoint (the message lists which)."
)
_FORBIDDEN = error("`allow_external_triggers` is off for this agent.")
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when an Idempotency-Key named an earlier run, which is the answer.",
        "schema": {"const": "true"},
    }
}
_BAD_KEY = error(
    "As for the other triggers, or an Idempotency-Key that is not 1-255 visible ASCII characters."
)
_KEY_REUSED = error(
    "Not eligible (as for trigger-and-wait), or the Idempotency-Key was used with a different "
    "body (`runId` names its run)."
)
_COMMON = {
    "400": BAD_BODY,
    "401": UNAUTHORIZED,
    "403": _FORBIDDEN,
    "404": NOT_FOUND_AGENT,
    "413": TOO_LARGE,
}


SCHEMAS: dict[str, type[Schema]] = {
    "TriggerBody": request_bodies.TriggerBody,
    "RegisterBody": request_bodies.RegisterBody,
    "Registration": response_bodies.Registration,
    "IngestBody": request_bodies.IngestBody,
    "Ingested": response_bodies.Ingested,
}

_REPORT_TOO_LARGE = error("The body is over `MAX_RESULT_BODY` (the most a run may report).")
_REPORT_RATE_LIMITED = {
    **RATE_LIMITED,
    "description": "The agent's register/ingest bucket (`REPORT_RATE_LIMIT` per "
    "`REPORT_RATE_WINDOW_S`, across every replica) is empty. `retryAfterMs` in the body.",
}
_REGISTERED = {
    "Cache-Control": {
        "required": True,
        "schema": {"const": "no-store"},
        "description": "The answer holds a token.",
    }
}


def _operation(operation_id: str, summary: str, description: str, **parts: Any) -> Json:
    return {
        "tags": [TAG["name"]],
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "security": _SECURITY,
        **parts,
    }


PATHS: dict[str, Json] = {
    "/api/agents/{agentId}/runs/trigger": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "triggerRun",
            "Start a run; answer at once",
            "Creates the run and invokes the runtime in the background (the agent SDK's "
            "`triggerRun`). Has its own per-agent bucket (`TRIGGER_RATE_LIMIT` per "
            "`TRIGGER_RATE_WINDOW_S`).",
            parameters=[param("Idempotency-Key")],
            requestBody=_TRIGGER_BODY,
            responses={
                "202": {
                    **json_response("The run was created.", ref("RunAccepted")),
                    "headers": {**headers(), **_REPLAYED},
                },
                **_COMMON,
                "400": _BAD_KEY,
                "422": _KEY_REUSED,
                "429": RATE_LIMITED,
                "503": UNAVAILABLE,
            },
        ),
    },
    "/api/agents/{agentId}/runs/trigger-and-wait": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "triggerAndWait",
            "Start a run and wait for its result",
            "Holds the connection until the run ends or the wait window elapses. "
            "Shares a 5-a-minute bucket per agent with trigger-and-download. Retried with its "
            "`Idempotency-Key` (same body) within 24 h, it starts nothing and waits for the run "
            "the key started: its terminal row at once, or its end within this call's window "
            "(200, or 202 `timedOut`), with `Idempotent-Replayed: true`; the runtime is not "
            "invoked again, and no bucket token is taken.",
            parameters=[param("Idempotency-Key")],
            requestBody=_TRIGGER_BODY,
            responses={
                "200": {
                    **json_response(
                        "The run ended in the window (`completed`, `failed` or `cancelled`).",
                        ref("Run"),
                    ),
                    "headers": {**headers(), **_REPLAYED},
                },
                "202": {
                    **json_response(
                        "The window elapsed first; poll `GET .../runs/{runId}`.",
                        ref("RunTimedOut"),
                    ),
                    "headers": {**headers(), **_REPLAYED},
                },
                **_COMMON,
                "400": _BAD_KEY,
                "422": _KEY_REUSED,
                "429": RATE_LIMITED,
                "500": error(
                    "The runtime could not be invoked (unreachable, or it refused the call); "
                    "the run is failed (`runId`)."
                ),
                "503": UNAVAILABLE,
                "504": error(
                    "The runtime did not answer the invocation within the window; the run is "
                    "failed (`runId`)."
                ),
            },
        ),
    },
    "/api/agents/{agentId}/runs/trigger-and-download": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "triggerAndDownload",
            "Start a run and stream its file",
            "For an agent whose `output_kind` is `file_download`. The runtime's file is "
            "streamed straight through, never buffered. If "
            "the runtime fails mid-file the connection is aborted (no clean end of body). "
            "Shares a 5-a-minute bucket per agent with trigger-and-wait. Retried with its "
            "`Idempotency-Key` (same body) within 24 h: 409 with the run the key started and "
            "its status; the file is never stored, so it cannot be sent again, and no second "
            "run is started.",
            parameters=[param("Idempotency-Key")],
            requestBody=_TRIGGER_BODY,
            responses={
                "200": {
                    "description": "The file, streamed. `Content-Type` and "
                    "`Content-Disposition` come from the runtime (a disposition is "
                    "synthesized when it sent none); `Content-Length` only when the runtime "
                    "sent one.",
                    "headers": {
                        **headers("X-Run-Id"),
                        "Content-Disposition": {
                            "required": True,
                            "schema": {"type": "string"},
                            "description": 'e.g. `attachment; filename="report.csv"`',
                        },
                        "Cache-Control": {"schema": {"const": "no-store"}},
                    },
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "202": json_response(
                    'No file: the runtime only acknowledged the run (n8n\'s `200 {"message": '
                    '"Workflow was started"}`, a 202 or 204, or any 2xx when the agent\'s '
                    "`runtime.result_delivery` is `callback`). The run goes on, reported "
                    "through callbacks (and failed at its deadline otherwise); poll "
                    "`GET .../runs/{runId}`.",
                    response_bodies.DownloadAcknowledged,
                ),
                **_COMMON,
                "400": _BAD_KEY,
                "409": {
                    **error(
                        "The Idempotency-Key already started a run: `runId` and its `status` "
                        "(read it with `GET .../runs/{runId}`); nothing was started."
                    ),
                    "headers": {**headers(), **_REPLAYED},
                },
                "422": _KEY_REUSED,
                "429": RATE_LIMITED,
                "500": error("The runtime could not be invoked; the run is failed (`runId`)."),
                "502": error(
                    "The runtime answered JSON (`WorkflowReturnedJson: ...`), an error status "
                    "or an empty body; the run is failed (`runId`)."
                ),
                "503": UNAVAILABLE,
                "504": error(
                    "No response headers within the wait window; the run is failed (`runId`)."
                ),
            },
        ),
    },
    "/api/agents/{agentId}/runs/register": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "registerRun",
            "Make a run the runtime started itself known",
            "The agent SDK's `registerRun`, for a run started by a schedule or another "
            "trigger. The "
            "run is created `running`, with a deadline of the agent's `running_timeout_ms`; its "
            "code reports through `POST /api/runs/{runId}/callback` with the agent API key. "
            "The same `externalRunId` again (per agent) names the same run, however many "
            "registrations race. Errors come in this order: 401, 413/400, 404, 429, 422. "
            "Shares a per-agent bucket with ingest.",
            requestBody=json_body(ref("RegisterBody")),
            responses={
                "201": {
                    **json_response("The run was created.", ref("Registration")),
                    "headers": {**headers(), **_REGISTERED},
                },
                "200": {
                    **json_response(
                        "This `externalRunId` was registered before: the same run, with a "
                        "fresh token.",
                        ref("Registration"),
                    ),
                    "headers": {**headers(), **_REGISTERED},
                },
                "400": error(
                    "The body is not a JSON object, `externalRunId` is missing, empty or over "
                    "255 characters, or the body holds what PostgreSQL cannot store (a "
                    "`\\u0000`); `details` names each field."
                ),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND_AGENT,
                "413": _REPORT_TOO_LARGE,
                "422": error(
                    "The agent is not `managed_by: platform` (a standalone agent uses ingest) "
                    "or not `active` (the message lists which)."
                ),
                "429": _REPORT_RATE_LIMITED,
                "503": UNAVAILABLE,
            },
        ),
    },
    "/api/agents/{agentId}/runs/ingest": {
        "parameters": [param("agentId"), param("X-Request-Id")],
        "post": _operation(
            "ingestRun",
            "Report a standalone agent's run",
            "The agent SDK's `ingestRun`: the run is found by `externalRunId` or created, and the "
            "reported status recorded (through the same event stream as callbacks, so `GET` "
            "shows it once the store consumer has applied it). Errors come in this order: "
            "401, 413/400, 404, 429, 422, 409. Shares a per-agent bucket with register.",
            requestBody=json_body(ref("IngestBody")),
            responses={
                "202": json_response("The report was recorded.", ref("Ingested")),
                "400": error(
                    "The body is not a JSON object, `externalRunId` is missing, empty or over "
                    "255 characters, `status` is not a run status, `error` is neither a string "
                    "nor `{message, ...}`, or the body holds what PostgreSQL cannot store; "
                    "`details` names each field."
                ),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND_AGENT,
                "409": error(
                    "The run has already ended: the report changed nothing (`runId`, `status`)."
                ),
                "413": _REPORT_TOO_LARGE,
                "422": error("The agent is not `managed_by: standalone`."),
                "429": _REPORT_RATE_LIMITED,
                "503": UNAVAILABLE,
            },
        ),
    },
    "/api/agents/{agentId}/runs/{runId}": {
        "parameters": [param("agentId"), param("runId"), param("X-Request-Id")],
        "get": _operation(
            "getRun",
            "Read a run",
            "The poll target of every trigger endpoint.",
            parameters=[
                {
                    "name": "include",
                    "in": "query",
                    "required": False,
                    "description": "`input` adds the input the run was given; other values "
                    "are ignored.",
                    "schema": {"type": "string", "examples": ["input"]},
                }
            ],
            responses={
                "200": json_response("The run.", ref("Run")),
                "401": UNAUTHORIZED,
                "404": error("No such agent or run for this key."),
                "503": UNAVAILABLE,
            },
        ),
    },
    "/api/agents/{agentId}/runs/{runId}/cancel": {
        "parameters": [param("agentId"), param("runId"), param("X-Request-Id")],
        "post": _operation(
            "cancelRun",
            "Cancel a run",
            "Marks the run cancelled; a waiter answers `cancelled`, and a Trigger.dev run is "
            "asked to cancel too.",
            responses={
                "200": json_response(
                    "The run is cancelled.",
                    response_bodies.RunCancelled,
                ),
                "401": UNAUTHORIZED,
                "404": error("No such agent or run for this key."),
                "409": error("The run has already ended (`runId`, `status`)."),
                "503": UNAVAILABLE,
            },
        ),
    },
}
