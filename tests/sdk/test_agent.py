"""The Python SDK driven against a real running gateway (a real socket, no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent_gateway_sdk import (
    UNSET,
    GatewayError,
    RateLimited,
    Run,
    TimedOut,
    create_agent_client,
    get_run,
    ingest_run,
    register_run,
    trigger_run,
    trigger_run_and_download,
    trigger_run_and_wait,
)
from devkit.fakes.n8n import make_bytes
from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import callbacks_answered, json_agent, webhook
from tests.support.tenants import Tenant, TenantFactory

FIFTY_MB = 50 * 1024 * 1024


def base_url(client: TestClient[web.Request, web.Application]) -> str:
    return str(client.make_url("")).rstrip("/")


@pytest.fixture
def sdk_args(tenant: Tenant) -> dict[str, Any]:
    """What every SDK call takes: where the gateway is and the caller's ingest key."""
    return {"base_url": base_url(tenant.client), "ingest_api_key": tenant.ingest_key}


async def until_status(args: dict[str, Any], agent_id: int, run_id: int, status: str) -> Run:
    for _ in range(200):
        run = await get_run(**args, agent_id=agent_id, run_id=run_id)
        if run.status == status:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {status}: {run}")


async def test_trigger_run_returns_at_once_and_the_run_completes(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    started = await trigger_run(
        **sdk_args, agent_id=agent["id"], input={"url": "https://example.com"}
    )

    assert started.status == "queued"
    assert not started.replayed
    run = await until_status(sdk_args, agent["id"], started.run_id, "completed")
    assert run.output_data == {"echo": {"url": "https://example.com"}}
    assert run.completed_at is not None
    assert run.created_at is not None


async def test_trigger_run_with_an_idempotency_key_replays_the_same_run(
    tenant: Tenant, runtime: TestServer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    first = await trigger_run(**sdk_args, agent_id=agent["id"], idempotency_key="order-17")
    again = await trigger_run(**sdk_args, agent_id=agent["id"], idempotency_key="order-17")

    assert again.run_id == first.run_id
    assert (first.replayed, again.replayed) == (False, True)


async def test_trigger_run_and_wait_returns_the_finished_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    result = await trigger_run_and_wait(
        **sdk_args,
        agent_id=agent["id"],
        input={"result": {"summary": "Q3 up", "outputs": 3}},
        timeout_ms=10_000,
    )

    assert isinstance(result, Run)
    assert result.timed_out is False
    assert (result.status, result.output_data, result.outputs) == (
        "completed",
        {"summary": "Q3 up", "outputs": 3},
        3,
    )
    assert result.duration_ms is not None
    assert result.duration_ms >= 0


async def test_trigger_run_and_wait_reports_a_failed_run_as_a_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "workflow-error")

    result = await trigger_run_and_wait(**sdk_args, agent_id=agent["id"])

    assert isinstance(result, Run)
    assert result.status == "failed"
    assert result.error is not None
    assert "Error in workflow" in result.error


async def test_trigger_run_and_wait_says_timed_out_when_the_window_ends_first(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report_delay_ms=400")

    result = await trigger_run_and_wait(**sdk_args, agent_id=agent["id"], timeout_ms=150)

    assert isinstance(result, TimedOut)
    assert result.timed_out is True
    assert result.agent_id == agent["id"]
    run = await until_status(sdk_args, agent["id"], result.run_id, "completed")
    assert run.output_data == {"ok": True}


async def test_a_50_mb_download_is_saved_to_disk_byte_for_byte(
    tenant: Tenant, runtime: TestServer, sdk_args: dict[str, Any], tmp_path: Path
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, f"bytes?size={FIFTY_MB}"))

    async with trigger_run_and_download(**sdk_args, agent_id=agent["id"]) as download:
        assert (download.filename, download.content_type) == (
            "data.bin",
            "application/octet-stream",
        )
        assert download.content_length == FIFTY_MB
        saved = await download.save(tmp_path)

    assert saved == tmp_path / "data.bin"
    assert saved.stat().st_size == FIFTY_MB
    expected = hashlib.sha256()
    for offset in range(0, FIFTY_MB, 4 * 1024 * 1024):
        expected.update(make_bytes(min(4 * 1024 * 1024, FIFTY_MB - offset), offset))
    actual = hashlib.sha256()
    with saved.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            actual.update(block)
    assert actual.hexdigest() == expected.hexdigest()
    assert not (tmp_path / "data.bin.part").exists()


async def test_a_download_body_streams_once(
    tenant: Tenant, runtime: TestServer, sdk_args: dict[str, Any]
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv"))

    download = await trigger_run_and_download(**sdk_args, agent_id=agent["id"])
    chunks = [chunk async for chunk in download.body]

    assert b"".join(chunks).startswith(b"\xef\xbb\xbfrow,topic,value")
    assert download.filename == "report.csv"
    assert download.content_length is None  # chunked, as n8n's "Convert to File" sends it
    assert download.run_id > 0
    with pytest.raises(RuntimeError, match="only once"):
        download.body  # noqa: B018


async def test_a_download_cut_short_raises_and_leaves_no_file(
    tenant: Tenant, runtime: TestServer, sdk_args: dict[str, Any], tmp_path: Path
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, "bytes?size=3000000&die_after=1000000")
    )

    saved = tmp_path / "downloads"
    saved.mkdir()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with trigger_run_and_download(**sdk_args, agent_id=agent["id"]) as download:
            await download.save(saved / "out.bin")

    assert os.listdir(saved) == []


async def test_a_download_of_an_ineligible_agent_raises_with_the_gateway_s_answer(
    tenant: Tenant, runtime: TestServer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    with pytest.raises(GatewayError) as raised:
        await trigger_run_and_download(**sdk_args, agent_id=agent["id"])

    assert raised.value.status == 422
    assert "not eligible" in raised.value.message
    assert isinstance(raised.value.body, dict)


async def test_a_registered_run_reports_through_the_agent_client(
    tenant: Tenant, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await tenant.create_agent(output_kind="json")
    credential_id = await tenant.create_credential(
        {"token": "t0p"}, name="Slack", type="oauth", grant_to=agent
    )
    registered = await register_run(**sdk_args, agent_id=agent["id"], external_run_id="run_abc")
    again = await register_run(**sdk_args, agent_id=agent["id"], external_run_id="run_abc")
    assert again.run_id == registered.run_id
    assert again.credentials_token != registered.credentials_token
    assert registered.expires_in_seconds >= 3600

    async with create_agent_client(
        base_url=sdk_args["base_url"],
        api_key=agent["api_key"],
        run_id=registered.run_id,
        credentials_token=registered.credentials_token,
    ) as client:
        credential = await client.resolve_credential(credential_id)
        assert (credential.name, credential.type, credential.data) == (
            "Slack",
            "oauth",
            {"token": "t0p"},
        )
        assert "t0p" not in repr(credential)
        assert (await client.started()).status == "running"
        assert (await client.output({"step": 1})).status == "running"
        waiting = await client.waiting(token_id="approval-1", description="Manager sign-off")
        assert waiting.status == "waiting"
        await until_status(sdk_args, agent["id"], registered.run_id, "waiting")
        done = await client.complete({"approved": True}, outputs=2)
        assert done.status == "completed"
        run = await until_status(sdk_args, agent["id"], registered.run_id, "completed")
        assert (run.output_data, run.outputs) == ({"approved": True}, 2)

        with pytest.raises(GatewayError) as late:
            await client.fail("too late")
        assert late.value.status == 409
        assert late.value.run_id == registered.run_id


async def test_the_agent_client_fails_a_run_with_its_reason(
    tenant: Tenant, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await tenant.create_agent(output_kind="json")
    registered = await register_run(**sdk_args, agent_id=agent["id"], external_run_id="f")

    async with create_agent_client(
        base_url=sdk_args["base_url"], api_key=agent["api_key"], run_id=registered.run_id
    ) as client:
        assert (await client.fail("Upstream 503", name="FetchError", stack="at x")).status == (
            "failed"
        )
        with pytest.raises(ValueError, match="credentials_token"):
            await client.resolve_credential("anything")

    run = await until_status(sdk_args, agent["id"], registered.run_id, "failed")
    assert run.error == "FetchError: Upstream 503"


async def test_a_runtime_reports_back_with_create_agent_client(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    """The fake n8n workflow answers 202 and then reports with the SDK's agent client."""
    agent = await json_agent(tenant, runtime, "accepted?report_delay_ms=20")

    result = await trigger_run_and_wait(
        **sdk_args, agent_id=agent["id"], input={"result": {"rows": 5}}, timeout_ms=10_000
    )

    assert isinstance(result, Run)
    assert (result.status, result.output_data) == ("completed", {"rows": 5})
    assert [(s["step"], s["status"]) for s in await callbacks_answered(runtime, 3)] == [
        ("started", 202),
        ("output", 202),
        ("complete", 202),
    ]


async def test_ingest_run_reports_a_standalone_agent_s_run(
    tenant: Tenant, consumer: StoreConsumer, sdk_args: dict[str, Any]
) -> None:
    agent = await tenant.create_agent(output_kind="json", managed_by="standalone")

    running = await ingest_run(
        **sdk_args, agent_id=agent["id"], external_run_id="exec_001", status="running"
    )
    done = await ingest_run(
        **sdk_args,
        agent_id=agent["id"],
        external_run_id="exec_001",
        status="completed",
        output={"pages": 42},
        outputs=42,
    )

    assert (running.created, done.created) == (True, False)
    assert done.run_id == running.run_id
    run = await until_status(sdk_args, agent["id"], done.run_id, "completed")
    assert (run.output_data, run.outputs) == ({"pages": 42}, 42)
    with pytest.raises(GatewayError) as ended:
        await ingest_run(
            **sdk_args,
            agent_id=agent["id"],
            external_run_id="exec_001",
            status="failed",
            error={"message": "late"},
            output=UNSET,
        )
    assert ended.value.status == 409
    assert ended.value.body["status"] == "completed"


async def test_errors_carry_the_status_and_the_parsed_body(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer, sdk_args: dict[str, Any]
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    stranger = await make_tenant("Globex")

    with pytest.raises(GatewayError) as unauthorized:
        await trigger_run(**{**sdk_args, "ingest_api_key": "igk_wrong"}, agent_id=agent["id"])
    with pytest.raises(GatewayError) as foreign:
        await trigger_run(
            **{**sdk_args, "ingest_api_key": stranger.ingest_key}, agent_id=agent["id"]
        )

    assert unauthorized.value.status == 401
    assert unauthorized.value.body == {"error": "Missing or invalid bearer token"}
    assert (foreign.value.status, foreign.value.message) == (404, "Agent not found")
    assert not isinstance(foreign.value, RateLimited)


async def test_a_429_carries_the_retry_delay(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    gateway = await make_gateway(sync_rate_limit=1, sync_rate_window_s=60)
    tenant = await make_tenant()
    tenant.client = gateway
    agent = await json_agent(tenant, runtime, "json")
    args = {"base_url": base_url(gateway), "ingest_api_key": tenant.ingest_key}

    async with aiohttp.ClientSession() as session:
        await trigger_run_and_wait(**args, agent_id=agent["id"], session=session)
        with pytest.raises(RateLimited) as limited:
            await trigger_run_and_wait(**args, agent_id=agent["id"], session=session)
        assert not session.closed  # a session passed in stays the caller's

    assert limited.value.status == 429
    assert 0 < limited.value.retry_after_s <= 60
    assert limited.value.body["retryAfterMs"] > 0
