"""Workflow execute for the tests: agents on the fake n8n, and reading SSE as a caller does."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import node_id
from tests.support.runtimes import webhook
from tests.support.tenants import Tenant

AGENT_1 = node_id("Agent 1")
AGENT_2 = node_id("Agent 2")


def execute_url(agent_id: int | str) -> str:
    """Workflow execute's endpoint for an agent (the workflow id is the agent id)."""
    return f"/api/workflows/{agent_id}/execute"


def api_key(tenant: Tenant) -> dict[str, str]:
    """Workflow execute's auth header."""
    return {"X-API-Key": tenant.ingest_key}


def blocks(*names: str) -> list[dict[str, str]]:
    """Block declarations for the fake runtime's nodes."""
    return [{"id": node_id(name), "name": name} for name in names]


async def stream_agent(
    tenant: Tenant,
    runtime: TestServer,
    query: str = "nodes=Agent 1",
    *,
    nodes: tuple[str, ...] = ("Agent 1",),
    **fields: Any,
) -> dict[str, Any]:
    """An eligible ``stream`` agent on the fake runtime's streaming webhook."""
    fields.setdefault("blocks", blocks(*nodes))
    fields.setdefault("output_kind", "stream")
    fields.setdefault("name", "Streaming assistant")
    return await tenant.create_agent(runtime=webhook(runtime, f"stream?{query}"), **fields)


@dataclass
class Event:
    """One SSE event as received: its data (or comment), its id, and when it arrived."""

    at: float
    data: str | None
    comment: str | None = None
    id: int | None = None


async def read_events(resp: aiohttp.ClientResponse) -> list[Event]:
    """Every event of an SSE body, each stamped with its arrival time."""
    events: list[Event] = []
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            events.append(parse_event(raw.decode(), time.monotonic()))
    assert buffer == b"", f"an unterminated event: {buffer!r}"
    return events


def parse_event(raw: str, at: float) -> Event:
    """One SSE event's lines: ``id:`` then ``data:``, or a ``:`` comment."""
    if raw.startswith(":"):
        return Event(at, None, raw[1:].strip())
    id_line, newline, data_line = raw.partition("\n")
    assert newline, f"an event without its id: {raw!r}"
    assert id_line.startswith("id: "), f"an event without its id: {raw!r}"
    assert data_line.startswith("data: "), raw
    assert "\n" not in data_line, raw
    return Event(at, data_line[len("data: ") :], id=int(id_line[len("id: ") :]))


def data_frames(events: list[Event]) -> list[str]:
    """The data of each event, pings left out."""
    return [e.data for e in events if e.data is not None]


def body_frames(body: str) -> list[str]:
    """The data of each event of a whole SSE body (each numbered), pings left out."""
    events = [parse_event(raw, 0.0) for raw in body.split("\n\n") if raw]
    assert [e.id for e in events if e.data is not None] == list(
        range(1, 1 + len(data_frames(events)))
    ), "frames are numbered 1, 2, … in order"
    return data_frames(events)
