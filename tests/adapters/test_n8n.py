"""The n8n adapter, against a mocked webhook (aioresponses)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from unittest.mock import Mock

import aiohttp
import pytest
import yarl

from adapters.base import (
    Invocation,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    TriggerPayload,
)
from adapters.n8n import N8nAdapter
from tests.support.mocked_runtime import MockedRuntime

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


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (200, b'{"pdfUrl": "u", "outputs": 1}', "application/json", ("completed", None)),
        (200, b"[1, 2]", "application/json; charset=utf-8", ("completed", None)),
        (202, b'{"message": "Workflow was started"}', "application/json", None),
        (204, b"", "application/json", None),
        (200, b"", "text/plain", None),
        (
            500,
            b'{"message":"Error in workflow"}',
            "application/json",
            ("failed", "WorkflowFailed: HTTP 500: Error in workflow"),
        ),
        (
            502,
            b"Bad gateway\nmore",
            "text/plain",
            ("failed", "WorkflowFailed: HTTP 502: Bad gateway"),
        ),
        (
            200,
            b"<html>oops</html>",
            "application/json",
            ("failed", "WorkflowReturnedInvalidJson: HTTP 200, application/json"),
        ),
        (
            200,
            b'{"score": NaN}',
            "application/json",
            ("failed", "WorkflowReturnedInvalidJson: HTTP 200, application/json"),
        ),
    ],
    ids=["json", "json-array", "202-accepted", "204", "empty", "500", "502-text", "garbage", "nan"],
)
async def test_a_webhook_answer_becomes_the_result_a_failure_or_an_acceptance(
    adapter: N8nAdapter,
    mocked: MockedRuntime,
    status: int,
    body: bytes,
    content_type: str,
    expected: tuple[str, str | None] | None,
) -> None:
    mocked.post(URL, status=status, body=body, headers={"Content-Type": content_type})

    invocation = await adapter.invoke({"webhook_url": URL}, PAYLOAD, wait_s=5)

    assert invocation.runtime_run_id is None
    if expected is None:  # the workflow reports through callbacks
        assert invocation.result is None
        return
    assert invocation.result is not None
    assert (invocation.result.status, invocation.result.error) == expected
    if expected[0] == "completed":
        assert invocation.result.has_output
        assert invocation.result.output == json.loads(body)


@pytest.mark.parametrize("delivery", [None, "response", "callback"])
async def test_n8ns_workflow_was_started_answer_acknowledges_the_run_whatever_the_setting(
    adapter: N8nAdapter, mocked: MockedRuntime, delivery: str | None
) -> None:
    # A Webhook node in n8n's default "Respond: Immediately" mode answers before the workflow
    # runs; its result comes later, through the callback URL.
    mocked.post(URL, status=200, payload={"message": "Workflow was started"})
    runtime = {"webhook_url": URL} | ({} if delivery is None else {"result_delivery": delivery})

    invocation = await adapter.invoke(runtime, PAYLOAD, wait_s=5)

    assert invocation == Invocation()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"message": "Workflow was started", "extra": 1}'),
        (201, b'{"message": "Workflow was started"}'),
    ],
    ids=["more-fields", "201"],
)
async def test_a_response_agents_answer_that_only_looks_like_the_acknowledgement_is_the_result(
    adapter: N8nAdapter, mocked: MockedRuntime, status: int, body: bytes
) -> None:
    mocked.post(URL, status=status, body=body, content_type="application/json")

    invocation = await adapter.invoke({"webhook_url": URL}, PAYLOAD, wait_s=5)

    assert invocation.result is not None
    assert invocation.result.status == "completed"
    assert invocation.result.output == json.loads(body)


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b'{"queued": true, "outputs": 3}', "application/json"),
        (201, b"[1, 2]", "application/json"),
        (200, b"success", "text/html"),
        (200, b"not json", "application/json"),
        (200, b'{"x": "' + b"a" * 5000 + b'"}', "application/json"),
    ],
    ids=["json-object", "json-array", "custom-text", "invalid-json", "over-the-limit"],
)
async def test_any_2xx_answer_only_acknowledges_a_callback_agents_run(
    mocked: MockedRuntime, status: int, body: bytes, content_type: str
) -> None:
    mocked.post(URL, status=status, body=body, headers={"Content-Type": content_type})
    async with aiohttp.ClientSession() as session:
        adapter = N8nAdapter(session, max_result_bytes=1000)
        invocation = await adapter.invoke(
            {"webhook_url": URL, "result_delivery": "callback"}, PAYLOAD, wait_s=5
        )

    assert invocation == Invocation()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, "WorkflowFailed: HTTP 500: Error in workflow"),
        (404, None),
    ],
)
async def test_a_callback_agents_webhook_still_fails_or_refuses_with_an_error_status(
    adapter: N8nAdapter, mocked: MockedRuntime, status: int, expected: str | None
) -> None:
    mocked.post(URL, status=status, payload={"message": "Error in workflow"})
    runtime = {"webhook_url": URL, "result_delivery": "callback"}

    if expected is None:
        with pytest.raises(RuntimeRefused):
            await adapter.invoke(runtime, PAYLOAD, wait_s=5)
        return
    invocation = await adapter.invoke(runtime, PAYLOAD, wait_s=5)
    assert invocation.result is not None
    assert (invocation.result.status, invocation.result.error) == ("failed", expected)


@pytest.mark.parametrize("status", [401, 403, 404, 405])
async def test_a_webhook_that_refuses_the_call_means_the_run_never_started(
    adapter: N8nAdapter, mocked: MockedRuntime, status: int
) -> None:
    mocked.post(URL, status=status, payload={"message": "webhook not registered"})

    with pytest.raises(RuntimeRefused, match=f"HTTP {status}: webhook not registered"):
        await adapter.invoke({"webhook_url": URL}, PAYLOAD, wait_s=5)


async def test_a_result_over_the_limit_fails_the_run_without_reading_it_all(
    mocked: MockedRuntime,
) -> None:
    mocked.post(URL, body=b'{"x": "' + b"a" * 5000 + b'"}', content_type="application/json")
    async with aiohttp.ClientSession() as session:
        small = N8nAdapter(session, max_result_bytes=1000)
        invocation = await small.invoke({"webhook_url": URL}, PAYLOAD, wait_s=5)

    assert invocation.result is not None
    assert invocation.result.status == "failed"
    assert invocation.result.error == "WorkflowResultTooLarge: over 1000 bytes"


async def test_a_webhook_silent_past_the_window_is_a_timeout(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    async def slow(url: object, **kwargs: object) -> None:
        await asyncio.sleep(5)

    mocked.post(URL, callback=slow)
    with pytest.raises(RuntimeTimeout):
        await adapter.invoke({"webhook_url": URL}, PAYLOAD, wait_s=0.1)


async def test_an_unreachable_webhook_is_unavailable(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, exception=aiohttp.ClientConnectorError(Mock(), OSError(111, "refused")))
    with pytest.raises(RuntimeUnavailable):
        await adapter.invoke({"webhook_url": URL}, PAYLOAD, wait_s=5)
