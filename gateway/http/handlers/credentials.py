"""``GET /api/credentials/{id}/resolve``: a run's code reads a credential (the agent SDK)."""

from __future__ import annotations

from aiohttp import web

from gateway.http.access.authentication import (
    KeyGuardStep,
    authenticate_agent_key,
    authenticate_credentials_token,
)
from gateway.http.app_keys import CREDENTIAL_SERVICE
from gateway.http.views import credential_view

routes = web.RouteTableDef()


@routes.get("/api/credentials/{credentialId}/resolve")
async def resolve_credential(request: web.Request) -> web.Response:
    """The decrypted credential, for the agent API key of an agent whose run holds a valid
    ``X-Credentials-Token``; 401/403/404 otherwise (see ``gateway.security.credentials``)."""
    service = request.app[CREDENTIAL_SERVICE]
    credential_id = request.match_info["credentialId"]
    refused = service.refusals(credential_id)
    # One key guard step for both credentials: the address is looked at once.
    guard = KeyGuardStep(request)
    agent = await authenticate_agent_key(request, guard=guard, on_refused=refused)
    service.admit(agent, credential_id)
    run_id = await authenticate_credentials_token(request, agent, guard=guard, on_refused=refused)
    credential = await service.resolve(credential_id, agent, run_id)
    # The answer is a secret: no cache on the way may keep it.
    return web.json_response(
        credential_view(credential), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
