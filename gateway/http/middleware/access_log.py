"""The access logger: one structured line per request, through ``gateway.ops.log_config``."""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.http.app_keys import REQUEST_ID
from gateway.http.middleware.request_info import REQUEST_INFO, route_template, routed_match
from gateway.ops.log_config import QUIET_ROUTES


class AccessLogger(AbstractAccessLogger):
    """One structured line per request: method, route, status, duration, bytes, ids."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        """Write the access line for ``request``."""
        route = route_template(request)
        info = request.get(REQUEST_INFO)
        run_id = info.run_id if info is not None else None
        agent_id = info.agent_id if info is not None else None
        if agent_id is None:
            agent_id = _path_int(request, "agentId")
        if run_id is None:
            run_id = _path_int(request, "runId")
        sent = info.bytes_streamed if info is not None else None
        if sent is None:
            # A whole response declares its body's length; body_length counts headers too.
            sent = response.content_length
        logger = structlog.get_logger("access")
        emit = logger.debug if route in QUIET_ROUTES else logger.info
        emit(
            "request",
            method=request.method,
            path=request.path,
            route=route,
            status=response.status,
            duration_ms=round(duration * 1000, 2),
            bytes=response.body_length if sent is None else sent,
            request_id=request.get(REQUEST_ID),
            run_id=run_id,
            agent_id=agent_id,
            remote=request.remote,
        )


def _path_int(request: web.BaseRequest, name: str) -> int | None:
    """A numeric id from the matched path, else ``None`` (never an arbitrary string)."""
    match_info = routed_match(request)
    raw = match_info.get(name) if match_info is not None else None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None
