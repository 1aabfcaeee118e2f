"""The n8n adapter's reading of a streaming webhook (n8n's StructuredChunk lines)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import Mock

import aiohttp
import pytest
from aiohttp import web

from adapters.base import RunResult, RuntimeFailure, RuntimeRefused, StreamChunk, TriggerPayload
from adapters.n8n import N8nAdapter, N8nChunkStream, _Lines, collect_chunks
from tests.support.mocked_runtime import MockedRuntime

URL = "https://n8n.example/webhook/chat"
PAYLOAD = TriggerPayload(
    run_id=5,
    agent_id=2,
    input={"message": "hi"},
    agent_api_key="agk_x",
    callback_url="https://gw.example/api/runs/5/callback",
    fields={"message": "hi", "runId": "shadowed"},
)


def chunk(kind: str, content: str | None = None, node: str = "Agent 1") -> bytes:
    """A line exactly as n8n writes it: JSON.stringify(chunk) + "\\n"."""
    body: dict[str, Any] = {"type": kind}
    if content is not None:
        body["content"] = content
    body["metadata"] = {
        "nodeId": f"id-{node}",
        "nodeName": node,
        "itemIndex": 0,
        "runIndex": 0,
        "timestamp": 1763935200000,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


@pytest.fixture
async def adapter() -> AsyncIterator[N8nAdapter]:
    async with aiohttp.ClientSession() as session:
        yield N8nAdapter(session, max_result_bytes=10_000)


async def collect(stream: N8nChunkStream) -> list[StreamChunk | RunResult]:
    return [item async for item in stream]


async def test_chunks_are_read_with_their_node_and_content(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    body = chunk("begin") + chunk("item", "Hel") + chunk("item", "lo") + chunk("end")
    mocked.post(URL, body=body, content_type="application/json")

    stream = await adapter.open_stream({"webhook_url": URL}, PAYLOAD, wait_s=5)
    items = await collect(stream)
    stream.close()

    assert [(i.kind, i.content) for i in items if isinstance(i, StreamChunk)] == [
        ("begin", ""),
        ("item", "Hel"),
        ("item", "lo"),
        ("end", ""),
    ]
    first = items[1]
    assert isinstance(first, StreamChunk)
    assert (first.node_id, first.node_name) == ("id-Agent 1", "Agent 1")
    sent = next(iter(mocked.requests.values()))[0].kwargs["json"]
    # Declared fields at the top level, the payload's own keys winning.
    assert sent["message"] == "hi"
    assert sent["runId"] == 5


async def test_a_plain_json_answer_is_one_completed_result(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, payload={"answer": 42})

    items = await collect(await adapter.open_stream({"webhook_url": URL}, PAYLOAD, wait_s=5))

    assert items == [RunResult("completed", output={"answer": 42}, has_output=True)]


@pytest.mark.parametrize("pieces", [1, 2, 7])
async def test_a_plain_json_answer_over_several_lines_is_read_whole(
    adapter: N8nAdapter, aiohttp_server: Any, pieces: int
) -> None:
    """A workflow answering pretty-printed JSON on a streaming agent: every line of it, however
    the body arrives, makes up the one result."""
    answer = {"summary": "Q3", "rows": [{"n": 1}, {"n": 2}], "done": True}
    body = json.dumps(answer, indent=2).encode()

    async def webhook(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        size = -(-len(body) // pieces)
        for start in range(0, len(body), size):
            await response.write(body[start : start + size])
            await asyncio.sleep(0.01)  # each piece its own read
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/webhook/chat", webhook)
    server = await aiohttp_server(app)
    runtime = {"webhook_url": str(server.make_url("/webhook/chat"))}

    items = await collect(await adapter.open_stream(runtime, PAYLOAD, wait_s=5))

    assert items == [RunResult("completed", output=answer, has_output=True)]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            500,
            b'{"message":"Error in workflow"}',
            RunResult("failed", error="WorkflowFailed: HTTP 500: Error in workflow"),
        ),
        (202, b"", RunResult("running")),
        (
            200,
            b"<html>",
            RunResult("failed", error="WorkflowReturnedInvalidJson: HTTP 200, application/json"),
        ),
        # An empty body, or n8n's "Respond: Immediately" answer, acknowledges the run: the
        # workflow reports through callbacks.
        (200, b"", RunResult("running")),
        (200, b'{"message":"Workflow was started"}', RunResult("running")),
    ],
)
async def test_other_answers_say_what_became_of_the_run(
    adapter: N8nAdapter,
    mocked: MockedRuntime,
    status: int,
    body: bytes,
    expected: RunResult,
) -> None:
    mocked.post(URL, status=status, body=body, content_type="application/json")

    items = await collect(await adapter.open_stream({"webhook_url": URL}, PAYLOAD, wait_s=5))

    assert items == [expected]


async def test_a_callback_agents_stream_passes_its_chunks_on_and_then_waits_for_callbacks(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    body = chunk("begin") + chunk("item", "Working") + chunk("end")
    mocked.post(URL, body=body, content_type="application/json")
    runtime = {"webhook_url": URL, "result_delivery": "callback"}

    items = await collect(await adapter.open_stream(runtime, PAYLOAD, wait_s=5))

    assert [i.content for i in items if isinstance(i, StreamChunk) and i.kind == "item"] == [
        "Working"
    ]
    assert items[-1] == RunResult("running")


async def test_a_callback_agents_plain_json_answer_only_acknowledges_the_run(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, body=b'{"queued": true}', content_type="application/json")
    runtime = {"webhook_url": URL, "result_delivery": "callback"}

    items = await collect(await adapter.open_stream(runtime, PAYLOAD, wait_s=5))

    assert items == [RunResult("running")]


async def test_a_4xx_is_refused_before_any_stream(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, status=404, payload={"message": "webhook not registered"})

    with pytest.raises(RuntimeRefused, match="HTTP 404: webhook not registered"):
        await adapter.open_stream({"webhook_url": URL}, PAYLOAD, wait_s=5)


async def test_a_line_that_is_not_a_chunk_after_chunks_is_a_failure(
    adapter: N8nAdapter, mocked: MockedRuntime
) -> None:
    mocked.post(URL, body=chunk("item", "ok") + b'{"not": "a chunk"}\n')

    stream = await adapter.open_stream({"webhook_url": URL}, PAYLOAD, wait_s=5)
    with pytest.raises(RuntimeFailure, match="not an n8n chunk"):
        await collect(stream)


def reader(pieces: list[bytes]) -> aiohttp.StreamReader:
    content = aiohttp.StreamReader(
        Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    for piece in pieces:
        content.feed_data(piece)
    content.feed_eof()
    return content


async def test_lines_are_cut_at_newlines_however_the_bytes_arrive() -> None:
    text = chunk("item", "a") + chunk("item", "b\nc") + chunk("item", "d")
    for size in (1, 3, 7, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        lines = [line async for batch in _Lines(reader(pieces), 10_000).batches() for line in batch]
        assert [json.loads(line)["content"] for line in lines] == ["a", "b\nc", "d"], size


async def test_a_last_line_without_newline_still_counts_and_an_overlong_one_fails() -> None:
    lines = [
        line
        async for batch in _Lines(reader([b'{"x":1}\n{"y":', b"2}"]), 100).batches()
        for line in batch
    ]
    assert lines == [b'{"x":1}', b'{"y":2}']

    with pytest.raises(RuntimeFailure, match="over 100 bytes"):
        async for _batch in _Lines(reader([b"x" * 60, b"y" * 60]), 100).batches():
            pass


def test_a_waiting_caller_gets_the_chunks_joined_per_node() -> None:
    raw = (
        chunk("begin")
        + chunk("item", "One")
        + chunk("item", ", two", node="Agent 2")
        + chunk("item", ", three")
        + chunk("end")
    )
    assert collect_chunks(raw) == RunResult(
        "completed",
        output={"id-Agent 1": {"content": "One, three"}, "id-Agent 2": {"content": ", two"}},
        has_output=True,
    )
    assert collect_chunks(chunk("item", "x") + chunk("error", "boom")) == RunResult(
        "failed", error="Agent 1: boom"
    )
    assert collect_chunks(b"not json") is None
