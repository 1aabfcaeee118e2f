"""A draining replica tells the load balancer on every answer that the connection ends there."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.http.app_keys import LIFECYCLE
from tests.support.tenants import Tenant


async def test_every_answer_of_a_draining_replica_says_connection_close(
    gateway: TestClient[web.Request, web.Application], tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        runtime={"kind": "n8n", "webhook_url": str(runtime.make_url("/webhook/bytes?size=1000"))}
    )
    before = await gateway.get("/healthz")
    assert "Connection" not in before.headers  # kept alive while serving

    gateway.app[LIFECYCLE].draining = True
    probe = await gateway.get("/healthz")
    download = await gateway.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    refused = await gateway.get(f"/api/agents/{agent['id']}/runs/1", headers={})
    # The /v0 API is a sub-application of its own: its answers say so too.
    package = await gateway.put(f"/v0/workflows/{agent['id']}/jobs/1/download", json={})

    for answer in (probe, download, refused, package):
        await answer.read()
        assert answer.headers["Connection"] == "close", answer.url
    assert (probe.status, download.status, refused.status) == (200, 200, 401)
    assert package.status == 401
