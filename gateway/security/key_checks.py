"""Who is calling: ingest keys (per organisation) and the operator's admin token."""

from __future__ import annotations

import hmac
import uuid

from gateway.errors import Unauthorized, v0_error
from gateway.security.apikeys import MAX_KEY_LENGTH, bearer_token, hash_key
from store.lookup_cache import LookupCache
from store.models import Agent

_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agent-gateway"'}


async def org_for_ingest_key(lookups: LookupCache, authorization: str | None) -> uuid.UUID:
    """The organisation whose ingest key is in ``Authorization: Bearer``; 401 otherwise."""
    token = bearer_token(authorization)
    org_id = None if token is None else await lookups.org_for_ingest_key(hash_key(token))
    if org_id is None:
        raise Unauthorized("Missing or invalid bearer token", headers=_BEARER_CHALLENGE)
    return org_id


async def agent_for_api_key(lookups: LookupCache, authorization: str | None) -> Agent:
    """The agent whose API key is in ``Authorization: Bearer``; 401 otherwise.

    A run's own code calls with this key (it came in the run's trigger payload).
    """
    token = bearer_token(authorization)
    agent = None if token is None else await lookups.agent_by_api_key(hash_key(token))
    if agent is None:
        raise Unauthorized("Missing or invalid agent API key", headers=_BEARER_CHALLENGE)
    return agent


def check_admin_token(expected: str, authorization: str | None) -> None:
    """Raise 401 unless ``Authorization: Bearer`` carries the admin token."""
    token = bearer_token(authorization)
    if not expected:
        raise Unauthorized("The admin API is disabled: set ADMIN_TOKEN to enable it")
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Missing or invalid admin token", headers=_BEARER_CHALLENGE)


async def org_for_api_key(
    lookups: LookupCache, api_key: str | None, authorization: str | None
) -> uuid.UUID:
    """The organisation of the ingest key in ``X-API-Key`` (workflow execute), or else in
    ``Authorization: Bearer``; 401 otherwise."""
    token = (api_key or "").strip() or bearer_token(authorization)
    if token is not None and len(token) > MAX_KEY_LENGTH:
        token = None
    org_id = None if not token else await lookups.org_for_ingest_key(hash_key(token))
    if org_id is None:
        raise Unauthorized("Missing or invalid API key (send it in X-API-Key)")
    return org_id


def bare_or_bearer_token(authorization: str | None) -> str | None:
    """The key of ``Authorization: <key>`` (the /v0 API's bare form) or ``Authorization: Bearer
    <key>``; ``None`` when there is none or the header has another shape."""
    header = (authorization or "").strip()
    if not header:
        return None
    if " " not in header:
        token: str | None = header
    else:
        token = bearer_token(header)
    if token is None or len(token) > MAX_KEY_LENGTH:
        return None
    return token


async def org_for_v0_key(lookups: LookupCache, authorization: str | None) -> uuid.UUID:
    """The organisation of the ingest key in ``Authorization`` (bare or ``Bearer``); 401 in the
    ``/v0`` shape otherwise."""
    token = bare_or_bearer_token(authorization)
    org_id = None if token is None else await lookups.org_for_ingest_key(hash_key(token))
    if org_id is None:
        raise v0_error(
            Unauthorized,
            "Missing or invalid API key: send it as 'Authorization: <API key>'",
            "unauthorized",
        )
    return org_id
