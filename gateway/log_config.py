"""structlog configured for one JSON object per line, and an access logger that uses it."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.app_keys import REQUEST_ID


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout, for structlog and for the standard library's loggers."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


class AccessLogger(AbstractAccessLogger):
    """One structured line per request: method, route, status, duration, bytes, ids."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        """Write the access line for ``request``."""
        route = None
        match_info = getattr(request, "match_info", None)
        if match_info is not None and match_info.route.resource is not None:
            route = match_info.route.resource.canonical
        structlog.get_logger("access").info(
            "request",
            method=request.method,
            path=request.path,
            route=route,
            status=response.status,
            duration_ms=round(duration * 1000, 2),
            bytes=response.body_length,
            request_id=request.get(REQUEST_ID),
            run_id=response.headers.get("X-Run-Id"),
            agent_id=match_info.get("agentId") if match_info is not None else None,
            remote=request.remote,
        )
