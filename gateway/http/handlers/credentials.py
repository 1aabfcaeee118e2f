"""``GET /api/credentials/{id}/resolve``: a run's code reads a credential (the agent SDK)."""

from __future__ import annotations

from aiohttp import web

from gateway.http.keys import CREDENTIAL_SERVICE
from gateway.http.views import credential_view

routes = web.RouteTableDef()


@routes.get("/api/credentials/{credentialId}/resolve")
async def resolve_credential(request: web.Request) -> web.Response:
    """The decrypted credential, for the agent API key of an agent whose run holds a valid
    ``X-Credentials-Token``; 401/403/404 otherwise (see ``gateway.security.credentials``)."""
    credential = await request.app[CREDENTIAL_SERVICE].resolve(
        request.match_info["credentialId"],
        authorization=request.headers.get("Authorization"),
        credentials_token=request.headers.get("X-Credentials-Token"),
    )
    # The answer is a secret: no cache on the way may keep it.
    return web.json_response(
        credential_view(credential), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
