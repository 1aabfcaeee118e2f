"""The OpenAPI 3.1 document of every public route, assembled from one module per route group.

Each group module (``agent_runs``, ``callbacks``, ``credentials``, ``execute``, ``files``,
``admin``, ``ops``) holds a ``TAG``, its
``PATHS`` and, optionally, ``SCHEMAS`` of its own; shared pieces live in ``components``. To
document a new route, add its path to its group's ``PATHS`` (or add a module and list it in
``ROUTE_GROUPS``). ``tests/http/test_openapi.py`` fails for any route the application
registers that the document does not describe.
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from gateway.http.openapi import (
    admin,
    agent_runs,
    callbacks,
    components,
    credentials,
    execute,
    files,
    ops,
    packages,
)
from gateway.http.openapi.components import Json

ROUTE_GROUPS: tuple[ModuleType, ...] = (
    agent_runs,
    callbacks,
    credentials,
    execute,
    files,
    admin,
    ops,
    packages,
)

# Routes that serve the document itself, or that are not part of the API contract.
UNDOCUMENTED_ROUTES = frozenset({"/openapi.json", "/docs"})

_DESCRIPTION = """\
Starts agent runs on workflow runtimes (n8n webhooks, Trigger.dev tasks) and returns their
results: inline JSON, a run id to poll, or the runtime's file streamed straight through.

Every response carries `X-Request-Id`. Every error body is JSON: `{"error": "...", ...}`,
with `runId` once a run exists.
"""


def _version() -> str:
    try:
        return version("agent-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def build_document() -> Json:
    """The whole document, freshly built (callers may cache it)."""
    paths: Json = {}
    schemas: Json = dict(components.SCHEMAS)
    tags = []
    for group in ROUTE_GROUPS:
        tags.append(group.TAG)
        for path, item in group.PATHS.items():
            if path in paths:
                raise ValueError(f"{path} is documented twice")
            paths[path] = item
        for name, schema in getattr(group, "SCHEMAS", {}).items():
            if name in schemas:
                raise ValueError(f"schema {name} is defined twice")
            schemas[name] = schema
    _add_abuse_rows(paths)
    document: Json = {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-gateway",
            "version": _version(),
            "description": _DESCRIPTION,
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": components.PARAMETERS,
            "headers": components.HEADERS,
            "securitySchemes": {
                "ingestKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An organisation's ingest key (`igk_...`).",
                },
                "agentKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The agent API key from the run's trigger payload (`agk_...`).",
                },
                "v0Key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "An ingest key, bare (`Authorization: igk_...`), as seed 003 "
                    "sends it; `Bearer igk_...` works too.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "An organisation's ingest key (`igk_...`), as seed 004 "
                    "sends it.",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator's `ADMIN_TOKEN`.",
                },
            },
        },
    }
    # The group modules' dicts are shared; hand out a copy nobody can alter them through.
    return copy.deepcopy(document)


def _add_abuse_rows(paths: Json) -> None:
    """Every operation that takes a key may be refused for its address's failed attempts
    (429), and every one that takes a body may time out reading it (408)."""
    for item in paths.values():
        for method in ("get", "put", "post", "patch", "delete"):
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation["responses"]
            if operation.get("security"):
                responses.setdefault("429", components.TOO_MANY_FAILURES)
            if "requestBody" in operation:
                responses.setdefault("408", components.BODY_TIMEOUT)
