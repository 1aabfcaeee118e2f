"""What an operator scraping ``/metrics`` sees after real traffic."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import metrics
from gateway.runs import recording
from gateway.settings import Settings
from store.consumer import StoreConsumer
from tests.support.consumers import event_buffer
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_url
from tests.support.runtimes import json_agent, webhook
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]


async def scrape(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics`` by name and labels."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sample ``name{labels}``; 0 when it was never observed."""
    return samples.get((name, frozenset(labels.items())), 0.0)


DOWNLOAD_ROUTE = "/api/agents/{agentId}/runs/trigger-and-download"
# Every label the gateway's metrics use (the python_info ones come from prometheus-client).
BOUNDED_LABELS = {
    "route", "method", "status", "le", "bucket", "decision", "runtime", "operation",
    "outcome", "type", "via", "stage", "state", "generation", "dependency",
    "implementation", "major", "minor", "patchlevel", "version", "python",
}  # fmt: skip


async def test_a_download_is_counted_by_route_template_with_its_bytes_runtime_call_and_events(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "bytes?size=300000"))

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    assert resp.status == 200
    body = await resp.read()
    samples = await scrape(tenant.client)

    requests = "agent_gateway_http_requests_total"
    assert value(samples, requests, route=DOWNLOAD_ROUTE, method="POST", status="200") == 1
    assert value(samples, "agent_gateway_streamed_bytes_total", route=DOWNLOAD_ROUTE) == len(body)
    assert value(samples, "agent_gateway_streams_in_flight", route=DOWNLOAD_ROUTE) == 0
    assert (
        value(
            samples,
            "agent_gateway_http_request_duration_seconds_count",
            route=DOWNLOAD_ROUTE,
            method="POST",
        )
        == 1
    )
    assert (
        value(
            samples,
            "agent_gateway_runtime_call_duration_seconds_count",
            runtime="n8n",
            operation="open_download",
            outcome="ok",
        )
        == 1
    )
    # The run is inserted already running: its start needs no event of its own.
    assert (
        value(samples, "agent_gateway_run_events_published_total", type="started", via="database")
        == 0
    )
    assert (
        value(samples, "agent_gateway_run_events_published_total", type="completed", via="database")
        == 1
    )
    assert (
        value(
            samples, "agent_gateway_rate_limit_decisions_total", bucket="sync", decision="allowed"
        )
        == 1
    )
    # Capacity is its own gauge: the states are connections, and they sum to those open.
    assert value(samples, "agent_gateway_db_pool_max_connections") == 20
    assert value(samples, "agent_gateway_db_pool_connections", state="max") == 0
    assert value(samples, "agent_gateway_db_pool_connections", state="in_use") >= 0
    build = [labels for name, labels in samples if name == "agent_gateway_build_info"]
    assert len(build) == 1
    assert dict(build[0]).keys() == {"version", "python"}
    assert dict(build[0])["version"] == metrics.installed_version() != "unknown"
    assert value(samples, "agent_gateway_build_info", **dict(build[0])) == 1
    # Bounded labels: route templates, never a raw path, an agent or a run id.
    label_names = {name for _metric, labels in samples for name, _value in labels}
    assert label_names <= BOUNDED_LABELS
    routes = {v for _metric, labels in samples for name, v in labels if name == "route"}
    assert routes == {
        DOWNLOAD_ROUTE,
        "/admin/orgs",
        "/admin/orgs/{orgId}/keys",
        "/admin/orgs/{orgId}/agents",
    }


async def test_a_stream_in_flight_is_visible_while_it_streams(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={4 * 256 * 1024}&pace_ms=200")
    )

    async with tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    ) as resp:
        assert resp.status == 200
        await resp.content.readexactly(1024)
        during = await scrape(tenant.client)
        await resp.read()

    assert value(during, "agent_gateway_streams_in_flight", route=DOWNLOAD_ROUTE) == 1
    assert value(during, "agent_gateway_http_requests_in_flight") >= 2  # it, and the scrape
    # The handler records the run after the last byte went out: it ends a moment later.
    for _ in range(100):
        after = await scrape(tenant.client)
        if value(after, "agent_gateway_streams_in_flight", route=DOWNLOAD_ROUTE) == 0:
            break
        await asyncio.sleep(0.02)
    assert value(after, "agent_gateway_streams_in_flight", route=DOWNLOAD_ROUTE) == 0
    assert (
        value(after, "agent_gateway_streamed_bytes_total", route=DOWNLOAD_ROUTE) == 4 * 256 * 1024
    )
    # The first byte went out when the body began; the duration covers the paced body.
    labels = {"route": DOWNLOAD_ROUTE, "method": "POST"}
    ttfb = "agent_gateway_http_time_to_first_byte_seconds"
    duration = "agent_gateway_http_request_duration_seconds"
    assert value(during, f"{ttfb}_count", **labels) == 1
    assert value(during, f"{duration}_count", **labels) == 0
    assert value(after, f"{ttfb}_count", **labels) == 1
    assert value(after, f"{duration}_count", **labels) == 1
    assert value(after, f"{ttfb}_sum", **labels) < value(after, f"{duration}_sum", **labels)


async def test_rate_limit_decisions_and_429s_are_counted(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    statuses = [
        (
            await tenant.client.post(
                wait_url(agent["id"]), json={"timeoutMs": 5000}, headers=tenant.auth
            )
        ).status
        for _ in range(6)
    ]
    samples = await scrape(tenant.client)

    assert statuses == [200] * 5 + [429]
    decisions = "agent_gateway_rate_limit_decisions_total"
    assert value(samples, decisions, bucket="sync", decision="allowed") == 5
    assert value(samples, decisions, bucket="sync", decision="limited") == 1
    assert (
        value(
            samples,
            "agent_gateway_http_requests_total",
            route="/api/agents/{agentId}/runs/trigger-and-wait",
            method="POST",
            status="429",
        )
        == 1
    )
    assert (
        value(
            samples,
            "agent_gateway_runtime_call_duration_seconds_count",
            runtime="n8n",
            operation="invoke",
            outcome="ok",
        )
        == 5
    )


async def test_unknown_paths_and_methods_keep_labels_bounded(gateway: Client) -> None:
    for path in ("/no/such/thing", "/another/unknown/path", "/api/agents/1/runs/2/nope"):
        assert (await gateway.get(path)).status == 404
    assert (await gateway.request("TRACE", "/healthz")).status == 405

    samples = await scrape(gateway)

    requests = "agent_gateway_http_requests_total"
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 3
    assert value(samples, requests, route="unmatched", method="other", status="405") == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == requests}
    assert not any(route and route.startswith(("/no", "/another")) for route in routes)


async def test_each_app_counts_only_its_own_requests(make_gateway: GatewayFactory) -> None:
    first, second = await make_gateway(), await make_gateway()

    for _ in range(3):
        await first.get("/healthz")
    await second.get("/healthz")

    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(await scrape(first), "agent_gateway_http_requests_total", **ok) == 3
    assert value(await scrape(second), "agent_gateway_http_requests_total", **ok) == 1


async def test_events_postgresql_cannot_take_are_held_in_the_buffer_and_counted(
    make_gateway: GatewayFactory,
    runtime: TestServer,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await make_gateway()
    org = await (await client.post("/admin/orgs", json={"name": "x"}, headers=ADMIN)).json()
    key = await (await client.post(f"/admin/orgs/{org['id']}/keys", headers=ADMIN)).json()
    tenant = Tenant(org["id"], key["key"], client)
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))

    async def postgresql_away(*_: object) -> None:
        raise ConnectionRefusedError("PostgreSQL is away")

    # The run is created; then PostgreSQL stops answering before its end is recorded.
    monkeypatch.setattr(recording, "record_events", postgresql_away)
    resp = await client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    await resp.read()
    samples = await scrape(client)

    assert resp.status == 200
    published = "agent_gateway_run_events_published_total"
    assert value(samples, published, type="completed", via="buffer") == 1
    assert value(samples, published, type="completed", via="database") == 0
    assert (
        value(samples, "agent_gateway_run_event_failures_total", type="completed", stage="database")
        == 1
    )
    held = [
        entry
        for p in range(settings.events_partitions)
        for entry in await event_buffer(settings, redis_client).read(p, 10)
    ]
    assert [(entry.event.run_id, entry.event.type) for entry in held if entry.event] == [
        (int(resp.headers["X-Run-Id"]), "completed")
    ]
