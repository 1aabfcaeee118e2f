"""Hostile callers: slow senders are cut off, oversized and malformed input is refused with a
clear 4xx (never a 500), nothing is injected into headers or paths, no key opens another
organisation's data, and guessing keys is slowed per client address."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import RECEIVED
from gateway.http.app_keys import REDIS
from gateway.security.apikeys import hash_key
from store.consumer import StoreConsumer
from tests.support.live_gateways import Live, LiveFactory
from tests.support.tokens import ADMIN, ADMIN_TOKEN

MB = 1024 * 1024


@dataclass
class RawAnswer:
    """What came back on a hand-written HTTP/1.1 exchange."""

    status: int | None
    head: str
    body: bytes
    closed: bool
    elapsed: float


async def _raw(
    live: Live,
    head: str | bytes,
    pieces: list[bytes] | None = None,
    *,
    pause_s: float = 0.0,
    read_for_s: float = 5.0,
) -> RawAnswer:
    """Send ``head`` (a request line and headers) and then ``pieces`` ``pause_s`` apart, while
    reading whatever the gateway answers, until it closes or ``read_for_s`` passes."""
    port = int(live.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = bytearray()
    closed = False

    async def read() -> None:
        nonlocal closed
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionError:
            pass
        closed = True

    reading = asyncio.create_task(read())
    try:
        writer.write(head.encode("latin-1") if isinstance(head, str) else head)
        for piece in pieces or []:
            if reading.done():
                break
            await asyncio.sleep(pause_s)
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:
                break
        await asyncio.wait([reading], timeout=max(0.0, read_for_s - (loop.time() - started)))
    finally:
        reading.cancel()
        writer.close()
    head_bytes, _, body = bytes(received).partition(b"\r\n\r\n")
    text = head_bytes.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/1.") else None
    return RawAnswer(status, text, body, closed, loop.time() - started)


def _request(method: str, path: str, live: Live, **headers: str) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{live.base.rsplit(':', 1)[1]}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
async def live(make_live: LiveFactory, consumer: StoreConsumer) -> Live:
    """A gateway with one-second bounds on headers and bodies."""
    return await make_live(keepalive_timeout_s=1.0, request_body_timeout_s=1.0)


async def test_slowloris_headers_are_cut_off_by_the_header_timeout(live: Live) -> None:
    """A caller that never finishes its headers (a header line every 0.25 s) is disconnected
    once the keep-alive timeout passes, and holds nothing afterwards."""
    before = live.census()
    trickle = [f"X-Slow-{i}: y\r\n".encode() for i in range(40)]

    answer = await _raw(
        live, _request("GET", "/healthz", live), trickle, pause_s=0.25, read_for_s=10
    )

    assert answer.closed
    assert answer.status is None, answer.head
    assert answer.elapsed < 5.0
    after = await live.settled(before)
    assert after.caller_connections == 0
    assert after.tasks <= before.tasks, (before, after)


async def test_slowloris_bodies_get_a_408_and_the_connection_closes(
    live: Live, runtime: TestServer
) -> None:
    caller = await live.caller()
    agent = await live.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")
    before = live.census()
    routes = (
        (f"/api/agents/{agent['id']}/runs/trigger", {"Authorization": f"Bearer {caller.key}"}),
        (f"/api/workflows/{agent['id']}/execute", {"X-API-Key": caller.key}),
        # A real agent key: a callback is authenticated before its body is read.
        ("/api/runs/1/callback", {"Authorization": f"Bearer {agent['api_key']}"}),
    )

    # A byte every 0.25 s: never idle long, never done.
    answers = await asyncio.gather(
        *(
            _raw(
                live,
                _request("POST", path, live, Content_Length="200", **key_header) + "\r\n",
                [b"{"] + [b" "] * 40,
                pause_s=0.25,
                read_for_s=10,
            )
            for path, key_header in routes
        )
    )

    for (path, _headers), answer in zip(routes, answers, strict=True):
        assert answer.status == 408, (path, answer.head)
        assert json.loads(answer.body)["error"].startswith("Request body did not arrive")
        # Closed after a short linger (REQUEST_BODY_TIMEOUT_S + 2 s), not held open.
        assert answer.closed
        assert answer.elapsed < 5.0
    # Without a valid key the slow body is not waited for: 401 as soon as the headers are in.
    refused = await _raw(
        live,
        _request(
            "POST",
            "/api/runs/1/callback",
            live,
            Content_Length="200",
            Authorization="Bearer agk_whatever",
        )
        + "\r\n",
        [b"{"] + [b" "] * 40,
        pause_s=0.25,
        read_for_s=10,
    )
    assert refused.status == 401, refused.head
    assert refused.elapsed < 5.0
    after = await live.settled(before)
    assert after.caller_connections == 0
    assert after.tasks <= before.tasks, (before, after)


async def test_an_oversized_body_is_refused_before_it_is_read(live: Live) -> None:
    caller = await live.caller()
    # Declared: 10 GiB. Sent: 1 KiB. The 413 comes at once, and the connection closes.
    head = _request(
        "POST",
        "/api/agents/1/runs/trigger",
        live,
        Authorization=f"Bearer {caller.key}",
        Content_Length=str(10 * 1024**3),
    )
    answer = await _raw(live, head + "\r\n", [b"{" + b" " * 1023], read_for_s=5)
    assert answer.status == 413
    assert "limit" in json.loads(answer.body)["error"]
    assert answer.closed

    # Chunked, no length given: refused once the limit (1 MiB) is passed, not at the end.
    head = _request(
        "POST",
        "/api/agents/1/runs/trigger",
        live,
        Authorization=f"Bearer {caller.key}",
        Transfer_Encoding="chunked",
    )
    chunk = b"%x\r\n" % (256 * 1024) + b" " * (256 * 1024) + b"\r\n"
    answer = await _raw(live, head + "\r\n", [chunk] * 256, read_for_s=10)  # 64 MiB offered
    assert answer.status == 413
    assert answer.closed


async def test_deep_huge_or_broken_json_is_a_clear_400_or_413(
    live: Live, runtime: TestServer
) -> None:
    caller = await live.caller()
    agent = await live.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")
    trigger = live.url(f"/api/agents/{agent['id']}/runs/trigger")
    execute = live.url(f"/api/workflows/{agent['id']}/execute")
    deep = b'{"input": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    deepish = b'{"input": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}"  # parses; jsonb refuses
    cases: list[tuple[str, dict[str, str], bytes, int]] = [
        (trigger, caller.auth, deep, 400),
        (trigger, caller.auth, deepish, 400),
        (trigger, caller.auth, b'{"input": {"x": "' + b"a" * (2 * MB) + b'"}}', 413),
        (trigger, caller.auth, b'{"input": {"x": "\xff\xfe"}}', 400),
        (trigger, caller.auth, b'{"input": {"x": "\\ud800"}}', 400),
        (trigger, caller.auth, b'{"input": {"x": NaN}}', 400),
        (trigger, caller.auth, b'{"input": 1} trailing', 400),
        (execute, {"X-API-Key": caller.key}, deep, 400),
        (execute, {"X-API-Key": caller.key}, deepish, 400),
        (execute, {"X-API-Key": caller.key}, b'{"message": "\xff"}', 400),
        (execute, {"X-API-Key": caller.key}, b'{"message": "\\udfff"}', 400),
        (execute, {"X-API-Key": caller.key}, b'{"\\u0000": 1}', 400),
    ]
    for url, auth, body, status in cases:
        async with live.http.post(
            url, data=io.BytesIO(body), headers={**auth, "Content-Type": "application/json"}
        ) as resp:
            answer = await resp.json()
            assert resp.status == status, (url, body[:40], answer)
            assert answer["error"]


async def test_invalid_utf8_and_injection_in_headers_and_paths_changes_nothing(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await live.caller()
    key = caller.key.encode()
    attempts: list[tuple[bytes, set[int | None]]] = [
        # A key that is not UTF-8, and one with a NUL.
        (b"Authorization: Bearer \xff\xfe" + key + b"\r\n", {401}),
        (b"Authorization: Bearer " + key + b"\x00\r\n", {400, 401}),
        # A request id that tries to add a header to the response.
        (b"Authorization: Bearer " + key + b"\r\nX-Request-Id: a\r\n Set-Cookie: pwn=1\r\n", {400}),
        (b"Authorization: Bearer " + key + b"\r\nX-Request-Id: a\rSet-Cookie: pwn=1\r\n", {400}),
        (b"Authorization: Bearer " + key + b"\r\nX-Request-Id: a\nSet-Cookie: pwn=1\r\n", {400}),
        (b"Authorization: Bearer " + key + b"\r\nIdempotency-Key: \xc3\xa9t\xc3\xa9\r\n", {400}),
    ]
    for extra, statuses in attempts:
        head = (
            b"POST /api/agents/1/runs/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            + extra
            + b"\r\n{}"
        )
        answer = await _raw(live, head, read_for_s=3)
        assert answer.status in statuses | {404}, (extra, answer.head)
        assert "pwn" not in answer.head.lower()
        assert "set-cookie" not in answer.head.lower()
    # Regression: the access line of a request aiohttp refused unrouted raised in the logger.
    assert not [r for r in caplog.records if r.getMessage() == "Unhandled exception"]
    # A request id that is not ours to echo is replaced, never reflected.
    async with live.http.get(live.url("/healthz"), headers={"X-Request-Id": "a b<script>"}) as resp:
        assert resp.headers["X-Request-Id"] != "a b<script>"
    # Percent-encoded bytes that are not UTF-8 in a path name nothing.
    async with live.http.get(
        live.url("/api/agents/%ff%fe/runs/%c0%af"), headers=caller.auth
    ) as resp:
        assert resp.status == 404


async def test_reasons_and_tokens_postgresql_cannot_store_still_reach_the_run(
    live: Live, runtime: TestServer
) -> None:
    """Regression: a callback whose failure reason (or waiting token) held a ``\\u0000`` or a
    lone surrogate became an event the store consumer could never apply; the run stayed in
    flight until its deadline."""
    caller = await live.caller()
    agent = await live.agent(
        caller, str(runtime.make_url("/webhook/accepted?report=0")), output_kind="json"
    )
    as_agent = {"Authorization": f"Bearer {agent['api_key']}"}
    run_ids = []
    for _ in range(2):
        triggered = await _post(live, f"/api/agents/{agent['id']}/runs/trigger", caller.auth)
        run_ids.append(triggered["runId"])
        await live.terminal_or(caller, agent["id"], triggered["runId"], "running")
    waiting, failing = run_ids

    async with live.http.post(
        live.url(f"/api/runs/{waiting}/callback"),
        data='{"type": "waiting", "tokenId": "t\\u0000k", "description": "\\ud800"}',
        headers={**as_agent, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 202, await resp.text()
    assert (await live.terminal_or(caller, agent["id"], waiting, "waiting"))["status"] == "waiting"

    async with live.http.post(
        live.url(f"/api/runs/{failing}/callback"),
        data='{"type": "output", "failed": true, "error": {"message": "bad\\u0000 \\udfff"}}',
        headers={**as_agent, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 202, await resp.text()
    run = await live.terminal_run(caller, agent["id"], failing)
    assert run["status"] == "failed"
    assert run["error"] == "bad\ufffd \ufffd"


async def test_runtime_headers_that_would_split_a_request_are_refused(live: Live) -> None:
    caller = await live.caller()
    for name, value in (
        ("X-Auth", "secret\r\nHost: evil.example"),
        ("X-Auth", "secret\nX-Other: 1"),
        ("X-Auth", "nul\x00"),
        ("X-Auth: y\r\nHost", "evil"),
        ("", "empty name"),
    ):
        async with live.http.post(
            live.url(f"/admin/orgs/{caller.org_id}/agents"),
            json={
                "name": "injector",
                "runtime": {
                    "kind": "n8n",
                    "webhook_url": "http://127.0.0.1:9/hook",
                    "headers": {name: value},
                },
            },
            headers=ADMIN,
        ) as resp:
            assert resp.status == 400, (name, value, await resp.text())


TRAVERSALS = [
    "..",
    "%2e%2e",
    "..%2F..%2Fadmin",
    "1%2F..%2F2",
    "1;2",
    "-1",
    "0x1",
    "1e3",
    "%201",
    "%EF%BC%91",  # a fullwidth digit one
    "99999999999999999999999",
    "%00",
]


async def test_path_traversal_in_every_id_names_nothing(
    live: Live, runtime: TestServer, db: asyncpg.Pool
) -> None:
    caller = await live.caller()
    agent = await live.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")
    runs_before = await db.fetchval(
        "SELECT count(*) FROM runs WHERE org_id = $1::uuid", caller.org_id
    )
    ingest = caller.auth
    routes = [
        ("POST", "/api/agents/{}/runs/trigger", ingest),
        ("POST", "/api/agents/{}/runs/trigger-and-wait", ingest),
        ("POST", "/api/agents/{}/runs/trigger-and-download", ingest),
        ("POST", "/api/agents/{}/runs/register", ingest),
        ("POST", "/api/agents/{}/runs/ingest", ingest),
        ("GET", f"/api/agents/{agent['id']}/runs/{{}}", ingest),
        ("POST", f"/api/agents/{agent['id']}/runs/{{}}/cancel", ingest),
        ("GET", "/api/agents/{}/runs/1", ingest),
        ("POST", "/api/runs/{}/callback", {"Authorization": f"Bearer {agent['api_key']}"}),
        ("GET", "/api/credentials/{}/resolve", {"Authorization": f"Bearer {agent['api_key']}"}),
        ("POST", "/api/workflows/{}/execute", {"X-API-Key": caller.key}),
        ("POST", "/admin/orgs/{}/keys", ADMIN),
        ("PATCH", "/admin/agents/{}", ADMIN),
        ("PUT", "/v0/workflows/{}/jobs/1/download", {"Authorization": caller.key}),
        ("PUT", f"/v0/workflows/{agent['id']}/jobs/{{}}/download", {"Authorization": caller.key}),
    ]
    for method, template, headers in routes:
        for evil in TRAVERSALS:
            path = template.format(evil)
            async with live.http.request(
                method,
                live.url(path),
                json={"externalRunId": "x", "status": "queued"},
                headers=headers,
            ) as resp:
                # 400: a body check that comes first; 401: a credentials token is asked first.
                assert resp.status in {400, 401, 404, 405}, (method, path, resp.status)
                assert (await resp.json())["error"]
    runs_after = await db.fetchval(
        "SELECT count(*) FROM runs WHERE org_id = $1::uuid", caller.org_id
    )
    assert runs_after == runs_before


async def test_path_traversal_in_file_names_stays_in_the_blob_store(
    live: Live, runtime: TestServer, tmp_path: Path
) -> None:
    caller = await live.caller()
    agent = await live.agent(
        caller,
        str(runtime.make_url("/webhook/json")),
        output_kind="json",
        input_format=[{"name": "documents", "type": "files"}],
    )
    names = ["../../../../../tmp/escaped.txt", "..\\..\\boot.ini", "/etc/passwd", "a/../../b"]
    data = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    files = [{"type": "file", "data": data, "name": name, "mime": "text/plain"} for name in names]

    async with live.http.post(
        live.url(f"/api/workflows/{agent['id']}/execute"),
        json={"documents": files},
        headers={"X-API-Key": caller.key},
    ) as resp:
        assert resp.status == 200, await resp.text()
        run_id = resp.headers["X-Run-Id"]
    run = await live.run(caller, agent["id"], run_id)
    async with live.http.get(
        live.url(f"/api/agents/{agent['id']}/runs/{run_id}?include=input"), headers=caller.auth
    ) as resp:
        stored = (await resp.json())["input"]["documents"]

    blob_root, written = _files_written(Path(live.settings.blob_dir), tmp_path)
    assert len(written) == len(names), written
    assert all(blob_root in p.parents for p in written)
    for document in stored:
        assert ".." not in document["url"].split("?")[0]
        async with live.http.get(document["url"]) as resp:
            assert resp.status == 200
            assert await resp.read() == b"hello"
            assert resp.headers["Content-Disposition"].startswith('attachment; filename="')
    assert run["status"] in {"completed", "running", "queued"}
    # A signed-file path that walks out of the store is refused whatever it is signed with.
    for evil in ("/files/../../etc/passwd", "/files/runs/1/inputs/..%2F..%2F..%2Fetc%2Fpasswd"):
        async with live.http.get(live.url(evil + "?expires=99999999999&signature=00")) as resp:
            assert resp.status in {403, 404}, evil


def _files_written(blob_dir: Path, anywhere: Path) -> tuple[Path, list[Path]]:
    """The blob store's root, and every file written anywhere under the test's folder."""
    return blob_dir.resolve(), [p.resolve() for p in anywhere.rglob("*") if p.is_file()]


async def test_keys_are_kept_and_looked_up_only_as_digests(live: Live, db: asyncpg.Pool) -> None:
    """Why comparing keys needs no constant-time compare: the gateway never holds a stored key
    to compare with. It looks rows up by the key's SHA-256, so a lookup's timing depends on a
    digest an attacker cannot steer, not on how many leading characters of a key were right."""
    caller = await live.caller()
    rows = await db.fetch(
        "SELECT key_hash, key_prefix FROM ingest_keys WHERE org_id = $1::uuid", caller.org_id
    )
    assert [bytes(r["key_hash"]) for r in rows] == [hash_key(caller.key)]
    assert all(caller.key not in r["key_prefix"] or len(r["key_prefix"]) < 12 for r in rows)


# -- Brute force --------------------------------------------------------------------------


@pytest.fixture
async def guarded(make_live: LiveFactory, consumer: StoreConsumer) -> list[Live]:
    """Two replicas behind a trusted proxy (127.0.0.1), allowing 5 failed key attempts per
    address per 2 s (one back every 0.4 s)."""
    options: dict[str, Any] = {
        "auth_failure_limit": 5,
        "auth_failure_window_s": 2,
        "trusted_proxies": ("127.0.0.1",),
    }
    return [await make_live(**options), await make_live(**options)]


def _from(address: str, headers: dict[str, str]) -> dict[str, str]:
    """Headers of a request the trusted proxy forwards for ``address``."""
    return {**headers, "X-Forwarded-For": f"198.51.100.250, {address}"}


async def test_guessing_keys_is_slowed_per_client_address_across_replicas(
    guarded: list[Live], runtime: TestServer
) -> None:
    one, two = guarded
    caller = await one.caller()
    agent = await one.agent(caller, str(runtime.make_url("/webhook/json")), output_kind="json")
    run_url = f"/api/agents/{agent['id']}/runs/trigger"
    attacker = "203.0.113.9"  # a documentation address: only ever a header value here
    bystander = "203.0.113.10"
    wrong = {"Authorization": "Bearer igk_" + "x" * 43}

    # Valid keys spend nothing.
    for _ in range(10):
        async with one.http.get(
            one.url(f"/api/agents/{agent['id']}/runs/1"), headers=_from(attacker, caller.auth)
        ) as resp:
            assert resp.status == 404
    statuses = []
    for replica in (one, two, one, two, one, two):
        async with replica.http.post(replica.url(run_url), headers=_from(attacker, wrong)) as resp:
            statuses.append(resp.status)
            retry_after = resp.headers.get("Retry-After")
    # Five refusals, across both replicas, then the address is refused before any lookup.
    assert statuses == [401] * 5 + [429]
    assert retry_after is not None
    assert int(retry_after) >= 1
    # Even the right key is refused from that address now (a right guess would be too).
    async with two.http.post(two.url(run_url), headers=_from(attacker, caller.auth)) as resp:
        assert resp.status == 429
        assert (await resp.json())["retryAfterMs"] > 0
    # The /v0 API refuses it too, in its own error shape.
    async with two.http.put(
        two.url(f"/v0/workflows/{agent['id']}/jobs/1/download"),
        headers=_from(attacker, {"Authorization": caller.key}),
    ) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "rate_limited"
    # Other callers, behind the same proxy, are not.
    async with two.http.post(two.url(run_url), headers=_from(bystander, caller.auth)) as resp:
        assert resp.status == 202
    # Tokens come back at the bucket's rate (one every 0.4 s): a guess or two, then refused.
    await asyncio.sleep(0.5)
    later = []
    for _ in range(6):
        async with one.http.post(one.url(run_url), headers=_from(attacker, wrong)) as resp:
            later.append(resp.status)
    assert later[0] == 401
    assert 429 in later, later


async def test_a_forwarded_for_header_from_an_untrusted_peer_is_ignored(
    make_live: LiveFactory,
) -> None:
    """Without TRUSTED_PROXIES, the peer address counts: a caller cannot escape its bucket by
    inventing X-Forwarded-For values."""
    live = await make_live(auth_failure_limit=3, auth_failure_window_s=60)
    guard_statuses = []
    for i in range(5):
        headers = {"Authorization": "Bearer igk_wrong", "X-Forwarded-For": f"192.0.2.{i}"}
        async with live.http.get(live.url("/api/agents/1/runs/1"), headers=headers) as resp:
            guard_statuses.append(resp.status)
    assert guard_statuses == [401, 401, 401, 429, 429]
    # The admin token is guarded the same way.
    async with live.http.post(
        live.url("/admin/orgs"),
        json={"name": "x"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    ) as resp:
        assert resp.status == 429


# -- Another organisation's key on every route --------------------------------------------


@dataclass
class Attempt:
    """One request of the matrix: a route, with the other organisation's key."""

    method: str
    route: str
    path: str
    headers: dict[str, str]
    body: Any
    statuses: set[int]


# Routes that take no organisation's key: probes and documents, and signed file and package
# URLs (the signature is the capability; their own tests change each part of one).
KEYLESS_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/healthz/dependencies"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/files/{key}"),
    ("GET", "/v0/packages/{package_id}.zip"),
}


async def _post(live: Live, path: str, headers: dict[str, str], body: Any = None) -> Any:
    async with live.http.post(live.url(path), json=body, headers=headers) as resp:
        assert resp.status < 300, (path, resp.status, await resp.text())
        return await resp.json()


async def _snapshot(live: Live, db: asyncpg.Pool, org_id: str, runtime: TestServer) -> Any:
    """Everything of an organisation that a request could change, and what its runtime got."""
    redis = live.app[REDIS]
    agents = await db.fetch(
        "SELECT to_jsonb(a) AS row FROM agents a WHERE org_id = $1::uuid ORDER BY id", org_id
    )
    agent_ids = [row["row"]["id"] for row in agents]
    return {
        "agents": [row["row"] for row in agents],
        "runs": [
            dict(r)
            for r in await db.fetch(
                "SELECT to_jsonb(r) AS row FROM runs r WHERE org_id = $1::uuid ORDER BY id", org_id
            )
        ],
        "events": await db.fetchval(
            "SELECT count(*) FROM applied_events WHERE run_id IN "
            "(SELECT id FROM runs WHERE org_id = $1::uuid)",
            org_id,
        ),
        "keys": await db.fetchval(
            "SELECT count(*) FROM ingest_keys WHERE org_id = $1::uuid", org_id
        ),
        "credentials": [
            dict(r)
            for r in await db.fetch(
                "SELECT to_jsonb(c) AS row FROM credentials c WHERE org_id = $1::uuid", org_id
            )
        ],
        "users": await db.fetchval(
            "SELECT count(*) FROM memberships WHERE org_id = $1::uuid", org_id
        ),
        "packages": await db.fetchval(
            "SELECT count(*) FROM packages WHERE org_id = $1::uuid", org_id
        ),
        "buckets": sorted(
            [
                key
                async for agent_id in _aiter(agent_ids)
                for key in await redis.keys(f"ratelimit:{{agent:{agent_id}}}:*")
            ]
        ),
        "invocations": len(
            [r for r in runtime.app[RECEIVED] if r["payload"].get("agentId") in agent_ids]
        ),
    }


async def _aiter(items: list[int]) -> Any:
    for item in items:
        yield item


async def test_a_key_of_another_organisation_opens_nothing_and_changes_nothing(
    live: Live, runtime: TestServer, db: asyncpg.Pool
) -> None:
    """The matrix: every route that takes a key, with organisation B's keys against A's agents,
    runs and credentials. Each answer is 401/403/404, and A's rows, buckets and runtime are
    exactly as they were. A route the application serves and this matrix does not list fails
    the test (a new route must say how it keeps tenants apart)."""
    victim, intruder = await live.caller("Victim"), await live.caller("Intruder")
    victim_key_id = await db.fetchval(
        "SELECT id FROM ingest_keys WHERE org_id = $1::uuid", victim.org_id
    )
    hook = str(runtime.make_url("/webhook/accepted?report=0"))
    a_json = await live.agent(victim, hook, output_kind="json")
    a_file = await live.agent(victim, str(runtime.make_url("/webhook/report.csv")))
    a_alone = await live.agent(victim, hook, managed_by="standalone", output_kind="json")
    b_json = await live.agent(intruder, hook, output_kind="json")
    a_run = (await _post(live, f"/api/agents/{a_json['id']}/runs/trigger", victim.auth))["runId"]
    a_token = (
        await _post(
            live,
            f"/api/agents/{a_json['id']}/runs/register",
            victim.auth,
            {"externalRunId": "victim-run"},
        )
    )["credentialsToken"]
    b_token = (
        await _post(
            live,
            f"/api/agents/{b_json['id']}/runs/register",
            intruder.auth,
            {"externalRunId": "intruder-run"},
        )
    )["credentialsToken"]
    a_credential = (
        await _post(
            live,
            f"/admin/orgs/{victim.org_id}/credentials",
            ADMIN,
            {"name": "CRM", "type": "api_key", "data": {"api_key": "victim-secret"}},
        )
    )["id"]
    await live.terminal_or(victim, a_json["id"], a_run, "running")

    b_ingest = intruder.auth
    b_agent = {"Authorization": f"Bearer {b_json['api_key']}"}
    trigger_body = {"input": {"x": 1}}
    attempts = [
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/trigger",
            f"/api/agents/{a_json['id']}/runs/trigger",
            b_ingest,
            trigger_body,
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/trigger-and-wait",
            f"/api/agents/{a_json['id']}/runs/trigger-and-wait",
            b_ingest,
            trigger_body,
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/trigger-and-download",
            f"/api/agents/{a_file['id']}/runs/trigger-and-download",
            b_ingest,
            trigger_body,
            {404},
        ),
        Attempt(
            "GET",
            "/api/agents/{agentId}/runs/{runId}",
            f"/api/agents/{a_json['id']}/runs/{a_run}",
            b_ingest,
            None,
            {404},
        ),
        Attempt(
            "GET",
            "/api/agents/{agentId}/runs/{runId}",
            f"/api/agents/{b_json['id']}/runs/{a_run}",
            b_ingest,
            None,
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/{runId}/cancel",
            f"/api/agents/{a_json['id']}/runs/{a_run}/cancel",
            b_ingest,
            None,
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/{runId}/cancel",
            f"/api/agents/{b_json['id']}/runs/{a_run}/cancel",
            b_ingest,
            None,
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/register",
            f"/api/agents/{a_json['id']}/runs/register",
            b_ingest,
            {"externalRunId": "hijack"},
            {404},
        ),
        Attempt(
            "POST",
            "/api/agents/{agentId}/runs/ingest",
            f"/api/agents/{a_alone['id']}/runs/ingest",
            b_ingest,
            {"externalRunId": "hijack", "status": "completed"},
            {404},
        ),
        Attempt(
            "POST",
            "/api/runs/{runId}/callback",
            f"/api/runs/{a_run}/callback",
            b_agent,
            {"type": "output", "complete": True, "output": {"pwned": True}},
            {404},
        ),
        Attempt(
            "GET",
            "/api/credentials/{credentialId}/resolve",
            f"/api/credentials/{a_credential}/resolve",
            {**b_agent, "X-Credentials-Token": b_token},
            None,
            {404},
        ),
        Attempt(
            "GET",
            "/api/credentials/{credentialId}/resolve",
            f"/api/credentials/{a_credential}/resolve",
            {**b_agent, "X-Credentials-Token": a_token},
            None,
            {403},
        ),
        Attempt(
            "POST",
            "/api/workflows/{workflowId}/execute",
            f"/api/workflows/{a_json['id']}/execute",
            {"X-API-Key": intruder.key},
            {"message": "hi"},
            {404},
        ),
        Attempt(
            "GET",
            "/api/workflows/{workflowId}/status",
            f"/api/workflows/{a_json['id']}/status",
            {"X-API-Key": intruder.key},
            None,
            {404},
        ),
        # Found unlisted while adding issue 28's routes (the resume stream of issue 29).
        Attempt(
            "GET",
            "/api/workflows/{workflowId}/executions/{executionId}/stream",
            f"/api/workflows/{a_json['id']}/executions/{a_run}/stream",
            {"X-API-Key": intruder.key},
            None,
            {404},
        ),
        Attempt(
            "GET",
            "/api/jobs/{taskId}",
            f"/api/jobs/{a_run}",
            {"X-API-Key": intruder.key},
            None,
            {404},
        ),
        # A report of the key's own organisation's limits: B's key sees B's buckets only, and
        # the snapshot below proves it took nothing of A's.
        Attempt(
            "GET",
            "/api/users/me/usage-limits",
            "/api/users/me/usage-limits",
            {"X-API-Key": intruder.key},
            None,
            {200},
        ),
        Attempt("POST", "/admin/orgs", "/admin/orgs", b_ingest, {"name": "x"}, {401}),
        Attempt(
            "POST",
            "/admin/orgs/{orgId}/keys",
            f"/admin/orgs/{victim.org_id}/keys",
            b_ingest,
            None,
            {401},
        ),
        Attempt(
            "DELETE",
            "/admin/orgs/{orgId}/keys/{keyId}",
            f"/admin/orgs/{victim.org_id}/keys/{victim_key_id}",
            b_ingest,
            None,
            {401},
        ),
        Attempt(
            "POST",
            "/admin/orgs/{orgId}/users",
            f"/admin/orgs/{victim.org_id}/users",
            b_ingest,
            {"email": "x@example.com"},
            {401},
        ),
        Attempt(
            "POST",
            "/admin/orgs/{orgId}/agents",
            f"/admin/orgs/{victim.org_id}/agents",
            b_ingest,
            {"name": "x", "runtime": {"kind": "n8n", "webhook_url": hook}},
            {401},
        ),
        Attempt(
            "PATCH",
            "/admin/agents/{agentId}",
            f"/admin/agents/{a_json['id']}",
            b_ingest,
            {"status": "paused"},
            {401},
        ),
        Attempt(
            "POST",
            "/admin/orgs/{orgId}/credentials",
            f"/admin/orgs/{victim.org_id}/credentials",
            b_ingest,
            {"name": "x", "type": "t", "data": {}},
            {401},
        ),
        Attempt(
            "POST",
            "/admin/agents/{agentId}/api-key",
            f"/admin/agents/{a_json['id']}/api-key",
            b_ingest,
            None,
            {401},
        ),
        Attempt(
            "GET",
            "/admin/orgs/{orgId}/credentials",
            f"/admin/orgs/{victim.org_id}/credentials",
            b_ingest,
            None,
            {401},
        ),
        Attempt(
            "PUT",
            "/admin/orgs/{orgId}/credentials/{credentialId}/data",
            f"/admin/orgs/{victim.org_id}/credentials/{a_credential}/data",
            b_ingest,
            {"data": {"pwned": True}},
            {401},
        ),
        Attempt(
            "DELETE",
            "/admin/orgs/{orgId}/credentials/{credentialId}",
            f"/admin/orgs/{victim.org_id}/credentials/{a_credential}",
            b_ingest,
            None,
            {401},
        ),
        # B's agent key on the admin routes is no admin token either.
        Attempt(
            "POST",
            "/admin/agents/{agentId}/api-key",
            f"/admin/agents/{a_json['id']}/api-key",
            b_agent,
            None,
            {401},
        ),
        # The /v0 API's job download (bare key in Authorization), where the application has it.
        Attempt(
            "PUT",
            "/v0/workflows/{workflow_id}/jobs/{job_id}/download",
            f"/v0/workflows/{a_json['id']}/jobs/{a_run}/download",
            {"Authorization": intruder.key},
            {},
            {403, 404},
        ),
    ]
    served = {
        (route.method, route.resource.canonical)
        for route in live.app.router.routes()
        if route.resource is not None and route.method not in {"HEAD", "*"}
    }
    unlisted = served - KEYLESS_ROUTES - {(a.method, a.route) for a in attempts}
    assert unlisted == set(), "routes without a row in the tenancy matrix"

    before = await _snapshot(live, db, victim.org_id, runtime)
    for attempt in attempts:
        if (attempt.method, attempt.route) not in served:
            continue
        async with live.http.request(
            attempt.method, live.url(attempt.path), json=attempt.body, headers=attempt.headers
        ) as resp:
            answer = await resp.json()
            assert resp.status in attempt.statuses, (attempt.path, resp.status, answer)
            assert "victim-secret" not in json.dumps(answer)
    await asyncio.sleep(0.3)  # anything a request set off would have reached the store by now
    assert await _snapshot(live, db, victim.org_id, runtime) == before
