"""A runtime that answers with a redirect: the run fails saying so, and nothing of the trigger
(payload, agent API key, credentials token, the agent's auth headers) reaches the redirect's
target. Real local servers: one redirects, the other records whoever reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from store.consumer import StoreConsumer
from tests.support.redirects import RedirectFactory, redirect_pairs
from tests.support.runs import wait_for_run, wait_url
from tests.support.tenants import Tenant


@pytest.fixture
async def make_redirect() -> AsyncIterator[RedirectFactory]:
    async for factory in redirect_pairs():
        yield factory


def _runtime(url: str) -> dict[str, object]:
    return {"kind": "n8n", "webhook_url": url, "headers": {"X-N8N-Auth": "shared-secret"}}


@pytest.mark.parametrize("status", [307, 302, 308, 301])
async def test_a_webhook_that_redirects_fails_the_waited_run_and_its_target_hears_nothing(
    tenant: Tenant, make_redirect: RedirectFactory, consumer: StoreConsumer, status: int
) -> None:
    pair = await make_redirect(status)
    agent = await tenant.create_agent(
        output_kind="json", runtime=_runtime(pair.url("/webhook/report"))
    )

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"input": {"topic": "Q3"}}
    )

    body = await resp.json()
    assert resp.status == 500, body
    expected = (
        f"Runtime invocation failed: RuntimeRedirected: HTTP {status} to {pair.target_origin}"
    )
    assert body["error"] == expected
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert (run["status"], run["error"], run["output_data"]) == ("failed", expected, None)
    assert pair.reached == []


async def test_a_triggered_run_whose_webhook_redirects_fails_with_the_reason(
    tenant: Tenant, make_redirect: RedirectFactory, consumer: StoreConsumer
) -> None:
    pair = await make_redirect(307)
    agent = await tenant.create_agent(
        output_kind="json", runtime=_runtime(pair.url("/webhook/report"))
    )

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={}
    )

    assert resp.status == 202
    run = await wait_for_run(tenant, agent["id"], (await resp.json())["runId"])
    assert run["status"] == "failed"
    assert run["error"] == (
        f"Runtime invocation failed: RuntimeRedirected: HTTP 307 to {pair.target_origin}"
    )
    assert pair.reached == []


async def test_a_download_webhook_that_redirects_is_a_500_and_streams_nothing_from_the_target(
    tenant: Tenant, make_redirect: RedirectFactory, consumer: StoreConsumer
) -> None:
    pair = await make_redirect(302)
    agent = await tenant.create_agent(runtime=_runtime(pair.url("/webhook/report.pdf")))

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )

    body = await resp.json()
    assert resp.status == 500, body
    assert body["error"] == (
        f"Runtime invocation failed: RuntimeRedirected: HTTP 302 to {pair.target_origin}"
    )
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"
    assert pair.reached == []
