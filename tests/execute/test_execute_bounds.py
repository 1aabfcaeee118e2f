"""Execute's bounds on files and large bodies: a request over one is a 4xx naming its setting,
with nothing stored (no run, no file row, no blob); a refused caller's large body is not read;
a replica reads only so many large bodies at once."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestServer

from gateway.settings import Settings
from tests.support.execute import api_key, execute_url, stream_agent
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import received
from tests.support.tenants import Tenant, TenantFactory

ONE_BYTE = "data:application/octet-stream;base64," + base64.b64encode(b"x").decode()
FORMAT = [{"name": "documents", "type": "files"}, {"name": "images", "type": "files"}]


def files(count: int, data: str = ONE_BYTE) -> list[dict[str, str]]:
    return [{"type": "file", "data": data, "name": f"f{i}.bin"} for i in range(count)]


async def stored(db: asyncpg.Pool, tenant: Tenant, settings: Settings) -> tuple[int, int, int]:
    """The tenant's runs and file rows, and the blobs on disk."""
    runs = await db.fetchval(
        "SELECT count(*) FROM runs r JOIN agents a ON a.id = r.agent_id WHERE a.org_id = $1::uuid",
        tenant.org_id,
    )
    rows = await db.fetchval(
        "SELECT count(*) FROM run_files WHERE org_id = $1::uuid", tenant.org_id
    )
    return runs, rows, await asyncio.to_thread(_blobs, Path(settings.blob_dir))


def _blobs(blob_dir: Path) -> int:
    return sum(1 for p in blob_dir.rglob("*") if p.is_file()) if blob_dir.exists() else 0


async def test_five_thousand_one_byte_files_are_a_quick_413_naming_the_bound_and_store_nothing(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool, settings: Settings
) -> None:
    agent = await stream_agent(tenant, runtime, input_format=FORMAT)
    body = json.dumps({"documents": files(5000)}).encode()
    assert len(body) < 500_000  # about the 389 KB body

    started = time.monotonic()
    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(body),
    )
    elapsed = time.monotonic() - started

    answer = await resp.json()
    assert resp.status == 413, answer
    assert answer["error"] == (
        "Too many files in 'documents': 5000; the limit is 10 (EXECUTE_MAX_FILES_PER_FIELD)"
    )
    assert answer["limit"] == {
        "setting": "EXECUTE_MAX_FILES_PER_FIELD",
        "value": 10,
        "actual": 5000,
    }
    assert elapsed < 2.0  # before: 13.6 s, then a 500
    assert await stored(db, tenant, settings) == (0, 0, 0)
    assert received(runtime) == []


async def test_files_over_the_request_bound_across_fields_are_a_413_naming_it(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_max_files=3)
    agent = await stream_agent(tenant, runtime, input_format=FORMAT)

    ok = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"documents": files(2), "images": files(1)},
    )
    assert ok.status == 200, await ok.text()
    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"documents": files(2), "images": files(2)},
    )

    answer = await resp.json()
    assert resp.status == 413, answer
    assert answer["error"] == "Too many files in the request: 4; the limit is 3 (EXECUTE_MAX_FILES)"
    assert await stored(db, tenant, settings) == (1, 3, 3)  # the first request's alone


async def test_files_over_the_decoded_total_are_a_413_naming_it_with_nothing_stored(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_max_files_bytes=1_000_000)
    agent = await stream_agent(tenant, runtime, input_format=FORMAT)
    half = "data:application/pdf;base64," + base64.b64encode(b"%" * 600_000).decode()

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(
            json.dumps({"documents": files(1, half), "images": files(1, half)}).encode()
        ),
    )

    answer = await resp.json()
    assert resp.status == 413, answer
    assert answer["error"] == (
        "The request's files are too large together: 1200000 bytes decoded; "
        "the limit is 1000000 (EXECUTE_MAX_FILES_BYTES)"
    )
    assert answer["limit"]["setting"] == "EXECUTE_MAX_FILES_BYTES"
    assert await stored(db, tenant, settings) == (0, 0, 0)


async def test_a_caller_out_of_tokens_is_refused_before_its_large_body_is_read(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_rate_limit=1, execute_large_body_bytes=1024)
    agent = await stream_agent(tenant, runtime, input_format=FORMAT)
    first = await tenant.client.post(execute_url(agent["id"]), headers=api_key(tenant), json={})
    assert first.status == 200, await first.text()

    # Not even JSON: had it been read and parsed first, this would be a 400.
    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(b"{" + b"x" * 100_000),
    )

    assert resp.status == 429, await resp.text()
    assert "Retry-After" in resp.headers
    small = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=b"{x",
    )
    assert small.status == 400  # a small body keeps the order a caller fixes: body, then 429


async def test_a_replica_reads_only_so_many_large_bodies_at_once(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_max_large_bodies=1, execute_large_body_bytes=1024)
    agent = await stream_agent(tenant, runtime, input_format=FORMAT)
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"documents": '
        await go_on.wait()
        yield json.dumps(files(1)).encode() + b"}"

    async def quick_body() -> AsyncIterator[bytes]:
        yield b"{}"

    headers: dict[str, Any] = {**api_key(tenant), "Content-Type": "application/json"}
    held = asyncio.create_task(
        tenant.client.post(execute_url(agent["id"]), headers=headers, data=slow_body())
    )
    try:
        for _ in range(100):  # until the first body holds the slot
            await asyncio.sleep(0.02)
            busy = await tenant.client.post(
                execute_url(agent["id"]), headers=headers, data=quick_body()
            )
            if busy.status == 503:
                break
        answer = await busy.json()
        assert busy.status == 503, answer
        assert busy.headers["Retry-After"] == "1"
        assert "EXECUTE_MAX_LARGE_BODIES" in answer["error"]
    finally:
        go_on.set()
    first = await held
    assert first.status == 200, await first.text()
    again = await tenant.client.post(execute_url(agent["id"]), headers=headers, data=quick_body())
    assert again.status == 200, await again.text()
