"""Tracing with OpenTelemetry's own packages, off unless the standard ``OTEL_*`` variables say so.

When it is on (:func:`tracing_wanted`), :func:`setup_tracing` installs the SDK's
``TracerProvider`` for the process, exporting over OTLP/HTTP (the exporter reads
``OTEL_EXPORTER_OTLP_*`` itself; the SDK reads ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``), and instruments
asyncpg and redis-py. The HTTP layer adds the aiohttp server middleware and the client's trace
config only then. When it is off nothing is installed: the API's no-op tracer answers the few
spans the domain code opens, and the middleware costs one header lookup.

These variables are OpenTelemetry's, read by its SDK; they are not gateway settings
(``gateway/settings.py``), and only the on/off decision is taken here.

Propagation to runtimes (:func:`outbound_headers`): ``X-Request-Id`` always; ``traceparent``
and ``tracestate`` of the current span when tracing is on (the client instrumentation then
replaces them with its own span's), else the caller's own, passed through untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Link, Span, SpanKind

log = logging.getLogger(__name__)

TRACER_NAME = "agent-gateway"
# The request's id (gateway/http/middleware/__init__.py), for the runtime calls the request makes.
REQUEST_ID: ContextVar[str | None] = ContextVar("agent_gateway_request_id", default=None)
# The caller's own traceparent and tracestate, passed on as they are when tracing is off.
CALLER_TRACE: ContextVar[Mapping[str, str] | None] = ContextVar(
    "agent_gateway_caller_trace", default=None
)

_TRUE = {"true", "1", "yes", "on"}


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    return raw in _TRUE


def tracing_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables turn tracing on.

    Off by default. ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` always wins;
    otherwise on when an OTLP endpoint is given (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), when ``OTEL_TRACES_EXPORTER`` names ``otlp``, or
    when ``OTEL_SDK_DISABLED=false`` is said outright (then the OTLP defaults apply:
    ``http://localhost:4318``).
    """
    env = os.environ if env is None else env
    if _flag(env, "OTEL_SDK_DISABLED") is True:
        return False
    exporters = {
        name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name
    }
    if "none" in exporters:
        return False
    if exporters and "otlp" not in exporters:
        # Only OTLP is shipped; another exporter named alone is not one this image has.
        log.warning("OTEL_TRACES_EXPORTER names no exporter but otlp; tracing stays off")
        return False
    return bool(
        "otlp" in exporters
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or _flag(env, "OTEL_SDK_DISABLED") is False
    )


# One SDK provider per process (the API allows it to be set once); each setup adds its
# exporter to it and its shutdown takes that exporter away again, flushed.
_lock = threading.Lock()
_provider: Any = None
_exporters: Any = None


@dataclass
class Tracing:
    """Tracing as one process set it up; :meth:`shutdown` flushes and detaches its exporter."""

    processor: Any

    def shutdown(self) -> None:
        """Export what is still held, then stop exporting for this setup."""
        if _exporters is not None:
            _exporters.remove(self.processor)
        self.processor.shutdown()

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export what is held now."""
        return bool(self.processor.force_flush(timeout_ms))


def setup_tracing(
    env: Mapping[str, str] | None = None, *, service_name: str = TRACER_NAME
) -> Tracing | None:
    """Install tracing for this process when :func:`tracing_wanted`; ``None`` when it is off."""
    if not tracing_wanted(env):
        return None
    # Imported only when on: the SDK and the exporter cost nothing to a process that is off.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _provider, _exporters
    with _lock:
        if _provider is None:
            # Resource.create reads OTEL_RESOURCE_ATTRIBUTES, but what it is given wins: the
            # process's own name only when neither variable names the service.
            environment = os.environ if env is None else env
            named = environment.get("OTEL_SERVICE_NAME", "").strip()
            if not named and "service.name=" in environment.get("OTEL_RESOURCE_ATTRIBUTES", ""):
                resource = Resource.create()
            else:
                resource = Resource.create({SERVICE_NAME: named or service_name})
            _provider = TracerProvider(resource=resource)
            _exporters = _Exporters()
            _provider.add_span_processor(_exporters)
            trace.set_tracer_provider(_provider)
            AsyncPGInstrumentor().instrument(tracer_provider=_provider)  # type: ignore[no-untyped-call]
            RedisInstrumentor().instrument(tracer_provider=_provider)
    processor = BatchSpanProcessor(OTLPSpanExporter())
    _exporters.add(processor)
    return Tracing(processor)


class _Exporters(SpanProcessor):
    """Hands each span to the exporters attached now (one per setup still running)."""

    def __init__(self) -> None:
        self._processors: tuple[Any, ...] = ()

    def add(self, processor: Any) -> None:
        self._processors = (*self._processors, processor)

    def remove(self, processor: Any) -> None:
        self._processors = tuple(p for p in self._processors if p is not processor)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


def tracer() -> trace.Tracer:
    """The gateway's tracer (the API's no-op one while no provider is installed)."""
    return trace.get_tracer(TRACER_NAME)


def active() -> bool:
    """Whether the current span records (tracing on and sampled)."""
    return trace.get_current_span().is_recording()


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Sequence[Link] = (),
) -> Iterator[Span]:
    """A span named ``name`` around the block (a no-op one when tracing is off)."""
    if _provider is None:
        # Off: the API's no-op tracer would still build a span, a context and its attachment
        # for every block, on every request's path and for as long as a wait is held.
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        links=links,
    ) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, when one records (for the run's row)."""
    current = trace.get_current_span()
    if not current.is_recording():
        return None
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` names, or ``None`` when it names none."""
    if not traceparent:
        return None
    extracted = extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def outbound_headers() -> dict[str, str]:
    """What a runtime call carries of the request it serves: ``X-Request-Id``, and the trace
    context (the current span's when tracing is on, else the caller's own)."""
    headers: dict[str, str] = {}
    request_id = REQUEST_ID.get()
    if request_id:
        headers["X-Request-Id"] = request_id
    if trace.get_current_span().is_recording():
        inject(headers)
    else:
        headers.update(CALLER_TRACE.get() or {})
    return headers
