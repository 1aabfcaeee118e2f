"""The download service: what a copy's report makes of its run, and what a start answers.

The HTTP layer only copies bytes and reports how the copy ended (``Copied``); these rows hand
the service each report a copy can make, over a real runtime answer, and read the run back
as a caller would.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.errors import Conflict
from gateway.http.app_keys import DOWNLOAD_SERVICE, RUN_LOOKUPS, SETTINGS
from gateway.runs.downloads import (
    Copied,
    CopyEnd,
    DownloadAcknowledged,
    DownloadService,
    DownloadStarted,
)
from store.models import Agent
from tests.support.runs import wait_for_run
from tests.support.runtimes import webhook
from tests.support.tenants import Tenant

SIZE = 64 * 1024
_AFTER = " after 10 bytes"


async def _admitted() -> None:
    """Admits every request (the rate limit is the HTTP layer's)."""


async def _start(
    tenant: Tenant, runtime: TestServer, path: str, *, idempotency: tuple[str, bytes] | None = None
) -> tuple[DownloadService, Agent, DownloadStarted | DownloadAcknowledged]:
    created = await tenant.create_agent(runtime=webhook(runtime, path))
    app = tenant.client.app
    agent = await app[RUN_LOOKUPS].agent_for(uuid.UUID(tenant.org_id), created["id"])
    downloads = app[DOWNLOAD_SERVICE]
    started = await downloads.start(
        agent,
        input_data={},
        user_id=None,
        timeout_ms=None,
        accept_encoding=None,
        idempotency=idempotency,
        admit=_admitted,
    )
    return downloads, agent, started


async def _run(tenant: Tenant, started: DownloadStarted | DownloadAcknowledged) -> dict[str, Any]:
    return await wait_for_run(tenant, started.run.agent_id, started.run.id)


async def test_a_copy_that_reached_its_end_completes_the_run_with_the_files_metadata(
    tenant: Tenant, runtime: TestServer
) -> None:
    downloads, _, started = await _start(tenant, runtime, f"bytes?size={SIZE}&outputs=3")
    assert isinstance(started, DownloadStarted)

    async def copy(copied: Copied) -> None:
        copied.sent = len(started.first_chunk)
        async for chunk in started.body.chunks():
            copied.sent += len(chunk)

    copied = await downloads.relay(started, copy)

    assert copied.end is CopyEnd.WHOLE
    run = await _run(tenant, started)
    assert run["status"] == "completed"
    assert run["output_data"] == {
        "kind": "file_download",
        "filename": "data.bin",
        "mimeType": "application/octet-stream",
        "sizeBytes": SIZE,
    }
    assert run["outputs"] == 3


@pytest.mark.parametrize(
    ("end", "detail", "error"),
    [
        (CopyEnd.CALLER_GONE, "", "Caller disconnected after 10 bytes"),
        (
            CopyEnd.RUNTIME_SILENT,
            "",
            "Runtime sent nothing for {idle:g} s mid-stream after 10 bytes",
        ),
        (
            CopyEnd.CALLER_STALLED,
            "",
            "Caller read nothing for {idle:g} s mid-stream after 10 bytes",
        ),
        (
            CopyEnd.RUNTIME_BROKE,
            "ClientPayloadError: Response payload is not completed",
            "Runtime stream broke after 10 bytes: ClientPayloadError: Response payload is not "
            "completed",
        ),
        (CopyEnd.GATEWAY_ERROR, "KeyError", "Gateway error mid-stream after 10 bytes: KeyError"),
    ],
)
async def test_a_copy_that_stopped_short_fails_the_run_with_what_the_http_layer_reported(
    tenant: Tenant, runtime: TestServer, end: CopyEnd, detail: str, error: str
) -> None:
    downloads, _, started = await _start(tenant, runtime, f"bytes?size={SIZE}")
    assert isinstance(started, DownloadStarted)

    async def copy(copied: Copied) -> None:
        copied.sent, copied.end, copied.detail = 10, end, detail

    await downloads.relay(started, copy)

    run = await _run(tenant, started)
    assert run["status"] == "failed"
    idle = tenant.client.app[SETTINGS].stream_idle_timeout_s
    assert run["error"] == error.format(idle=idle)
    assert run["output_data"] is None


async def test_a_copy_cancelled_with_its_caller_fails_the_run_and_stays_cancelled(
    tenant: Tenant, runtime: TestServer
) -> None:
    downloads, _, started = await _start(tenant, runtime, f"bytes?size={SIZE}")
    assert isinstance(started, DownloadStarted)
    copying = asyncio.Event()

    async def copy(copied: Copied) -> None:
        copied.sent = 42
        copying.set()
        await asyncio.Event().wait()  # the caller never reads: only its leaving ends this

    relay = asyncio.create_task(downloads.relay(started, copy))
    await copying.wait()
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay

    run = await _run(tenant, started)
    assert (run["status"], run["error"]) == ("failed", "Caller disconnected after 42 bytes")


async def test_a_runtime_that_acknowledges_the_run_is_an_answer_not_a_file(
    tenant: Tenant, runtime: TestServer
) -> None:
    _, _, started = await _start(tenant, runtime, "immediate?report=0")

    assert isinstance(started, DownloadAcknowledged)
    assert started.run.status == "running"


async def test_a_key_that_already_started_a_download_is_a_409_and_starts_nothing(
    tenant: Tenant, runtime: TestServer
) -> None:
    key = ("retry-1", b"same request")
    downloads, agent, first = await _start(tenant, runtime, f"bytes?size={SIZE}", idempotency=key)
    assert isinstance(first, DownloadStarted)
    admitted: list[bool] = []

    async def admit() -> None:
        admitted.append(True)

    with pytest.raises(Conflict) as refused:
        await downloads.start(
            agent,
            input_data={},
            user_id=None,
            timeout_ms=None,
            accept_encoding=None,
            idempotency=key,
            admit=admit,
        )

    assert refused.value.extra["runId"] == first.run.id
    assert refused.value.headers == {"Idempotent-Replayed": "true"}
    # A replay is answered before the rate limit: it takes no token.
    assert admitted == []
    first.body.end(reusable=False)
