"""The routes of the OpenAPI document, for tests that walk every one of a kind."""

from __future__ import annotations

import re
import uuid
from typing import Any

from gateway.http.openapi import build_document

_METHODS = ("get", "post", "put", "patch", "delete")
# Path parameters that name a UUID; every other one is a numeric id.
_UUID_PARAMS = {"orgId", "credentialId", "package_id"}


def protected_operations() -> list[tuple[str, str]]:
    """``(METHOD, path template)`` of every operation behind a key or token."""
    document: dict[str, Any] = build_document()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method in _METHODS and operation.get("security"):
                found.append((method.upper(), path))
    return found


def concrete(path: str) -> str:
    """``path`` with each parameter given a value of its kind (``1``, or a fresh UUID)."""

    def value(match: re.Match[str]) -> str:
        return str(uuid.uuid4()) if match.group(1) in _UUID_PARAMS else "1"

    return re.sub(r"\{(\w+)\}", value, path)
