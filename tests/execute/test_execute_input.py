"""Workflow execute's input format: typed fields, coerced or refused by name, at the top level and
under ``input`` of what the runtime receives."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.support.execute import api_key, execute_url, stream_agent
from tests.support.runtimes import received
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN

EVERY_TYPE = [
    {"name": "title", "type": "string"},
    {"name": "count", "type": "number"},
    {"name": "ratio", "type": "number"},
    {"name": "urgent", "type": "boolean"},
    {"name": "options", "type": "json"},
    {"name": "attachments", "type": "files"},
    {"name": "userId", "type": "string", "required": True},
]


async def typed_agent(tenant: Tenant, runtime: TestServer, **fields: Any) -> dict[str, Any]:
    fields.setdefault("input_format", EVERY_TYPE)
    return await stream_agent(tenant, runtime, **fields)


@pytest.mark.parametrize(
    ("sent", "coerced"),
    [
        ({"count": "3"}, {"count": 3}),
        ({"count": " -12 "}, {"count": -12}),
        ({"ratio": "0.25"}, {"ratio": 0.25}),
        ({"ratio": "1e3"}, {"ratio": 1000.0}),
        ({"count": 7, "ratio": 2.5}, {"count": 7, "ratio": 2.5}),
        ({"urgent": "true"}, {"urgent": True}),
        ({"urgent": "FALSE"}, {"urgent": False}),
        ({"urgent": 1}, {"urgent": True}),
        ({"urgent": "no"}, {"urgent": False}),
        ({"title": 42}, {"title": "42"}),
        ({"title": True}, {"title": "true"}),
        ({"options": {"a": [1, 2]}}, {"options": {"a": [1, 2]}}),
        ({"options": '{"depth": 2}'}, {"options": {"depth": 2}}),
        ({"options": "[1, 2]"}, {"options": [1, 2]}),
        ({"title": None}, {"title": None}),
    ],
)
async def test_values_are_coerced_and_given_at_the_top_level_and_under_input(
    tenant: Tenant, runtime: TestServer, sent: dict[str, Any], coerced: dict[str, Any]
) -> None:
    agent = await typed_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"userId": "u-1", **sent}
    )

    assert resp.status == 200, await resp.text()
    payload = received(runtime)[0]["payload"]
    expected = {"userId": "u-1", **coerced}
    assert payload["input"] == expected
    for name, value in expected.items():
        assert payload[name] == value
    assert payload["runId"] == int(resp.headers["X-Run-Id"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", "three"),
        ("count", "3 apples"),
        ("count", True),
        ("count", "NaN"),
        ("count", [3]),
        ("ratio", ""),
        ("urgent", "maybe"),
        ("urgent", 2),
        ("urgent", {"yes": True}),
        ("title", {"nested": "object"}),
        ("title", ["a", "b"]),
        ("options", "not json"),
        ("options", 5),
        ("options", '"just a string"'),
        ("attachments", "file.pdf"),
        ("attachments", [{"type": "file"}]),
        ("attachments", [{"type": "disk", "data": "data:text/plain;base64,aGk="}]),
        ("attachments", [{"type": "url", "data": "ftp://example.com/a.pdf"}]),
    ],
)
async def test_a_value_that_cannot_be_coerced_is_a_400_naming_the_field(
    tenant: Tenant, runtime: TestServer, field: str, value: Any
) -> None:
    agent = await typed_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"userId": "u", field: value}
    )

    assert resp.status == 400
    body = await resp.json()
    assert f"'{field}'" in body["error"]
    assert list(body["details"]) == [field]
    assert received(runtime) == []


async def test_a_missing_required_field_is_a_400_and_every_bad_field_is_named(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await typed_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"count": "x", "urgent": "?"}
    )

    assert resp.status == 400
    body = await resp.json()
    assert set(body["details"]) == {"count", "urgent", "userId"}
    assert body["details"]["userId"] == ["is required"]


async def test_undeclared_keys_go_under_input_only(tenant: Tenant, runtime: TestServer) -> None:
    agent = await typed_agent(tenant, runtime, default_input={"locale": "en"})

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"userId": "u", "extra": {"k": 1}, "stream": False},
    )

    assert resp.status == 200
    payload = received(runtime)[0]["payload"]
    assert payload["input"] == {"locale": "en", "userId": "u", "extra": {"k": 1}}
    assert payload["userId"] == "u"
    assert "extra" not in payload
    assert "stream" not in payload["input"]


async def test_without_an_input_format_the_raw_json_is_only_under_input(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"userId": "demo-user", "maxTokens": 1024, "selectedOutputs": []},
    )

    assert resp.status == 200
    payload = received(runtime)[0]["payload"]
    assert payload["input"] == {"userId": "demo-user", "maxTokens": 1024}
    assert "userId" not in payload
    assert "maxTokens" not in payload
    assert payload["agentId"] == agent["id"]


async def test_an_empty_body_is_no_input(tenant: Tenant, runtime: TestServer) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(execute_url(agent["id"]), headers=api_key(tenant))

    assert resp.status == 200
    assert received(runtime)[0]["payload"]["input"] == {}


@pytest.mark.parametrize(
    ("input_format", "needle"),
    [
        ({"name": "x", "type": "string"}, "list"),
        ([{"name": "x", "type": "date"}], "type must be one of"),
        ([{"name": "x", "type": "string"}, {"name": "x", "type": "number"}], "twice"),
        ([{"name": "stream", "type": "boolean"}], "reserved"),
        ([{"name": "runId", "type": "number"}], "reserved"),
        ([{"name": "x", "type": "string", "required": "yes"}], "required"),
        ([{"name": "x", "type": "string", "colour": "red"}], "unknown keys"),
        ([{"name": "has space", "type": "string"}], "name must be"),
    ],
)
async def test_the_admin_api_refuses_a_malformed_input_format(
    tenant: Tenant, input_format: Any, needle: str
) -> None:
    resp = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/agents",
        headers=ADMIN,
        json={
            "name": "Bad format",
            "output_kind": "json",
            "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"},
            "input_format": input_format,
        },
    )

    assert resp.status == 400
    details = (await resp.json())["details"]
    assert needle in str(details["input_format"])


async def test_the_admin_api_refuses_blocks_that_look_alike(tenant: Tenant) -> None:
    resp = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/agents",
        headers=ADMIN,
        json={
            "name": "Twins",
            "output_kind": "stream",
            "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"},
            "blocks": [{"id": "a", "name": "Agent 1"}, {"id": "b", "name": "agent1"}],
        },
    )

    assert resp.status == 400
    assert "blocks" in (await resp.json())["details"]


@pytest.mark.parametrize("block", [{"id": "a"}, {"name": "Agent 1"}])
async def test_a_block_without_its_id_or_name_is_a_400_naming_it(
    tenant: Tenant, block: dict[str, str]
) -> None:
    # It was a 500: the look-alike check read the name of an entry that had none.
    agent = await tenant.create_agent(output_kind="stream")
    body = {
        "name": "Half a block",
        "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"},
        "blocks": [block],
    }
    created = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/agents", headers=ADMIN, json=body
    )
    patched = await tenant.client.patch(
        f"/admin/agents/{agent['id']}", headers=ADMIN, json={"blocks": [block]}
    )

    for resp in (created, patched):
        assert resp.status == 400
        missing = "name" if "name" not in block else "id"
        assert (await resp.json())["details"]["blocks"] == {
            "0": {missing: ["Missing data for required field."]}
        }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"message": "a\\u0000b"}', "message"),
        ('{"note\\u0000": 1}', "note\x00"),
        ('{"documents": [{"data": "https://files.example/a\\u0000.pdf"}]}', "documents"),
        ('{"options": ' + "[" * 1500 + "]" * 1500 + "}", "options"),
    ],
)
async def test_input_postgresql_cannot_store_is_a_400_naming_the_field_and_starts_nothing(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool, body: str, field: str
) -> None:
    # It was a 500: a \u0000 reached PostgreSQL, which refused it; nesting this deep broke
    # the JSON encoder (RecursionError) on the way there.
    agent = await stream_agent(
        tenant,
        runtime,
        input_format=[
            {"name": "message", "type": "string"},
            {"name": "documents", "type": "files"},
            {"name": "options", "type": "json"},
        ],
    )

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        data=body,
        headers={**api_key(tenant), "Content-Type": "application/json"},
    )

    assert resp.status == 400
    assert list((await resp.json())["details"]) == [field]
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"]) == 0
    assert received(runtime) == []
