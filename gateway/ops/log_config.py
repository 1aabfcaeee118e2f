"""structlog configured for one JSON object per line, with secrets redacted at any depth."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

# Probes and scrapes arrive every few seconds; their access lines are DEBUG, not INFO.
QUIET_ROUTES = frozenset({"/healthz", "/healthz/dependencies", "/readyz", "/metrics"})

# Field names whose values are never logged, at any depth (compared lower-cased, without
# "-" and "_").
_SECRET_FIELDS = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "apikey",
        "xapikey",
        "agentapikey",
        "ingestkey",
        "key",
        "secret",
        "secretkey",
        "password",
        "token",
        "admintoken",
        "credentialstoken",
        "xcredentialstoken",
        "credentials",
        "data",
        # A runtime's configured headers carry its auth (the admin API masks them too).
        "headers",
    }
)
# Secrets inside free text (exception messages, URLs): bearer tokens, our key formats,
# Trigger.dev secret keys, and passwords in connection URLs.
_SECRET_TEXT = re.compile(
    r"(?i)(?P<bearer>bearer\s+)\S+"
    r"|(?P<key>\b(?:igk|agk|tr_dev|tr_prod|tr_stg)_)[A-Za-z0-9_\-]+"
    r"|(?P<url>://[^/\s:@]+:)[^@\s/]+@"
)
REDACTED = "[redacted]"
# Values that carry no text to scrub (most of an access line's fields).
_PLAIN = (int, float, type(None))
_WHITESPACE = re.compile(r"\s")


def _scrub_text(text: str) -> str:
    # Every pattern needs a "_", a "://" or whitespace: most fields (paths, ids, addresses)
    # have none, and skip the costlier search.
    if "_" not in text and "://" not in text and _WHITESPACE.search(text) is None:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group("bearer"):
            return match.group("bearer") + REDACTED
        if match.group("key"):
            return match.group("key") + REDACTED
        return match.group("url") + REDACTED + "@"

    return _SECRET_TEXT.sub(replace, text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if _is_secret_field(k) else _scrub(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


@functools.lru_cache(maxsize=4096)
def _is_secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower().replace("-", "").replace("_", "") in (
        _SECRET_FIELDS
    )


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop the values of secret-named fields and scrub secrets from
    text. Defence in depth: code should not log secrets in the first place."""
    for name, value in list(event_dict.items()):
        if _is_secret_field(name):
            event_dict[name] = REDACTED
        elif not isinstance(value, _PLAIN):
            event_dict[name] = _scrub(value)
    return event_dict


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` (hex, as OTLP backends show them) of
    the span current when the line is written, when one records (tracing on and sampled)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid and "trace_id" not in event_dict:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _render_json(event_dict: Any, **kwargs: Any) -> str:
    """One log line's JSON: orjson (every request writes an access line), or structlog's own
    ``json.dumps`` with its ``repr`` fallback for what orjson refuses."""
    try:
        return orjson.dumps(event_dict, default=kwargs.get("default", repr)).decode()
    except TypeError:
        return json.dumps(event_dict, **kwargs)


def _json_renderer() -> structlog.processors.JSONRenderer:
    return structlog.processors.JSONRenderer(serializer=_render_json)


def _json_processors() -> list[structlog.types.Processor]:
    return [
        *_shared_processors(),
        structlog.processors.format_exc_info,
        redact_secrets,
        _json_renderer(),
    ]


def log_failure(event: str, **fields: Any) -> None:
    """Write one ERROR line to stderr in the processes' JSON format, for a process that stops
    before it runs: it works before ``configure_logging`` (a bad setting names no level yet),
    and stderr is where a supervisor or ``kubectl logs --previous`` looks for why."""
    logger = structlog.wrap_logger(structlog.WriteLogger(sys.stderr), processors=_json_processors())
    logger.error(event, **fields)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout, for structlog and for the standard library's loggers."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared = _shared_processors()
    structlog.configure(
        processors=_json_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (PrintLogger's print() makes two: the line, then its newline).
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                _json_renderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
