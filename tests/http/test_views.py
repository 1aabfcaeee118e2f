"""Each view builds a body its response schema in the OpenAPI document describes: every field
the schema requires, nothing it does not name, each value of the declared type."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.admin.service import CreatedAgent
from gateway.execute.service import ChunkFrame, Outcome
from gateway.http import views
from gateway.http.openapi import build_document
from gateway.packages.service import PackageTicket
from gateway.runs.external import Ingested, Registration
from gateway.security.credentials import ResolvedCredential
from gateway.security.ratelimit import Decision
from gateway.security.tokens import IssuedToken
from store.credentials import CredentialInfo
from store.enums import AgentStatus, ManagedBy, OutputKind, RunStatus
from store.models import Agent, Run

NOW = dt.datetime(2026, 3, 1, 12, 0, 5, 250_000, tzinfo=dt.UTC)
ORG = uuid.uuid4()


def _run(status: RunStatus, **changes: Any) -> Run:
    ended = status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    fields: dict[str, Any] = {
        "id": 7,
        "agent_id": 3,
        "org_id": ORG,
        "status": status,
        "input": {"topic": "Q3"},
        "output_data": {"summary": "fine"} if status == RunStatus.COMPLETED else None,
        "outputs": 2 if ended else None,
        "error": "Boom" if status == RunStatus.FAILED else None,
        "duration_ms": 812 if ended else None,
        "started_at": NOW,
        "completed_at": NOW if ended else None,
        "created_at": NOW,
        "created_by": None,
        "external_run_id": None,
        "runtime_run_id": None,
        "deadline": None,
    }
    return Run(**{**fields, **changes})


AGENT = Agent(
    id=3,
    org_id=ORG,
    name="Reporter",
    managed_by=ManagedBy.PLATFORM,
    status=AgentStatus.ACTIVE,
    allow_external_triggers=True,
    output_kind=OutputKind.STREAM,
    runtime={"kind": "n8n", "webhook_url": "http://n8n.local/webhook/x", "headers": {"A": "b"}},
    default_input={},
    input_format=None,
    running_timeout_ms=60_000,
    created_at=NOW,
    updated_at=NOW,
    api_key_salt=b"salt",
    blocks=[{"id": "n-1", "name": "Agent 1"}],
    credential_ids=[uuid.uuid4()],
)
DONE = Outcome(7, 3, "completed", True, {"n-1": {"content": "One"}}, None, 812)
FAILED = Outcome(7, 3, "failed", False, None, "Boom", 812)

BUCKET = views.bucket_view(Decision(True, 10, 9, 0, 60_000), 60)

CASES: list[tuple[str, dict[str, Any]]] = [
    *[("Run", views.run_view(_run(status))) for status in RunStatus],
    ("Agent", views.agent_view(AGENT)),
    ("Agent", views.created_agent_view(CreatedAgent(AGENT, "agk_new"))),
    (
        "Credential",
        views.credential_view(ResolvedCredential(uuid.uuid4(), "Search", "api_key", {"k": 1})),
    ),
    (
        "CredentialInfo",
        views.credential_info_view(
            CredentialInfo(uuid.uuid4(), ORG, "Search", "api_key", NOW, NOW)
        ),
    ),
    (
        "PackageTicket",
        views.package_ticket_view(
            PackageTicket(uuid.uuid4(), "ready", "http://gw.local/v0/packages/x.zip", 3, NOW)
        ),
    ),
    ("ExecuteResult", views.execution_result_view(DONE)),
    ("ExecuteResult", views.execution_result_view(FAILED)),
    ("ExecuteChunkFrame", views.execution_event_view(ChunkFrame("n-1", "One"))),
    ("ExecuteDoneFrame", views.execution_event_view(DONE)),
    ("ExecuteErrorFrame", views.execution_event_view(FAILED)),
    ("ExecuteAccepted", views.async_execution_view(_run(RunStatus.QUEUED))),
    *[("JobStatus", views.job_status_view(_run(status))) for status in RunStatus],
    ("WorkflowStatus", views.workflow_status_view(AGENT, deployed=True)),
    ("WorkflowStatus", views.workflow_status_view(AGENT, deployed=False)),
    *[("RunAccepted", views.run_status_view(7, status)) for status in RunStatus],
    ("RunTimedOut", views.timed_out_run_view(_run(RunStatus.RUNNING))),
    (
        "Registration",
        views.registered_run_view(
            Registration(_run(RunStatus.RUNNING), True, IssuedToken("crt_abc.def", 3600))
        ),
    ),
    *[
        ("Ingested", views.ingested_run_view(Ingested(_run(status), created, status)))
        for status in RunStatus
        for created in (True, False)
    ],
    (
        "ExecuteTimedOut",
        views.execution_timed_out_view(Outcome(7, 3, "running", False, None, None, None)),
    ),
    ("UsageBucket", BUCKET),
    ("UsageLimits", views.usage_limits_view(BUCKET, {"3": BUCKET})),
]


@pytest.mark.parametrize(
    ("name", "body"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_each_view_matches_its_response_schema(name: str, body: dict[str, Any]) -> None:
    components = build_document()["components"]
    schema = components["schemas"][name]
    validator = Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": components}
    )

    problems = [error.message for error in validator.iter_errors(body)]

    assert problems == []
    assert set(body) <= set(schema["properties"]), "fields the schema does not name"
