"""Probes for the load balancer, and what a replica does when Redis is away."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.test_utils import TestServer

from tests.support.gateways import GatewayFactory
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_healthy_replica_is_live_and_ready(make_gateway: GatewayFactory) -> None:
    client = await make_gateway()

    live = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert live.status == 200
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "redis": "ok", "process": "ok"},
    }


async def test_a_replica_without_redis_is_live_but_not_ready(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway(redis_url=f"redis://127.0.0.1:{closed_port()}/0")

    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")

    assert ready.status == 503
    body: dict[str, Any] = await ready.json()
    assert body["checks"]["redis"].startswith("unavailable")
    assert body["checks"]["postgres"] == "ok"


async def test_without_redis_a_download_still_works_and_its_run_is_recorded(
    make_gateway: GatewayFactory, runtime: TestServer
) -> None:
    """Rate limiting fails open (the default) and events go straight to PostgreSQL."""
    client = await make_gateway(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    org = await (await client.post("/admin/orgs", json={"name": "x"}, headers=ADMIN)).json()
    key = await (await client.post(f"/admin/orgs/{org['id']}/keys", headers=ADMIN)).json()
    tenant = Tenant(org["id"], key["key"], client)
    agent = await tenant.create_agent(
        runtime={
            "kind": "n8n",
            "webhook_url": str(runtime.make_url("/webhook/report.pdf?outputs=1")),
        }
    )

    resp = await client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    assert resp.status == 200
    body = await resp.read()

    run = await (
        await client.get(
            f"/api/agents/{agent['id']}/runs/{resp.headers['X-Run-Id']}", headers=tenant.auth
        )
    ).json()
    assert run["status"] == "completed"
    assert run["output_data"]["sizeBytes"] == len(body)
    assert run["outputs"] == 1
