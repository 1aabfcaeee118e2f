"""The /v0 API for the tests: its request, fetching a signed URL as anyone
would, and jobs with stored files."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from tests.support.execute import api_key, execute_url
from tests.support.runtimes import json_agent
from tests.support.tenants import Tenant

FILES_FORMAT = [
    {"name": "documents", "type": "files"},
    {"name": "note", "type": "string"},
]


def download_url(workflow_id: int | str, job_id: int | str) -> str:
    """The /v0 API's endpoint (the workflow is an agent, the job one of its runs)."""
    return f"/v0/workflows/{workflow_id}/jobs/{job_id}/download"


def bare(tenant: Tenant) -> dict[str, str]:
    """The /v0 API's auth header: the key itself, no scheme."""
    return {"Authorization": tenant.ingest_key}


async def put_download(
    tenant: Tenant, workflow_id: int | str, job_id: int | str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """PUT the download with the tenant's bare key (unless headers are given)."""
    kwargs.setdefault("headers", bare(tenant))
    resp = await tenant.client.put(download_url(workflow_id, job_id), **kwargs)
    body: dict[str, Any] = await resp.json()
    return resp.status, body


@dataclass
class Fetched:
    """A signed URL's answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def zip(self) -> zipfile.ZipFile:
        """The body opened as a ZIP, as a user would."""
        assert self.status == 200, self.body[:300]
        return zipfile.ZipFile(io.BytesIO(self.body))

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(url: str, *, method: str = "GET") -> Fetched:
    """Fetch a signed URL with no credentials at all, as whoever holds it would."""
    async with aiohttp.ClientSession() as anyone, anyone.request(method, url) as resp:
        return Fetched(resp.status, resp.headers, await resp.read())


def data_url(content: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


def upload(name: str, content: bytes, mime: str) -> dict[str, str]:
    """Workflow execute's base64 file object."""
    return {"type": "file", "data": data_url(content, mime), "name": name, "mime": mime}


async def files_agent(tenant: Tenant, runtime: TestServer, **fields: Any) -> dict[str, Any]:
    """A JSON agent with a files field, on the fake n8n webhook that answers ``input.result``."""
    fields.setdefault("input_format", FILES_FORMAT)
    fields.setdefault("name", "Contract Reviewer")
    return await json_agent(tenant, runtime, "json", **fields)


async def execute_job(tenant: Tenant, agent: dict[str, Any], body: dict[str, Any]) -> int:
    """Run a job through workflow execute and return its id once it has ended."""
    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(json.dumps(body).encode()),
    )
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["success"] is True, result
    run_id: int = result["runId"]
    return run_id


def v0_error(body: dict[str, Any], code: str) -> dict[str, Any]:
    """Check the /v0 error shape exactly and return its fields."""
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    assert error["code"] == code, body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    return error
