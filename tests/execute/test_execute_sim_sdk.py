"""Sim's own Python SDK (``simstudio-sdk`` 0.1.2) drives workflow execute unchanged: a team that
moves its workflows behind the gateway changes ``base_url`` and nothing else.

The SDK is a blocking HTTP client: each call runs in a thread, against a gateway on a real
port.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from simstudio import (
    AsyncExecutionResult,
    SimStudioClient,
    SimStudioError,
    WorkflowExecutionResult,
)

from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import json_agent, received
from tests.support.tenants import Tenant

T = TypeVar("T")
FILES_FORMAT = [{"name": "documents", "type": "files"}, {"name": "note", "type": "string"}]


def sim_client(tenant: Tenant, key: str | None = None) -> SimStudioClient:
    """The SDK's client, pointed at the gateway instead of Sim."""
    return SimStudioClient(
        api_key=key or tenant.ingest_key, base_url=str(tenant.client.make_url("/"))
    )


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One blocking SDK call, off the event loop that serves the gateway."""
    return await asyncio.to_thread(fn, *args, **kwargs)


class NamedFile(io.BytesIO):
    """A file as a Sim user hands one to the SDK: bytes, a name and a content type."""

    def __init__(self, content: bytes, name: str, content_type: str) -> None:
        super().__init__(content)
        self.name = name
        self.content_type = content_type


async def test_execute_workflow_answers_the_run_result(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    client = sim_client(tenant)

    result = await call(client.execute_workflow, str(agent["id"]), {"message": "hello"})

    assert isinstance(result, WorkflowExecutionResult)
    assert result.success is True
    assert result.output == {"echo": {"message": "hello"}}
    assert result.error is None
    assert isinstance(result.metadata, dict)
    assert result.metadata["duration"] >= 0


async def test_a_file_in_the_input_reaches_the_runtime_as_a_signed_url(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json", input_format=FILES_FORMAT)
    client = sim_client(tenant)
    content = b"%PDF-1.4\n" + bytes(range(256)) * 40

    result = await call(
        client.execute_workflow,
        str(agent["id"]),
        {"documents": [NamedFile(content, "/tmp/q3/report.pdf", "application/pdf")], "note": "Q3"},
    )

    assert result.success is True, result.error
    [sent] = received(runtime)[0]["payload"]["documents"]
    assert (sent["name"], sent["size"], sent["type"]) == (
        "report.pdf",
        len(content),
        "application/pdf",
    )
    assert urlsplit(sent["url"]).path.startswith("/files/")
    async with aiohttp.ClientSession() as anyone, anyone.get(sent["url"]) as got:
        assert got.status == 200
        assert await got.read() == content


async def test_async_execute_answers_a_task_whose_status_is_followed_to_its_end(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json?delay_ms=200")
    client = sim_client(tenant)

    accepted = await call(
        client.execute_workflow, str(agent["id"]), {"topic": "Q3"}, async_execution=True
    )

    assert isinstance(accepted, AsyncExecutionResult)
    assert accepted.success is True
    assert accepted.status == "queued"
    assert accepted.created_at.endswith("Z")
    assert accepted.links == {
        "status": f"/api/jobs/{accepted.task_id}",
        "stream": f"/api/workflows/{agent['id']}/executions/{accepted.task_id}/stream",
    }

    job = await call(client.get_job_status, accepted.task_id)
    for _ in range(200):
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        assert job["status"] in ("queued", "processing")
        await asyncio.sleep(0.05)
        job = await call(client.get_job_status, accepted.task_id)
    assert job["success"] is True
    assert job["taskId"] == accepted.task_id
    assert job["status"] == "completed"
    assert job["output"] == {"echo": {"topic": "Q3"}}
    assert "error" not in job
    assert job["metadata"]["workflowId"] == str(agent["id"])
    assert job["metadata"]["duration"] >= 0
    assert job["metadata"]["completedAt"] >= job["metadata"]["startedAt"]


async def test_a_failed_async_execute_is_a_failed_job_with_its_error(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "workflow-error")
    client = sim_client(tenant)

    accepted = await call(client.execute_workflow, str(agent["id"]), {}, async_execution=True)
    job = await call(client.get_job_status, accepted.task_id)
    for _ in range(200):
        if job["status"] not in ("queued", "processing"):
            break
        await asyncio.sleep(0.05)
        job = await call(client.get_job_status, accepted.task_id)

    assert job["status"] == "failed"
    assert job["error"] == "WorkflowFailed: HTTP 500: Error in workflow"
    assert "output" not in job


async def test_another_organisations_task_is_not_found(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, make_tenant: Any
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    accepted = await call(
        sim_client(tenant).execute_workflow, str(agent["id"]), {}, async_execution=True
    )
    other = await make_tenant("Globex")

    with pytest.raises(SimStudioError) as raised:
        await call(sim_client(other).get_job_status, accepted.task_id)

    assert (raised.value.status, str(raised.value)) == (404, "Task not found")
    with pytest.raises(SimStudioError) as raised:
        await call(sim_client(tenant).get_job_status, "not-a-task")
    assert raised.value.status == 404


async def test_workflow_status_and_validate_tell_whether_the_workflow_can_run(
    tenant: Tenant, runtime: TestServer, make_tenant: Any
) -> None:
    ready = await json_agent(tenant, runtime, "json")
    closed = await json_agent(tenant, runtime, "json", allow_external_triggers=False)
    client = sim_client(tenant)

    status = await call(client.get_workflow_status, str(ready["id"]))
    assert status.is_deployed is True
    assert status.deployed_at is not None
    assert status.deployed_at.endswith("Z")
    assert status.needs_redeployment is False
    assert await call(client.validate_workflow, str(ready["id"])) is True

    status = await call(client.get_workflow_status, str(closed["id"]))
    assert (status.is_deployed, status.deployed_at) == (False, None)
    assert await call(client.validate_workflow, str(closed["id"])) is False

    other = sim_client(await make_tenant("Globex"))
    with pytest.raises(SimStudioError) as raised:
        await call(other.get_workflow_status, str(ready["id"]))
    assert (raised.value.status, str(raised.value)) == (404, "Workflow not found")
    assert await call(other.validate_workflow, str(ready["id"])) is False


async def test_rate_limit_info_follows_the_execute_bucket(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, make_gateway: GatewayFactory
) -> None:
    tenant.client = await make_gateway(execute_rate_limit=3, execute_rate_window_s=60)
    agent = await json_agent(tenant, runtime, "json")
    client = sim_client(tenant)
    assert client.get_rate_limit_info() is None

    await call(client.execute_workflow, str(agent["id"]), {})
    first = client.get_rate_limit_info()
    await call(client.execute_workflow, str(agent["id"]), {})
    second = client.get_rate_limit_info()

    assert first is not None
    assert second is not None
    assert (first.limit, first.remaining) == (3, 2)
    assert (second.limit, second.remaining) == (3, 1)
    assert time.time() < second.reset <= time.time() + 60 + 1
    assert second.retry_after is None


async def test_a_429_tells_its_retry_time_and_execute_with_retry_gives_up_on_it(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, make_gateway: GatewayFactory
) -> None:
    tenant.client = await make_gateway(execute_rate_limit=1, execute_rate_window_s=3600)
    agent = await json_agent(tenant, runtime, "json")
    client = sim_client(tenant)
    await call(client.execute_workflow, str(agent["id"]), {})

    with pytest.raises(SimStudioError) as raised:
        await call(client.execute_workflow, str(agent["id"]), {})

    assert (raised.value.status, raised.value.code) == (429, "RATE_LIMIT_EXCEEDED")
    info = client.get_rate_limit_info()
    assert info is not None
    assert (info.limit, info.remaining) == (1, 0)
    assert info.retry_after is not None
    assert 1000 <= info.retry_after <= 3600 * 1000
    assert str(raised.value) == f"Rate limit exceeded. Retry after {info.retry_after}ms"
    # No retries asked for: the SDK's retry loop gives the 429 back as it is.
    with pytest.raises(SimStudioError) as raised:
        await call(client.execute_with_retry, str(agent["id"]), {}, max_retries=0)
    assert raised.value.code == "RATE_LIMIT_EXCEEDED"


async def test_usage_limits_tell_what_the_organisation_may_still_execute(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, make_gateway: GatewayFactory
) -> None:
    tenant.client = await make_gateway(execute_rate_limit=5, execute_rate_window_s=60)
    busy = await json_agent(tenant, runtime, "json")
    idle = await json_agent(tenant, runtime, "json")
    client = sim_client(tenant)
    for _ in range(2):
        await call(client.execute_workflow, str(busy["id"]), {})

    limits = await call(client.get_usage_limits)

    assert limits.success is True
    sync = limits.rate_limit["sync"]
    assert (sync["isLimited"], sync["limit"], sync["remaining"]) == (False, 5, 3)
    assert sync["resetAt"].endswith("Z")
    assert limits.rate_limit["async"] == sync
    assert limits.rate_limit["authType"] == "api"
    workflows = limits.rate_limit["workflows"]
    assert workflows[str(busy["id"])]["remaining"] == 3
    assert workflows[str(idle["id"])]["remaining"] == 5
    assert limits.usage == {"currentPeriodCost": 0, "limit": None, "plan": "gateway"}


async def test_the_errors_are_sim_studio_errors_with_their_status(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    with pytest.raises(SimStudioError) as raised:
        await call(sim_client(tenant, "not-a-key").execute_workflow, str(agent["id"]), {})
    assert (raised.value.status, str(raised.value)) == (
        401,
        "Missing or invalid API key (send it in X-API-Key)",
    )

    with pytest.raises(SimStudioError) as raised:
        await call(sim_client(tenant).execute_workflow, "999999999", {})
    assert (raised.value.status, str(raised.value)) == (404, "Workflow not found")

    with pytest.raises(SimStudioError) as raised:
        await call(sim_client(tenant, "not-a-key").get_usage_limits)
    assert raised.value.status == 401
