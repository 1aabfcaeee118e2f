"""Runtime secrets (a Trigger.dev ``secret_key``, n8n auth ``headers``) are sealed at rest,
bound to their agent, opened only for the runtime call, and never shown (issue 28, point 4)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devkit.fakes.trigger_dev import TRIGGERS
from tests.runs.test_trigger_dev_runs import SECRET, task_runtime, trigger_and_wait
from tests.support.backends import Backends
from tests.support.console import run_console
from tests.support.runs import wait_url
from tests.support.runtimes import received, webhook
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN, SECRET_KEY

Client = TestClient[web.Request, web.Application]
N8N_SECRET = "shared-secret"


async def stored(db: asyncpg.Pool, agent_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT runtime, runtime_secrets, runtime::text AS raw, runtime_secrets::text AS raw_sealed"
        " FROM agents WHERE id = $1",
        agent_id,
    )
    assert row is not None
    return row


def assert_no_plaintext(row: asyncpg.Record, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in row["raw"]
        assert secret not in row["raw_sealed"]
    assert "secret_key" not in row["runtime"]
    assert "headers" not in row["runtime"]


async def admin_views(client: Client, tenant: Tenant, agent_id: int) -> str:
    """The admin API's views of the agent (a PATCH's and a key rotation's answers), as text."""
    one = await client.patch(f"/admin/agents/{agent_id}", json={}, headers=ADMIN)
    assert one.status == 200, await one.text()
    rotated = await client.post(f"/admin/agents/{agent_id}/api-key", headers=ADMIN)
    assert rotated.status == 200, await rotated.text()
    return await one.text() + await rotated.text()


async def test_a_trigger_dev_secret_key_is_sealed_and_still_authenticates(
    tenant: Tenant, trigger_dev: TestServer, db: asyncpg.Pool, consumer: Any
) -> None:
    resp = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/agents",
        json={"name": "t", "output_kind": "json", "runtime": task_runtime(trigger_dev)},
        headers=ADMIN,
    )
    assert resp.status == 201
    created_text = await resp.text()
    agent = json.loads(created_text)
    assert SECRET not in created_text
    assert agent["runtime"]["secret_key"] == "***"

    row = await stored(db, agent["id"])
    assert_no_plaintext(row, SECRET)
    assert set(row["runtime_secrets"]) == {"secret_key"}

    status, run = await trigger_and_wait(
        tenant, agent, {"statuses": ["COMPLETED"], "output": {"a": 1}}
    )
    assert status == 200, run
    assert run["output_data"] == {"a": 1}
    views = await admin_views(tenant.client, tenant, agent["id"])
    assert SECRET not in views
    assert '"secret_key": "***"' in views


async def test_n8n_auth_headers_are_sealed_and_still_sent(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await tenant.create_agent(output_kind="json", runtime=webhook(runtime, "json"))
    row = await stored(db, agent["id"])
    assert_no_plaintext(row, N8N_SECRET)
    assert set(row["runtime_secrets"]) == {"headers"}

    resp = await tenant.client.post(
        wait_url(agent["id"]),
        json={"input": {"q": 1}, "timeoutMs": 10_000},
        headers=tenant.auth,
    )
    assert resp.status == 200, await resp.text()
    assert received(runtime)[-1]["headers"]["X-N8N-Auth"] == N8N_SECRET

    views = await admin_views(tenant.client, tenant, agent["id"])
    assert N8N_SECRET not in views
    assert '"headers": "***"' in views
    # A PATCH of anything else keeps them sealed (and working).
    patched = await tenant.client.patch(
        f"/admin/agents/{agent['id']}", json={"name": "renamed"}, headers=ADMIN
    )
    assert patched.status == 200
    assert N8N_SECRET not in await patched.text()
    assert (await stored(db, agent["id"]))["runtime_secrets"] == row["runtime_secrets"]


async def test_a_sealed_secret_moved_to_another_agent_does_not_open(
    tenant: Tenant, trigger_dev: TestServer, db: asyncpg.Pool, consumer: Any
) -> None:
    victim = await tenant.create_agent(output_kind="json", runtime=task_runtime(trigger_dev))
    other = await tenant.create_agent(
        output_kind="json", runtime={**task_runtime(trigger_dev), "secret_key": "tr_dev_wrong"}
    )
    await db.execute(
        "UPDATE agents SET runtime_secrets = (SELECT runtime_secrets FROM agents WHERE id = $1)"
        " WHERE id = $2",
        victim["id"],
        other["id"],
    )
    triggers_before = len(trigger_dev.app[TRIGGERS])

    status, body = await trigger_and_wait(tenant, other, {"statuses": ["COMPLETED"]})

    # The contract's answer for a runtime that could not be invoked (a failed run that says
    # why), not an unhandled error.
    assert status == 500, body
    assert "runtime secrets cannot be opened" in body["error"]
    run = await db.fetchrow("SELECT status, error FROM runs WHERE agent_id = $1", other["id"])
    assert run is not None
    assert run["status"] == "failed"
    assert "runtime secrets cannot be opened" in run["error"]
    assert len(trigger_dev.app[TRIGGERS]) == triggers_before  # nothing reached Trigger.dev


def console_env(backends: Backends) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "SECRET_KEY": SECRET_KEY,
        "SECRET_KEYS_PREVIOUS": "",
        "LOG_LEVEL": "WARNING",
    }


async def test_a_legacy_plaintext_row_works_and_reseal_seals_it(
    tenant: Tenant, trigger_dev: TestServer, db: asyncpg.Pool, backends: Backends, consumer: Any
) -> None:
    agent = await tenant.create_agent(output_kind="json", runtime=task_runtime(trigger_dev))
    # As the previous release stored it: the secret in runtime, nothing sealed.
    await db.execute(
        "UPDATE agents SET runtime = $2, runtime_secrets = '{}' WHERE id = $1",
        agent["id"],
        task_runtime(trigger_dev),
    )
    status, run = await trigger_and_wait(tenant, agent, {"statuses": ["COMPLETED"], "output": 1})
    assert status == 200, run

    done = await asyncio.to_thread(run_console, "admin", "reseal", env=console_env(backends))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["runtime_secrets"]
    assert report["sealed"] >= 1
    assert agent["id"] not in report["unreadable"]
    assert_no_plaintext(await stored(db, agent["id"]), SECRET)
    again = await asyncio.to_thread(run_console, "admin", "reseal", env=console_env(backends))
    assert json.loads(again.stdout)["runtime_secrets"]["sealed"] == 0

    status, run = await trigger_and_wait(tenant, agent, {"statuses": ["COMPLETED"], "output": 2})
    assert status == 200, run
    assert run["output_data"] == 2


async def test_the_next_write_of_a_legacy_row_seals_it(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await tenant.create_agent(output_kind="json", runtime=webhook(runtime, "json"))
    await db.execute(
        "UPDATE agents SET runtime = $2, runtime_secrets = '{}' WHERE id = $1",
        agent["id"],
        webhook(runtime, "json"),
    )
    resp = await tenant.client.patch(
        f"/admin/agents/{agent['id']}", json={"name": "touched"}, headers=ADMIN
    )
    assert resp.status == 200
    assert N8N_SECRET not in await resp.text()
    row = await stored(db, agent["id"])
    assert_no_plaintext(row, N8N_SECRET)
    assert set(row["runtime_secrets"]) == {"headers"}


def test_the_console_never_shows_them(backends: Backends) -> None:
    env = console_env(backends)
    org = json.loads(run_console("admin", "create-org", "Acme", env=env).stdout)
    body = {
        "name": "t",
        "runtime": {
            "kind": "trigger.dev",
            "api_url": "http://127.0.0.1:9",
            "task_id": "x",
            "secret_key": "tr_console_secret",
        },
    }
    created = run_console("admin", "create-agent", org["id"], json.dumps(body), env=env)
    assert created.returncode == 0, created.stderr
    assert "tr_console_secret" not in created.stdout
    agent_id = json.loads(created.stdout)["id"]
    shown = run_console("admin", "get-agent", str(agent_id), env=env)
    assert "tr_console_secret" not in shown.stdout
    assert json.loads(shown.stdout)["runtime"]["secret_key"] == "***"
