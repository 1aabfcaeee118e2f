"""How errors reach callers: JSON before the headers, a broken transfer after them."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import REQUEST_ID
from gateway.middleware import errors_to_json, on_prepare, request_context


def app_with(handler: web.Handler) -> web.Application:
    app = web.Application(middlewares=[request_context, errors_to_json])
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", handler)
    return app


async def test_a_bug_before_the_headers_is_a_json_500_with_the_request_id() -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        raise KeyError("oops")

    async with TestClient(TestServer(app_with(broken))) as client:
        resp = await client.get("/", headers={"X-Request-Id": "req-1"})
        assert resp.status == 500
        assert await resp.json() == {"error": "Internal server error", "requestId": "req-1"}


async def test_a_failure_after_the_headers_aborts_instead_of_gluing_an_error_on() -> None:
    async def half_sent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first half of a file")
        assert request[REQUEST_ID]
        raise RuntimeError("died mid-stream")

    async with TestClient(TestServer(app_with(half_sent))) as client:
        resp = await client.get("/")
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
