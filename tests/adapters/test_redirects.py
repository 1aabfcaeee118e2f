"""No runtime call follows a redirect (real local servers): Trigger.dev's trigger, poll and
cancel, and the presigned output fetch, each with a target that records whoever reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.base import RunResult, RuntimeRedirected, TriggerPayload
from adapters.trigger_dev import TriggerDevAdapter
from store.enums import RunStatus
from tests.support.redirects import RedirectFactory, redirect_pairs

SECRET = "tr_dev_s3cr3t"
PAYLOAD = TriggerPayload(
    run_id=12,
    agent_id=3,
    input={"topic": "Q3"},
    agent_api_key="agk_secret",
    callback_url="https://gw.example/api/runs/12/callback",
    credentials_token="ctok_secret",
)


@pytest.fixture
async def make_redirect() -> AsyncIterator[RedirectFactory]:
    async for factory in redirect_pairs():
        yield factory


@pytest.fixture
async def adapter() -> AsyncIterator[TriggerDevAdapter]:
    async with aiohttp.ClientSession() as session:
        yield TriggerDevAdapter(session, backoff_s=0.01)


@pytest.mark.parametrize("status", [307, 302])
async def test_a_trigger_answered_with_a_redirect_is_refused_and_sends_nothing_on(
    adapter: TriggerDevAdapter, make_redirect: RedirectFactory, status: int
) -> None:
    pair = await make_redirect(status)
    runtime = {"api_url": pair.url("/"), "task_id": "make-report", "secret_key": SECRET}

    with pytest.raises(RuntimeRedirected) as refused:
        await adapter.invoke(runtime, PAYLOAD, wait_s=5)

    assert str(refused.value) == f"RuntimeRedirected: HTTP {status} to {pair.target_origin}"
    assert pair.reached == []


async def test_a_poll_or_cancel_answered_with_a_redirect_is_refused(
    adapter: TriggerDevAdapter, make_redirect: RedirectFactory
) -> None:
    pair = await make_redirect(307)
    runtime = {"api_url": pair.url("/"), "task_id": "make-report", "secret_key": SECRET}

    with pytest.raises(RuntimeRedirected):
        await adapter.poll(runtime, "run_abc")
    with pytest.raises(RuntimeRedirected):
        await adapter.cancel(runtime, "run_abc")
    assert pair.reached == []


async def test_a_presigned_output_url_that_redirects_fails_the_run_without_fetching_it(
    adapter: TriggerDevAdapter, make_redirect: RedirectFactory
) -> None:
    pair = await make_redirect(302)
    presigned = pair.url("/packets/run_abc/output.json?X-Amz-Signature=s")

    async def run(request: web.Request) -> web.Response:
        return web.json_response(
            {"id": "run_abc", "status": "COMPLETED", "outputPresignedUrl": presigned}
        )

    app = web.Application()
    app.router.add_get("/api/v3/runs/{id}", run)
    async with TestServer(app, host="127.0.0.1") as api:
        runtime = {"api_url": str(api.make_url("/")), "task_id": "t", "secret_key": SECRET}
        result = await adapter.poll(runtime, "run_abc")

    assert result == RunResult(
        RunStatus.FAILED, error=f"RuntimeRedirected: HTTP 302 to {pair.target_origin}"
    )
    assert pair.reached == []
