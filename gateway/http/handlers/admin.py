"""The admin API (``/admin``): what an agent settings page would call."""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.errors import NotFound
from gateway.http.keys import ADMIN_SERVICE, CREDENTIAL_SERVICE, SETTINGS
from gateway.http.request_parsing import path_id, read_json_object
from gateway.security.auth import check_admin_token

routes = web.RouteTableDef()


def _authorize(request: web.Request) -> None:
    check_admin_token(request.app[SETTINGS].admin_token, request.headers.get("Authorization"))


def _org_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["orgId"])
    except ValueError:
        raise NotFound("Organisation not found") from None


async def _body(request: web.Request) -> dict[str, object]:
    return await read_json_object(
        request, limit=request.app[SETTINGS].max_request_body, allow_empty=True
    )


@routes.post("/admin/orgs")
async def create_org(request: web.Request) -> web.Response:
    """``{name}`` → ``{id, name}``."""
    _authorize(request)
    return web.json_response(
        await request.app[ADMIN_SERVICE].create_org(await _body(request)), status=201
    )


@routes.post("/admin/orgs/{orgId}/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new ingest key, shown once."""
    _authorize(request)
    org_id = _org_id(request)
    await _body(request)
    return web.json_response(await request.app[ADMIN_SERVICE].create_ingest_key(org_id), status=201)


@routes.post("/admin/orgs/{orgId}/users")
async def create_user(request: web.Request) -> web.Response:
    """``{email}`` → ``{id}``, a member of the organisation."""
    _authorize(request)
    org_id = _org_id(request)
    result = await request.app[ADMIN_SERVICE].create_user(org_id, await _body(request))
    return web.json_response(result, status=201)


@routes.post("/admin/orgs/{orgId}/agents")
async def create_agent(request: web.Request) -> web.Response:
    """A new agent, with its API key shown once."""
    _authorize(request)
    org_id = _org_id(request)
    result = await request.app[ADMIN_SERVICE].create_agent(org_id, await _body(request))
    return web.json_response(result, status=201)


@routes.patch("/admin/agents/{agentId}")
async def update_agent(request: web.Request) -> web.Response:
    """Change any of an agent's settings."""
    _authorize(request)
    agent_id = path_id(request, "agentId", "Agent")
    result = await request.app[ADMIN_SERVICE].update_agent(agent_id, await _body(request))
    return web.json_response(result)


@routes.post("/admin/orgs/{orgId}/credentials")
async def create_credential(request: web.Request) -> web.Response:
    """``{name, type, data}`` → ``{id, name, type}``; the data is sealed at rest."""
    _authorize(request)
    org_id = _org_id(request)
    result = await request.app[CREDENTIAL_SERVICE].create(org_id, await _body(request))
    return web.json_response(result, status=201)
