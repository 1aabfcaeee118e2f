"""Workflow execute's curl examples, replayed with curl itself against a gateway and a real local
streaming n8n-like server, frame by frame.

Each command is the contract's example, with our host in place of theirs. The timing checks are
the point of streaming: the caller holds the first frame before the runtime has sent its last chunk.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.support.execute import AGENT_1, AGENT_2, Event, data_frames, parse_event, stream_agent
from tests.support.runtimes import received
from tests.support.tenants import Tenant

# The contract's example commands, verbatim but for the host (and -sS -N, so curl prints each
# event as it arrives and stays quiet otherwise).
SEED_PLAIN = """curl -X POST \\
  https://www.ekinox.app/api/workflows/WORKFLOW_ID/execute \\
  -H 'Content-Type: application/json' \\
  -H 'X-API-Key: YOUR_KEY' \\
  -d '{"userId":"demo-user","maxTokens":1024}'"""

SEED_STREAM = """curl -X POST \\
  https://www.ekinox.app/api/workflows/WORKFLOW_ID/execute \\
  -H 'Content-Type: application/json' \\
  -H 'X-API-Key: YOUR_KEY' \\
  -d '{
    "message": "Count to five",
    "stream": true,
    "selectedOutputs": ["agent1.content"]
  }'"""

SEED_TWO_BLOCKS = """curl -X POST \\
  https://www.ekinox.app/api/workflows/WORKFLOW_ID/execute \\
  -H 'Content-Type: application/json' \\
  -H 'X-API-Key: YOUR_KEY' \\
  -d '{
    "message": "Process this request",
    "stream": true,
    "selectedOutputs": ["agent1.content", "agent2.content"]
  }'"""

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None, reason="needs the curl command (e.g. `apt-get install curl`)"
)

INPUT_FORMAT = [
    {"name": "userId", "type": "string"},
    {"name": "maxTokens", "type": "number"},
    {"name": "message", "type": "string"},
]


def seed_command(seed: str, tenant: Tenant, agent: dict[str, Any]) -> list[str]:
    """The contract's example command with our host, workflow id and key."""
    base = str(tenant.client.make_url("")).rstrip("/")
    text = (
        seed.replace("https://www.ekinox.app", base)
        .replace("WORKFLOW_ID", str(agent["id"]))
        .replace("YOUR_KEY", tenant.ingest_key)
    )
    # As a shell reads it: a backslash-newline joins the lines.
    argv = shlex.split(text.replace("\\\n", " "))
    assert argv[0] == "curl"
    return ["curl", "-sS", "-N", *argv[1:]]


async def run_curl(argv: list[str]) -> list[Event]:
    """Run curl, stamping each event of its output with the moment it arrived."""
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    events: list[Event] = []
    buffer = b""
    try:
        async with asyncio.timeout(30):
            while chunk := await child.stdout.read(65536):
                buffer += chunk
                while b"\n\n" in buffer:
                    raw, buffer = buffer.split(b"\n\n", 1)
                    events.append(parse_event(raw.decode(), time.monotonic()))
            assert await child.wait() == 0, await child.stderr.read() if child.stderr else b""
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if buffer.strip():
        events.append(Event(time.monotonic(), buffer.decode()))
    return events


async def test_the_plain_request_example_returns_the_serialized_result(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime, input_format=INPUT_FORMAT)

    [answer] = await run_curl(seed_command(SEED_PLAIN, tenant, agent))

    body = json.loads(answer.data or "")
    assert body["success"] is True
    assert body["error"] is None
    assert isinstance(body["metadata"]["duration"], int)
    assert isinstance(body["runId"], int)
    assert body["output"] == {AGENT_1: {"content": "Agent 1: working"}}
    payload = received(runtime)[0]["payload"]
    # The declared fields at the top level and under input, coerced (<api.x>, <api.input.x>).
    assert (payload["userId"], payload["maxTokens"]) == ("demo-user", 1024)
    assert payload["input"] == {"userId": "demo-user", "maxTokens": 1024}


async def test_the_streaming_example_arrives_frame_by_frame_before_the_runtime_is_done(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(
        tenant, runtime, "nodes=Agent 1&pace_ms=150", input_format=INPUT_FORMAT
    )

    events = await run_curl(seed_command(SEED_STREAM, tenant, agent))

    frames = data_frames(events)
    assert frames[:5] == [
        f'{{"blockId":"{AGENT_1}","chunk":"{text}"}}'
        for text in ["One", ", two", ", three", ", four", ", five"]
    ]
    done = json.loads(frames[5])
    assert (done["event"], done["success"]) == ("done", True)
    assert done["output"] == {AGENT_1: {"content": "One, two, three, four, five"}}
    assert frames[6] == "[DONE]"
    assert len(frames) == 7
    sent_at = received(runtime)[0]["chunks_sent_at"]
    assert len(sent_at) == 5
    # The caller had "One" before the runtime had even sent "four" (chunks are 150 ms apart).
    assert events[0].at < sent_at[-1]
    assert events[0].at < sent_at[3]
    # ... and each frame followed its chunk, not the end of the stream.
    arrivals = [e.at for e in events[:5]]
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_the_multiple_block_example_tags_each_chunk_with_its_block(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(
        tenant,
        runtime,
        "nodes=Agent 1,Agent 2&interleave=1&pace_ms=100",
        nodes=("Agent 1", "Agent 2"),
        input_format=INPUT_FORMAT,
    )

    events = await run_curl(seed_command(SEED_TWO_BLOCKS, tenant, agent))

    frames = data_frames(events)
    chunks = [json.loads(f) for f in frames[:-2]]
    assert [c["blockId"] for c in chunks] == [AGENT_1, AGENT_2] * 5
    assert [c["chunk"] for c in chunks[:2]] == ["Agent", "Agent"]
    assert json.loads(frames[-2])["event"] == "done"
    assert frames[-1] == "[DONE]"
    sent_at = received(runtime)[0]["chunks_sent_at"]
    assert events[0].at < sent_at[-1]
