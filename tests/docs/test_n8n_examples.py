"""The example n8n workflows in docs/examples/n8n import as n8n exports them and use only what
the gateway sends a workflow."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from adapters.base import TriggerPayload

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "n8n"
# The node types and versions n8n 2.x exports for these nodes.
NODE_TYPES = {
    "n8n-nodes-base.webhook": 2.1,
    "n8n-nodes-base.code": 2,
    "n8n-nodes-base.httpRequest": 4.2,
    "n8n-nodes-base.respondToWebhook": 1.5,
}


def workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


def payload_fields() -> set[str]:
    sample = TriggerPayload(
        run_id=1,
        agent_id=2,
        input={},
        agent_api_key="agk_x",
        credentials_token="crt_x",
        callback_url="http://gateway/api/runs/1/callback",
    )
    return set(sample.to_json())


@pytest.mark.parametrize("name", ["answer-in-response", "acknowledge-and-call-back"])
def test_an_example_workflow_is_a_well_formed_n8n_export(name: str) -> None:
    flow = workflow(name)
    names = {node["name"] for node in flow["nodes"]}
    for node in flow["nodes"]:
        assert NODE_TYPES.get(node["type"]) == node["typeVersion"], node["type"]
    for source, outputs in flow["connections"].items():
        assert source in names
        for branch in outputs["main"]:
            assert {link["node"] for link in branch} <= names
    webhook = next(n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.webhook")
    assert webhook["parameters"]["httpMethod"] == "POST"
    # Every field of the payload a node reads is one the gateway sends.
    # Read as `$json.body.<field>` or, in the Code nodes, as `run.<field>` of `const run = ….body`.
    read = set(re.findall(r"(?:\.body|\brun)\.(\w+)", json.dumps(flow)))
    assert read, "the workflow reads nothing of the run"
    assert read <= payload_fields(), read - payload_fields()


def test_the_answering_workflow_answers_from_its_last_node() -> None:
    flow = workflow("answer-in-response")
    webhook = next(n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.webhook")
    assert webhook["parameters"]["responseMode"] == "responseNode"
    assert any(n["type"] == "n8n-nodes-base.respondToWebhook" for n in flow["nodes"])


def test_the_reporting_workflow_acknowledges_at_once_and_completes_through_the_callback() -> None:
    flow = workflow("acknowledge-and-call-back")
    webhook = next(n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.webhook")
    assert webhook["parameters"]["responseMode"] == "onReceived"
    report = next(n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.httpRequest")
    params = report["parameters"]
    assert params["method"] == "POST"
    assert "body.callbackUrl" in params["url"]
    auth = params["headerParameters"]["parameters"][0]
    assert auth["name"] == "Authorization"
    assert "Bearer {{" in auth["value"]
    assert "body.agentApiKey" in auth["value"]
    body = params["jsonBody"]
    for field in ('"type": "output"', '"complete": true', '"output"', '"outputs"'):
        assert field in body, field
