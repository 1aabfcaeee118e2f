"""``/openapi.json`` and ``/docs``: the API's description, for tools and for people."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from gateway.http.openapi import build_document
from gateway.http.openapi.render import render_html

routes = web.RouteTableDef()


@functools.cache
def _document() -> bytes:
    # The document depends on the code alone: built once per process.
    return json.dumps(build_document(), separators=(",", ":")).encode()


@functools.cache
def _page() -> str:
    return render_html(build_document())


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every public route."""
    return web.Response(
        body=_document(),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


@routes.get("/docs")
async def docs_page(request: web.Request) -> web.Response:
    """The same document as a reference page."""
    return web.Response(
        text=_page(),
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )
