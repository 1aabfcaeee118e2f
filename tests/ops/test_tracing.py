"""Tracing: one trace from the caller's traceparent through the runtime call to the callback's
apply, exported over OTLP/HTTP to a real receiver; nothing at all when the OTEL_* variables are
unset."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.ops.tracing import outbound_headers, tracing_wanted
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_url
from tests.support.runtimes import callbacks_answered, json_agent, received
from tests.support.tenants import Tenant

Client = TestClient[web.Request, web.Application]
SPANS = web.AppKey("spans", list[dict[str, Any]])
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _export(request: web.Request) -> web.Response:
    """The collector's OTLP/HTTP trace endpoint: protobuf in, protobuf out."""
    assert request.content_type == "application/x-protobuf"
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    for resource_spans in message.resource_spans:
        service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get(
            "service.name"
        )
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                request.app[SPANS].append(
                    {
                        "service": service,
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "links": [link.trace_id.hex() for link in span.links],
                        "attributes": {a.key: a.value for a in span.attributes},
                    }
                )
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


@pytest.fixture
async def receiver() -> AsyncIterator[TestServer]:
    app = web.Application()
    app[SPANS] = []
    app.router.add_post("/v1/traces", _export)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def gateway(
    make_gateway: GatewayFactory, receiver: TestServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    """A replica whose OTEL_* variables point at the receiver (replaces conftest's)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(receiver.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agent-gateway-test")
    client = await make_gateway()
    yield client
    # Closed (and its spans flushed) while the receiver still listens.
    await client.close()


async def _spans_until(receiver: TestServer, done: Any) -> list[dict[str, Any]]:
    for _ in range(200):
        spans: list[dict[str, Any]] = receiver.app[SPANS]
        if done(spans):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"spans never arrived: {[s['name'] for s in receiver.app[SPANS]]}")


async def test_one_trace_from_the_callers_traceparent_to_the_callbacks_apply(
    tenant: Tenant, runtime: TestServer, receiver: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=1&report_delay_ms=20")
    answer = await tenant.client.post(
        wait_url(agent["id"]),
        json={"input": {"topic": "traced"}},
        headers={
            **tenant.auth,
            "traceparent": CALLER,
            "tracestate": "vendor=1",
            "X-Request-Id": "traced-1",
        },
    )
    assert answer.status == 200, await answer.text()
    run_id = (await answer.json())["runId"]
    await callbacks_answered(runtime, 1)

    # The runtime was called in the caller's trace, with the request's id.
    call = received(runtime)[0]
    sent = {k.lower(): v for k, v in call["headers"].items()}
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    assert sent["traceparent"] != CALLER  # a child: the gateway's own span is the parent
    assert sent["x-request-id"] == "traced-1"
    assert "vendor=1" in sent.get("tracestate", "")
    # The callbacks came without a traceparent of their own (an HTTP node sends none).

    def complete(spans: list[dict[str, Any]]) -> bool:
        names = {s["name"] for s in spans if s["trace_id"] == TRACE_ID}
        server = any(s["parent"] == "00f067aa0ba902b7" for s in spans)
        return server and {"run callback", "run event apply", "run wait", "runtime invoke"} <= names

    spans = await _spans_until(receiver, complete)
    ours = [s for s in spans if s["trace_id"] == TRACE_ID]
    by_id = {s["span_id"]: s for s in ours}
    names = [s["name"] for s in ours]
    # The server span continues the caller's span.
    server = [s for s in ours if s["parent"] == "00f067aa0ba902b7"]
    assert len(server) == 1
    assert server[0]["name"].startswith(("POST", "/api/agents"))
    assert server[0]["service"] == "agent-gateway-test"
    # The runtime call: our span, and the client instrumentation's HTTP span under it, whose id
    # is the parent the runtime was given.
    invoke = next(s for s in ours if s["name"] == "runtime invoke")
    client_span = sent["traceparent"].split("-")[2]
    assert by_id[client_span]["parent"] == invoke["span_id"]
    assert "run wait" in names
    # The callback's apply: a child of the run's stored context, in the caller's trace.
    callback = next(s for s in ours if s["name"] == "run callback")
    assert callback["attributes"]["agent_gateway.run.id"].string_value == str(run_id)
    assert callback["parent"] in by_id
    assert callback["links"]  # the callback request's own server span, a trace of its own
    applies = [
        s for s in ours if s["name"] == "run event apply" and s["parent"] == callback["span_id"]
    ]
    assert applies
    # The database was traced too (asyncpg instrumentation).
    assert any(s["name"].startswith(("SELECT", "INSERT", "UPDATE", "WITH")) for s in ours)


async def test_log_lines_carry_the_trace_id(gateway: Client) -> None:
    """While a span records, every line gets its ids; outside one, none."""
    from gateway.ops import tracing
    from gateway.ops.log_config import add_trace_ids

    assert "trace_id" not in add_trace_ids(None, "info", {"event": "x"})
    parent = tracing.context_of(CALLER)
    with tracing.span("logged", parent=parent) as span:
        line = add_trace_ids(None, "info", {"event": "x"})
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


def test_the_standard_variables_decide() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_wanted({"OTEL_SDK_DISABLED": "false"})
    assert not tracing_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}
    )


def test_without_otel_variables_nothing_is_installed_or_sent() -> None:
    """In a fresh interpreter (the provider is process-wide): the app factory installs no SDK
    provider, instruments nothing, and adds no middleware; the API's tracer is the no-op one,
    and the gateway's span blocks build no span at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    script = """
import asyncpg
from opentelemetry import trace
from gateway.http.app import create_app
from gateway.http.app_keys import TRACING
from gateway.settings import Settings
from opentelemetry.instrumentation.aiohttp_server import middleware
app = create_app(Settings(database_url="postgresql://x/y", redis_url="redis://x",
                          secret_key="k" * 8 + "9f3Qa7LmZx2Wc8Rt5Yb1Nv4Hp6Jd0Ks"))
assert app[TRACING] is None
assert middleware not in app.middlewares
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
assert not trace.get_tracer("x").start_span("y").is_recording()
assert not hasattr(asyncpg.connection.Connection.execute, "__wrapped__")
# A span block builds nothing: no span, no context attached for the block.
from opentelemetry import context
from gateway.ops import tracing
before = context.get_current()
with tracing.span("run wait", attributes={"agent_gateway.run.id": "1"}) as span:
    assert span is trace.INVALID_SPAN
    assert context.get_current() is before
print("off")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "off"


def test_off_the_callers_trace_context_passes_through() -> None:
    from gateway.ops import tracing

    request_id = tracing.REQUEST_ID.set("r-1")
    caller = tracing.CALLER_TRACE.set({"traceparent": CALLER, "tracestate": "v=1"})
    try:
        assert outbound_headers() == {
            "X-Request-Id": "r-1",
            "traceparent": CALLER,
            "tracestate": "v=1",
        }
    finally:
        tracing.CALLER_TRACE.reset(caller)
        tracing.REQUEST_ID.reset(request_id)
