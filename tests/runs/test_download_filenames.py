"""Trigger-and-download's file name: the runtime's Content-Disposition passes through when its
name is a bare file name, and is replaced by the contract's synthesised form
(``attachment; filename="<agent>-run-<id>.<ext>"``) when it names a path or carries control or
bidi characters; every download says ``X-Content-Type-Options: nosniff``. The runtime is a real
local server answering with the disposition under test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.support.runs import wait_for_run
from tests.support.tenants import Tenant

ServeWith = Callable[[str], Awaitable[str]]


@pytest.fixture
async def serve_with() -> AsyncIterator[ServeWith]:
    """A factory: a webhook URL whose runtime answers a PDF with the given disposition."""
    servers: list[TestServer] = []

    async def start(disposition: str) -> str:
        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(
                body=b"%PDF-1.4 tiny",
                headers={"Content-Type": "application/pdf", "Content-Disposition": disposition},
            )

        app = web.Application()
        app.router.add_post("/webhook/report", answer)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/webhook/report"))

    yield start
    for server in servers:
        await server.close()


async def download(tenant: Tenant, url: str) -> tuple[dict[str, str], int]:
    agent = await tenant.create_agent(
        name="Board Pack", runtime={"kind": "n8n", "webhook_url": url}
    )
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )
    assert resp.status == 200, await resp.text()
    assert await resp.read() == b"%PDF-1.4 tiny"
    return dict(resp.headers), agent["id"]


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="../../etc/cron.d/evil"',
        'attachment; filename="reports/q3.pdf"',
        'attachment; filename="..\\\\..\\\\boot.ini"',
        'attachment; filename=".."',
        "attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe",  # U+202E: shows as invoiceexe.pdf
        "attachment; filename*=UTF-8''line%0Abreak.pdf",
        "attachment; filename*=UTF-8''nul%00.pdf",
        # A safe filename beside an unsafe filename*: a client may read either.
        "attachment; filename=\"ok.pdf\"; filename*=UTF-8''..%2F..%2Fx.pdf",
    ],
)
async def test_an_unsafe_runtime_filename_is_replaced_by_the_synthesised_one(
    tenant: Tenant, serve_with: ServeWith, consumer: StoreConsumer, disposition: str
) -> None:
    headers, agent_id = await download(tenant, await serve_with(disposition))

    run_id = headers["X-Run-Id"]
    expected = f"board-pack-run-{run_id}.pdf"
    assert headers["Content-Disposition"] == f'attachment; filename="{expected}"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    run = await wait_for_run(tenant, agent_id, int(run_id))
    assert run["output_data"]["filename"] == expected


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="q3-summary.pdf"', "q3-summary.pdf"),
        ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9 2024.pdf", "résumé 2024.pdf"),
        ('inline; filename=".hidden notes.pdf"', ".hidden notes.pdf"),
    ],
)
async def test_a_bare_runtime_filename_passes_through_verbatim_with_nosniff(
    tenant: Tenant, serve_with: ServeWith, consumer: StoreConsumer, disposition: str, name: str
) -> None:
    headers, agent_id = await download(tenant, await serve_with(disposition))

    assert headers["Content-Disposition"] == disposition
    assert headers["X-Content-Type-Options"] == "nosniff"
    run = await wait_for_run(tenant, agent_id, int(headers["X-Run-Id"]))
    assert run["output_data"]["filename"] == name
