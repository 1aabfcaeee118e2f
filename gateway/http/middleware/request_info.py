"""What one request did, recorded where the access logger and the metrics can read it.

Handlers note the run and agent a request concerns as soon as they know them; the access line,
every log line of the request (through structlog's context) and the error middleware pick them
up from here, so an access line names its run even when the handler failed after creating it.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web

# Methods reported as themselves in metrics; anything else is "other" (bounded labels).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


@dataclass(slots=True)
class RequestInfo:
    """The request-scoped facts the access line and the metrics report."""

    request_id: str
    run_id: int | None = None
    agent_id: int | None = None
    # Set when the response is streamed (prepared by a handler rather than returned whole).
    streamed: bool = False
    # Body bytes a streaming handler copied to the caller, when it counts them itself.
    bytes_streamed: int | None = None


REQUEST_INFO = web.RequestKey("request_info", RequestInfo)


def note_run(
    request: web.Request, *, run_id: int | None = None, agent_id: int | None = None
) -> None:
    """Record the run and/or agent this request concerns (for its logs and access line)."""
    info = request.get(REQUEST_INFO)
    if info is None:
        return
    bound: dict[str, int] = {}
    if run_id is not None:
        info.run_id = bound["run_id"] = run_id
    if agent_id is not None:
        info.agent_id = bound["agent_id"] = agent_id
    if bound:
        structlog.contextvars.bind_contextvars(**bound)


def note_streamed_bytes(request: web.Request, count: int) -> None:
    """Record how many body bytes a streaming handler sent (a broken stream included)."""
    info = request.get(REQUEST_INFO)
    if info is not None:
        info.bytes_streamed = count


def routed_match(request: web.BaseRequest) -> web.UrlMappingMatchInfo | None:
    """The request's route match, or ``None`` when it was never routed (a request aiohttp's
    parser refused with a 400 of its own reaches the access logger without one)."""
    try:
        found: web.UrlMappingMatchInfo | None = getattr(request, "match_info", None)
    except AssertionError:
        return None
    return found


def route_template(request: web.BaseRequest) -> str:
    """The route's template (``/api/agents/{agentId}/runs/{runId}``), never the raw path."""
    match_info = routed_match(request)
    if match_info is None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


def method_label(method: str) -> str:
    """The method as a metric label, from a closed set."""
    return method if method in _KNOWN_METHODS else "other"
