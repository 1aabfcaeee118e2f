"""Probes and metrics for load balancers, orchestrators and Prometheus (no auth)."""

from __future__ import annotations

from gateway.http.openapi.components import Json, headers, json_response

TAG = {"name": "operations", "description": "Health, readiness and metrics. No auth."}

_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "unavailable"]},
        "checks": {
            "type": "object",
            "required": ["postgres", "redis", "process"],
            "description": "`ok`, or what failed (`unavailable: <error>`, `draining`).",
            "properties": {
                "postgres": {"type": "string"},
                "redis": {"type": "string"},
                "process": {"enum": ["ok", "draining"]},
            },
        },
    },
}

PATHS: dict[str, Json] = {
    "/healthz": {
        "get": {
            "tags": [TAG["name"]],
            "operationId": "healthz",
            "summary": "Liveness",
            "description": "200 while the process answers (even while draining).",
            "responses": {
                "200": json_response(
                    "The process is alive.",
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"const": "ok"}},
                    },
                )
            },
        }
    },
    "/readyz": {
        "get": {
            "tags": [TAG["name"]],
            "operationId": "readyz",
            "summary": "Readiness",
            "description": "200 only while PostgreSQL and Redis answer (1 s bound each) and "
            "the process is not draining.",
            "responses": {
                "200": json_response("Ready for traffic.", _READINESS),
                "503": json_response("Not ready: `checks` names what failed.", _READINESS),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": [TAG["name"]],
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": "Text exposition format 0.0.4 (OpenMetrics when the `Accept` "
            "header asks for it). The metric list is in README, Operations.",
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "headers": headers(),
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                }
            },
        }
    },
}
