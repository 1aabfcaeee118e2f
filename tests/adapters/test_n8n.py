"""The n8n adapter, against a mocked webhook (aioresponses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl

from adapters.base import RuntimeTimeout, RuntimeUnavailable, TriggerPayload
from adapters.n8n import N8nAdapter
from tests.adapters.conftest import MockedRuntime

URL = "https://n8n.example/webhook/report"
URL_OBJ = yarl.URL(URL)
PAYLOAD = TriggerPayload(
    run_id=12,
    agent_id=3,
    input={"topic": "Q3"},
    agent_api_key="agk_x",
    callback_url="https://gw.example/api/runs/12/callback",
)


@pytest.fixture
async def adapter() -> AsyncIterator[N8nAdapter]:
    async with aiohttp.ClientSession() as session:
        yield N8nAdapter(session)


async def test_it_posts_the_payload_with_the_configured_headers(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, body=b"%PDF", content_type="application/pdf")
    resp = await adapter.open_download(
        {"webhook_url": URL, "headers": {"X-Auth": "s"}},
        PAYLOAD,
        wait_s=5,
        accept_encoding="gzip",
    )
    assert resp.status == 200
    assert await resp.read() == b"%PDF"
    [call] = mocked.requests[("POST", URL_OBJ)]

    assert call.kwargs["json"] == {
        "runId": 12,
        "agentId": 3,
        "input": {"topic": "Q3"},
        "agentApiKey": "agk_x",
        "credentialsToken": None,
        "callbackUrl": "https://gw.example/api/runs/12/callback",
    }
    assert call.kwargs["headers"] == {"X-Auth": "s", "Accept-Encoding": "gzip"}


async def test_a_refused_connection_is_runtime_unavailable(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(RuntimeUnavailable):
        await adapter.open_download({"webhook_url": URL}, PAYLOAD, wait_s=5, accept_encoding=None)


async def test_no_headers_within_the_window_is_runtime_timeout(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    async def slow(url: object, **kwargs: object) -> None:
        await asyncio.sleep(5)

    mocked.post(URL, callback=slow)
    with pytest.raises(RuntimeTimeout):
        await adapter.open_download({"webhook_url": URL}, PAYLOAD, wait_s=0.1, accept_encoding=None)
