"""Workflow execute's files: base64 uploads stored and handed on as signed URLs, URL references
passed through untouched, and the limits around them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import make_bytes
from gateway.settings import Settings
from tests.support.execute import api_key, execute_url, stream_agent
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import received
from tests.support.tenants import Tenant, TenantFactory

MB = 1024 * 1024
FILES_FORMAT = [
    {"name": "documents", "type": "files"},
    {"name": "note", "type": "string"},
]


def data_url(content: bytes, mime: str = "application/pdf") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


async def files_agent(tenant: Tenant, runtime: TestServer) -> dict[str, Any]:
    return await stream_agent(tenant, runtime, input_format=FILES_FORMAT)


async def execute(tenant: Tenant, agent: dict[str, Any], body: Any) -> aiohttp.ClientResponse:
    # From a file-like object: a body this size is streamed, as a real client sends it.
    return await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(json.dumps(body).encode()),
    )


async def test_an_upload_becomes_a_signed_url_that_serves_the_same_bytes(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await files_agent(tenant, runtime)
    content = b"%PDF-1.4\n" + make_bytes(300_000)
    body = {
        "documents": [
            {
                "type": "file",
                "data": data_url(content),
                "name": "document.pdf",
                "mime": "application/pdf",
            }
        ]
    }

    resp = await execute(tenant, agent, body)

    assert resp.status == 200, await resp.text()
    payload = received(runtime)[0]["payload"]
    [sent] = payload["documents"]
    assert payload["input"]["documents"] == [sent]
    assert set(sent) == {"url", "name", "size", "type", "uploadedAt", "expiresAt"}
    assert (sent["name"], sent["size"], sent["type"]) == (
        "document.pdf",
        len(content),
        "application/pdf",
    )
    assert sent["uploadedAt"].endswith("Z")
    assert sent["expiresAt"] > sent["uploadedAt"]
    assert sent["url"].startswith(str(tenant.client.make_url("/files/")))

    async with aiohttp.ClientSession() as anyone, anyone.get(sent["url"]) as got:
        assert got.status == 200
        assert got.headers["Content-Type"] == "application/pdf"
        assert got.headers["Content-Length"] == str(len(content))
        assert 'filename="document.pdf"' in got.headers["Content-Disposition"]
        assert await got.read() == content

    # The run records its input with the file reference.
    run_resp = await tenant.client.get(
        f"/api/agents/{agent['id']}/runs/{resp.headers['X-Run-Id']}?include=input",
        headers=tenant.auth,
    )
    run = await run_resp.json()
    assert run["input"]["documents"][0]["name"] == "document.pdf"
    assert run["input"]["documents"][0]["url"].startswith(sent["url"].split("?")[0])


async def test_a_20_mb_file_is_accepted_and_one_byte_more_is_a_413(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await files_agent(tenant, runtime)
    limit = 20 * MB
    content = make_bytes(limit)

    resp = await execute(
        tenant,
        agent,
        {"documents": [{"type": "file", "data": data_url(content), "name": "big.bin"}]},
    )
    assert resp.status == 200, await resp.text()
    [sent] = received(runtime)[0]["payload"]["documents"]
    assert sent["size"] == limit
    async with aiohttp.ClientSession() as anyone, anyone.get(sent["url"]) as got:
        digest = hashlib.sha256()
        async for chunk in got.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()

    too_big = content + b"!"
    resp = await execute(
        tenant,
        agent,
        {"documents": [{"type": "file", "data": data_url(too_big), "name": "too-big.bin"}]},
    )
    assert resp.status == 413
    body = await resp.json()
    assert "'too-big.bin'" in body["error"]
    assert f"{limit + 1} bytes" in body["error"]
    assert body["files"] == [
        {"field": "documents", "index": 0, "name": "too-big.bin", "size": limit + 1}
    ]
    assert len(received(runtime)) == 1


@pytest.mark.parametrize(
    "data",
    [
        "JVBERi0xLjQK",  # base64 without the data: prefix
        "data:application/pdf;base64",  # no comma
        "data:application/pdf;base64,JVBERi0xLjQ",  # truncated
        "data:application/pdf;base64,JVBER!0xLjQK",  # not base64
        "data:application/pdf;base64,JVBERi0x===",  # bad padding
        "data:not a type;base64,JVBERi0xLjQK",
    ],
)
async def test_a_malformed_data_url_is_a_400_never_skipped(
    tenant: Tenant, runtime: TestServer, data: str
) -> None:
    agent = await files_agent(tenant, runtime)

    resp = await execute(
        tenant,
        agent,
        {
            "documents": [
                {"type": "file", "data": "data:text/plain;base64,aGk=", "name": "ok.txt"},
                {"type": "file", "data": data, "name": "bad.pdf"},
            ]
        },
    )

    assert resp.status == 400
    body = await resp.json()
    assert "'documents'" in body["error"]
    assert body["details"]["documents"][0].startswith("[1]:")
    assert received(runtime) == []


async def test_line_wrapped_base64_and_percent_encoded_data_urls_are_accepted(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await files_agent(tenant, runtime)
    content = make_bytes(1000)
    encoded = base64.b64encode(content).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))

    resp = await execute(
        tenant,
        agent,
        {
            "documents": [
                {"type": "file", "data": f"data:application/octet-stream;base64,{wrapped}\n"},
                {"type": "file", "data": "data:text/plain,Hello%2C%20world", "name": "hi.txt"},
            ]
        },
    )

    assert resp.status == 200, await resp.text()
    first, second = received(runtime)[0]["payload"]["documents"]
    assert (first["name"], first["size"]) == ("documents-1.bin", 1000)
    assert (second["name"], second["size"], second["type"]) == ("hi.txt", 12, "text/plain")
    async with aiohttp.ClientSession() as anyone:
        for sent, expected in ((first, content), (second, b"Hello, world")):
            async with anyone.get(sent["url"]) as got:
                assert await got.read() == expected


@pytest.fixture
async def file_host() -> AsyncIterator[tuple[TestServer, list[str]]]:
    """A server that hosts a file and notes every request for it."""
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"%PDF", content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app)
    await server.start_server()
    yield server, hits
    await server.close()


async def test_a_url_reference_is_passed_through_and_never_fetched(
    tenant: Tenant, runtime: TestServer, file_host: tuple[TestServer, list[str]]
) -> None:
    host, hits = file_host
    agent = await files_agent(tenant, runtime)
    url = str(host.make_url("/document.pdf"))

    resp = await execute(
        tenant,
        agent,
        {
            "documents": [
                {"type": "url", "data": url, "name": "document.pdf", "mime": "application/pdf"}
            ]
        },
    )

    assert resp.status == 200, await resp.text()
    [sent] = received(runtime)[0]["payload"]["documents"]
    assert sent == {"url": url, "name": "document.pdf", "size": None, "type": "application/pdf"}
    await asyncio.sleep(0.1)
    assert hits == []


async def test_a_signed_url_is_refused_once_tampered_with(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await files_agent(tenant, runtime)
    body = {
        "documents": [
            {"type": "file", "data": data_url(b"first"), "name": "a.txt"},
            {"type": "file", "data": data_url(b"second"), "name": "b.txt"},
        ]
    }
    assert (await execute(tenant, agent, body)).status == 200
    first, second = received(runtime)[0]["payload"]["documents"]
    parts = urlsplit(first["url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}"
    other_path = urlsplit(second["url"]).path
    flipped = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    later = str(int(query["expires"]) + 3600)

    tampered = {
        "another file's path": f"{base}{other_path}?{parts.query}",
        "a changed signature": f"{base}{parts.path}?expires={query['expires']}&signature={flipped}",
        "a later expiry": f"{base}{parts.path}?expires={later}&signature={query['signature']}",
        "no signature": f"{base}{parts.path}?expires={query['expires']}",
        "no query": f"{base}{parts.path}",
    }
    async with aiohttp.ClientSession() as anyone:
        async with anyone.get(first["url"]) as got:
            assert (got.status, await got.read()) == (200, b"first")
        for what, url in tampered.items():
            async with anyone.get(url) as got:
                assert got.status == 403, what
                assert (await got.json())["error"], what


async def test_a_signed_url_is_refused_after_it_expires(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(file_url_ttl_s=1)
    agent = await files_agent(tenant, runtime)
    assert (
        await execute(tenant, agent, {"documents": [{"data": data_url(b"short-lived")}]})
    ).status == 200
    [sent] = received(runtime)[0]["payload"]["documents"]

    async with aiohttp.ClientSession() as anyone:
        async with anyone.get(sent["url"]) as got:
            assert got.status == 200
        await asyncio.sleep(2.1)
        async with anyone.get(sent["url"]) as got:
            assert got.status == 403
            assert (await got.json())["error"] == "The URL has expired"


async def test_a_blob_store_that_cannot_be_read_is_a_503_to_retry_not_a_500(
    tenant: Tenant, runtime: TestServer, settings: Settings
) -> None:
    agent = await files_agent(tenant, runtime)
    assert (
        await execute(tenant, agent, {"documents": [{"data": data_url(b"kept")}]})
    ).status == 200
    [sent] = received(runtime)[0]["payload"]["documents"]
    # The blob is there but cannot be read as a file (what a failing disk or S3 looks like).
    blob = Path(settings.blob_dir) / urlsplit(sent["url"]).path.removeprefix("/files/")
    blob.unlink()
    blob.mkdir()

    async with aiohttp.ClientSession() as anyone, anyone.get(sent["url"]) as got:
        assert got.status == 503
        assert got.headers["Retry-After"] == "1"
        assert (await got.json())["error"] == "The file cannot be read right now; retry shortly"


async def test_a_body_over_the_execute_limit_is_a_413_before_it_is_read_whole(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_max_request_body=MB)
    agent = await files_agent(tenant, runtime)
    huge = json.dumps({"documents": [{"data": data_url(make_bytes(2 * MB))}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start : start + 64 * 1024]

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), data=chunks()
    )

    assert resp.status == 413
    assert "limit" in (await resp.json())["error"]
    assert received(runtime) == []
