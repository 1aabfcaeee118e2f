"""Workflow execute and ``/v0`` packages against the as-deployed tree, as a caller does them."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.support.deployed_tree import Org

FILES_FORMAT = [{"name": "documents", "type": "files"}, {"name": "note", "type": "string"}]


def file_object(name: str, content: bytes, mime: str) -> dict[str, str]:
    """Workflow execute's base64 file object."""
    encoded = base64.b64encode(content).decode()
    return {"type": "file", "data": f"data:{mime};base64,{encoded}", "name": name, "mime": mime}


async def files_agent(org: Org) -> dict[str, Any]:
    """A JSON agent with a files field, on the fake n8n webhook that echoes its input."""
    return await org.agent("json", name="Contract Reviewer", input_format=FILES_FORMAT)


async def execute(
    http: aiohttp.ClientSession, org: Org, agent: dict[str, Any], body: dict[str, Any]
) -> tuple[int, dict[str, Any], str]:
    """POST the execute with ``body`` through the load balancer: status, answer, request id."""
    request_id = f"as-deployed-{uuid.uuid4().hex}"
    async with http.post(
        f"{org.tree.front}/api/workflows/{agent['id']}/execute",
        headers={
            "X-API-Key": org.key,
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
        },
        # A stream: aiohttp warns that a large bytes body would block the event loop.
        data=io.BytesIO(json.dumps(body).encode()),
    ) as resp:
        text = await resp.text()
        try:
            answer: dict[str, Any] = json.loads(text)
        except ValueError:
            answer = {"unparsed": text[:500]}
        return resp.status, answer, request_id


def upstream_of(access_log: str, request_id: str) -> str:
    """The replica (host:port) nginx sent the request with ``request_id`` to."""
    for line in access_log.splitlines():
        if f"rid={request_id}" in line:
            found = re.search(r"upstream=(\S+(?:, \S+)*)", line)
            assert found, line
            # After a retry nginx lists every replica tried: the last one answered.
            return found.group(1).split(", ")[-1]
    raise AssertionError(f"nginx logged no request {request_id}")


def on_replica(url: str, replica: str) -> str:
    """``url``'s path and query, asked of ``replica`` (``http://host:port``) directly."""
    parts = urlsplit(url)
    return f"{replica}{parts.path}?{parts.query}"
