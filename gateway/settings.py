"""Settings read once from the environment into a frozen dataclass."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a positive number, got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration that may be zero (``0`` turns the wait off)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise SettingsError(f"{name} must be zero or a positive number, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be a boolean, got {raw!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway and the store consumer read from their environment."""

    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str = ""
    public_base_url: str = ""
    secret_key: str = field(default="", repr=False)
    log_level: str = "INFO"
    # Upper bound for any wait window, whatever the caller or agent asks for.
    hard_ceiling_ms: int = 600_000
    default_wait_ms: int = 60_000
    # A runtime that sends no byte for this long mid-body is treated as dead.
    stream_idle_timeout_s: float = 120.0
    # How much a stream buffers from the runtime before reading pauses (aiohttp's read_bufsize:
    # pause above 2x, resume below 1x). 64 KiB measured best for chunked bodies and lowest in
    # memory per stream; see bench/README.md.
    stream_read_buffer: int = 64 * 1024
    # Move a Content-Length body socket to socket with os.splice when neither side is TLS.
    stream_splice: bool = True
    sync_rate_limit: int = 5
    sync_rate_window_s: int = 60
    # POST .../runs/trigger holds no connection, so its per-agent bucket is its own and wider.
    trigger_rate_limit: int = 60
    trigger_rate_window_s: int = 60
    # register and ingest: a runtime reporting its own runs, one wide bucket per agent.
    report_rate_limit: int = 600
    report_rate_window_s: int = 60
    rate_limit_fail_open: bool = True
    # How long a credentials token stays valid (a trigger payload's lasts at least until its
    # run's deadline).
    credentials_token_ttl_s: int = 3600
    max_request_body: int = 1024 * 1024
    # Largest JSON result a runtime may return or report in a callback.
    max_result_body: int = 10 * 1024 * 1024
    # A waiter re-reads its run this often even without a wake-up (a lost pub/sub message
    # costs at most this much delay).
    wait_recheck_s: float = 2.0
    # Polling runs that a runtime runs on its own (Trigger.dev): how often each replica looks
    # for due polls, and how long a claimed poll is held before another replica may take it.
    follow_tick_s: float = 0.25
    follow_lease_s: float = 30.0
    events_stream: str = "runs:events"
    events_group: str = "store"
    # POST /api/workflows/{id}/execute: its own per-agent bucket, a larger body limit (files
    # arrive base64-encoded in the JSON), the per-file limit, and the SSE keep-alive.
    execute_rate_limit: int = 60
    execute_rate_window_s: int = 60
    execute_max_request_body: int = 64 * 1024 * 1024
    max_file_bytes: int = 20 * 1024 * 1024
    sse_ping_interval_s: float = 15.0
    # Where uploaded input files are kept: "fs" (a folder; one replica or a shared volume) or
    # "s3" (any S3-compatible store; what several replicas need).
    blob_backend: str = "fs"
    blob_dir: str = ".data/blobs"
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    # How long a signed URL of a stored file stays valid.
    file_url_ttl_s: int = 3600
    # How long a job download package's signed URL stays valid (seed 003).
    package_url_ttl_s: int = 900
    # Graceful drain on SIGTERM: /readyz answers 503 at once; new connections are still taken
    # for ``drain_pre_stop_s`` (while load balancers notice), then refused; in-flight requests
    # get up to ``drain_timeout_s`` to finish before they are cancelled.
    drain_pre_stop_s: float = 5.0
    drain_timeout_s: float = 30.0
    # The store consumer's own HTTP port for /metrics and /healthz (0: none).
    consumer_host: str = "127.0.0.1"
    consumer_port: int = 8081
    # Events another consumer read but did not acknowledge for this long are taken over (its
    # process died): the longest a dead consumer delays the events it held.
    consumer_reclaim_idle_s: float = 30.0
    # Hostile callers (README, Reliability). A connection must send a request's headers within
    # this long of opening (or of its previous response), and stays open idle no longer.
    keepalive_timeout_s: float = 75.0
    # A request body must arrive whole within this long (408 otherwise).
    request_body_timeout_s: float = 60.0
    # Failed key attempts per client address: this many per window, then 429 until it refills.
    auth_failure_limit: int = 20
    auth_failure_window_s: int = 60
    # Proxies whose X-Forwarded-For names the client (addresses or CIDR networks).
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings DESIGN.md names (plus tuning knobs) from ``env``."""
        env = os.environ if env is None else env
        port = _int(env, "GATEWAY_PORT", 8080)
        host = env.get("GATEWAY_HOST", "127.0.0.1")
        public = env.get("PUBLIC_BASE_URL") or f"http://{host}:{port}"
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", ""),
            host=host,
            port=port,
            admin_token=env.get("ADMIN_TOKEN", ""),
            public_base_url=public.rstrip("/"),
            secret_key=env.get("SECRET_KEY", ""),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            hard_ceiling_ms=_int(env, "HARD_CEILING_MS", 600_000),
            default_wait_ms=_int(env, "DEFAULT_WAIT_MS", 60_000),
            stream_idle_timeout_s=float(_int(env, "STREAM_IDLE_TIMEOUT_S", 120)),
            stream_read_buffer=_int(env, "STREAM_READ_BUFFER", 64 * 1024),
            stream_splice=_bool(env, "STREAM_SPLICE", True),
            sync_rate_limit=_int(env, "SYNC_RATE_LIMIT", 5),
            sync_rate_window_s=_int(env, "SYNC_RATE_WINDOW_S", 60),
            rate_limit_fail_open=_bool(env, "RATE_LIMIT_FAIL_OPEN", True),
            max_request_body=_int(env, "MAX_REQUEST_BODY", 1024 * 1024),
            max_result_body=_int(env, "MAX_RESULT_BODY", 10 * 1024 * 1024),
            trigger_rate_limit=_int(env, "TRIGGER_RATE_LIMIT", 60),
            trigger_rate_window_s=_int(env, "TRIGGER_RATE_WINDOW_S", 60),
            report_rate_limit=_int(env, "REPORT_RATE_LIMIT", 600),
            report_rate_window_s=_int(env, "REPORT_RATE_WINDOW_S", 60),
            credentials_token_ttl_s=_int(env, "CREDENTIALS_TOKEN_TTL_S", 3600),
            wait_recheck_s=_float(env, "WAIT_RECHECK_S", 2.0),
            follow_lease_s=_float(env, "FOLLOW_LEASE_S", 30.0),
            drain_pre_stop_s=_seconds(env, "DRAIN_PRE_STOP_S", 5.0),
            # SHUTDOWN_GRACE_S is the setting's former name, still honoured.
            drain_timeout_s=_float(env, "DRAIN_TIMEOUT_S", _float(env, "SHUTDOWN_GRACE_S", 30.0)),
            consumer_host=env.get("CONSUMER_HOST") or host,
            consumer_port=_int(env, "CONSUMER_PORT", 8081),
            consumer_reclaim_idle_s=_float(env, "CONSUMER_RECLAIM_IDLE_S", 30.0),
            **_execute_settings(env),
            **_package_settings(env),
            **_abuse_settings(env),
        )


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or CIDR networks, each checked."""
    items = tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(f"{name} lists {item!r}, not an IP address or network") from None
    return items


def _abuse_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Timeouts and limits that keep hostile callers from holding or guessing anything."""
    return {
        "keepalive_timeout_s": _float(env, "KEEPALIVE_TIMEOUT_S", 75.0),
        "request_body_timeout_s": _float(env, "REQUEST_BODY_TIMEOUT_S", 60.0),
        "auth_failure_limit": _int(env, "AUTH_FAILURE_LIMIT", 20),
        "auth_failure_window_s": _int(env, "AUTH_FAILURE_WINDOW_S", 60),
        "trusted_proxies": _networks(env, "TRUSTED_PROXIES"),
    }


def _execute_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings of workflow execute, input files and the blob store."""
    backend = env.get("BLOB_BACKEND", "fs").strip().lower() or "fs"
    if backend not in {"fs", "s3"}:
        raise SettingsError(f"BLOB_BACKEND must be 'fs' or 's3', got {backend!r}")
    if backend == "s3" and not env.get("S3_BUCKET"):
        raise SettingsError("S3_BUCKET must be set when BLOB_BACKEND is 's3'")
    return {
        "execute_rate_limit": _int(env, "EXECUTE_RATE_LIMIT", 60),
        "execute_rate_window_s": _int(env, "EXECUTE_RATE_WINDOW_S", 60),
        "execute_max_request_body": _int(env, "EXECUTE_MAX_REQUEST_BODY", 64 * 1024 * 1024),
        "max_file_bytes": _int(env, "MAX_FILE_BYTES", 20 * 1024 * 1024),
        "sse_ping_interval_s": _float(env, "SSE_PING_INTERVAL_S", 15.0),
        "blob_backend": backend,
        "blob_dir": env.get("BLOB_DIR", ".data/blobs"),
        "s3_bucket": env.get("S3_BUCKET", ""),
        "s3_endpoint_url": env.get("S3_ENDPOINT_URL", ""),
        "s3_region": env.get("S3_REGION", "us-east-1"),
        "s3_prefix": env.get("S3_PREFIX", "").strip("/"),
        "s3_access_key_id": env.get("S3_ACCESS_KEY_ID", ""),
        "s3_secret_access_key": env.get("S3_SECRET_ACCESS_KEY", ""),
        "file_url_ttl_s": _int(env, "FILE_URL_TTL_S", 3600),
    }


def _package_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings of job download packages."""
    ttl = _int(env, "PACKAGE_URL_TTL_S", 900)
    if ttl <= 0:
        raise SettingsError(f"PACKAGE_URL_TTL_S must be a positive number of seconds, got {ttl}")
    return {"package_url_ttl_s": ttl}
