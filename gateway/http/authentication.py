"""Who is calling: the first step of every authenticated handler.

Each function reads the header its API names and answers with the organisation behind the key
(or raises the 401 of that API); the keys themselves are checked in ``gateway.security.auth``.
Two routes authenticate inside their domain service instead, because the credential they
check is bound to a run there: the run callback (its callback token) and credential resolve
(an agent API key and a credentials token).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.http.keys import LOOKUP_CACHE, SETTINGS
from gateway.security.auth import (
    check_admin_token,
    org_for_api_key,
    org_for_ingest_key,
    org_for_v0_key,
)


async def ingest_key_org(request: web.Request) -> uuid.UUID:
    """The agent API's caller: the ingest key in ``Authorization: Bearer``."""
    return await org_for_ingest_key(request.app[LOOKUP_CACHE], request.headers.get("Authorization"))


async def execute_key_org(request: web.Request) -> uuid.UUID:
    """Workflow execute's caller: the ingest key in ``X-API-Key``, or else in
    ``Authorization: Bearer``."""
    return await org_for_api_key(
        request.app[LOOKUP_CACHE],
        request.headers.get("X-API-Key"),
        request.headers.get("Authorization"),
    )


async def v0_key_org(request: web.Request) -> uuid.UUID:
    """The ``/v0`` API's caller: the ingest key in ``Authorization``, bare or
    ``Bearer``; the 401 is in the ``/v0`` shape."""
    # config_dict: /v0 is a sub-application, and the cache belongs to the main one.
    return await org_for_v0_key(
        request.config_dict[LOOKUP_CACHE], request.headers.get("Authorization")
    )


def require_admin(request: web.Request) -> None:
    """The admin API's caller: the operator's ``ADMIN_TOKEN`` in ``Authorization: Bearer``."""
    check_admin_token(request.app[SETTINGS].admin_token, request.headers.get("Authorization"))
