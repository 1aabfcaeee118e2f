"""Two replicas on one PostgreSQL and Redis, each caching ingest key organisations and agent
rows: an operator's change through either replica's admin API or through the console reaches
the other within a second; a change whose notification is lost lasts no longer than the TTL;
while a replica's listener is down it reads every row, and the listener comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.backends import Backends
from tests.support.gateways import GatewayFactory
from tests.support.lookup_cache import (
    admin_console,
    cache_of,
    change_unannounced,
    until_serving,
)
from tests.support.prometheus import metric_sum
from tests.support.runtimes import json_agent, received, webhook
from tests.support.tenants import Tenant, new_tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]
# Every replica here may be asked many times a second (a poll): no bucket gets in the way.
NO_LIMITS = {"trigger_rate_limit": 100_000, "sync_rate_limit": 100_000}
EVERY_S = 0.02


async def replicas(make_gateway: GatewayFactory, **overrides: Any) -> tuple[Client, Client]:
    """Replicas A and B, both with their cache listening."""
    a = await make_gateway(**NO_LIMITS, **overrides)
    b = await make_gateway(**NO_LIMITS, **overrides)
    for replica in (a, b):
        await until_serving(replica)
    return a, b


async def trigger(replica: Client, tenant: Tenant, agent_id: int) -> int:
    """``POST .../runs/trigger`` on ``replica``; its status."""
    resp = await replica.post(
        f"/api/agents/{agent_id}/runs/trigger", json={"input": {}}, headers=tenant.auth
    )
    return resp.status


async def read_run(replica: Client, tenant: Tenant, agent_id: int) -> int:
    """A read that needs the key's organisation and the agent: 404 (no such run) while the
    key is good, 401 once it is refused."""
    resp = await replica.get(f"/api/agents/{agent_id}/runs/999999999", headers=tenant.auth)
    return resp.status


async def within_a_second(probe: Callable[[], Awaitable[Any]], expected: Any) -> Any:
    """Ask ``probe`` until it answers ``expected``, for one second at most; its last answer."""
    deadline = time.monotonic() + 1.0
    while True:
        answer = await probe()
        if answer == expected or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(EVERY_S)


async def test_an_agent_paused_on_replica_a_is_refused_on_replica_b_within_a_second(
    make_gateway: GatewayFactory, runtime: TestServer
) -> None:
    a, b = await replicas(make_gateway)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    assert await trigger(b, tenant, agent["id"]) == 202
    assert cache_of(b).stats.misses >= 1
    hits = cache_of(b).stats.hits
    assert await trigger(b, tenant, agent["id"]) == 202
    assert cache_of(b).stats.hits > hits, "B answers the agent and the key from its cache"

    resp = await a.patch(f"/admin/agents/{agent['id']}", json={"status": "paused"}, headers=ADMIN)
    assert resp.status == 200

    assert await trigger(a, tenant, agent["id"]) == 422, "A dropped its entry before answering"
    assert await within_a_second(lambda: trigger(b, tenant, agent["id"]), 422) == 422


async def test_an_agent_changed_through_the_console_reaches_both_replicas_within_a_second(
    make_gateway: GatewayFactory, runtime: TestServer, backends: Backends
) -> None:
    a, b = await replicas(make_gateway)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    for replica in (a, b):
        assert await trigger(replica, tenant, agent["id"]) == 202

    # A changed runtime: the next run B starts goes to the new webhook.
    new_runtime = webhook(runtime, "json-error")
    await admin_console(
        backends, "update-agent", str(agent["id"]), json.dumps({"runtime": new_runtime})
    )

    async def webhook_b_calls() -> str:
        resp = await b.post(
            f"/api/agents/{agent['id']}/runs/trigger", json={"input": {}}, headers=tenant.auth
        )
        assert resp.status == 202
        run_id = (await resp.json())["runId"]
        for _ in range(250):
            for call in received(runtime):
                if call["payload"]["runId"] == run_id:
                    path: str = call["path"]
                    return path
            await asyncio.sleep(EVERY_S)
        raise AssertionError("the runtime was never invoked")

    assert await within_a_second(webhook_b_calls, "/webhook/json-error") == "/webhook/json-error"

    # A paused agent: refused on both.
    await admin_console(backends, "update-agent", str(agent["id"]), '{"status": "paused"}')
    for replica in (a, b):
        assert await within_a_second(lambda r=replica: trigger(r, tenant, agent["id"]), 422) == 422


async def test_a_revoked_key_is_refused_on_both_replicas_within_a_second(
    make_gateway: GatewayFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    a, b = await replicas(make_gateway)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    for replica in (a, b):
        assert await read_run(replica, tenant, agent["id"]) == 404
        assert await read_run(replica, tenant, agent["id"]) == 404
    key_id = await db.fetchval("SELECT id FROM ingest_keys WHERE org_id = $1::uuid", tenant.org_id)

    resp = await a.delete(f"/admin/orgs/{tenant.org_id}/keys/{key_id}", headers=ADMIN)
    assert resp.status == 204

    assert await read_run(a, tenant, agent["id"]) == 401
    assert await within_a_second(lambda: read_run(b, tenant, agent["id"]), 401) == 401
    # The agent's own key (a run's callbacks) is another key, and still works.
    resp = await b.post(
        "/api/runs/999999999/callback",
        json={"type": "output", "output": {}},
        headers={"Authorization": f"Bearer {agent['api_key']}"},
    )
    assert resp.status == 404


async def test_a_cached_answer_reads_nothing_from_postgresql(
    make_gateway: GatewayFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    """The row changes behind the caches' back (no notification): a replica that has it cached
    keeps answering from memory, which a replica without a cache shows to be out of date."""
    a, b = await replicas(make_gateway, auth_cache_ttl_s=300)
    uncached = await make_gateway(**NO_LIMITS, auth_cache_ttl_s=0)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    assert await trigger(b, tenant, agent["id"]) == 202
    # The creates' own notifications may reach B after its first read (a loaded machine):
    # until B answers from memory, what it holds could still be dropped by one of them.
    for _ in range(100):
        hits = cache_of(b).stats.hits
        assert await trigger(b, tenant, agent["id"]) == 202
        if cache_of(b).stats.hits == hits + 2:
            break
        await asyncio.sleep(0.02)

    await change_unannounced(db, "UPDATE agents SET status = 'paused' WHERE id = $1", agent["id"])
    await change_unannounced(
        db, "UPDATE ingest_keys SET revoked_at = now() WHERE org_id = $1::uuid", tenant.org_id
    )

    hits = cache_of(b).stats.hits
    assert await trigger(b, tenant, agent["id"]) == 202
    assert cache_of(b).stats.hits == hits + 2, "the key and the agent, both from memory"
    assert await trigger(uncached, tenant, agent["id"]) == 401
    assert cache_of(uncached).stats.bypassed >= 1


async def test_a_lost_invalidation_lasts_no_longer_than_the_ttl(
    make_gateway: GatewayFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    ttl_s = 0.5
    a, b = await replicas(make_gateway, auth_cache_ttl_s=ttl_s)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    assert await trigger(b, tenant, agent["id"]) == 202
    # The creates' own notifications may reach B after its first read (a loaded machine):
    # until B answers from memory, what it holds could still be dropped by one of them.
    for _ in range(100):
        hits = cache_of(b).stats.hits
        assert await trigger(b, tenant, agent["id"]) == 202
        if cache_of(b).stats.hits == hits + 2:
            break
        await asyncio.sleep(0.02)

    await change_unannounced(db, "UPDATE agents SET status = 'paused' WHERE id = $1", agent["id"])

    # Bounded by the TTL (and the poll's own second): no notice, yet B sees it.
    deadline = time.monotonic() + ttl_s + 1.0
    status = await trigger(b, tenant, agent["id"])
    while status != 422 and time.monotonic() < deadline:
        await asyncio.sleep(EVERY_S)
        status = await trigger(b, tenant, agent["id"])
    assert status == 422


async def test_while_the_listener_is_down_every_lookup_reads_the_row_and_it_comes_back(
    make_gateway: GatewayFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    # A long TTL: only the bypass can explain a change seen at once; a reconnect delay long
    # enough to look at the replica while it is down.
    a, b = await replicas(make_gateway, auth_cache_ttl_s=300, auth_cache_reconnect_s=3.0)
    tenant = await new_tenant(a)
    agent = await json_agent(tenant, runtime, "json")
    assert await trigger(b, tenant, agent["id"]) == 202
    listener = cache_of(b).listener_pid
    assert listener is not None

    assert await db.fetchval("SELECT pg_terminate_backend($1)", listener)
    await until_serving(b, serving=False)

    await change_unannounced(db, "UPDATE agents SET status = 'paused' WHERE id = $1", agent["id"])
    bypassed = cache_of(b).stats.bypassed
    assert await trigger(b, tenant, agent["id"]) == 422
    assert cache_of(b).stats.bypassed == bypassed + 2
    assert not cache_of(b).serving, "the answer came while the listener was still down"
    metrics = await (await b.get("/metrics")).text()
    assert "agent_gateway_lookup_cache_listening 0.0" in metrics.splitlines()
    assert metric_sum(metrics, "agent_gateway_lookup_cache_lookups_total", outcome="bypassed") >= 2

    await until_serving(b)
    assert cache_of(b).listener_pid not in {None, listener}
    # Back: what is read is cached again, and notifications reach it again.
    assert await trigger(b, tenant, agent["id"]) == 422
    hits = cache_of(b).stats.hits
    assert await trigger(b, tenant, agent["id"]) == 422
    assert cache_of(b).stats.hits == hits + 2
    metrics = await (await b.get("/metrics")).text()
    assert "agent_gateway_lookup_cache_listening 1.0" in metrics.splitlines()
    assert metric_sum(metrics, "agent_gateway_lookup_cache_lookups_total", outcome="hit") >= 2
    resp = await a.patch(f"/admin/agents/{agent['id']}", json={"status": "active"}, headers=ADMIN)
    assert resp.status == 200
    assert await within_a_second(lambda: trigger(b, tenant, agent["id"]), 202) == 202


async def test_without_a_ttl_there_is_no_cache_and_no_listening_connection(
    make_gateway: GatewayFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    replica = await make_gateway(**NO_LIMITS, auth_cache_ttl_s=0)
    tenant = await new_tenant(replica)
    agent = await json_agent(tenant, runtime, "json")
    for _ in range(2):
        assert await trigger(replica, tenant, agent["id"]) == 202
    stats = cache_of(replica).stats
    assert (stats.hits, stats.misses, stats.bypassed) == (0, 0, 4)
    assert cache_of(replica).listener_pid is None
