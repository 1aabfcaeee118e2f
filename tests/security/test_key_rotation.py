"""The key ring: every signature, token and sealed value names its key; a new SECRET_KEY signs
while the previous ones (SECRET_KEYS_PREVIOUS) still verify; ``admin reseal`` seals stored
secrets again under the newest; a weak SECRET_KEY stops the start. The rotation procedure of
docs/operations.md, walked step by step."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.security.cipher import CredentialCipher, CredentialUnreadable
from gateway.security.keyring import KeyRing, key_id
from gateway.security.signing import SignatureError, UrlSigner
from gateway.security.tokens import CredentialsTokens, TokenInvalid
from store.consumer import StoreConsumer
from tests.runs.test_trigger_dev_runs import task_runtime
from tests.support.backends import Backends
from tests.support.console import failure_line, run_console
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_url
from tests.support.tenants import new_tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]
OLD = "0b9d7c3e5a1f24688e0c6b2d4f7a9e13c5b8d2f0a6e4c19b7d3f5a2e8c0b6d41"
NEW = "f3a9c1e7b5d20846a2c8e4f6b0d9a3c7e1f5b2d8c4a06e9f3b7d1c5a8e2f0b64"
ROOT = Path(__file__).resolve().parents[2]
NOW = 1_900_000_000


def test_a_signature_a_token_and_a_sealed_value_name_their_key() -> None:
    ring = KeyRing(NEW, [OLD])
    signed = UrlSigner(ring).sign("https://gw.example", "/files/a", ttl_s=60, now=NOW)
    assert f"signature={key_id(NEW)}." in signed.url
    token = CredentialsTokens(ring, ttl_s=60).issue(7).token
    assert f"_{key_id(NEW)}_" in token
    sealed = CredentialCipher(ring).seal(uuid.uuid4(), uuid.uuid4(), {"a": 1})
    assert sealed[1:5] == bytes.fromhex(key_id(NEW))


def test_old_urls_and_tokens_verify_until_the_old_key_is_retired() -> None:
    path = "/files/runs/1/a.pdf"
    old_url = UrlSigner(OLD).sign("https://gw.example", path, ttl_s=600, now=NOW).url
    expires = old_url.split("expires=")[1].split("&")[0]
    signature = old_url.split("signature=")[1]
    old_token = CredentialsTokens(OLD, ttl_s=3600).issue(42).token
    cred, org = uuid.uuid4(), uuid.uuid4()
    old_sealed = CredentialCipher(OLD).seal(cred, org, {"token": "t"})

    # Rotated: the new key signs, the old one still verifies.
    rotated = KeyRing(NEW, [OLD])
    UrlSigner(rotated).verify(path, expires, signature, now=NOW + 1)
    assert CredentialsTokens(rotated, ttl_s=3600).verify(old_token) == 42
    assert CredentialCipher(rotated).open(cred, org, old_sealed) == {"token": "t"}
    assert not CredentialCipher(rotated).is_current(old_sealed)
    # What was made before key ids existed (no id) is tried against every key.
    legacy = signature.split(".")[1]
    UrlSigner(rotated).verify(path, expires, legacy, now=NOW + 1)

    # Retired: refused, as forged values are.
    retired = KeyRing(NEW)
    with pytest.raises(SignatureError, match="does not match"):
        UrlSigner(retired).verify(path, expires, signature, now=NOW + 1)
    with pytest.raises(TokenInvalid):
        CredentialsTokens(retired, ttl_s=3600).verify(old_token)
    with pytest.raises(CredentialUnreadable):
        CredentialCipher(retired).open(cred, org, old_sealed)


def console_env(backends: Backends, secret_key: str, previous: str = "") -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "SECRET_KEY": secret_key,
        "SECRET_KEYS_PREVIOUS": previous,
        "LOG_LEVEL": "WARNING",
    }


async def reseal(backends: Backends) -> Any:
    """``agent-gateway admin reseal`` with the rotated ring (the event loop keeps serving)."""
    return await asyncio.to_thread(
        run_console, "admin", "reseal", env=console_env(backends, NEW, OLD)
    )


async def resolve(replica: Client, credential_id: str, api_key: str, token: str) -> Any:
    resp = await replica.get(
        f"/api/credentials/{credential_id}/resolve",
        headers={"Authorization": f"Bearer {api_key}", "X-Credentials-Token": token},
    )
    return resp.status, await resp.json()


async def register(replica: Client, tenant: Any, agent: dict[str, Any], external: str) -> str:
    resp = await replica.post(
        f"/api/agents/{agent['id']}/runs/register",
        json={"externalRunId": external},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["credentialsToken"]
    return token


async def run_task(replica: Client, tenant: Any, task: dict[str, Any], output: int) -> None:
    """A trigger-and-wait of the Trigger.dev agent ``task`` through ``replica``: it
    authenticates to the fake with the agent's (sealed) secret key."""
    resp = await replica.post(
        wait_url(task["id"]),
        json={"input": {"statuses": ["COMPLETED"], "output": output}, "timeoutMs": 10_000},
        headers=tenant.auth,
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["output_data"] == output


async def test_the_rotation_procedure(
    make_gateway: GatewayFactory,
    backends: Backends,
    db: asyncpg.Pool,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
) -> None:
    # Before: one key.
    before = await make_gateway(secret_key=OLD, secret_keys_previous="")
    tenant = await new_tenant(before)
    agent = await tenant.create_agent(output_kind="json")
    credential_id = await tenant.create_credential({"token": "kept"}, grant_to=agent)
    old_token = await register(before, tenant, agent, "before")
    # A runtime secret, sealed under the old key.
    task = await tenant.create_agent(output_kind="json", runtime=task_runtime(trigger_dev))
    await run_task(before, tenant, task, 1)

    # 1. SECRET_KEY=<new>, SECRET_KEYS_PREVIOUS=<old> on every replica.
    rotated = await make_gateway(secret_key=NEW, secret_keys_previous=OLD)
    assert (await resolve(rotated, credential_id, agent["api_key"], old_token))[0] == 200
    new_token = await register(rotated, tenant, agent, "after")
    assert f"_{key_id(NEW)}_" in new_token
    await run_task(rotated, tenant, task, 2)
    # Every replica is rotated: none runs on the old ring alone any more (its follower could
    # not open what the re-seal below seals under the new key).
    await before.close()

    # 2. agent-gateway admin reseal: every stored secret under the new key; the agents whose
    # API key the old key derived are listed, and rotated.
    done = await asyncio.to_thread(
        run_console, "admin", "reseal", env=console_env(backends, NEW, OLD)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["key_id"] == key_id(NEW)
    assert report["credentials"]["resealed"] >= 1
    # (Other tests' rows, sealed under the suite's own key, open under neither: left alone.)
    assert agent["id"] in report["agent_keys_to_rotate"]
    sealed = await db.fetchval(
        "SELECT sealed_data FROM credentials WHERE id = $1::uuid", credential_id
    )
    assert bytes(sealed)[1:5] == bytes.fromhex(key_id(NEW))
    assert report["runtime_secrets"]["resealed"] >= 1
    assert task["id"] not in report["runtime_secrets"]["unreadable"]
    sealed_runtime = await db.fetchval(
        "SELECT runtime_secrets->>'secret_key' FROM agents WHERE id = $1", task["id"]
    )
    assert base64.b64decode(sealed_runtime)[1:5] == bytes.fromhex(key_id(NEW))
    resp = await rotated.post(f"/admin/agents/{agent['id']}/api-key", headers=ADMIN)
    agent["api_key"] = (await resp.json())["api_key"]
    again = await asyncio.to_thread(
        run_console, "admin", "reseal", env=console_env(backends, NEW, OLD)
    )
    assert agent["id"] not in json.loads(again.stdout)["agent_keys_to_rotate"]
    assert json.loads(again.stdout)["credentials"]["resealed"] == 0
    assert json.loads(again.stdout)["runtime_secrets"]["resealed"] == 0

    # 3. Retire the old key: what it signed is refused; the re-sealed data still opens.
    retired = await make_gateway(secret_key=NEW, secret_keys_previous="")
    status, body = await resolve(retired, credential_id, agent["api_key"], old_token)
    assert status == 401, body
    status, body = await resolve(retired, credential_id, agent["api_key"], new_token)
    assert status == 200, body
    assert body["data"] == {"token": "kept"}
    await run_task(retired, tenant, task, 3)


@pytest.mark.parametrize(
    "secret",
    ["example", "test-secret-key", "k" * 48, "password1password1password1password1"],
)
def test_start_refuses_a_weak_secret_key_naming_it(backends: Backends, secret: str) -> None:
    if secret == "example":
        example = yaml.safe_load((ROOT / "deploy/k8s/secret.example.yaml").read_text())
        secret = example["stringData"]["SECRET_KEY"]
    env = {**console_env(backends, secret), "REDIS_URL": backends.redis_url}

    line = failure_line(run_console("serve", env=env))

    assert (line["event"], line["command"]) == ("start_failed", "serve")
    assert "SECRET_KEY" in line["error"]
    assert secret not in json.dumps(line)
