"""The Trigger.dev adapter: against mocked responses (aioresponses) and the fake over a socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp.test_utils import TestServer

from adapters.base import (
    RuntimeRefused,
    RuntimeRetryLater,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
)
from adapters.trigger_dev import TriggerDevAdapter
from devkit.fakes.trigger_dev import CANCELS, POLLS, RUNS, TRIGGERS, create_fake_trigger_dev
from tests.support.mocked_runtime import MockedRuntime

API = "https://trigger.example"
SECRET = "tr_dev_s3cr3t"
RUNTIME = {"api_url": API + "/", "task_id": "make-report", "secret_key": SECRET}
TRIGGER_URL = yarl.URL(f"{API}/api/v1/tasks/make-report/trigger")
RUN_ID = "run_abc123"
RUN_URL = yarl.URL(f"{API}/api/v3/runs/{RUN_ID}")
CANCEL_URL = yarl.URL(f"{API}/api/v2/runs/{RUN_ID}/cancel")
PAYLOAD = TriggerPayload(
    run_id=12,
    agent_id=3,
    input={"topic": "Q3"},
    agent_api_key="agk_x",
    callback_url="https://gw.example/api/runs/12/callback",
    idempotency_key="gw-7f3a-12",
)


@pytest.fixture
async def adapter() -> AsyncIterator[TriggerDevAdapter]:
    async with aiohttp.ClientSession() as session:
        yield TriggerDevAdapter(session, backoff_s=0.01)


def _run(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": RUN_ID, "status": status, "taskIdentifier": "make-report", **fields}


# --- trigger --------------------------------------------------------------------------------


async def test_a_trigger_posts_the_payload_with_the_idempotency_key_and_returns_the_run_id(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, payload={"id": RUN_ID, "isCached": False})

    invocation = await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    assert invocation.runtime_run_id == RUN_ID
    assert invocation.result is None
    [call] = mocked.requests[("POST", TRIGGER_URL)]
    assert call.kwargs["headers"] == {"Authorization": f"Bearer {SECRET}"}
    assert call.kwargs["json"] == {
        "payload": PAYLOAD.to_json(),
        "options": {"idempotencyKey": "gw-7f3a-12"},
    }


async def test_a_payload_without_idempotency_key_falls_back_to_the_run_id_and_quotes_the_task(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    url = yarl.URL(f"{API}/api/v1/tasks/reports%2Fweekly/trigger", encoded=True)
    mocked.post(url, payload={"id": RUN_ID, "isCached": False})
    payload = TriggerPayload(
        run_id=12, agent_id=3, input={}, agent_api_key="k", callback_url="https://gw.example/cb"
    )

    await adapter.invoke({**RUNTIME, "task_id": "reports/weekly"}, payload, wait_s=5)

    [call] = mocked.requests[("POST", url)]
    assert call.kwargs["json"]["options"] == {"idempotencyKey": "12"}


async def test_a_503_then_200_is_retried_with_the_same_idempotency_key(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, status=503, payload={"error": "Service Unavailable"})
    mocked.post(TRIGGER_URL, payload={"id": RUN_ID, "isCached": True})

    invocation = await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    assert invocation.runtime_run_id == RUN_ID
    calls = mocked.requests[("POST", TRIGGER_URL)]
    assert len(calls) == 2
    assert {c.kwargs["json"]["options"]["idempotencyKey"] for c in calls} == {"gw-7f3a-12"}


async def test_a_connection_error_then_200_is_retried(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(TRIGGER_URL, payload={"id": RUN_ID, "isCached": False})

    invocation = await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    assert invocation.runtime_run_id == RUN_ID
    assert len(mocked.requests[("POST", TRIGGER_URL)]) == 2


async def test_a_429_waits_until_the_rate_limit_reset_before_retrying(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    reset_ms = int((time.time() + 0.3) * 1000)
    mocked.post(TRIGGER_URL, status=429, headers={"x-ratelimit-reset": str(reset_ms)})
    mocked.post(TRIGGER_URL, payload={"id": RUN_ID, "isCached": False})

    started = time.monotonic()
    invocation = await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    assert invocation.runtime_run_id == RUN_ID
    assert time.monotonic() - started >= 0.2
    assert len(mocked.requests[("POST", TRIGGER_URL)]) == 2


async def test_a_429_resetting_after_the_wait_window_gives_up_at_once(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    reset_ms = int((time.time() + 60) * 1000)
    mocked.post(TRIGGER_URL, status=429, headers={"x-ratelimit-reset": str(reset_ms)})

    started = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match="HTTP 429"):
        await adapter.invoke(RUNTIME, PAYLOAD, wait_s=2)

    assert time.monotonic() - started < 1
    assert len(mocked.requests[("POST", TRIGGER_URL)]) == 1


async def test_exhausted_retries_are_runtime_unavailable(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, status=500, payload={"error": "Internal Server Error"}, repeat=True)

    with pytest.raises(RuntimeUnavailable, match="HTTP 500: Internal Server Error"):
        await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    assert len(mocked.requests[("POST", TRIGGER_URL)]) == 4


async def test_a_trigger_that_outlasts_the_wait_window_is_unavailable_not_timeout(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    async def slow(url: object, **kwargs: object) -> None:
        await asyncio.sleep(5)

    mocked.post(TRIGGER_URL, callback=slow, repeat=True)

    with pytest.raises(RuntimeUnavailable, match="no answer in time"):
        await adapter.invoke(RUNTIME, PAYLOAD, wait_s=0.2)


async def test_an_unknown_task_is_refused_without_leaking_the_secret(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, status=404, payload={"error": "Task not found"})

    with pytest.raises(RuntimeRefused) as caught:
        await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)

    message = str(caught.value)
    assert message == "Trigger.dev refused the trigger: HTTP 404: Task not found"
    assert SECRET not in message
    assert len(mocked.requests[("POST", TRIGGER_URL)]) == 1


async def test_a_2xx_without_a_run_id_is_unavailable(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(TRIGGER_URL, payload={"isCached": False})

    with pytest.raises(RuntimeUnavailable, match="without a run id"):
        await adapter.invoke(RUNTIME, PAYLOAD, wait_s=5)


# --- poll -----------------------------------------------------------------------------------


async def test_a_poll_gets_the_run_with_the_api_version_header(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.get(RUN_URL, payload=_run("EXECUTING"))

    result = await adapter.poll(RUNTIME, RUN_ID)

    assert result.status == "running"
    [call] = mocked.requests[("GET", RUN_URL)]
    assert call.kwargs["headers"] == {
        "Authorization": f"Bearer {SECRET}",
        "x-trigger-api-version": "2025-07-16",
    }


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("PENDING_VERSION", "queued"),
        ("QUEUED", "queued"),
        ("DELAYED", "queued"),
        ("WAITING_FOR_DEPLOY", "queued"),
        ("DEQUEUED", "running"),
        ("EXECUTING", "running"),
        ("REATTEMPTING", "running"),
        ("WAITING", "waiting"),
        ("FROZEN", "waiting"),
        ("COMPLETED", "completed"),
        ("CANCELED", "cancelled"),
        ("FAILED", "failed"),
        ("CRASHED", "failed"),
        ("SYSTEM_FAILURE", "failed"),
        ("EXPIRED", "failed"),
        ("TIMED_OUT", "failed"),
        ("INTERRUPTED", "failed"),
        ("SOME_FUTURE_STATUS", "running"),
    ],
)
async def test_each_status_name_maps_to_a_gateway_state(
    adapter: TriggerDevAdapter, mocked: MockedRuntime, name: str, status: str
) -> None:
    # The boolean helpers are deliberately wrong: only the status name counts.
    mocked.get(RUN_URL, payload=_run(name, isCompleted=False, isSuccess=False))

    result = await adapter.poll(RUNTIME, RUN_ID)

    assert result.status == status
    assert result.terminal == (status in {"completed", "failed", "cancelled"})


@pytest.mark.parametrize("name", ["EXPIRED", "TIMED_OUT"])
async def test_an_expired_or_timed_out_run_fails_though_it_is_not_is_completed(
    adapter: TriggerDevAdapter, mocked: MockedRuntime, name: str
) -> None:
    mocked.get(RUN_URL, payload=_run(name, isCompleted=False, isFailed=False))

    result = await adapter.poll(RUNTIME, RUN_ID)

    assert result.status == "failed"
    assert result.terminal
    assert result.error == f"Trigger.dev run ended {name}"


async def test_a_completed_run_carries_the_task_output(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    output = {"report": "done", "pages": [1, 2]}
    mocked.get(RUN_URL, payload=_run("COMPLETED", isCompleted=True, output=output))

    result = await adapter.poll(RUNTIME, RUN_ID)

    assert (result.status, result.output, result.has_output) == ("completed", output, True)


async def test_a_task_that_returned_null_has_a_null_output_and_one_without_has_none(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.get(RUN_URL, payload=_run("COMPLETED", output=None))
    mocked.get(RUN_URL, payload=_run("COMPLETED"))

    returned_null = await adapter.poll(RUNTIME, RUN_ID)
    returned_nothing = await adapter.poll(RUNTIME, RUN_ID)

    assert (returned_null.output, returned_null.has_output) == (None, True)
    assert (returned_nothing.output, returned_nothing.has_output) == (None, False)


async def test_a_failed_run_reports_the_error_name_and_message(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    error = {"name": "TypeError", "message": "x is undefined", "stackTrace": "at task.ts:3"}
    mocked.get(RUN_URL, payload=_run("FAILED", error=error))
    mocked.get(RUN_URL, payload=_run("CRASHED", error={"message": "m" * 5000}))

    failed = await adapter.poll(RUNTIME, RUN_ID)
    crashed = await adapter.poll(RUNTIME, RUN_ID)

    assert (failed.status, failed.error) == ("failed", "TypeError: x is undefined")
    assert crashed.error == "m" * 2000


async def test_an_offloaded_output_is_fetched_from_the_presigned_url_without_credentials(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    presigned = yarl.URL("https://r2.example/packets/run_abc123/output.json?X-Amz-Signature=s")
    mocked.get(RUN_URL, payload=_run("COMPLETED", outputPresignedUrl=str(presigned)))
    stored = {"json": {"rows": 100000, "at": "2025-01-01T00:00:00.000Z"}, "meta": {"v": 1}}
    mocked.get(presigned, body=json.dumps(stored), content_type="application/super+json")

    result = await adapter.poll(RUNTIME, RUN_ID)

    assert result.status == "completed"
    assert result.output == {"rows": 100000, "at": "2025-01-01T00:00:00.000Z"}
    assert result.has_output
    [call] = mocked.requests[("GET", presigned)]
    assert "Authorization" not in (call.kwargs.get("headers") or {})


async def test_an_offloaded_plain_text_or_json_output_is_parsed_by_its_content_type(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    presigned = yarl.URL("https://r2.example/packets/out")
    mocked.get(RUN_URL, payload=_run("COMPLETED", outputPresignedUrl=str(presigned)), repeat=True)
    mocked.get(presigned, body="a long report", content_type="text/plain")
    mocked.get(presigned, body='{"json": 1}', content_type="application/json")

    text = await adapter.poll(RUNTIME, RUN_ID)
    plain_json = await adapter.poll(RUNTIME, RUN_ID)

    assert text.output == "a long report"
    assert plain_json.output == {"json": 1}


async def test_an_expired_presigned_url_is_retried_on_a_later_poll(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    presigned = yarl.URL("https://r2.example/packets/out")
    mocked.get(RUN_URL, payload=_run("COMPLETED", outputPresignedUrl=str(presigned)))
    mocked.get(presigned, status=403, body="<Error>Request has expired</Error>")

    with pytest.raises(RuntimeRetryLater):
        await adapter.poll(RUNTIME, RUN_ID)


async def test_a_run_not_readable_yet_is_retry_later(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.get(
        RUN_URL, status=404, payload={"error": "Run not found"}, headers={"x-should-retry": "true"}
    )

    with pytest.raises(RuntimeRetryLater):
        await adapter.poll(RUNTIME, RUN_ID)


async def test_an_unknown_run_is_refused(adapter: TriggerDevAdapter, mocked: MockedRuntime) -> None:
    mocked.get(RUN_URL, status=404, payload={"error": "Run not found"})

    with pytest.raises(RuntimeRefused, match="HTTP 404: Run not found"):
        await adapter.poll(RUNTIME, RUN_ID)


@pytest.mark.parametrize("status", [401, 403, 400])
async def test_bad_credentials_or_a_bad_request_are_refused(
    adapter: TriggerDevAdapter, mocked: MockedRuntime, status: int
) -> None:
    mocked.get(RUN_URL, status=status, payload={"error": f"Echoed {SECRET}"})

    with pytest.raises(RuntimeRefused) as caught:
        await adapter.poll(RUNTIME, RUN_ID)

    assert SECRET not in str(caught.value)


async def test_a_rate_limited_poll_is_retry_later_with_the_reset_delay(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    reset_ms = int((time.time() + 30) * 1000)
    mocked.get(RUN_URL, status=429, headers={"x-ratelimit-reset": str(reset_ms)})

    with pytest.raises(RuntimeRetryLater) as caught:
        await adapter.poll(RUNTIME, RUN_ID)

    assert caught.value.delay_s is not None
    assert 28 < caught.value.delay_s <= 30


async def test_a_server_error_network_error_or_broken_body_is_retry_later(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.get(RUN_URL, status=500, payload={"error": "Internal Server Error"})
    mocked.get(RUN_URL, exception=aiohttp.ClientConnectionError("reset"))
    mocked.get(RUN_URL, body="<html>gateway</html>", content_type="text/html")

    for _ in range(3):
        with pytest.raises(RuntimeRetryLater) as caught:
            await adapter.poll(RUNTIME, RUN_ID)
        assert caught.value.delay_s is None


# --- cancel and download --------------------------------------------------------------------


async def test_a_cancel_posts_to_the_run_cancel_endpoint(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(CANCEL_URL, payload={"id": RUN_ID})

    await adapter.cancel(RUNTIME, RUN_ID)

    [call] = mocked.requests[("POST", CANCEL_URL)]
    assert call.kwargs["headers"] == {"Authorization": f"Bearer {SECRET}"}


async def test_a_refused_or_failing_cancel_says_which(
    adapter: TriggerDevAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(CANCEL_URL, status=404, payload={"error": "Run not found"})
    mocked.post(CANCEL_URL, status=503)

    with pytest.raises(RuntimeRefused, match="Run not found"):
        await adapter.cancel(RUNTIME, RUN_ID)
    with pytest.raises(RuntimeRetryLater):
        await adapter.cancel(RUNTIME, RUN_ID)


async def test_a_download_is_unsupported(adapter: TriggerDevAdapter) -> None:
    with pytest.raises(RuntimeUnsupported, match="cannot stream a file download"):
        await adapter.open_download(RUNTIME, PAYLOAD, wait_s=5, accept_encoding=None)


# --- against the fake Trigger.dev, over a real socket ---------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[TestServer]:
    server = TestServer(create_fake_trigger_dev(SECRET))
    async with server:
        yield server


def _fake_runtime(server: TestServer, task: str = "make-report") -> dict[str, str]:
    return {"api_url": str(server.make_url("/")), "task_id": task, "secret_key": SECRET}


def _payload(**data: Any) -> TriggerPayload:
    return TriggerPayload(
        run_id=12,
        agent_id=3,
        input=data,
        agent_api_key="agk_x",
        callback_url="https://gw.example/cb",
        idempotency_key="gw-7f3a-12",
    )


async def test_a_fake_run_goes_queued_running_completed_with_its_output(
    fake: TestServer, adapter: TriggerDevAdapter
) -> None:
    runtime = _fake_runtime(fake)

    invocation = await adapter.invoke(runtime, _payload(topic="Q3"), wait_s=5)
    assert invocation.runtime_run_id is not None
    again = await adapter.invoke(runtime, _payload(topic="Q3"), wait_s=5)
    results = [await adapter.poll(runtime, invocation.runtime_run_id) for _ in range(4)]

    assert again.runtime_run_id == invocation.runtime_run_id  # same idempotency key
    assert [r.status for r in results] == ["queued", "running", "completed", "completed"]
    assert results[-1].output == {"echo": {"topic": "Q3"}}
    assert results[-1].has_output
    app = fake.app
    assert app is not None
    assert [t["body"]["options"]["idempotencyKey"] for t in app[TRIGGERS]] == ["gw-7f3a-12"] * 2
    assert {p["headers"]["x-trigger-api-version"] for p in app[POLLS]} == {"2025-07-16"}


async def test_a_fake_run_not_readable_yet_is_retried_then_fails_with_its_error(
    fake: TestServer, adapter: TriggerDevAdapter
) -> None:
    runtime = _fake_runtime(fake)
    payload = _payload(not_ready_polls=2, statuses=["EXECUTING", "FAILED"], error="No data")
    run_id = (await adapter.invoke(runtime, payload, wait_s=5)).runtime_run_id
    assert run_id is not None

    for _ in range(2):
        with pytest.raises(RuntimeRetryLater):
            await adapter.poll(runtime, run_id)
    running = await adapter.poll(runtime, run_id)
    failed = await adapter.poll(runtime, run_id)

    assert running.status == "running"
    assert (failed.status, failed.error) == ("failed", "Error: No data")
    with pytest.raises(RuntimeRefused, match="Task not found"):
        await adapter.invoke(_fake_runtime(fake, "missing"), payload, wait_s=5)


async def test_a_fake_run_cancelled_reports_cancelled(
    fake: TestServer, adapter: TriggerDevAdapter
) -> None:
    runtime = _fake_runtime(fake)
    run_id = (await adapter.invoke(runtime, _payload(), wait_s=5)).runtime_run_id
    assert run_id is not None

    assert (await adapter.poll(runtime, run_id)).status == "queued"
    await adapter.cancel(runtime, run_id)
    result = await adapter.poll(runtime, run_id)

    assert (result.status, result.terminal) == ("cancelled", True)
    app = fake.app
    assert app is not None
    assert app[CANCELS] == [run_id]
    assert app[RUNS][run_id]["cancelled"] is True
