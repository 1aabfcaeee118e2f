"""The OpenAPI 3.1 document of every public route, assembled from one module per route group.

Each group module (``agent_runs``, ``callbacks``, ``credentials``, ``execute``, ``files``,
``admin``, ``ops``, ``packages``) holds a ``TAG``, its ``PATHS`` (the per-route prose: summary,
description, what each status means) and, optionally, ``SCHEMAS``: the marshmallow schemas of
its bodies, by component name. The bodies are not described again here: apispec's marshmallow
plugin (``plugin.BodySchemas``) writes each component from the schema that validates the
request (``gateway.http.parsing.request_bodies``, ``gateway.admin.bodies``) or declares the response
(``gateway.http.response_bodies``). ``JSON_SCHEMAS`` holds the little that is not a body (an
event-stream event). Shared pieces live in ``components``. To document a new route, add its
path to its group's ``PATHS`` (or add a module and list it in ``ROUTE_GROUPS``).
``tests/http/test_openapi.py`` fails for any route the application
registers that the document does not describe.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from apispec import APISpec

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
from gateway.http.openapi.plugin import BodySchemas, drop_const_defaults

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


_LICENSE = {"name": "Proprietary: for the organisation's internal callers"}
# Relative: the document describes whichever gateway serves it (each replica, any host name).
_SERVERS = [{"url": "/", "description": "The gateway that serves this document."}]
_METHODS = ("get", "put", "post", "patch", "delete")


def _version() -> str:
    try:
        return version("agent-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def build_document() -> Json:
    """The whole document, freshly built (callers may cache it)."""
    spec = APISpec(
        title="agent-gateway",
        version=_version(),
        openapi_version="3.1.0",
        plugins=[BodySchemas()],
        info={"description": _DESCRIPTION, "license": _LICENSE},
        servers=_SERVERS,
    )
    for name, component in components.PARAMETERS.items():
        spec.components.parameter(name, component["in"], component)
    for name, header in components.HEADERS.items():
        spec.components.header(name, header)
    for name, scheme in components.SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    # Hand-written JSON Schema first (what marshmallow cannot say), then the marshmallow
    # schemas: a nested schema registered before the one that holds it is cited by name.
    for group in (components, *ROUTE_GROUPS):
        for name, schema in getattr(group, "JSON_SCHEMAS", {}).items():
            spec.components.schema(name, schema)
    for group in (components, *ROUTE_GROUPS):
        described = getattr(group, "SCHEMA_DESCRIPTIONS", {})
        for name, body in getattr(group, "SCHEMAS", {}).items():
            extra = {"description": described[name]} if name in described else None
            spec.components.schema(name, extra, schema=body)
    paths: Json = {}
    for group in ROUTE_GROUPS:
        spec.tag(group.TAG)
        for path, item in group.PATHS.items():
            if path in paths:
                raise ValueError(f"{path} is documented twice")
            paths[path] = item
    _add_abuse_rows(paths)
    for path, item in paths.items():
        operations = {method: op for method, op in item.items() if method in _METHODS}
        spec.path(path, operations=operations, parameters=item.get("parameters", []))
    document: Json = spec.to_dict()
    # Bodies written in place (not components) did not pass through the plugin's cleanup.
    drop_const_defaults(document)
    return document


def _add_abuse_rows(paths: Json) -> None:
    """Every operation that takes a key may be refused for its address's failed attempts
    (429), and every one that takes a body may time out reading it (408)."""
    for item in paths.values():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation["responses"]
            if operation.get("security"):
                responses.setdefault("429", components.TOO_MANY_FAILURES)
            if "requestBody" in operation:
                responses.setdefault("408", components.BODY_TIMEOUT)
