"""A small HTTP runtime that answers like an n8n webhook: ending in "Respond to Webhook", or
answering at once ("Respond: Immediately") and reporting through callbacks.

Used by the ``dev`` command as the demo runtime and by the tests as a real server over a
socket. Behaviour is chosen per agent through the webhook URL's path and query string:

``POST /webhook/report.csv``  a CSV generated from the input (chunked, like "Convert to File")
``POST /webhook/report.pdf``  a small PDF sent with Content-Length (like an in-memory binary)
``POST /webhook/json-error``  ``500 {"error": "PDF rendering failed"}`` (a failed workflow)
``POST /webhook/bytes``       ``size`` deterministic bytes for tests, see :func:`make_bytes`

JSON results, as a workflow ending in "Respond to Webhook" returns them (trigger-and-wait):

``POST /webhook/json``            ``200`` with ``input.result`` (default ``{"echo": input}``);
                                  ``status=<code>`` answers with that status instead
``POST /webhook/workflow-error``  ``500 {"message": "Error in workflow"}``, as n8n answers
``POST /webhook/garbage``         ``200`` labelled JSON whose body is not JSON
``POST /webhook/accepted``        ``202`` with no body, then reports through the run's
                                  callback URL with its agent API key: ``started``, an
                                  intermediate ``output``, then ``complete`` with
                                  ``input.result`` (or ``fail`` when ``input.fail`` is set),
                                  ``report_delay_ms`` apart (``report=0``: never reports)
``POST /webhook/immediate``       a Webhook node in n8n's default "Respond: Immediately" mode
                                  (``onReceived``): ``200 {"message": "Workflow was started"}``
                                  before the workflow runs (``response_code=<code>``,
                                  ``response_data=<text>`` and ``no_data=1`` as the node's
                                  options set them), then, ``report_delay_ms`` later, what an
                                  HTTP Request node posting to the payload's ``callbackUrl``
                                  with ``Authorization: Bearer <agentApiKey>`` sends:
                                  ``{"type": "output", "complete": true, "output":
                                  input.result (default {"echo": input}), "outputs":
                                  input.outputs (default 2)}`` (``report=0``: never calls back)

A streaming webhook (a Webhook node in "Streaming" response mode), workflow execute's runtime side:

``POST /webhook/stream``  ``200 application/json; charset=utf-8``, chunked, one n8n
                          ``StructuredChunk`` per line (``begin``, ``item``s, ``end``) for each
                          node in ``nodes`` (comma-separated names, default ``Agent 1``; ids from
                          :func:`node_id`). ``input.message`` "Count to five" streams "One",
                          ", two", ...; any other message streams "<node>: <message>" word by
                          word. ``interleave=1`` alternates the nodes' items; ``pace_ms`` pauses
                          before each item; ``error_after=N`` sends an ``error`` chunk after N
                          items; ``die_after=N`` aborts the socket after N items; ``plain=1``
                          answers one plain JSON body instead, as a non-streaming webhook would

Query parameters on any file path: ``chunked=1``, ``disposition=0`` (omit the header),
``outputs=<value>`` (the ``X-Outputs`` header), ``delay_ms`` (before headers), ``die_after``
(abort the socket after that many body bytes), ``hang_after`` (stop sending, keep the socket),
``content_type``, ``gzip=1`` (send it gzip-encoded), ``pace_ms`` (pause after each 256 KiB chunk).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from agent_gateway_sdk import CallbackAccepted, GatewayError, create_agent_client

RECEIVED = web.AppKey("received", list[dict[str, Any]])
# What the "accepted" workflow reported through callbacks, with the gateway's answer.
CALLBACKS_SENT = web.AppKey("callbacks_sent", list[dict[str, Any]])
CALLBACK_CLIENT = web.AppKey("callback_client", aiohttp.ClientSession)
REPORTERS = web.AppKey[set[asyncio.Task[None]]]("reporters")

_BLOCK_LEN = 1_000_003  # prime, so a dropped or repeated chunk never lines up with the pattern
_BLOCK = random.Random(20261123).randbytes(_BLOCK_LEN)


def make_bytes(size: int, offset: int = 0) -> bytes:
    """The ``size`` bytes the ``bytes`` path sends, starting at ``offset``."""
    out = bytearray()
    pos = offset % _BLOCK_LEN
    while len(out) < size:
        take = min(size - len(out), _BLOCK_LEN - pos)
        out += _BLOCK[pos : pos + take]
        pos = 0
    return bytes(out)


async def _iter_bytes(size: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        take = min(chunk, size - sent)
        yield make_bytes(take, sent)
        sent += take


def _csv_body(payload: dict[str, Any]) -> bytes:
    data = payload.get("input") or {}
    rows = int(data.get("rows", 20)) if str(data.get("rows", "20")).isdigit() else 20
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "topic", "value"])
    for i in range(rows):
        writer.writerow([i + 1, data.get("topic", "demo"), (i * 37) % 101])
    # n8n's "Convert to File" starts its CSV with a UTF-8 byte-order mark.
    return b"\xef\xbb\xbf" + buf.getvalue().encode()


def _pdf_body(payload: dict[str, Any]) -> bytes:
    topic = str((payload.get("input") or {}).get("topic", "Demo report"))
    text = "".join(c for c in topic if c.isprintable() and c not in "()\\")[:80]
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


async def _file(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    record: dict[str, Any] = {
        "path": request.path,
        "headers": dict(request.headers),
        "payload": payload,
        "outcome": "in_progress",
    }
    request.app[RECEIVED].append(record)
    try:
        if request.match_info["name"] == "stream":
            response = await _stream(request, payload, record)
        else:
            response = await _answer(request, payload)
    except (asyncio.CancelledError, ConnectionError):
        # The gateway closed our connection: what a real runtime sees when a caller leaves.
        record["outcome"] = "disconnected"
        record["ended_at"] = time.monotonic()
        raise
    record["outcome"] = "answered"
    record["ended_at"] = time.monotonic()
    return response


async def _answer(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    q = request.query
    name = request.match_info["name"]
    if delay := int(q.get("delay_ms", "0")):
        await asyncio.sleep(delay / 1000)

    if name == "json-error":
        return web.json_response({"error": "PDF rendering failed"}, status=500)
    if name == "workflow-error":
        return web.json_response({"message": "Error in workflow"}, status=500)
    if name == "garbage":
        return web.Response(body=b"<html>oops</html>", content_type="application/json")
    data = payload.get("input") or {}
    if name == "json":
        result = data.get("result", {"echo": data})
        return web.json_response(result, status=int(q.get("status", "200")))
    if name == "immediate":
        return _respond_immediately(request, payload, q)
    if name == "accepted":
        if q.get("report", "1") == "1":
            task = asyncio.create_task(_report_back(request.app, payload, q))
            request.app[REPORTERS].add(task)
            task.add_done_callback(request.app[REPORTERS].discard)
        return web.Response(status=202)

    body_iter: AsyncIterator[bytes]
    if name == "report.csv":
        body = _csv_body(payload)
        content_type, filename = "text/csv; charset=utf-8", "report.csv"
        body_iter, size = _once(body), len(body)
    elif name == "report.pdf":
        body = _pdf_body(payload)
        content_type, filename = "application/pdf", "report.pdf"
        body_iter, size = _once(body), len(body)
    elif name == "bytes":
        size = int(q.get("size", "1024"))
        content_type, filename = "application/octet-stream", "data.bin"
        body_iter = _iter_bytes(size)
    else:
        raise web.HTTPNotFound(
            text='{"message":"webhook not registered"}', content_type="application/json"
        )

    if q.get("gzip") == "1":
        # An encoded body whose Content-Length counts the encoded bytes, as a proxy must keep.
        raw = b"".join([chunk async for chunk in body_iter])
        encoded = gzip.compress(raw)
        body_iter, size = _once(encoded), len(encoded)

    response = web.StreamResponse()
    response.content_type = q.get("content_type", content_type).split(";")[0]
    if "charset=" in q.get("content_type", content_type):
        response.charset = q.get("content_type", content_type).split("charset=")[1]
    if q.get("disposition", "1") == "1":
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if q.get("gzip") == "1":
        response.headers["Content-Encoding"] = "gzip"
    if "outputs" in q:
        response.headers["X-Outputs"] = q["outputs"]
    # "Convert to File" output is chunked; an in-memory binary carries Content-Length.
    if q.get("chunked", "1" if name == "report.csv" else "0") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)

    pace_s = int(q.get("pace_ms", "0")) / 1000
    die_after = int(q.get("die_after", "-1"))
    hang_after = int(q.get("hang_after", "-1"))
    sent = 0
    async for chunk in body_iter:
        for limit, action in ((die_after, "die"), (hang_after, "hang")):
            if 0 <= limit < sent + len(chunk):
                await response.write(chunk[: max(0, limit - sent)])
                if action == "die":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await asyncio.sleep(3600)
        await response.write(chunk)
        sent += len(chunk)
        if pace_s:
            await asyncio.sleep(pace_s)
    await response.write_eof()
    return response


_NODE_NAMESPACE = uuid.UUID("5f0c9d3e-54a4-4c33-8a8e-6b3f0b6b8d7a")
_NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def node_id(name: str) -> str:
    """The id the streaming webhook gives the node called ``name`` (stable, uuid-shaped)."""
    return str(uuid.uuid5(_NODE_NAMESPACE, name))


def stream_texts(message: str, node: str) -> list[str]:
    """The pieces of text the node called ``node`` streams for ``message``."""
    counting = re.search(r"count to (\w+)", message, re.IGNORECASE)
    if counting:
        word = counting.group(1).lower()
        if word.isdigit():
            upto = min(int(word), 1000)
        else:
            upto = _NUMBER_WORDS.index(word) + 1 if word in _NUMBER_WORDS else 3
        words = [_NUMBER_WORDS[i] if i < len(_NUMBER_WORDS) else str(i + 1) for i in range(upto)]
        return [words[0].capitalize()] + [f", {w}" for w in words[1:]]
    text = f"{node}: {message or 'working'}"
    pieces = text.split(" ")
    return [pieces[0]] + [f" {p}" for p in pieces[1:]]


def _structured_chunk(kind: str, node: str, content: str | None = None) -> bytes:
    chunk: dict[str, Any] = {"type": kind}
    if content is not None:
        chunk["content"] = content
    chunk["metadata"] = {
        "nodeId": node_id(node),
        "nodeName": node,
        "itemIndex": 0,
        "runIndex": 0,
        "timestamp": int(time.time() * 1000),
    }
    # n8n writes JSON.stringify(chunk) + "\n" per chunk and flushes.
    return json.dumps(chunk, separators=(",", ":")).encode() + b"\n"


async def _stream(
    request: web.Request, payload: dict[str, Any], record: dict[str, Any]
) -> web.StreamResponse:
    q = request.query
    data = payload.get("input") or {}
    if delay := int(q.get("delay_ms", "0")):
        await asyncio.sleep(delay / 1000)
    if q.get("plain") == "1":
        return web.json_response({"echo": data})
    nodes = [n.strip() for n in q.get("nodes", "Agent 1").split(",") if n.strip()]
    message = str(data.get("message", ""))
    scripts = {node: stream_texts(message, node) for node in nodes}
    order: list[tuple[str, str]] = []
    if q.get("interleave") == "1":
        for i in range(max(len(t) for t in scripts.values())):
            order += [(node, texts[i]) for node, texts in scripts.items() if i < len(texts)]
    else:
        order = [(node, text) for node, texts in scripts.items() for text in texts]
    remaining = {node: len(texts) for node, texts in scripts.items()}
    response = web.StreamResponse(
        headers={"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-cache"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    pace_s = int(q.get("pace_ms", "0")) / 1000
    error_after = int(q.get("error_after", "-1"))
    die_after = int(q.get("die_after", "-1"))
    sent_at: list[float] = record.setdefault("chunks_sent_at", [])
    begun: set[str] = set()
    for count, (node, text) in enumerate(order):
        if count == error_after:
            await response.write(
                _structured_chunk("error", node, "The model provider rejected the request")
            )
            break
        if count == die_after:
            assert request.transport is not None
            request.transport.abort()
            return response
        if pace_s:
            await asyncio.sleep(pace_s)
        out = b""
        if node not in begun:
            begun.add(node)
            out += _structured_chunk("begin", node)
        out += _structured_chunk("item", node, text)
        remaining[node] -= 1
        if not remaining[node]:
            out += _structured_chunk("end", node)
        await response.write(out)
        sent_at.append(time.monotonic())
    await response.write_eof()
    return response


def _respond_immediately(request: web.Request, payload: dict[str, Any], query: Any) -> web.Response:
    """n8n's answer for a Webhook node in "Respond: Immediately" mode: sent before the workflow
    runs (n8n's ``extractWebhookOnReceivedResponse``: no data, the node's custom response
    data, else ``{"message": "Workflow was started"}``); the workflow then calls back."""
    if query.get("report", "1") == "1":
        task = asyncio.create_task(_http_request_node(request.app, payload, query))
        request.app[REPORTERS].add(task)
        task.add_done_callback(request.app[REPORTERS].discard)
    status = int(query.get("response_code", "200"))
    if query.get("no_data") == "1":
        return web.Response(status=status)
    if "response_data" in query:
        text = query["response_data"]
        try:
            json.loads(text)
        except ValueError:
            return web.Response(status=status, text=text)
        return web.Response(status=status, text=text, content_type="application/json")
    return web.json_response({"message": "Workflow was started"}, status=status)


async def _http_request_node(app: web.Application, payload: dict[str, Any], query: Any) -> None:
    """What the workflow's HTTP Request node sends once the work is done: a POST to the
    payload's ``callbackUrl`` with the agent API key, the result and its outputs count."""
    data = payload.get("input") or {}
    await asyncio.sleep(int(query.get("report_delay_ms", "50")) / 1000)
    body = {
        "type": "output",
        "complete": True,
        "output": data.get("result", {"echo": data}),
        "outputs": data.get("outputs", 2),
    }
    headers = {"Authorization": f"Bearer {payload['agentApiKey']}"}
    try:
        async with app[CALLBACK_CLIENT].post(
            payload["callbackUrl"], json=body, headers=headers
        ) as response:
            status = response.status
    except aiohttp.ClientError:
        status = 0
    app[CALLBACKS_SENT].append({"step": "complete", "status": status})


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _report_back(app: web.Application, payload: dict[str, Any], query: Any) -> None:
    """What a workflow that reports through callbacks does, with the SDK's agent client.

    With ``input.credential_id`` it resolves that credential with the run's credentials
    token before completing, and completes with what it found (its name, type and field names;
    never the secret values).
    """
    data = payload.get("input") or {}
    pause_s = int(query.get("report_delay_ms", "50")) / 1000
    client = create_agent_client(
        base_url=payload["callbackUrl"].split("/api/runs/")[0],
        api_key=payload["agentApiKey"],
        run_id=payload["runId"],
        credentials_token=payload.get("credentialsToken"),
        session=app[CALLBACK_CLIENT],
    )

    async def finish() -> CallbackAccepted:
        if data.get("fail"):
            return await client.fail(str(data["fail"]), name="WorkflowError")
        result = data.get("result", {"ok": True})
        if credential_id := data.get("credential_id"):
            try:
                found = await client.resolve_credential(str(credential_id))
                result = {"name": found.name, "type": found.type, "fields": sorted(found.data)}
            except GatewayError as exc:
                result = {"credential_refused": exc.status, "error": exc.message}
        return await client.complete(result)

    steps: list[tuple[str, Callable[[], Awaitable[CallbackAccepted]]]] = [
        ("started", client.started),
        ("output", lambda: client.output({"progress": 50})),
        ("fail" if data.get("fail") else "complete", finish),
    ]
    for step, send in steps:
        await asyncio.sleep(pause_s)
        try:
            await send()
            status = 202
        except GatewayError as exc:
            status = exc.status
        app[CALLBACKS_SENT].append({"step": step, "status": status})


async def _callback_client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[CALLBACK_CLIENT] = session
        yield
        running: set[asyncio.Task[None]] = app[REPORTERS]
        reporters = list(running)
        for task in reporters:
            task.cancel()
        await asyncio.gather(*reporters, return_exceptions=True)


def create_fake_runtime() -> web.Application:
    """The demo/test runtime as an aiohttp application."""
    app = web.Application()
    app[RECEIVED] = []
    app[CALLBACKS_SENT] = []
    app[REPORTERS] = set()
    app.cleanup_ctx.append(_callback_client)
    app.router.add_post("/webhook/{name}", _file)
    return app
