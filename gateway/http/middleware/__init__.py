"""Request ids, request metrics, and the one place where domain exceptions become HTTP
responses."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.errors import ApiError, ServiceUnavailable
from gateway.http.app_keys import LIFECYCLE, METRICS, PREPARED_RESPONSE, REQUEST_ID
from gateway.http.middleware.request_info import (
    REQUEST_INFO,
    RequestInfo,
    method_label,
    note_run,
    route_template,
)
from gateway.ops import tracing
from store.event_buffer import EventBufferFull

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# PostgreSQL or Redis cannot be reached: the caller should retry, not report a bug.
BACKEND_OUTAGES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    # The server shutting down, starting up or crashed (57P01-57P03); a statement cancelled.
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    RedisConnectionError,
    ConnectionRefusedError,
    # A backend that answers nothing: asyncpg's connect and command timeouts.
    TimeoutError,
)
# A full event buffer drains only once PostgreSQL is back: a retry sooner would only be refused.
EVENT_BUFFER_FULL_RETRY_AFTER_S = 5
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    """The agent API's JSON error shape: ``{"error": message, ...}``."""
    return {"error": message, **extra}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed back) and bind it to the log context."""
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    request[REQUEST_INFO] = RequestInfo(request_id)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    # For the runtime calls this request makes (gateway/ops/tracing.py, outbound_headers).
    tracing.REQUEST_ID.set(request_id)
    traceparent = request.headers.get("traceparent")
    if traceparent:
        caller = {"traceparent": traceparent}
        if tracestate := request.headers.get("tracestate"):
            caller["tracestate"] = tracestate
        tracing.CALLER_TRACE.set(caller)
    else:
        tracing.CALLER_TRACE.set(None)
    return await handler(request)


# A request whose caller left before any response was prepared (nginx's convention).
_CLIENT_CLOSED = 499
# When observe_requests began timing the request (time.monotonic()); on_prepare takes it to
# observe the time to first byte, once.
_STARTED = web.RequestKey("observe_requests_started", float)


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, time it, and hold it in flight for the graceful drain.

    Sits outside ``errors_to_json``, so it sees the status the caller gets.
    """
    metrics = request.app[METRICS]
    lifecycle = request.app[LIFECYCLE]
    route, method = route_template(request), method_label(request.method)
    lifecycle.request_started()
    metrics.requests_in_flight.inc()
    started = time.monotonic()
    request[_STARTED] = started
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except BaseException as exc:
        prepared = request.get(PREPARED_RESPONSE)
        if prepared is not None:
            status = prepared.status
        elif isinstance(exc, asyncio.CancelledError):
            status = _CLIENT_CLOSED
        raise
    finally:
        lifecycle.request_finished()
        metrics.requests_in_flight.dec()
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.request_duration.labels(route, method).observe(time.monotonic() - started)
        info = request.get(REQUEST_INFO)
        if info is not None and info.streamed:
            metrics.streams_in_flight.labels(route).dec()
            sent = info.bytes_streamed
            if sent is None and response is not None:
                sent = response.body_length
            metrics.streamed_bytes.labels(route).inc(sent or 0)


ErrorShape = Callable[[ApiError], dict[str, Any]]


def agent_api_error(exc: ApiError) -> dict[str, Any]:
    """The agent API's error body: ``{"error": message, **extra}``."""
    return error_body(exc.message, **exc.extra)


# The /v0 API's codes for errors that carry none of their own.
V0_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def v0_api_error(exc: ApiError) -> dict[str, Any]:
    """The ``/v0`` API's error body: ``{"error": {"code", "message", "details"}}``.

    ``code`` and ``details`` come from the error's ``extra`` when it names them; otherwise the
    code follows the status, and any other ``extra`` (a request id, a run id) is the details.
    """
    extra = dict(exc.extra)
    code = extra.pop("code", None) or V0_CODES.get(exc.status, f"http_{exc.status}")
    details = extra.pop("details", None) if "details" in extra else (extra or None)
    return {"error": {"code": code, "message": exc.message, "details": details}}


def json_errors(shape: ErrorShape) -> Middleware:
    """A middleware mapping domain exceptions (and aiohttp's own 4xx) to JSON errors of
    ``shape``; after the headers have gone out, it aborts the connection instead."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            started: web.StreamResponse | None = request.get(PREPARED_RESPONSE)
            if started is None:
                return _error_response(request, exc, shape)
            # Headers (and maybe part of a body) are out: a new response cannot be sent.
            # Abort, so the caller sees a broken transfer rather than a body with an error
            # glued on.
            log.error("error_after_headers", path=request.path, error=repr(exc))
            if request.transport is not None:
                request.transport.abort()
            return started

    return middleware


# The agent API (and everything outside /v0) answers errors as {"error": "...", ...}.
errors_to_json = json_errors(agent_api_error)
# The /v0 routes (a sub-application) answer errors in the /v0 error shape.
v0_errors_to_json = json_errors(v0_api_error)


def _error_response(request: web.Request, exc: Exception, shape: ErrorShape) -> web.StreamResponse:
    """The JSON response for an exception raised before any header was sent."""
    if isinstance(exc, EventBufferFull):
        # PostgreSQL is away and the run's partition of the buffer is full: not recorded.
        log.warning("event_buffer_full", path=request.path, error=str(exc))
        exc = ServiceUnavailable(
            "Service temporarily unavailable: the event was not recorded; retry shortly",
            headers={"Retry-After": str(EVENT_BUFFER_FULL_RETRY_AFTER_S)},
        )
    if isinstance(exc, BACKEND_OUTAGES):
        log.warning("backend_unavailable", path=request.path, error=repr(exc))
        exc = ServiceUnavailable(
            "Service temporarily unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    if isinstance(exc, ApiError):
        if isinstance(run_id := exc.extra.get("runId"), int):
            note_run(request, run_id=run_id)
        response = web.json_response(shape(exc), status=exc.status, headers=exc.headers)
        if exc.close_connection:
            # Not left to linger reading (and discarding) the rest of a body nobody wants.
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            raise exc
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        error = ApiError(exc.reason)
        error.status = exc.status
        return web.json_response(shape(error), status=exc.status, headers=headers)
    # A 500 here is a bug; the traceback goes to the log, not to the caller.
    log.error("unhandled_error", path=request.path, exc_info=exc)
    error = ApiError("Internal server error", extra={"requestId": request[REQUEST_ID]})
    return web.json_response(shape(error), status=500)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: echo the request id on every response, streamed ones too,
    and note that this request's headers are on their way."""
    request[PREPARED_RESPONSE] = response
    info = request.get(REQUEST_INFO)
    # A handler that prepares its own StreamResponse streams its body; a Response is sent
    # whole after the handler returned.
    # config_dict: under a sub-application (/v0) request.app is that sub-application.
    metrics = request.config_dict.get(METRICS)
    if info is not None and not isinstance(response, web.Response) and metrics is not None:
        info.streamed = True
        metrics.streams_in_flight.labels(route_template(request)).inc()
    started = request.pop(_STARTED, None)
    if started is not None and metrics is not None:
        # The headers go out now: for a whole response after its handler, for a download or a
        # stream when its body begins (the duration histogram covers the whole body).
        metrics.time_to_first_byte.labels(
            route_template(request), method_label(request.method)
        ).observe(time.monotonic() - started)
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    # No library or interpreter versions for a scanner to read.
    response.headers["Server"] = "agent-gateway"
