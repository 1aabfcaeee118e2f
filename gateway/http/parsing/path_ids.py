"""Ids in request paths: ``/api/agents/{agentId}``, ``/v0/workflows/{workflow_id}`` …

One rule for what a numeric id is (a positive integer that fits PostgreSQL's ``bigint``, in
ASCII digits); what a bad one answers is the API's: the agent API treats it as naming nothing
(404), ``/v0`` as a malformed request (400 in the /v0 error shape).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.errors import BadRequest, NotFound, v0_error

_MAX_ID = 2**63 - 1
# Digits beyond this many cannot fit a bigint: refused before int() is asked to parse them.
_MAX_ID_DIGITS = 19
# How much of a refused id an error message repeats.
_ECHOED_CHARACTERS = 64


def _numeric_id(raw: str) -> int | None:
    """``raw`` as a positive bigint id, or ``None`` when it is not one."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_ID_DIGITS:
        return None
    value = int(raw)
    return value if 0 < value <= _MAX_ID else None


def path_id(request: web.Request, name: str, what: str) -> int:
    """The numeric id in path segment ``name``; anything else names nothing (404
    ``<what> not found``)."""
    value = _numeric_id(request.match_info[name])
    if value is None:
        raise NotFound(f"{what} not found")
    return value


def v0_path_id(request: web.Request, name: str) -> int:
    """The numeric id in path segment ``name``; 400 ``invalid_<name>`` (``/v0``) otherwise."""
    raw = request.match_info[name]
    value = _numeric_id(raw)
    if value is None:
        echoed = raw[:_ECHOED_CHARACTERS]
        raise v0_error(
            BadRequest,
            f"{name} must be a positive integer id, got {echoed!r}",
            f"invalid_{name}",
            {name: echoed},
        )
    return value


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """The UUID in path segment ``name``; anything else names nothing (404
    ``<what> not found``)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"{what} not found") from None
