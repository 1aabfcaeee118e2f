"""``/api/agents/{agentId}/runs/...``: the agent API callers use with an ingest key."""

from __future__ import annotations

from typing import Any

from gateway.openapi.components import (
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
_COMMON = {
    "400": BAD_BODY,
    "401": UNAUTHORIZED,
    "403": _FORBIDDEN,
    "404": NOT_FOUND_AGENT,
    "413": TOO_LARGE,
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
            "Creates the run and invokes the runtime in the background (seed 001 "
            "`triggerRun`). Has its own per-agent bucket (`TRIGGER_RATE_LIMIT` per "
            "`TRIGGER_RATE_WINDOW_S`).",
            parameters=[param("Idempotency-Key")],
            requestBody=_TRIGGER_BODY,
            responses={
                "202": {
                    **json_response("The run was created.", ref("RunAccepted")),
                    "headers": {
                        **headers(),
                        "Idempotent-Replayed": {
                            "description": "`true` when an Idempotency-Key named an earlier "
                            "run, which is the answer.",
                            "schema": {"const": "true"},
                        },
                    },
                },
                **_COMMON,
                "400": error(
                    "As for the other triggers, or an Idempotency-Key that is not 1-255 "
                    "visible ASCII characters."
                ),
                "422": error(
                    "Not eligible (as for trigger-and-wait), or the Idempotency-Key was "
                    "used with a different body (`runId` names its run)."
                ),
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
            "Seed 002. Holds the connection until the run ends or the wait window elapses. "
            "Shares a 5-a-minute bucket per agent with trigger-and-download.",
            requestBody=_TRIGGER_BODY,
            responses={
                "200": json_response(
                    "The run ended in the window (`completed`, `failed` or `cancelled`).",
                    ref("Run"),
                ),
                "202": json_response(
                    "The window elapsed first; poll `GET .../runs/{runId}`.", ref("RunTimedOut")
                ),
                **_COMMON,
                "422": _NOT_ELIGIBLE,
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
            "Seed 000. The runtime's file is streamed straight through, never buffered. If "
            "the runtime fails mid-file the connection is aborted (no clean end of body). "
            "Shares a 5-a-minute bucket per agent with trigger-and-wait.",
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
                **_COMMON,
                "422": _NOT_ELIGIBLE,
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
    "/api/agents/{agentId}/runs/{runId}": {
        "parameters": [param("agentId"), param("runId"), param("X-Request-Id")],
        "get": _operation(
            "getRun",
            "Read a run",
            "The poll target of every trigger endpoint.",
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
                    {
                        "type": "object",
                        "required": ["runId", "status"],
                        "properties": {
                            "runId": {"type": "integer"},
                            "status": {"const": "cancelled"},
                        },
                    },
                ),
                "401": UNAUTHORIZED,
                "404": error("No such agent or run for this key."),
                "409": error("The run has already ended (`runId`, `status`)."),
                "503": UNAVAILABLE,
            },
        ),
    },
}
