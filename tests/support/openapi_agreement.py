"""Does a request an SDK sent agree with the OpenAPI document? (Route, method, body fields.)"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.http.openapi import build_document


@dataclass(frozen=True)
class SentRequest:
    """What an SDK put on the wire: method, path (no query) and its JSON body, if any."""

    method: str
    path: str
    body: Any = None


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = document["components"]["schemas"][name]
    return schema


def _properties(document: dict[str, Any], schema: dict[str, Any]) -> set[str] | None:
    """The fields a body schema names; None when it leaves them open."""
    schema = _resolve(document, schema)
    names: set[str] = set(schema.get("properties", {}))
    for key in ("allOf", "oneOf", "anyOf"):
        for part in schema.get(key, []):
            found = _properties(document, part)
            if found is None:
                return None
            names |= found
    if not names:
        return None
    return names


def disagreements(sent: Iterable[SentRequest]) -> list[str]:
    """One line per request that the document does not describe (empty when all agree)."""
    document = build_document()
    routes = [
        (re.compile("^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(path)) + "$"), path)
        for path in document["paths"]
    ]
    problems = []
    for request in sent:
        templates = [path for pattern, path in routes if pattern.match(request.path)]
        operation = next(
            (
                document["paths"][path][request.method.lower()]
                for path in templates
                if request.method.lower() in document["paths"][path]
            ),
            None,
        )
        if operation is None:
            problems.append(f"{request.method} {request.path}: not in the OpenAPI document")
            continue
        if not isinstance(request.body, dict):
            continue
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            problems.append(f"{request.method} {request.path}: sends JSON the route does not take")
            continue
        known = _properties(document, content["application/json"]["schema"])
        unknown = set(request.body) - known if known is not None else set()
        if unknown:
            problems.append(
                f"{request.method} {request.path}: fields {sorted(unknown)} undocumented"
            )
    return problems
