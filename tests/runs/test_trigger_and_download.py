"""Trigger-and-download: POST /api/agents/{agentId}/runs/trigger-and-download, every row."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import io
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import make_bytes
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.reaper import reap_overdue
from tests.support.consumers import ConsumerFactory
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_for_run
from tests.support.runtimes import received, webhook
from tests.support.store_runs import wait_until_past
from tests.support.tenants import Tenant, TenantFactory

MB = 1024 * 1024


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Every row of this module runs on both copy paths: os.splice and the portable one."""
    return dataclasses.replace(settings, stream_splice=request.param)


@pytest.fixture
async def impatient_tenant(make_gateway: GatewayFactory, make_tenant: TenantFactory) -> Tenant:
    """A tenant whose gateway gives up on a silent stream after half a second."""
    tenant = await make_tenant()
    tenant.client = await make_gateway(stream_idle_timeout_s=0.5)
    return tenant


def download_url(agent_id: int | str) -> str:
    return f"/api/agents/{agent_id}/runs/trigger-and-download"


async def sha256_of_body(resp: aiohttp.ClientResponse) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in resp.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_50_mb_file_arrives_byte_identical_and_the_run_records_its_metadata(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, chunked: bool, settings: Settings
) -> None:
    size = 50 * MB
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={size}&chunked={int(chunked)}&outputs=1")
    )

    with structlog.testing.capture_logs() as logs:
        resp = await tenant.client.post(
            download_url(agent["id"]), headers=tenant.auth, json={"input": {"topic": "Q3"}}
        )
        assert resp.status == 200
        digest, got = await sha256_of_body(resp)
        run_id = int(resp.headers["X-Run-Id"])
        await wait_for_run(tenant, agent["id"], run_id)

    # Either body goes socket to socket when splicing is on (chunked: its framing re-emitted).
    sent = [e for e in logs if e["event"] == "download_sent"]
    expected_path = "splice" if settings.stream_splice else "copy"
    assert [(e["path"], e["bytes"]) for e in sent] == [(expected_path, size)]

    assert got == size
    assert digest == hashlib.sha256(make_bytes(size)).hexdigest()
    run_id = int(resp.headers["X-Run-Id"])
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    assert resp.headers["Cache-Control"] == "no-store"
    if chunked:
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
    else:
        assert resp.headers["Content-Length"] == str(size)

    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "completed"
    assert run["output_data"] == {
        "kind": "file_download",
        "filename": "data.bin",
        "mimeType": "application/octet-stream",
        "sizeBytes": size,
    }
    assert run["outputs"] == 1
    assert run["error"] is None
    assert run["duration_ms"] >= 0
    assert run["completed_at"] >= run["started_at"] >= run["created_at"]


async def test_the_runtime_gets_the_trigger_payload_with_merged_input_and_its_headers(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, "report.csv"),
        default_input={"topic": "default", "rows": 3, "locale": "en"},
    )

    resp = await tenant.client.post(
        download_url(agent["id"]),
        headers=tenant.auth,
        json={"input": {"topic": "Q3 financial summary"}},
    )

    assert resp.status == 200
    body = await resp.read()
    assert body.startswith(b"\xef\xbb\xbfrow,topic,value")
    assert body.count(b"Q3 financial summary") == 3
    [call] = received(runtime)
    payload = call["payload"]
    assert payload["input"] == {"topic": "Q3 financial summary", "rows": 3, "locale": "en"}
    assert payload["runId"] == int(resp.headers["X-Run-Id"])
    assert payload["agentId"] == agent["id"]
    assert payload["agentApiKey"] == agent["api_key"]
    callback = tenant.client.make_url(f"/api/runs/{payload['runId']}/callback")
    assert payload["callbackUrl"] == str(callback)
    assert call["headers"]["X-N8N-Auth"] == "shared-secret"


async def test_headers_pass_through_verbatim(tenant: Tenant, runtime: TestServer) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 200
    body = await resp.read()
    assert body.startswith(b"%PDF-1.4")
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert resp.headers["Content-Length"] == str(len(body))


async def test_a_missing_content_disposition_is_synthesized_from_agent_and_type(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(
        name="Quarterly Report / EU", runtime=webhook(runtime, "report.pdf?disposition=0")
    )

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 200
    await resp.read()
    run_id = resp.headers["X-Run-Id"]
    expected = f"quarterly-report-eu-run-{run_id}.pdf"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{expected}"'
    run = await wait_for_run(tenant, agent["id"], int(run_id))
    assert run["output_data"]["filename"] == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "", " 7x"])
async def test_an_invalid_x_outputs_is_dropped_silently(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, value: str
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, f"report.pdf?outputs={value}"))

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)
    assert resp.status == 200
    await resp.read()

    run = await wait_for_run(tenant, agent["id"], int(resp.headers["X-Run-Id"]))
    assert run["status"] == "completed"
    assert run["outputs"] is None


async def test_a_json_answer_is_a_502_with_the_parsed_json_and_a_failed_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "json-error"))

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 502
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == 'WorkflowReturnedJson: {"error": "PDF rendering failed"}'
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"
    assert run["error"] == body["error"]
    assert run["output_data"] == {"error": "PDF rendering failed"}


async def test_a_json_body_with_a_200_is_still_not_a_file(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, "report.csv?content_type=application/json")
    )

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 502
    assert (await resp.json())["error"].startswith("WorkflowReturnedInvalidJson")


async def test_an_empty_answer_is_a_502_not_an_empty_file(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "bytes?size=0&chunked=1"))

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 502
    body = await resp.json()
    assert body["error"].startswith("RuntimeReturnedEmptyBody")
    assert isinstance(body["runId"], int)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[1, 2]", None),
        (b"not json", None),
        (b'{"input": [1]}', "input"),
        (b'{"input": "topic"}', "input"),
        (b'{"userId": "not-a-uuid"}', "userId"),
        (b'{"timeoutMs": 0}', "timeoutMs"),
        (b'{"timeoutMs": -5}', "timeoutMs"),
        (b'{"timeoutMs": "1000"}', "timeoutMs"),
        (b'{"timeoutMs": true}', "timeoutMs"),
        (b'{"timeoutMs": NaN}', None),
    ],
)
async def test_a_bad_body_is_a_400_naming_the_problem(
    tenant: Tenant, runtime: TestServer, body: bytes, field: str | None
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth, data=body)

    assert resp.status == 400
    error = await resp.json()
    if field is None:
        assert "JSON" in error["error"]
    else:
        assert error["error"] == "Invalid request body"
        assert field in error["details"]
    assert received(runtime) == []


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_oversized_body_is_a_413(
    tenant: Tenant, runtime: TestServer, declared: bool
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    huge = b'{"input": {"x": "' + b"a" * (2 * MB) + b'"}}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start : start + 64 * 1024]

    data: Any = io.BytesIO(huge) if declared else chunks()
    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth, data=data)

    assert resp.status == 413
    assert "limit" in (await resp.json())["error"]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer igk_wrong", "Basic abc", "igk_bare"]
)
async def test_a_missing_or_invalid_key_is_a_401(
    tenant: Tenant, runtime: TestServer, authorization: str | None
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    headers = {} if authorization is None else {"Authorization": authorization}

    resp = await tenant.client.post(download_url(agent["id"]), headers=headers)

    assert resp.status == 401
    assert await resp.json() == {"error": "Missing or invalid bearer token"}
    assert received(runtime) == []


async def test_another_organisations_agent_is_a_404(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    stranger = await make_tenant("Other org")

    for agent_id in (agent["id"], 999_999_999, "abc", "1e3", "../1"):
        resp = await stranger.client.post(download_url(agent_id), headers=stranger.auth)
        assert resp.status == 404, agent_id
        assert (await resp.json())["error"]
    assert received(runtime) == []


async def test_external_triggers_off_is_a_403(tenant: Tenant, runtime: TestServer) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, "report.pdf"), allow_external_triggers=False
    )

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 403
    assert "allow_external_triggers" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"managed_by": "standalone"}, "managed_by"),
        ({"status": "paused"}, "status"),
        ({"output_kind": "json"}, "output_kind"),
    ],
)
async def test_an_ineligible_agent_is_a_422_saying_why(
    tenant: Tenant, runtime: TestServer, fields: dict[str, Any], reason: str
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"), **fields)

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 422
    assert reason in (await resp.json())["error"]
    assert received(runtime) == []


async def test_the_runtime_not_answering_in_the_window_is_a_504_and_a_failed_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf?delay_ms=3000"))

    started = time.monotonic()
    resp = await tenant.client.post(
        download_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 300}
    )

    assert resp.status == 504
    assert time.monotonic() - started < 2.5
    body = await resp.json()
    assert body["error"] == "Runtime did not respond within the wait window"
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"
    assert run["error"] == body["error"]


async def test_the_wait_window_is_capped_by_the_agents_running_timeout(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, "report.pdf?delay_ms=3000"), running_timeout_ms=300
    )

    resp = await tenant.client.post(
        download_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 120000}
    )

    assert resp.status == 504


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_runtime_that_cannot_be_reached_is_a_500_and_a_failed_run(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/webhook/report.pdf"
    agent = await tenant.create_agent(runtime={"kind": "n8n", "webhook_url": url})

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 500
    body = await resp.json()
    assert body["error"].startswith("Runtime invocation failed")
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"


async def test_the_sixth_call_in_a_minute_is_a_429_across_two_replicas(
    tenant: Tenant, runtime: TestServer, make_gateway: GatewayFactory
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    replicas = [tenant.client, await make_gateway()]

    for i in range(5):
        resp = await replicas[i % 2].post(download_url(agent["id"]), headers=tenant.auth)
        assert resp.status == 200, i
        await resp.read()
    resp = await replicas[1].post(download_url(agent["id"]), headers=tenant.auth)

    assert resp.status == 429
    body = await resp.json()
    assert body["error"].startswith("Rate limit exceeded")
    assert 0 < body["retryAfterMs"] <= 12_000
    assert 1 <= int(resp.headers["Retry-After"]) <= 12
    assert resp.headers["RateLimit-Policy"] == "5;w=60"
    assert resp.headers["RateLimit"].startswith("limit=5, remaining=0, reset=")
    assert len(received(runtime)) == 5


async def test_a_member_is_attributed_and_a_stranger_dropped(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    member = await tenant.add_member(f"{uuid.uuid4().hex}@example.com")
    outsider = await (await make_tenant("Other")).add_member(f"{uuid.uuid4().hex}@example.com")

    created_by = {}
    for user_id in (member, outsider, str(uuid.uuid4())):
        resp = await tenant.client.post(
            download_url(agent["id"]), headers=tenant.auth, json={"userId": user_id}
        )
        assert resp.status == 200
        await resp.read()
        run_id = int(resp.headers["X-Run-Id"])
        created_by[user_id] = await db.fetchval("SELECT created_by FROM runs WHERE id = $1", run_id)

    assert [str(v) if v else None for v in created_by.values()] == [member, None, None]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_caller_leaving_closes_the_upstream_within_a_second_and_fails_the_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, chunked: bool
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={500 * MB}&chunked={int(chunked)}")
    )
    session = aiohttp.ClientSession()
    resp = await session.post(
        tenant.client.make_url(download_url(agent["id"])), headers=tenant.auth
    )
    assert resp.status == 200
    run_id = int(resp.headers["X-Run-Id"])
    await resp.content.readexactly(MB)

    left_at = time.monotonic()
    resp.close()
    await session.close()

    call = received(runtime)[0]
    while call["outcome"] == "in_progress" and time.monotonic() - left_at < 5:
        await asyncio.sleep(0.02)
    assert call["outcome"] == "disconnected"
    assert call["ended_at"] - left_at < 1.0
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("Caller disconnected after")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_runtime_dying_mid_body_aborts_the_caller_and_fails_the_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, chunked: bool
) -> None:
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={8 * MB}&chunked={int(chunked)}&die_after={3 * MB}")
    )

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)
    assert resp.status == 200
    run_id = int(resp.headers["X-Run-Id"])
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()

    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("Runtime stream broke after")


async def test_a_runtime_stalling_mid_body_aborts_the_caller_after_the_idle_timeout(
    impatient_tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    tenant = impatient_tenant
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={4 * MB}&hang_after={MB}")
    )

    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()

    run = await wait_for_run(tenant, agent["id"], int(resp.headers["X-Run-Id"]))
    assert run["status"] == "failed"
    assert run["error"].startswith("Runtime sent nothing for 0.5 s mid-stream after")


async def test_the_caller_leaving_before_the_runtime_answers_fails_the_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf?delay_ms=5000"))
    async with aiohttp.ClientSession() as session:
        asking = asyncio.create_task(
            session.post(tenant.client.make_url(download_url(agent["id"])), headers=tenant.auth)
        )
        # The caller leaves once the runtime has the call, however long that took to happen.
        for _ in range(500):
            if received(runtime) or asking.done():
                break
            await asyncio.sleep(0.01)
        assert received(runtime), "the runtime was never called"
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    left_at = time.monotonic()

    call = received(runtime)[0]
    while call["outcome"] == "in_progress" and time.monotonic() - left_at < 5:
        await asyncio.sleep(0.02)
    assert call["outcome"] == "disconnected"
    assert call["ended_at"] - left_at < 1.0
    run_id = call["payload"]["runId"]
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "failed"
    assert run["error"] == "Caller disconnected before the runtime answered"


async def test_an_encoded_body_passes_through_untouched_with_its_headers(
    tenant: Tenant, runtime: TestServer
) -> None:
    """Never decompressed on the way: the bytes and their Content-Length stay consistent."""
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv?gzip=1&chunked=0"))
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        resp = await session.post(
            tenant.client.make_url(download_url(agent["id"])),
            headers={**tenant.auth, "Accept-Encoding": "gzip"},
        )
        assert resp.status == 200
        body = await resp.read()

    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Length"] == str(len(body))
    assert gzip.decompress(body).startswith(b"\xef\xbb\xbfrow,topic,value")
    assert received(runtime)[0]["headers"]["Accept-Encoding"] == "gzip"


async def test_a_run_is_visible_only_through_its_own_agent_and_organisation(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    other_agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf"))
    resp = await tenant.client.post(download_url(agent["id"]), headers=tenant.auth)
    await resp.read()
    run_id = resp.headers["X-Run-Id"]
    stranger = await make_tenant("Other")

    own = await tenant.client.get(f"/api/agents/{agent['id']}/runs/{run_id}", headers=tenant.auth)
    wrong_agent = await tenant.client.get(
        f"/api/agents/{other_agent['id']}/runs/{run_id}", headers=tenant.auth
    )
    foreign = await stranger.client.get(
        f"/api/agents/{agent['id']}/runs/{run_id}", headers=stranger.auth
    )
    unknown = await tenant.client.get(
        f"/api/agents/{agent['id']}/runs/99999999999", headers=tenant.auth
    )

    assert own.status == 200
    assert (await own.json())["runId"] == int(run_id)
    assert [wrong_agent.status, foreign.status, unknown.status] == [404, 404, 404]


async def test_a_caller_that_stops_reading_is_cut_off_after_the_idle_timeout(
    impatient_tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    tenant = impatient_tenant
    agent = await tenant.create_agent(runtime=webhook(runtime, f"bytes?size={200 * MB}"))
    reader, writer = await asyncio.open_connection(tenant.client.host, tenant.client.port)
    writer.write(
        f"POST {download_url(agent['id'])} HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {tenant.ingest_key}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    run_id = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-run-id")
        )
    )
    # ...and never read another byte.
    try:
        run = await wait_for_run(tenant, agent["id"], run_id)
    finally:
        writer.close()
    assert run["status"] == "failed"
    assert run["error"].startswith("Caller read nothing for 0.5 s mid-stream after")


async def test_a_download_streaming_past_its_runs_deadline_is_spared_by_the_reaper_and_completes(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    db: asyncpg.Pool,
    make_consumer: ConsumerFactory,
) -> None:
    """The run's deadline is its window plus the agent's running timeout (6 minutes with the
    defaults), here one second; the file takes longer than that to read. The replica streaming
    it keeps the deadline ahead, so the reaper leaves the run alone and it ends completed with
    its file's metadata."""
    tenant = await make_tenant()
    tenant.client = await make_gateway(download_lease_s=3.0)
    await make_consumer(reap_every_s=0.1)
    size = 64 * MB
    agent = await tenant.create_agent(
        runtime=webhook(runtime, f"bytes?size={size}"), running_timeout_ms=500
    )
    resp = await tenant.client.post(
        download_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 500}
    )
    assert resp.status == 200
    run_id = int(resp.headers["X-Run-Id"])
    first = await resp.content.readexactly(MB)

    # The caller reads nothing more until the run's own deadline is well past (more than the
    # kernel's buffers hold is still to come, so the stream is open), and the reaper has run.
    await wait_until_past(db, run_id, seconds_after_creation=2.0)
    assert run_id not in await reap_overdue(db)
    rest = await resp.read()

    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(make_bytes(size)).digest()
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["error"]) == ("completed", None)
    assert run["output_data"] == {
        "kind": "file_download",
        "filename": "data.bin",
        "mimeType": "application/octet-stream",
        "sizeBytes": size,
    }


async def test_a_download_retried_with_its_key_is_a_409_naming_the_run_never_a_second_run(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    """The file is never stored, so a retry cannot be sent it again: it learns the run the key
    started and where that run stands, and the workflow is not run twice."""
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv"))
    headers = {**tenant.auth, "Idempotency-Key": "export-2026-11"}
    body = {"input": {"rows": 3}}

    first = await tenant.client.post(download_url(agent["id"]), headers=headers, json=body)
    assert first.status == 200, await first.text()
    await first.read()
    run_id = int(first.headers["X-Run-Id"])
    await wait_for_run(tenant, agent["id"], run_id)
    retry = await tenant.client.post(download_url(agent["id"]), headers=headers, json=body)

    assert retry.status == 409
    assert retry.headers["Idempotent-Replayed"] == "true"
    answer = await retry.json()
    assert (answer["runId"], answer["status"]) == (run_id, "completed")
    assert f"/api/agents/{agent['id']}/runs/{run_id}" in answer["error"]
    assert len(received(runtime)) == 1
    ids = await db.fetch("SELECT id FROM runs WHERE agent_id = $1", agent["id"])
    assert [r["id"] for r in ids] == [run_id]


async def test_a_download_retried_while_the_first_call_still_waits_learns_the_run_is_running(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    """The caller gave up on its first call (its balancer timed out) while the replica still
    waits for the runtime's file: the retry is told the run is running, and starts nothing."""
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.pdf?delay_ms=3000"))
    headers = {**tenant.auth, "Idempotency-Key": "pdf-7"}

    async with aiohttp.ClientSession() as session:
        asking = asyncio.create_task(
            session.post(tenant.client.make_url(download_url(agent["id"])), headers=headers)
        )
        for _ in range(500):
            if received(runtime) or asking.done():
                break
            await asyncio.sleep(0.01)
        retry = await tenant.client.post(download_url(agent["id"]), headers=headers)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking

    run_id = received(runtime)[0]["payload"]["runId"]
    assert retry.status == 409
    answer = await retry.json()
    assert (answer["runId"], answer["status"]) == (run_id, "running")
    assert len(received(runtime)) == 1
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"]) == 1


async def test_a_download_key_reused_with_another_body_is_a_422(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv"))
    headers = {**tenant.auth, "Idempotency-Key": "export-k"}

    first = await tenant.client.post(
        download_url(agent["id"]), headers=headers, json={"input": {"rows": 1}}
    )
    await first.read()
    other = await tenant.client.post(
        download_url(agent["id"]), headers=headers, json={"input": {"rows": 2}}
    )

    assert other.status == 422
    answer = await other.json()
    assert "Idempotency-Key" in answer["error"]
    assert answer["runId"] == int(first.headers["X-Run-Id"])
    assert len(received(runtime)) == 1
