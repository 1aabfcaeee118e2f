"""Probes and metrics for load balancers, orchestrators and Prometheus (no auth)."""

from __future__ import annotations

from gateway.http import response_bodies
from gateway.http.openapi.components import PUBLIC, Json, headers, json_response

TAG = {"name": "operations", "description": "Health, readiness and metrics. No auth."}

PATHS: dict[str, Json] = {
    "/healthz": {
        "get": {
            "tags": [TAG["name"]],
            "security": PUBLIC,
            "operationId": "healthz",
            "summary": "Liveness",
            "description": "200 while the process answers (even while draining).",
            "responses": {
                "200": json_response(
                    "The process is alive.",
                    response_bodies.Alive,
                )
            },
        }
    },
    "/readyz": {
        "get": {
            "tags": [TAG["name"]],
            "security": PUBLIC,
            "operationId": "readyz",
            "summary": "Readiness",
            "description": "200 while this replica can usefully take traffic: not draining, "
            "its database pool open. PostgreSQL and Redis are not asked: an outage of either is "
            "every replica's, and each answers it in-band (`/healthz/dependencies` reports it).",
            "responses": {
                "200": json_response("Ready for traffic.", response_bodies.Readiness),
                "503": json_response("Not ready: `checks` names why.", response_bodies.Readiness),
            },
        }
    },
    "/healthz/dependencies": {
        "get": {
            "tags": [TAG["name"]],
            "security": PUBLIC,
            "operationId": "dependencies",
            "summary": "PostgreSQL and Redis as this replica sees them",
            "description": "Both probed at once. For people and monitors, never for a probe: "
            "the replica keeps serving through either outage.",
            "responses": {
                "200": json_response("Both answer.", response_bodies.Dependencies),
                "503": json_response(
                    "One or both do not: each named.", response_bodies.Dependencies
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": [TAG["name"]],
            "security": PUBLIC,
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
