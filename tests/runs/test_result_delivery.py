"""n8n workflows that answer at once and report through callbacks, as people build them.

A Webhook node in n8n's default response mode ("Respond: Immediately") answers
``200 {"message": "Workflow was started"}`` before the workflow runs; an HTTP Request node then
posts the result to the payload's ``callbackUrl`` with the agent API key. The agent's
``runtime.result_delivery`` says whether the webhook's answer is the result (``response``, the
default) or only acknowledges the run (``callback``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import CALLBACKS_SENT
from store.consumer import StoreConsumer
from store.reaper import REAPED_ERROR
from tests.support.consumers import ConsumerFactory
from tests.support.execute import api_key, data_frames, execute_url, read_events
from tests.support.runs import wait_for_run, wait_url
from tests.support.runtimes import callbacks_answered, first_invoked_run, received, webhook
from tests.support.tenants import Tenant

RESULT = {"summary": "Q3 looks fine", "pages": 4}


async def n8n_agent(
    tenant: Tenant, runtime: TestServer, path: str, delivery: str | None
) -> dict[str, Any]:
    """A JSON agent on the fake n8n's ``/webhook/{path}``, with ``result_delivery`` when given."""
    config = webhook(runtime, path)
    if delivery is not None:
        config["result_delivery"] = delivery
    return await tenant.create_agent(output_kind="json", runtime=config)


async def wait_and_answer(
    tenant: Tenant, agent: dict[str, Any], body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json=body)
    return resp.status, await resp.json()


@pytest.mark.parametrize("delivery", [None, "response", "callback"])
async def test_a_triggered_run_ends_with_what_the_workflow_called_back(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, delivery: str | None
) -> None:
    agent = await n8n_agent(tenant, runtime, "immediate", delivery)

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger",
        headers=tenant.auth,
        json={"input": {"result": RESULT}},
    )

    assert resp.status == 202
    run = await wait_for_run(tenant, agent["id"], (await resp.json())["runId"])
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", RESULT, 2)
    # The workflow's callback was taken, not refused as coming after the run's end.
    assert await callbacks_answered(runtime, 1) == [{"step": "complete", "status": 202}]


@pytest.mark.parametrize("delivery", [None, "response", "callback"])
async def test_trigger_and_wait_answers_with_the_callbacks_output_not_the_acknowledgement(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, delivery: str | None
) -> None:
    agent = await n8n_agent(tenant, runtime, "immediate", delivery)

    status, run = await wait_and_answer(
        tenant, agent, {"input": {"result": RESULT, "outputs": 3}, "timeoutMs": 30000}
    )

    assert status == 200
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", RESULT, 3)
    [call] = received(runtime)
    assert call["payload"]["callbackUrl"].endswith(f"/api/runs/{run['runId']}/callback")


@pytest.mark.parametrize("answer", ["no_data=1", "response_code=202", "response_code=204"])
async def test_an_empty_or_202_204_answer_acknowledges_a_response_agents_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, answer: str
) -> None:
    agent = await n8n_agent(tenant, runtime, f"immediate?{answer}", None)

    status, run = await wait_and_answer(tenant, agent, {"input": {"result": RESULT}})

    assert status == 200
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", RESULT, 2)


async def test_a_callback_agent_waits_for_its_callback_even_when_the_webhook_answers_json(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    # The Webhook node's "Response Data" option set to a JSON text of its own.
    own_answer = quote(json.dumps({"queued": True, "outputs": 9}))
    agent = await n8n_agent(tenant, runtime, f"immediate?response_data={own_answer}", "callback")

    status, run = await wait_and_answer(tenant, agent, {"input": {"result": RESULT}})

    assert status == 200
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", RESULT, 2)


async def test_a_response_agents_json_answer_is_its_result_and_a_late_callback_is_refused(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    own_answer = quote(json.dumps({"queued": True, "outputs": 9}))
    agent = await n8n_agent(
        tenant, runtime, f"immediate?response_data={own_answer}&report_delay_ms=0", "response"
    )

    status, run = await wait_and_answer(tenant, agent, {"input": {"result": RESULT}})

    assert status == 200
    assert (run["status"], run["output_data"], run["outputs"]) == (
        "completed",
        {"queued": True, "outputs": 9},
        9,
    )
    for _ in range(250):
        if runtime.app[CALLBACKS_SENT]:
            break
        await asyncio.sleep(0.02)
    assert runtime.app[CALLBACKS_SENT] == [{"step": "complete", "status": 409}]


async def test_a_callback_agents_run_still_in_flight_when_the_window_elapses_answers_202(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await n8n_agent(tenant, runtime, "immediate?report=0", "callback")

    status, body = await wait_and_answer(tenant, agent, {"timeoutMs": 300})

    assert status == 202
    assert (body["status"], body["timedOut"]) == ("running", True)


async def test_the_deadline_fails_a_callback_agents_run_when_no_callback_comes(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool, make_consumer: ConsumerFactory
) -> None:
    await make_consumer(reap_every_s=0.1)
    agent = await n8n_agent(tenant, runtime, "immediate?report=0", "callback")
    waiting = asyncio.ensure_future(wait_and_answer(tenant, agent, {"timeoutMs": 30000}))
    run_id = await first_invoked_run(runtime)
    run = await wait_for_run_status(db, run_id, "running")
    assert run["output_data"] is None  # the acknowledgement is no output

    # Nobody calls back: only the deadline is left to end the run.
    await db.execute(
        "UPDATE runs SET deadline = $2 WHERE id = $1",
        run_id,
        dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
    )

    status, ended = await asyncio.wait_for(waiting, 10)
    assert (status, ended["status"], ended["error"]) == (200, "failed", REAPED_ERROR)


async def test_workflow_execute_answers_with_what_the_workflow_called_back(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await n8n_agent(tenant, runtime, "immediate", "callback")

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"result": RESULT}
    )

    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["success"], body["output"]) == (True, RESULT)

    # Streamed, the one frame is the callback's result too.
    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"result": RESULT, "stream": True}
    )
    frames = data_frames(await read_events(resp))
    assert frames[1:] == ["[DONE]"]
    done = json.loads(frames[0])
    assert (done["event"], done["success"], done["output"]) == ("done", True, RESULT)


@pytest.mark.parametrize(
    ("path", "delivery"),
    [
        ("immediate", None),
        ("immediate?response_code=204&no_data=1", None),
        # A callback agent's file-looking or JSON answer is only an acknowledgement too.
        ("immediate?response_data=%7B%22queued%22%3A%20true%7D", "callback"),
        ("immediate?response_data=started", "callback"),
    ],
    ids=["workflow-was-started", "204", "callback-json", "callback-text"],
)
async def test_trigger_and_download_of_an_acknowledged_run_answers_202_and_the_run_goes_on(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, path: str, delivery: str | None
) -> None:
    config = webhook(runtime, path) | ({} if delivery is None else {"result_delivery": delivery})
    agent = await tenant.create_agent(output_kind="file_download", runtime=config)
    url_result = {"url": "https://files.example/report.pdf"}

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download",
        headers=tenant.auth,
        json={"input": {"result": url_result, "outputs": 1}},
    )

    assert resp.status == 202
    body = await resp.json()
    assert body == {"runId": body["runId"], "agentId": agent["id"], "status": "running"}
    assert "Content-Disposition" not in resp.headers
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", url_result, 1)


async def test_a_response_agents_json_answer_to_a_download_is_still_a_502(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(
        output_kind="file_download",
        runtime=webhook(runtime, "immediate?response_data=%7B%22queued%22%3A%20true%7D&report=0"),
    )

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )

    assert resp.status == 502
    body = await resp.json()
    assert body["error"].startswith("WorkflowReturnedJson")
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"


async def wait_for_run_status(db: asyncpg.Pool, run_id: int, status: str) -> dict[str, Any]:
    """The run row once the store shows ``status`` (bounded)."""
    for _ in range(250):
        record = await db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        if record is not None and record["status"] == status:
            return dict(record)
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never showed {status}")
