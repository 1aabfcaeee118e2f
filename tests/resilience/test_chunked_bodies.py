"""A chunked file forwarded socket to socket (chunk headers parsed, payloads spliced): what the
caller gets is the runtime's payload whole, or a broken transfer and a failed run."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import structlog

from store.consumer import StoreConsumer
from tests.resilience.rogue import RogueRuntime, chunks_payload
from tests.support.live_gateways import Live, LiveFactory

MB = 1024 * 1024
SETTINGS: dict[str, Any] = {"stream_idle_timeout_s": 2.0}


@pytest.fixture(params=[16, 0], ids=["thread", "event-loop"])
async def live(
    request: pytest.FixtureRequest, make_live: LiveFactory, consumer: StoreConsumer
) -> Live:
    """A splicing gateway whose copies run in threads, or all on the event loop."""
    return await make_live(stream_splice=True, stream_splice_threads=request.param, **SETTINGS)


async def _download(
    live: Live, url: str
) -> tuple[aiohttp.ClientResponse, bytes | None, dict[str, Any], list[dict[str, Any]]]:
    caller = await live.caller()
    agent = await live.agent(caller, url)
    with structlog.testing.capture_logs() as logs:
        async with live.http.post(
            live.url(f"/api/agents/{agent['id']}/runs/trigger-and-download"),
            json={"timeoutMs": 5000},
            headers=caller.auth,
        ) as resp:
            try:
                body: bytes | None = await resp.read()
            except aiohttp.ClientPayloadError:
                body = None
        run = await live.terminal_run(caller, agent["id"], resp.headers["X-Run-Id"])
    return resp, body, run, [e for e in logs if e["event"] == "download_sent"]


CASES = {
    # One-byte and odd sizes, a chunk of 3 MiB (many pipe fills), a run of tiny ones.
    "odd sizes": [1, 7, 4093, 65537, 1, 3 * MB + 17, *([3] * 50), 255],
    "large chunks": [5 * MB, 4 * MB + 1],
}


@pytest.mark.parametrize("sizes", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("trailers", [False, True], ids=["no-trailers", "trailers"])
async def test_a_chunked_file_arrives_whole_chunked_and_the_run_records_its_size(
    live: Live, rogue: RogueRuntime, sizes: list[int], trailers: bool
) -> None:
    query = f"sizes={','.join(map(str, sizes))}" + ("&trailers=1" if trailers else "")
    resp, body, run, sent = await _download(live, rogue.url("chunks") + "?" + query)

    assert resp.status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert body == chunks_payload(sum(sizes))
    assert run["status"] == "completed"
    assert run["output_data"]["sizeBytes"] == sum(sizes)
    # The payload went socket to socket (the body is large enough to outrun the first read).
    assert [(e["path"], e["bytes"]) for e in sent] == [("splice", sum(sizes))]
    assert await rogue.wait_all_closed() == 0


async def test_a_runtime_dying_mid_chunk_breaks_the_transfer_and_fails_the_run(
    live: Live, rogue: RogueRuntime
) -> None:
    sizes = [MB, 2 * MB, 3 * MB, MB]
    resp, body, run, sent = await _download(
        live, rogue.url("chunks") + f"?sizes={','.join(map(str, sizes))}&die=2"
    )

    assert resp.status == 200
    # A broken transfer, never a short file passing for a whole one.
    assert body is None
    assert run["status"] == "failed"
    assert run["error"].startswith("Runtime stream broke after"), run["error"]
    assert sent == []
    assert await rogue.wait_all_closed() == 0


async def test_broken_chunk_framing_breaks_the_transfer_and_fails_the_run(
    live: Live, rogue: RogueRuntime
) -> None:
    # The runtime claims 1 MiB for chunk 1 but sends half then the next header: the framing
    # no longer lines up and the forwarder must refuse it, not pass garbage on as a file.
    resp, body, run, _sent = await _download(
        live, rogue.url("chunks") + f"?sizes={MB},{2 * MB},{MB}&die=1&then=continue"
    )

    assert resp.status == 200
    assert body is None
    assert run["status"] == "failed"
    assert run["error"].startswith("Runtime stream broke after"), run["error"]
