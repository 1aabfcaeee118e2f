"""Credentials: sealed at rest, resolved only for a run that holds a valid token (the agent SDK)."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gateway.security.tokens import CredentialsTokens
from store.consumer import StoreConsumer
from tests.support.runs import wait_for_run, wait_url
from tests.support.runtimes import as_agent, callbacks_answered, json_agent, received
from tests.support.tenants import Tenant, TenantFactory
from tests.support.tokens import ADMIN, SECRET_KEY

SECRET = {"api_key": "sk_live_VERY_SECRET_51", "base_url": "https://crm.example"}


async def registered_run(tenant: Tenant, agent: dict[str, Any], external: str) -> dict[str, Any]:
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/register",
        json={"externalRunId": external},
        headers=tenant.auth,
    )
    assert resp.status in (200, 201), await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def resolve(
    tenant: Tenant, credential_id: str, *, api_key: str | None, token: str | None
) -> Any:
    headers = {}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if token is not None:
        headers["X-Credentials-Token"] = token
    return await tenant.client.get(f"/api/credentials/{credential_id}/resolve", headers=headers)


async def test_a_run_resolves_a_credential_of_its_organisation(tenant: Tenant) -> None:
    agent = await tenant.create_agent(output_kind="json")
    credential_id = await tenant.create_credential(
        SECRET, name="CRM", type="api_key", grant_to=agent
    )
    run = await registered_run(tenant, agent, "r-1")

    resp = await resolve(
        tenant, credential_id, api_key=agent["api_key"], token=run["credentialsToken"]
    )

    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "id": credential_id,
        "name": "CRM",
        "type": "api_key",
        "data": SECRET,
    }
    assert resp.headers["Cache-Control"] == "no-store"


async def test_credential_data_is_sealed_at_rest(tenant: Tenant, db: asyncpg.Pool) -> None:
    credential_id = await tenant.create_credential(SECRET)

    row = await db.fetchrow("SELECT * FROM credentials WHERE id = $1::uuid", credential_id)

    assert row is not None
    stored = b"".join(
        bytes(v) if isinstance(v, bytes | bytearray | memoryview) else str(v).encode()
        for v in row.values()
    )
    assert b"sk_live_VERY_SECRET_51" not in stored
    assert b"crm.example" not in stored


async def test_a_sealed_credential_moved_to_another_row_does_not_open(
    tenant: Tenant, db: asyncpg.Pool
) -> None:
    agent = await tenant.create_agent(output_kind="json")
    theirs = await tenant.create_credential({"token": "one"})
    mine = await tenant.create_credential({"token": "two"}, grant_to=agent)
    await db.execute(
        """UPDATE credentials SET sealed_data = (SELECT sealed_data FROM credentials
           WHERE id = $1::uuid) WHERE id = $2::uuid""",
        theirs,
        mine,
    )
    run = await registered_run(tenant, agent, "moved")

    resp = await resolve(tenant, mine, api_key=agent["api_key"], token=run["credentialsToken"])

    assert resp.status == 500
    assert "SECRET_KEY" in (await resp.json())["error"]


async def test_the_admin_api_refuses_a_credential_without_object_data(tenant: Tenant) -> None:
    for body in (
        {"name": "x", "type": "api_key"},
        {"name": "x", "type": "api_key", "data": "plain"},
        {"name": "", "type": "api_key", "data": {}},
    ):
        resp = await tenant.client.post(
            f"/admin/orgs/{tenant.org_id}/credentials", json=body, headers=ADMIN
        )
        assert resp.status == 400, body
    anonymous = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/credentials",
        json={"name": "x", "type": "t", "data": {}},
    )
    assert anonymous.status == 401


@pytest.fixture
def tokens() -> CredentialsTokens:
    """Tokens as the gateway issues them (same SECRET_KEY)."""
    return CredentialsTokens(SECRET_KEY, ttl_s=3600)


async def test_every_other_combination_is_refused_and_logged_without_secrets(
    tenant: Tenant,
    make_tenant: TenantFactory,
    tokens: CredentialsTokens,
    consumer: StoreConsumer,
) -> None:
    agent = await tenant.create_agent(output_kind="json")
    sibling = await tenant.create_agent(output_kind="json", name="Sibling")
    other = await make_tenant("Globex")
    foreign_agent = await other.create_agent(output_kind="json")
    credential_id = await tenant.create_credential(SECRET, grant_to=agent)
    await tenant.grant(sibling, credential_id)
    foreign_credential = await other.create_credential(
        {"password": "globex-secret-pw"}, grant_to=foreign_agent
    )
    run = await registered_run(tenant, agent, "matrix")
    token = run["credentialsToken"]
    sibling_run = await registered_run(tenant, sibling, "sibling")
    foreign_run = await registered_run(other, foreign_agent, "foreign")
    expired = tokens.issue(run["runId"], now=time.time() - 7200).token
    ended = await registered_run(tenant, agent, "ended")
    done = await tenant.client.post(
        f"/api/runs/{ended['runId']}/callback",
        json={"type": "output", "complete": True, "output": {}},
        headers=as_agent(agent),
    )
    assert done.status == 202
    await wait_for_run(tenant, agent["id"], ended["runId"])
    key = agent["api_key"]

    rows: list[tuple[str, str, str | None, str | None, int]] = [
        ("no agent key", credential_id, None, token, 401),
        ("unknown agent key", credential_id, "agk_" + "x" * 43, token, 401),
        ("an ingest key is not an agent key", credential_id, tenant.ingest_key, token, 401),
        ("no token", credential_id, key, None, 401),
        (
            "tampered token",
            credential_id,
            key,
            token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
            401,
        ),
        (
            "token for another run id",
            credential_id,
            key,
            token.replace(f"crt_{run['runId']}_", f"crt_{run['runId'] + 1}_"),
            401,
        ),
        ("expired token", credential_id, key, expired, 401),
        ("token of another agent's run", credential_id, key, sibling_run["credentialsToken"], 403),
        ("other org's run token", credential_id, key, foreign_run["credentialsToken"], 403),
        ("run has ended", credential_id, key, ended["credentialsToken"], 403),
        (
            "other org's agent",
            credential_id,
            foreign_agent["api_key"],
            foreign_run["credentialsToken"],
            404,
        ),
        ("other org's credential", foreign_credential, key, token, 404),
        ("unknown credential", "00000000-0000-4000-8000-000000000000", key, token, 404),
        ("malformed credential id", "not-a-uuid", key, token, 404),
    ]
    with structlog.testing.capture_logs() as logs:
        for what, cred, api_key, tok, status in rows:
            resp = await resolve(tenant, cred, api_key=api_key, token=tok)
            assert resp.status == status, (what, await resp.text())
            body = await resp.json()
            assert "data" not in body, what
            assert isinstance(body["error"], str), what
            assert body["error"], what

    refusals = [e for e in logs if e["event"] == "credential_resolve_refused"]
    assert len(refusals) == len(rows)
    assert {e["reason"] for e in refusals} >= {
        "invalid_agent_key",
        "token_missing",
        "token_invalid",
        "token_expired",
        "run_of_another_agent",
        "run_ended",
        "other_organisation",
        "not_found",
        "malformed_id",
    }
    captured = json.dumps(logs, default=str)
    for secret in (
        "sk_live_VERY_SECRET_51",
        "globex-secret-pw",
        token,
        expired,
        key,
        foreign_agent["api_key"],
        tenant.ingest_key,
    ):
        assert secret not in captured


async def test_a_foreign_credential_answers_exactly_like_a_missing_one(
    tenant: Tenant, make_tenant: TenantFactory
) -> None:
    agent = await tenant.create_agent(output_kind="json")
    other = await make_tenant("Globex")
    foreign = await other.create_credential({"password": "x"})
    run = await registered_run(tenant, agent, "probe")

    a = await resolve(tenant, foreign, api_key=agent["api_key"], token=run["credentialsToken"])
    b = await resolve(
        tenant,
        "00000000-0000-4000-8000-000000000000",
        api_key=agent["api_key"],
        token=run["credentialsToken"],
    )

    assert (a.status, await a.json()) == (b.status, await b.json())


async def test_trigger_payloads_carry_a_token_the_runtime_resolves_credentials_with(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report_delay_ms=20")
    credential_id = await tenant.create_credential(
        SECRET, name="CRM", type="api_key", grant_to=agent
    )

    resp = await tenant.client.post(
        wait_url(agent["id"]),
        json={"input": {"credential_id": credential_id}, "timeoutMs": 10_000},
        headers=tenant.auth,
    )

    assert resp.status == 200, await resp.text()
    run = await resp.json()
    assert run["status"] == "completed"
    # The runtime resolved it and reported what it found (never the secret values).
    assert run["output_data"] == {
        "name": "CRM",
        "type": "api_key",
        "fields": ["api_key", "base_url"],
    }
    payload = received(runtime)[0]["payload"]
    assert payload["credentialsToken"].startswith(f"crt_{run['runId']}_")
    assert [s["status"] for s in await callbacks_answered(runtime, 3)] == [202, 202, 202]


async def test_a_trigger_payload_token_stops_working_when_its_run_ends(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    credential_id = await tenant.create_credential(SECRET, grant_to=agent)
    resp = await tenant.client.post(wait_url(agent["id"]), json={}, headers=tenant.auth)
    assert (await resp.json())["status"] == "completed"
    token = received(runtime)[0]["payload"]["credentialsToken"]

    late = await resolve(tenant, credential_id, api_key=agent["api_key"], token=token)

    assert late.status == 403
    assert "ended" in (await late.json())["error"]
