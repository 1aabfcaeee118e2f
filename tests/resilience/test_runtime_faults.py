"""A runtime misbehaves: every fault ends in the contract's status or a clean abort, a failed run
with its reason, nothing left open in the gateway, and memory that stays bounded."""

from __future__ import annotations

import asyncio
import json
import os
import resource
from typing import Any

import aiohttp
import pytest

from gateway.runs.filenames import derive_filename
from store.consumer import StoreConsumer
from tests.resilience.rogue import TEN_GIB, RogueRuntime
from tests.support.execute import body_frames
from tests.support.live_gateways import Census, Live, LiveFactory

MB = 1024 * 1024
# Short bounds, so that each fault shows within a second or two.
FAULT_SETTINGS: dict[str, Any] = {"stream_idle_timeout_s": 1.0, "max_result_body": MB}
WINDOW = {"timeoutMs": 1500}


def _rss() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@pytest.fixture
async def live(make_live: LiveFactory, consumer: StoreConsumer) -> Live:
    """A gateway with short bounds, on the splice download path."""
    return await make_live(**FAULT_SETTINGS)


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
async def either_path(
    request: pytest.FixtureRequest, make_live: LiveFactory, consumer: StoreConsumer
) -> Live:
    """A gateway on either download path (os.splice, or copying through the process)."""
    return await make_live(stream_splice=request.param, **FAULT_SETTINGS)


async def _download(
    live: Live, rogue: RogueRuntime, behaviour: str, **options: object
) -> tuple[int, bytes | None, str | None, str]:
    """Trigger a download from an agent on ``behaviour``; return the status, the body (``None``
    when the transfer broke), the run id and what broke it."""
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url(behaviour, **options))
    async with live.http.post(
        live.url(f"/api/agents/{agent['id']}/runs/trigger-and-download"),
        json=WINDOW,
        headers=caller.auth,
    ) as resp:
        run_id = resp.headers.get("X-Run-Id")
        try:
            body: bytes | None = await resp.read()
            broke = ""
        except aiohttp.ClientPayloadError as exc:
            body, broke = None, repr(exc)
        if run_id is None and resp.status >= 400:
            run_id = str((await resp.json())["runId"])
        status = resp.status
    run = await live.terminal_run(caller, agent["id"], run_id)
    return status, body, run["status"] + ": " + str(run["error"]), broke


# Faults before the first byte: the download path plays no part.
EARLY_DOWNLOAD_FAULTS = [
    # behaviour, options, status, the run's end
    ("hang-headers", {}, 504, "failed: Runtime did not respond within the wait window"),
    ("garbage-json", {}, 502, "failed: WorkflowReturnedInvalidJson: HTTP 200"),
    (
        "garbage-http",
        {},
        500,
        "failed: Runtime invocation failed: Runtime answered with invalid HTTP (Bad status line)",
    ),
    ("close-early", {}, 500, "failed: Runtime invocation failed"),
    # Bytes past the declared length arrive with the body: the answer is no valid HTTP.
    (
        "long-length",
        {"length": 4096, "send": 100_000},
        500,
        "failed: Runtime invocation failed: Runtime answered with",
    ),
]

# Faults mid-body: the caller's transfer breaks (never a short file passing for a whole one).
BODY_FAULTS = [
    # behaviour, options, the run's end
    (
        "hang-body",
        {"length": MB, "send": 100_000},
        "failed: Runtime sent nothing for 1 s mid-stream after 100000 bytes",
    ),
    (
        "short-length",
        {"length": MB, "send": 100_000},
        "failed: Runtime stream broke after 100000 bytes",
    ),
    (
        "close-mid-body",
        {"length": MB, "send": 300_000},
        "failed: Runtime stream broke after 300000 bytes",
    ),
]


@pytest.mark.parametrize(
    ("behaviour", "options", "status", "end"),
    EARLY_DOWNLOAD_FAULTS,
    ids=[f[0] for f in EARLY_DOWNLOAD_FAULTS],
)
async def test_a_runtime_that_fails_before_the_file_gets_the_seeds_status(
    live: Live,
    rogue: RogueRuntime,
    behaviour: str,
    options: dict[str, int],
    status: int,
    end: str,
) -> None:
    await live.caller()  # the admin routes' own first use, out of the baseline
    before = live.census()

    got_status, _body, run_end, _broke = await _download(live, rogue, behaviour, **options)

    assert got_status == status
    assert run_end.startswith(end), run_end
    await _nothing_left_open(live, rogue, before)


@pytest.mark.parametrize(
    ("behaviour", "options", "end"), BODY_FAULTS, ids=[f[0] for f in BODY_FAULTS]
)
async def test_a_runtime_that_fails_mid_file_breaks_the_transfer(
    either_path: Live,
    rogue: RogueRuntime,
    behaviour: str,
    options: dict[str, int],
    end: str,
) -> None:
    live = either_path
    await live.caller()
    before = live.census()

    status, body, run_end, broke = await _download(live, rogue, behaviour, **options)

    assert status == 200
    assert run_end.startswith(end), run_end
    # A broken transfer, never a short file passing for a whole one.
    assert body is None, f"{len(body or b'')} bytes arrived as if whole"
    assert broke
    await _nothing_left_open(live, rogue, before)


async def _nothing_left_open(live: Live, rogue: RogueRuntime, before: Census) -> None:
    after = await live.settled(before)
    assert after.upstream_in_use == 0
    assert after.caller_connections == 0
    assert after.tasks <= before.tasks, (before, after)
    assert after.fds <= before.fds + 2, (before, after)
    # The gateway let go of its connection to the runtime (none kept with garbage in it).
    assert await rogue.wait_all_closed() == 0


JSON_FAULTS = [
    ("hang-headers", {}, 504, "failed: Runtime did not respond within the wait window"),
    (
        "hang-body",
        {"length": MB, "send": 1000, "type": "application/json"},
        504,
        "failed: Runtime did not respond within the wait window",
    ),
    (
        "short-length",
        {"length": 5000, "send": 1000, "type": "application/json"},
        200,
        "failed: RuntimeResponseBroken",
    ),
    ("garbage-json", {}, 200, "failed: WorkflowReturnedInvalidJson: HTTP 200"),
    ("garbage-http", {}, 500, "failed: Runtime invocation failed: Runtime answered with invalid"),
    ("close-early", {}, 500, "failed: Runtime invocation failed"),
    (
        "long-length",
        {"length": 12, "send": 10_000, "type": "application/json"},
        500,
        "failed: Runtime invocation failed: Runtime answered with invalid HTTP",
    ),
    ("endless", {}, 200, "failed: WorkflowResultTooLarge"),
]


@pytest.mark.parametrize(
    ("behaviour", "options", "status", "end"), JSON_FAULTS, ids=[f[0] for f in JSON_FAULTS]
)
async def test_a_misbehaving_runtime_behind_a_wait(
    make_live: LiveFactory,
    consumer: StoreConsumer,
    rogue: RogueRuntime,
    behaviour: str,
    options: dict[str, str],
    status: int,
    end: str,
) -> None:
    live = await make_live(**FAULT_SETTINGS)
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url(behaviour, **options), output_kind="json")
    before = live.census()

    async with live.http.post(
        live.url(f"/api/agents/{agent['id']}/runs/trigger-and-wait"),
        json=WINDOW,
        headers=caller.auth,
    ) as resp:
        got = await resp.json()
        assert resp.status == status, got

    run = await live.terminal_run(caller, agent["id"], got["runId"])
    assert f"{run['status']}: {run['error']}".startswith(end), run
    after = await live.settled(before)
    assert after.upstream_in_use == 0
    assert after.tasks <= before.tasks, (before, after)
    assert after.fds <= before.fds + 2, (before, after)
    assert await rogue.wait_all_closed() == 0


STREAM_FAULTS = [
    ("hang", "Runtime sent nothing for 1 s mid-stream after 1 frames"),
    ("close", "Runtime stream broke after 1 frames"),
    ("garbage", "Runtime stream broke after 1 frames: RuntimeFailure: RuntimeStreamInvalid"),
]


@pytest.mark.parametrize(("then", "end"), STREAM_FAULTS, ids=[f[0] for f in STREAM_FAULTS])
async def test_a_runtime_that_fails_mid_event_stream_ends_it_in_band(
    live: Live, rogue: RogueRuntime, then: str, end: str
) -> None:
    """Workflow execute: once frames are out, a failure is one error frame and ``[DONE]``."""
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url("stream", then=then), output_kind="stream")
    before = live.census()

    async with live.http.post(
        live.url(f"/api/workflows/{agent['id']}/execute"),
        json={"message": "hi", "stream": True},
        headers={"X-API-Key": caller.key},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        run_id = resp.headers["X-Run-Id"]
        frames = body_frames(await resp.text())

    assert frames[0] == '{"blockId":"n1","chunk":"Hello"}'
    error = json.loads(frames[-2])
    assert error["event"] == "error"
    assert error["error"].startswith(end), error
    assert frames[-1] == "[DONE]"
    run = await live.terminal_run(caller, agent["id"], run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith(end)
    await _nothing_left_open(live, rogue, before)


async def test_a_json_result_arriving_in_pieces_is_read_whole(
    live: Live, rogue: RogueRuntime
) -> None:
    """Regression: the result was read with one ``read(n)``, which answers with the bytes that
    have arrived so far; a result written in pieces failed as invalid JSON."""
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url("pieces", size=600_000), output_kind="json")

    async with live.http.post(
        live.url(f"/api/agents/{agent['id']}/runs/trigger-and-wait"), headers=caller.auth
    ) as resp:
        run = await resp.json()
        assert resp.status == 200

    assert run["status"] == "completed", run["error"]
    assert run["outputs"] == 7
    assert len(run["output_data"]["text"]) > 599_000


async def test_a_file_name_postgresql_cannot_store_is_recorded_all_the_same(
    live: Live, rogue: RogueRuntime
) -> None:
    """Regression: a NUL in the runtime's file name (``filename*=UTF-8''a%00b.pdf``) made the
    run's completion an event the store could never apply; the run stayed running. A control
    character makes the name unsafe: the contract's synthesised name is sent and recorded."""
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url("ok", file=1, name="report%2500.pdf"))

    async with live.http.post(
        live.url(f"/api/agents/{agent['id']}/runs/trigger-and-download"), headers=caller.auth
    ) as resp:
        assert resp.status == 200
        assert len(await resp.read()) == 4096
        run_id = resp.headers["X-Run-Id"]

        synthesised = derive_filename(agent["name"], int(run_id), resp.headers["Content-Type"])
        assert resp.headers["Content-Disposition"] == f'attachment; filename="{synthesised}"'

    run = await live.terminal_run(caller, agent["id"], run_id)
    assert run["status"] == "completed"
    assert run["output_data"]["filename"] == synthesised


def _in_flight_bound() -> int:
    """What four loopback socket buffers (the runtime's and the gateway's send buffers, the
    gateway's and the caller's receive buffers) and a 1 MiB splice pipe can hold at most."""
    with open("/proc/sys/net/ipv4/tcp_rmem") as rmem, open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        receive, send = int(rmem.read().split()[2]), int(wmem.read().split()[2])
    return 2 * receive + 2 * send + 2 * MB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_10_gib_body_to_a_slow_reader_moves_at_the_readers_pace(
    either_path: Live, rogue: RogueRuntime, chunked: bool
) -> None:
    """The runtime would send 10 GiB; the caller reads 64 KiB every 20 ms for 2 s and leaves.
    What the runtime got to send stays within socket buffers of what the caller read, the
    process does not grow, and the run fails saying the caller left."""
    live = either_path
    caller = await live.caller()
    agent = await live.agent(caller, rogue.url("endless", **({"chunked": 1} if chunked else {})))
    before = live.census()
    rss_before = _rss()
    read = 0
    peak_gap = peak_rss = 0
    async with live.http.post(
        live.url(f"/api/agents/{agent['id']}/runs/trigger-and-download"), headers=caller.auth
    ) as resp:
        assert resp.status == 200
        run_id = resp.headers["X-Run-Id"]
        if not chunked:
            assert resp.headers["Content-Length"] == str(TEN_GIB)
        loop = asyncio.get_running_loop()
        stop = loop.time() + 2.0
        while loop.time() < stop:
            read += len(await resp.content.read(64 * 1024))
            peak_gap = max(peak_gap, rogue.stats.endless_sent - read)
            peak_rss = max(peak_rss, _rss())
            await asyncio.sleep(0.02)
        resp.close()

    run = await live.terminal_run(caller, agent["id"], run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("Caller disconnected after"), run["error"]
    assert read > MB
    # What is in flight sits in kernel socket buffers, never in the gateway's memory.
    assert peak_gap < _in_flight_bound(), peak_gap
    assert peak_rss - rss_before < 32 * MB, peak_rss - rss_before
    after = await live.settled(before)
    assert after.upstream_in_use == 0
    assert after.tasks <= before.tasks, (before, after)
    assert await rogue.wait_all_closed() == 0
    print(
        f"\nslow reader ({'chunked' if chunked else 'content-length'}, "
        f"{'splice' if live.settings.stream_splice else 'copy'}): read {read / MB:.1f} MiB in 2 s,"
        f" runtime ahead by at most {peak_gap / MB:.1f} MiB,"
        f" RSS grew {(peak_rss - rss_before) / MB:.1f} MiB, pid {os.getpid()}"
    )
