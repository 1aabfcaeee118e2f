"""How errors reach callers: JSON before the headers, a broken transfer after them."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.errors import Conflict, Forbidden, v0_error
from gateway.http.app_keys import REQUEST_ID
from gateway.http.middleware import errors_to_json, on_prepare, request_context, v0_errors_to_json


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


def app_with_v0(handler: web.Handler) -> web.Application:
    """The gateway's layout: the agent API's errors outside, the /v0 API's under /v0."""
    app = app_with(handler)
    v0 = web.Application(middlewares=[v0_errors_to_json])
    v0.router.add_get("/thing", handler)
    app.add_subapp("/v0", v0)
    return app


async def test_under_v0_every_error_takes_seed_003s_shape() -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        raise {
            "outage": ConnectionRefusedError("db down"),
            "domain": Conflict("Run ended", extra={"runId": 7}),
            "coded": v0_error(Forbidden, "Not yours", "forbidden", {"job_id": "7"}),
        }[request.query["what"]]

    async with TestClient(TestServer(app_with_v0(failing))) as client:
        resp = await client.get("/v0/thing?what=outage")
        assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        assert (await resp.json())["error"]["code"] == "service_unavailable"

        resp = await client.get("/v0/thing?what=domain")
        assert (resp.status, await resp.json()) == (
            409,
            {"error": {"code": "conflict", "message": "Run ended", "details": {"runId": 7}}},
        )

        resp = await client.get("/v0/thing?what=coded")
        assert await resp.json() == {
            "error": {"code": "forbidden", "message": "Not yours", "details": {"job_id": "7"}}
        }

        resp = await client.delete("/v0/thing")
        assert (resp.status, resp.headers["Allow"]) == (405, "GET,HEAD")
        assert await resp.json() == {
            "error": {
                "code": "method_not_allowed",
                "message": "Method Not Allowed",
                "details": None,
            }
        }

        # The same failure outside /v0 keeps the agent API's shape.
        resp = await client.get("/?what=domain")
        assert await resp.json() == {"error": "Run ended", "runId": 7}


async def test_under_v0_a_failure_after_the_headers_still_aborts() -> None:
    async def half_sent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first half of a ZIP")
        raise RuntimeError("died mid-stream")

    async with TestClient(TestServer(app_with_v0(half_sent))) as client:
        resp = await client.get("/v0/thing")
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
