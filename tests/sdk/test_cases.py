"""Every row of the case table both SDKs follow (``sdk/cases.json``), with the Python SDK.

The Node suite (``sdk/typescript/test/cases.test.js``) plays the same rows with the TypeScript
SDK, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

import agent_gateway_sdk as sdk
from store.consumer import StoreConsumer
from tests.support.flaky_front import FlakyFront
from tests.support.gateways import GatewayFactory
from tests.support.live_stack import BRISK, STRICT
from tests.support.openapi_agreement import SentRequest, disagreements
from tests.support.sdk_cases import CASES, Stage, agent_body, call_once, result_fields
from tests.support.tenants import Tenant, TenantFactory


@pytest.fixture
async def stage(
    tenant: Tenant, make_tenant: TenantFactory, make_gateway: GatewayFactory, runtime: TestServer
) -> AsyncIterator[Stage]:
    """The main gateway (the tenant's), a strict and a brisk one on the same stores, a test
    front before the main one, the fake runtime."""
    strict = await make_gateway(**STRICT)
    brisk = await make_gateway(**BRISK)
    stranger = await make_tenant("Globex")
    base_url = str(tenant.client.make_url("")).rstrip("/")
    front = FlakyFront(base_url)
    front_server = TestServer(front.app(), host="127.0.0.1")
    await front_server.start_server()
    yield Stage(
        base_url=base_url,
        strict_base_url=str(strict.make_url("")).rstrip("/"),
        brisk_base_url=str(brisk.make_url("")).rstrip("/"),
        runtime_url=str(runtime.make_url("")).rstrip("/"),
        ingest_key=tenant.ingest_key,
        stranger_key=stranger.ingest_key,
        front=front,
        front_base_url=str(front_server.make_url("")).rstrip("/"),
    )
    await front_server.close()


@pytest.fixture
def sent_to_the_api(monkeypatch: pytest.MonkeyPatch) -> list[SentRequest]:
    """Every request to an ``/api/`` route made through aiohttp during the test, as sent."""
    sent: list[SentRequest] = []
    request = aiohttp.ClientSession._request

    async def recording(
        self: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        path = URL(str(url)).path
        if path.startswith("/api/"):
            sent.append(SentRequest(method, path, kwargs.get("json")))
        return await request(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", recording)
    return sent


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_the_python_sdk_meets_the_case(
    case: dict[str, Any],
    stage: Stage,
    tenant: Tenant,
    consumer: StoreConsumer,
    sent_to_the_api: list[SentRequest],
) -> None:
    agent = await tenant.create_agent(**agent_body(case["agent"], stage.runtime_url))
    if case.get("args", {}).get("connectionId") == "own":
        stage.credential_id = await tenant.create_credential({"token": "t0p"}, grant_to=agent)
    for _ in range(case.get("repeat", 0)):
        _, error = await call_once(case, stage, agent)
        assert error is None, f"the call before the checked one failed: {error}"

    for run in range(case.get("runs", 1)):
        result, error = await call_once(case, stage, agent, run, checked=True)
        expect_the_case(case, result, error, run)
        expect_what_was_sent(case, stage)
    # Every request the SDK made is a route of the OpenAPI document, with documented fields.
    assert sent_to_the_api
    assert disagreements(sent_to_the_api) == []


def expect_the_case(
    case: dict[str, Any], result: Any, error: sdk.GatewayError | None, run: int
) -> None:
    """The case's ``expect`` holds for what its call (on its ``run``-th run) came to."""
    expect = case["expect"]
    if "ok" in expect:
        assert error is None, f"expected success, got {error!r}: {error and error.body}"
        fields = result_fields(result, expect["ok"])
        assert fields == expect["ok"], f"run {run + 1} of {case.get('runs', 1)}: {fields}"
    else:
        assert error is not None, f"expected HTTP {expect['status']}, got {result!r}"
        assert error.status == expect["status"], error.body
        assert expect.get("error", "") in error.message
        assert (error.run_id is not None) == expect["runId"], error.body
        if expect["status"] == 429:
            assert error.retry_after_s > 0


def expect_what_was_sent(case: dict[str, Any], stage: Stage) -> None:
    """The case's ``expect.sent`` (what reached the front) and ``expect.atLeastMs`` hold."""
    expect = case["expect"]
    took_ms = stage.took_s * 1000
    assert took_ms >= expect.get("atLeastMs", 0), f"the call took {took_ms:.0f} ms"
    sent = expect.get("sent")
    if sent is None:
        return
    seen = stage.front.seen
    assert len(seen) == sent["attempts"], seen
    keys = {request["idempotencyKey"] for request in seen}
    if "idempotencyKey" in sent:
        assert len(keys) == 1, seen
        assert None not in keys, seen
        if sent["idempotencyKey"] != "same":
            assert keys == {sent["idempotencyKey"]}, seen
