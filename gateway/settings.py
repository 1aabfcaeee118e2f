"""Settings, each declared once (variable, type, default, bounds, description) and read once.

``Settings.from_env`` reads every field that names an environment variable, parses it by the
field's type and refuses a value outside its bounds with a message naming the variable.
``reference()`` renders the same declarations as docs/settings.md (a test keeps them equal);
``python -m gateway.settings`` prints it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


# Values an example or a tutorial ships: refused as SECRET_KEY whatever their length.
_PLACEHOLDERS = frozenset({"replace_me", "changeme", "change_me", "secret", "password", "todo"})
MIN_SECRET_LEN = 32
MIN_SECRET_BITS = 128


def _secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to be the signing key, or ``None``.

    Refused: a known placeholder (``REPLACE_ME`` of deploy/k8s/secret.example.yaml), fewer
    than 32 characters, or less than 128 bits by the character-frequency estimate (length
    times the Shannon entropy of its characters): ``secrets.token_urlsafe(32)`` or
    ``openssl rand -hex 32`` pass easily, a word repeated does not.
    """
    if secret.strip().lower() in _PLACEHOLDERS or "replace_me" in secret.lower():
        return "is the example's placeholder; generate one: openssl rand -hex 32"
    if len(secret) < MIN_SECRET_LEN:
        return (
            f"is {len(secret)} characters; it needs at least {MIN_SECRET_LEN} random ones "
            "(openssl rand -hex 32)"
        )
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    if per_char * len(secret) < MIN_SECRET_BITS:
        return (
            f"has too little entropy (about {int(per_char * len(secret))} bits, at least "
            f"{MIN_SECRET_BITS} needed); generate one: openssl rand -hex 32"
        )
    return None


def _secret_key(name: str, raw: str) -> str:
    """``SECRET_KEY``: refused when it is too weak to sign and seal (see ``weakness``)."""
    problem = _secret_weakness(raw)
    if problem is not None:
        raise SettingsError(f"{name} {problem}")
    return raw


class Group(StrEnum):
    """The sections of the settings reference, in the order it lists them."""

    SERVER = "Server"
    BACKENDS = "Database and Redis"
    AUTH_CACHE = "Key and agent cache"
    WAITS = "Waits and streaming"
    RATE_LIMITS = "Rate limits"
    BODIES = "Request and result bodies"
    EXECUTE = "Workflow execute and blobs"
    URLS = "Signed URLs and tokens"
    DRAIN = "Drain on SIGTERM"
    CONSUMER = "Store consumer"
    ABUSE = "Hostile callers"
    INTERNAL = "Internal (not read from the environment)"


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field is read: its variable, section, description and bounds."""

    env: str | None
    group: Group
    doc: str
    # Numbers: the smallest accepted value, and whether it is itself refused (``> minimum``).
    minimum: float | None = None
    above_minimum: bool = False
    maximum: float | None = None
    # Strings: the accepted values (compared case-insensitively, stored as declared).
    choices: tuple[str, ...] = ()
    # Read when ``env`` is unset (a former name, still honoured).
    aliases: tuple[str, ...] = ()
    secret: bool = False
    # What the reference shows as the default when it is computed at read time.
    default_text: str | None = None
    # A parser for values no type-driven parser covers (raises ``SettingsError``).
    parse: Callable[[str, str], Any] | None = None


def setting(
    default: Any,
    env: str | None,
    group: Group,
    doc: str,
    *,
    minimum: float | None = None,
    above_minimum: bool = False,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    secret: bool = False,
    default_text: str | None = None,
    parse: Callable[[str, str], Any] | None = None,
) -> Any:
    """Declare a field of ``Settings`` together with the variable it is read from."""
    spec = Setting(
        env,
        group,
        doc,
        minimum,
        above_minimum,
        maximum,
        choices,
        aliases,
        secret,
        default_text,
        parse,
    )
    return dataclasses.field(default=default, repr=not secret, metadata={"setting": spec})


def _networks(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or CIDR networks, each checked."""
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(f"{name} lists {item!r}, not an IP address or network") from None
    return items


def _run_tag(name: str, raw: str) -> str:
    """A Trigger.dev run tag: what its trigger and its realtime tag filter accept."""
    tag = raw.strip()
    if not tag or len(tag) > 128 or any(c in tag for c in ',"\\') or not tag.isprintable():
        raise SettingsError(
            f"{name} must be 1 to 128 printable characters without comma, quote or backslash"
        )
    return tag


def _redis_url(name: str, raw: str) -> str:
    """A URL redis-py can open, refused here rather than as a traceback at the first command."""
    if raw.strip().split("://", 1)[0].lower() not in {"redis", "rediss", "unix"}:
        raise SettingsError(f"{name} must be a redis://, rediss:// or unix:// URL")
    return raw


_POSITIVE: dict[str, Any] = {"minimum": 0, "above_minimum": True}
_AT_LEAST_ONE: dict[str, Any] = {"minimum": 1}
_PORT: dict[str, Any] = {"minimum": 0, "maximum": 65535}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway and the store consumer read from their environment."""

    # Server
    host: str = setting(
        "127.0.0.1", "GATEWAY_HOST", Group.SERVER, "Address the gateway listens on."
    )
    port: int = setting(8080, "GATEWAY_PORT", Group.SERVER, "Port the gateway listens on.", **_PORT)
    # Thousands of callers arriving at once overflow a short accept queue, and every SYN the
    # kernel drops is retried a second or more later (bench/held_waits.py counts them).
    listen_backlog: int = setting(
        4096,
        "LISTEN_BACKLOG",
        Group.SERVER,
        "Connections the kernel queues for the gateway to accept (capped by the kernel's "
        "net.core.somaxconn).",
        **_AT_LEAST_ONE,
    )
    # CPython's default (700) runs a young pass every few requests and, while thousands of
    # calls are held, a full pass over all of them each time the heap grows by a quarter
    # (bench/README.md: "Garbage collector").
    gc_young_threshold: int = setting(
        20_000,
        "GC_YOUNG_THRESHOLD",
        Group.SERVER,
        "Objects allocated (less those freed) between the garbage collector's young passes in "
        "serve and consume; CPython's default is 700.",
        minimum=100,
        maximum=100_000,
    )
    public_base_url: str = setting(
        "",
        "PUBLIC_BASE_URL",
        Group.SERVER,
        "Base URL callers and runtimes reach the gateway at (callback and signed URLs).",
        default_text="http://{GATEWAY_HOST}:{GATEWAY_PORT}",
    )
    admin_token: str = setting(
        "",
        "ADMIN_TOKEN",
        Group.SERVER,
        "Bearer token of the /admin API (unset: /admin is off).",
        secret=True,
    )
    secret_key: str = setting(
        "",
        "SECRET_KEY",
        Group.SERVER,
        "Key that signs URLs and tokens and seals credentials (required by serve): at least "
        "32 characters and 128 bits of entropy (openssl rand -hex 32); placeholders refused.",
        secret=True,
        parse=_secret_key,
    )
    secret_keys_previous: str = setting(
        "",
        "SECRET_KEYS_PREVIOUS",
        Group.SERVER,
        "Former SECRET_KEYs, comma-separated: what they signed and sealed still verifies and "
        "opens until they are removed (see operations.md, Rotating SECRET_KEY).",
        secret=True,
    )
    log_level: str = setting(
        "INFO",
        "LOG_LEVEL",
        Group.SERVER,
        "Level of the JSON log lines.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    )

    # Database and Redis
    database_url: str = setting(
        "",
        "DATABASE_URL",
        Group.BACKENDS,
        "PostgreSQL URL (required by serve, consume, migrate).",
        secret=True,
    )
    redis_url: str = setting(
        "",
        "REDIS_URL",
        Group.BACKENDS,
        "Redis URL (required by serve and consume).",
        secret=True,
        parse=_redis_url,
    )
    redis_cluster: bool = setting(
        False,
        "REDIS_CLUSTER",
        Group.BACKENDS,
        "REDIS_URL names one node of a Redis Cluster (redis-py's RedisCluster learns the "
        "others from it); false: a single Redis server.",
    )
    # The sum over every process must stay under PostgreSQL's max_connections
    # (docs/operations.md, "The PostgreSQL connection budget"; tests/deploy checks the kit's).
    db_pool_min_size: int = setting(
        2,
        "DB_POOL_MIN_SIZE",
        Group.BACKENDS,
        "PostgreSQL connections each gateway replica keeps open when idle.",
        minimum=0,
    )
    db_pool_max_size: int = setting(
        20,
        "DB_POOL_MAX_SIZE",
        Group.BACKENDS,
        "Most PostgreSQL connections one gateway replica's pool opens (its key and agent "
        "cache holds one more, to listen).",
        **_AT_LEAST_ONE,
    )
    consumer_db_pool_max_size: int = setting(
        4,
        "CONSUMER_DB_POOL_MAX_SIZE",
        Group.BACKENDS,
        "Most PostgreSQL connections one store consumer opens.",
        **_AT_LEAST_ONE,
    )
    db_pool_acquire_timeout_s: float = setting(
        5.0,
        "DB_POOL_ACQUIRE_TIMEOUT_S",
        Group.BACKENDS,
        "Longest a query waits for a free connection of a full pool; past it the request is "
        "503 with Retry-After (a run event is held in the Redis buffer instead).",
        **_POSITIVE,
    )
    dependency_probe_interval_s: float = setting(
        5.0,
        "DEPENDENCY_PROBE_INTERVAL_S",
        Group.BACKENDS,
        "How often each process asks PostgreSQL and Redis whether they answer "
        "(agent_gateway_dependency_up; readiness never depends on it).",
        **_POSITIVE,
    )

    # Key and agent cache (docs/operations.md)
    auth_cache_ttl_s: float = setting(
        10.0,
        "AUTH_CACHE_TTL_S",
        Group.AUTH_CACHE,
        "Ingest key organisations and agent rows are kept in memory this long at most; a change "
        "reaches every replica at once by notification, this bounds a lost one (0: no cache).",
        minimum=0,
        maximum=3600,
    )
    auth_cache_size: int = setting(
        10_000,
        "AUTH_CACHE_SIZE",
        Group.AUTH_CACHE,
        "Entries each of the key and agent caches holds (least recently used dropped first).",
        **_AT_LEAST_ONE,
    )

    # Waits and streaming
    hard_ceiling_ms: int = setting(
        600_000,
        "HARD_CEILING_MS",
        Group.WAITS,
        "Upper bound of any wait window, whatever the caller or agent asks for.",
        **_AT_LEAST_ONE,
    )
    default_wait_ms: int = setting(
        60_000,
        "DEFAULT_WAIT_MS",
        Group.WAITS,
        "Wait window of a synchronous run when neither caller nor agent sets one.",
        **_AT_LEAST_ONE,
    )
    stream_idle_timeout_s: float = setting(
        120.0,
        "STREAM_IDLE_TIMEOUT_S",
        Group.WAITS,
        "A runtime that sends no byte for this long mid-body is treated as dead.",
        **_POSITIVE,
    )
    # 64 KiB measured best for chunked bodies and lowest in memory per stream
    # (bench/history/2026-11-23-read-buffer-sweeps.md).
    stream_read_buffer: int = setting(
        64 * 1024,
        "STREAM_READ_BUFFER",
        Group.WAITS,
        "Bytes a stream buffers from the runtime before reading pauses (aiohttp's read_bufsize).",
        minimum=1024,
    )
    runtime_max_connections_per_host: int = setting(
        256,
        "RUNTIME_MAX_CONNECTIONS_PER_HOST",
        Group.WAITS,
        "Most connections one replica holds open to one runtime host (host and port) at once; "
        "a call past it waits for a free one, within its own window.",
        **_AT_LEAST_ONE,
    )
    stream_splice: bool = setting(
        True,
        "STREAM_SPLICE",
        Group.WAITS,
        "Move a download's body socket to socket with os.splice when neither side is TLS "
        "(a chunked body with its chunk framing re-emitted).",
    )
    stream_splice_threads: int = setting(
        16,
        "STREAM_SPLICE_THREADS",
        Group.WAITS,
        "Spliced downloads that each get a thread of their own (blocking splice, no event-loop "
        "wake-ups between pipe moves); past it, a spliced download is driven by the event loop.",
        minimum=0,
        maximum=1024,
    )
    stream_trim_burst: int = setting(
        32,
        "STREAM_TRIM_BURST",
        Group.WAITS,
        "After at least this many downloads and held trigger-and-wait calls in flight at once "
        "have all ended, freed heap memory is handed back to the system (glibc malloc_trim); 0 "
        "turns it off.",
        minimum=0,
    )
    wait_recheck_s: float = setting(
        2.0,
        "WAIT_RECHECK_S",
        Group.WAITS,
        "A waiter re-reads its run this often even without a wake-up (a lost message costs this).",
        **_POSITIVE,
    )
    follow_lease_s: float = setting(
        30.0,
        "FOLLOW_LEASE_S",
        Group.WAITS,
        "How long a replica holds a claimed poll of a Trigger.dev run before another may take it.",
        **_POSITIVE,
    )
    trigger_dev_realtime: bool = setting(
        True,
        "TRIGGER_DEV_REALTIME",
        Group.WAITS,
        "Follow Trigger.dev runs through its realtime feed (one per environment and replica); "
        "off: poll every run.",
    )
    trigger_dev_run_tag: str = setting(
        "agent-gateway",
        "TRIGGER_DEV_RUN_TAG",
        Group.WAITS,
        "Tag put on every Trigger.dev run the gateway triggers; the realtime feed follows it "
        "(at most 128 characters, no comma, quote or backslash).",
        parse=_run_tag,
    )
    trigger_dev_realtime_timeout_s: float = setting(
        60.0,
        "TRIGGER_DEV_REALTIME_TIMEOUT_S",
        Group.WAITS,
        "How long one realtime request may go unanswered (Trigger.dev holds it about 20 s) "
        "before the feed is reopened.",
        minimum=1,
    )
    trigger_dev_realtime_fallback_s: float = setting(
        30.0,
        "TRIGGER_DEV_REALTIME_FALLBACK_S",
        Group.WAITS,
        "While a realtime feed is up, a run it does not carry (one triggered without the tag) "
        "is polled this often; the runs it carries are not polled.",
        **_POSITIVE,
    )
    # A download may stream past its run's deadline (only STREAM_IDLE_TIMEOUT_S bounds it): its
    # replica renews the deadline meanwhile; one that dies stops renewing, and the run is reaped.
    download_lease_s: float = setting(
        30.0,
        "DOWNLOAD_LEASE_S",
        Group.WAITS,
        "While a download streams, its run's deadline is kept at least this far ahead, so the "
        "reaper spares it; once its replica is gone, the run is reaped this long after at most.",
        **_POSITIVE,
    )

    # Rate limits
    sync_rate_limit: int = setting(
        5,
        "SYNC_RATE_LIMIT",
        Group.RATE_LIMITS,
        "trigger-and-wait and trigger-and-download calls per agent per window.",
        **_AT_LEAST_ONE,
    )
    sync_rate_window_s: int = setting(
        60, "SYNC_RATE_WINDOW_S", Group.RATE_LIMITS, "Window of SYNC_RATE_LIMIT.", **_AT_LEAST_ONE
    )
    trigger_rate_limit: int = setting(
        60,
        "TRIGGER_RATE_LIMIT",
        Group.RATE_LIMITS,
        "POST .../runs/trigger calls per agent per window (it holds no connection).",
        **_AT_LEAST_ONE,
    )
    trigger_rate_window_s: int = setting(
        60,
        "TRIGGER_RATE_WINDOW_S",
        Group.RATE_LIMITS,
        "Window of TRIGGER_RATE_LIMIT.",
        **_AT_LEAST_ONE,
    )
    report_rate_limit: int = setting(
        600,
        "REPORT_RATE_LIMIT",
        Group.RATE_LIMITS,
        "register and ingest calls (a runtime reporting its own runs) per agent per window.",
        **_AT_LEAST_ONE,
    )
    report_rate_window_s: int = setting(
        60,
        "REPORT_RATE_WINDOW_S",
        Group.RATE_LIMITS,
        "Window of REPORT_RATE_LIMIT.",
        **_AT_LEAST_ONE,
    )
    callback_rate_limit: int = setting(
        600,
        "CALLBACK_RATE_LIMIT",
        Group.RATE_LIMITS,
        "POST /api/runs/{runId}/callback calls per agent per window (all its runs together): "
        "far above what a runtime reporting progress sends.",
        **_AT_LEAST_ONE,
    )
    callback_rate_window_s: int = setting(
        60,
        "CALLBACK_RATE_WINDOW_S",
        Group.RATE_LIMITS,
        "Window of CALLBACK_RATE_LIMIT.",
        **_AT_LEAST_ONE,
    )
    execute_rate_limit: int = setting(
        60,
        "EXECUTE_RATE_LIMIT",
        Group.RATE_LIMITS,
        "POST /api/workflows/{workflowId}/execute calls per agent per window.",
        **_AT_LEAST_ONE,
    )
    execute_rate_window_s: int = setting(
        60,
        "EXECUTE_RATE_WINDOW_S",
        Group.RATE_LIMITS,
        "Window of EXECUTE_RATE_LIMIT.",
        **_AT_LEAST_ONE,
    )
    rate_limit_fail_open: bool = setting(
        True,
        "RATE_LIMIT_FAIL_OPEN",
        Group.RATE_LIMITS,
        "When Redis cannot answer, let calls through (true) or refuse them with 429 (false).",
    )

    # Request and result bodies
    max_request_body: int = setting(
        1024 * 1024,
        "MAX_REQUEST_BODY",
        Group.BODIES,
        "Largest request body in bytes (413 above it).",
        **_AT_LEAST_ONE,
    )
    max_result_body: int = setting(
        10 * 1024 * 1024,
        "MAX_RESULT_BODY",
        Group.BODIES,
        "Largest JSON result a runtime may return or report in a callback, in bytes.",
        **_AT_LEAST_ONE,
    )

    # Workflow execute and blobs
    execute_max_request_body: int = setting(
        64 * 1024 * 1024,
        "EXECUTE_MAX_REQUEST_BODY",
        Group.EXECUTE,
        "Largest execute body in bytes (files arrive base64-encoded in the JSON).",
        **_AT_LEAST_ONE,
    )
    max_file_bytes: int = setting(
        20 * 1024 * 1024,
        "MAX_FILE_BYTES",
        Group.EXECUTE,
        "Largest input file, in bytes.",
        **_AT_LEAST_ONE,
    )
    execute_max_files: int = setting(
        20,
        "EXECUTE_MAX_FILES",
        Group.EXECUTE,
        "Most files (uploads and URL references) one execute request may carry, all fields "
        "together; more is a 413 naming this setting, with nothing stored.",
        **_AT_LEAST_ONE,
    )
    execute_max_files_per_field: int = setting(
        10,
        "EXECUTE_MAX_FILES_PER_FIELD",
        Group.EXECUTE,
        "Most files one files field of an execute request may carry; more is a 413 naming "
        "this setting, with nothing stored.",
        **_AT_LEAST_ONE,
    )
    execute_max_files_bytes: int = setting(
        48 * 1024 * 1024,
        "EXECUTE_MAX_FILES_BYTES",
        Group.EXECUTE,
        "Most decoded bytes of all the uploads of one execute request together (each file is "
        "also held to MAX_FILE_BYTES); more is a 413 naming this setting, with nothing stored.",
        **_AT_LEAST_ONE,
    )
    execute_large_body_bytes: int = setting(
        1024 * 1024,
        "EXECUTE_LARGE_BODY_BYTES",
        Group.EXECUTE,
        "An execute body declared larger than this (or of no declared length) is a large body: "
        "its rate-limit token is taken before it is read, and it needs one of the replica's "
        "EXECUTE_MAX_LARGE_BODIES slots while it is read, parsed and its files stored.",
        **_AT_LEAST_ONE,
    )
    execute_max_large_bodies: int = setting(
        4,
        "EXECUTE_MAX_LARGE_BODIES",
        Group.EXECUTE,
        "Most large execute bodies (EXECUTE_LARGE_BODY_BYTES) one replica reads at a time; one "
        "more is answered 503 with Retry-After, before its body is read.",
        **_AT_LEAST_ONE,
    )
    sse_ping_interval_s: float = setting(
        15.0,
        "SSE_PING_INTERVAL_S",
        Group.EXECUTE,
        "Keep-alive interval of an SSE stream.",
        **_POSITIVE,
    )
    execute_stream_retention_s: int = setting(
        600,
        "EXECUTE_STREAM_RETENTION_S",
        Group.EXECUTE,
        "How long the frames of an execution are kept in Redis after its last one, for a "
        "caller resuming its stream (GET .../executions/{executionId}/stream; 410 later).",
        minimum=1,
        maximum=86_400,
    )
    execute_stream_max_frames: int = setting(
        50_000,
        "EXECUTE_STREAM_MAX_FRAMES",
        Group.EXECUTE,
        "Frames of one execution kept for a resume, at least (older ones are trimmed: a resume "
        "from before them is a 410).",
        minimum=100,
    )
    execute_disconnect_grace_s: float = setting(
        30.0,
        "EXECUTE_DISCONNECT_GRACE_S",
        Group.EXECUTE,
        "A caller that leaves an execute: its run goes on this long, then is cancelled unless "
        "someone follows it on the resume route (0: cancelled at once, the former behaviour).",
        minimum=0,
        maximum=3600,
    )
    blob_backend: str = setting(
        "fs",
        "BLOB_BACKEND",
        Group.EXECUTE,
        "Where input files are kept: fs (a folder; one replica or a shared volume) or s3.",
        choices=("fs", "s3"),
    )
    blob_dir: str = setting(
        ".data/blobs", "BLOB_DIR", Group.EXECUTE, "The folder of the fs backend."
    )
    s3_bucket: str = setting("", "S3_BUCKET", Group.EXECUTE, "Bucket of the s3 backend (required).")
    s3_endpoint_url: str = setting(
        "", "S3_ENDPOINT_URL", Group.EXECUTE, "Endpoint of an S3-compatible store (unset: AWS)."
    )
    s3_region: str = setting("us-east-1", "S3_REGION", Group.EXECUTE, "Region of the bucket.")
    s3_prefix: str = setting("", "S3_PREFIX", Group.EXECUTE, "Key prefix inside the bucket.")
    s3_access_key_id: str = setting(
        "", "S3_ACCESS_KEY_ID", Group.EXECUTE, "Access key (unset: the default chain).", secret=True
    )
    s3_secret_access_key: str = setting(
        "", "S3_SECRET_ACCESS_KEY", Group.EXECUTE, "Secret of S3_ACCESS_KEY_ID.", secret=True
    )

    # Signed URLs and tokens
    file_url_ttl_s: int = setting(
        3600,
        "FILE_URL_TTL_S",
        Group.URLS,
        "How long a stored file's signed URL stays valid.",
        **_AT_LEAST_ONE,
    )
    package_url_ttl_s: int = setting(
        900,
        "PACKAGE_URL_TTL_S",
        Group.URLS,
        "How long a /v0 job download package's signed URL stays valid.",
        **_AT_LEAST_ONE,
    )
    credentials_token_ttl_s: int = setting(
        3600,
        "CREDENTIALS_TOKEN_TTL_S",
        Group.URLS,
        "How long a credentials token stays valid (a trigger payload's lasts to its deadline).",
        **_AT_LEAST_ONE,
    )

    # Drain on SIGTERM: /readyz answers 503 at once; new connections are still taken for the
    # pre-stop delay (while load balancers notice), then refused; in-flight requests get up to
    # the drain timeout before they are cancelled.
    drain_pre_stop_s: float = setting(
        5.0,
        "DRAIN_PRE_STOP_S",
        Group.DRAIN,
        "Seconds new connections are still taken after SIGTERM (0: stop taking them at once).",
        minimum=0,
    )
    drain_timeout_s: float = setting(
        30.0,
        "DRAIN_TIMEOUT_S",
        Group.DRAIN,
        "Seconds in-flight requests get to finish before they are cancelled.",
        aliases=("SHUTDOWN_GRACE_S",),
        **_POSITIVE,
    )
    # Above the load balancer's own idle timeout for upstream connections (deploy/nginx.conf:
    # keepalive_timeout 4s), so that it, not the gateway, closes every idle connection it holds.
    drain_idle_close_s: float = setting(
        5.0,
        "DRAIN_IDLE_CLOSE_S",
        Group.DRAIN,
        "Seconds idle keep-alive connections stay open after the last request in flight ends "
        "(longer than the load balancer's upstream keepalive_timeout).",
        minimum=0,
    )

    # Store consumer
    consumer_host: str = setting(
        "127.0.0.1",
        "CONSUMER_HOST",
        Group.CONSUMER,
        "Address of the consumer's /metrics and /healthz.",
        default_text="{GATEWAY_HOST}",
    )
    consumer_port: int = setting(
        8081,
        "CONSUMER_PORT",
        Group.CONSUMER,
        "Port of the consumer's /metrics and /healthz (0: none).",
        **_PORT,
    )
    # The longest a dead consumer delays the events it held.
    consumer_lease_s: float = setting(
        10.0,
        "CONSUMER_LEASE_S",
        Group.CONSUMER,
        "A consumer's lease on a partition of the event buffer lapses this long after it "
        "stopped renewing it (then another consumer takes the partition).",
        minimum=0.5,
        maximum=300,
    )
    consumer_poll_ms: int = setting(
        250,
        "CONSUMER_POLL_MS",
        Group.CONSUMER,
        "How long an idle consumer waits before looking at its partitions again.",
        minimum=10,
        maximum=10_000,
    )
    # Retention (store/retention.py; docs/operations.md, Retention): run by the consumer on the
    # reaper's schedule. Runs, their files and packages are the caller's data: kept by default.
    retention_runs_days: int = setting(
        0,
        "RETENTION_RUNS_DAYS",
        Group.CONSUMER,
        "Terminal runs that ended this many days ago are deleted by the consumer, with their "
        "applied events, stored files (rows and blobs) and package (0: kept forever).",
        minimum=0,
        maximum=36_500,
    )
    retention_input_files_days: int = setting(
        0,
        "RETENTION_INPUT_FILES_DAYS",
        Group.CONSUMER,
        "Uploaded input files of terminal runs, stored this many days ago, are deleted by the "
        "consumer (rows and blobs; the run stays) (0: kept forever).",
        minimum=0,
        maximum=36_500,
    )
    retention_packages_days: int = setting(
        0,
        "RETENTION_PACKAGES_DAYS",
        Group.CONSUMER,
        "Job download packages nobody asked for in this many days are deleted by the consumer "
        "(a later request makes a new one, with a new id) (0: kept forever).",
        minimum=0,
        maximum=36_500,
    )
    retention_batch: int = setting(
        500,
        "RETENTION_BATCH",
        Group.CONSUMER,
        "Rows of each kind one consumer deletes at most per pass (every 15 s).",
        minimum=1,
        maximum=10_000,
    )

    # Hostile callers (docs/reliability.md)
    keepalive_timeout_s: float = setting(
        75.0,
        "KEEPALIVE_TIMEOUT_S",
        Group.ABUSE,
        "A connection must send a request's headers within this long, and stays idle no longer.",
        **_POSITIVE,
    )
    request_body_timeout_s: float = setting(
        60.0,
        "REQUEST_BODY_TIMEOUT_S",
        Group.ABUSE,
        "A request body must arrive whole within this long (408 otherwise).",
        **_POSITIVE,
    )
    auth_failure_limit: int = setting(
        20,
        "AUTH_FAILURE_LIMIT",
        Group.ABUSE,
        "Failed key attempts per client address per window, then 429 until it refills.",
        **_AT_LEAST_ONE,
    )
    auth_failure_window_s: int = setting(
        60, "AUTH_FAILURE_WINDOW_S", Group.ABUSE, "Window of AUTH_FAILURE_LIMIT.", **_AT_LEAST_ONE
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "TRUSTED_PROXIES",
        Group.ABUSE,
        "Proxies (comma-separated addresses or CIDR networks) whose X-Forwarded-For is believed.",
        parse=_networks,
        default_text="none",
    )

    # Internal: fixed in production, replaced by tests and benchmarks.
    follow_tick_s: float = setting(
        0.25, None, Group.INTERNAL, "How often each replica looks for due Trigger.dev polls."
    )
    trigger_dev_discover_s: float = setting(
        5.0,
        None,
        Group.INTERNAL,
        "How often each replica looks for Trigger.dev environments to open a realtime feed for.",
    )
    events_stream: str = setting(
        "runs:events",
        None,
        Group.INTERNAL,
        "Prefix of the Redis keys of the run-event buffer and of the run-end announcements.",
    )
    events_partitions: int = setting(
        16,
        "EVENTS_PARTITIONS",
        Group.CONSUMER,
        "Partitions of the run-event buffer (the most consumers that share its work); change "
        "it only while the buffer is empty.",
        minimum=1,
        maximum=1024,
    )
    events_buffer_max_per_partition: int = setting(
        100_000,
        "EVENTS_BUFFER_MAX_PER_PARTITION",
        Group.CONSUMER,
        "Most run events one partition of the Redis buffer holds while PostgreSQL is away; an "
        "event past it is refused (503 with Retry-After), never one held trimmed.",
        **_AT_LEAST_ONE,
    )
    auth_cache_reconnect_s: float = setting(
        1.0,
        None,
        Group.INTERNAL,
        "First wait before the cache's listening connection is opened again (doubling to 30 s).",
        **_POSITIVE,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every declared variable from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for spec_field in dataclasses.fields(cls):
            spec: Setting = spec_field.metadata["setting"]
            raw = _lookup(env, spec)
            if raw is not None:
                values[spec_field.name] = _parse(spec, hints[spec_field.name], raw)
        # Defaults computed from other settings.
        declared = {spec_field.name: spec_field.default for spec_field in dataclasses.fields(cls)}
        host, port = values.get("host", declared["host"]), values.get("port", declared["port"])
        public = values.get("public_base_url") or f"http://{host}:{port}"
        values["public_base_url"] = public.rstrip("/")
        values.setdefault("consumer_host", host)
        values["s3_prefix"] = values.get("s3_prefix", "").strip("/")
        settings = cls(**values)
        if settings.db_pool_min_size > settings.db_pool_max_size:
            raise SettingsError("DB_POOL_MIN_SIZE must not be above DB_POOL_MAX_SIZE")
        if settings.blob_backend == "s3" and not settings.s3_bucket:
            raise SettingsError("S3_BUCKET must be set when BLOB_BACKEND is 's3'")
        return settings


def _lookup(env: Mapping[str, str], spec: Setting) -> str | None:
    """The variable's value, or a former name's, or (a secret) the content of the file its
    ``_FILE`` variable names; an empty value counts as unset."""
    if spec.env is None:
        return None
    for name in (spec.env, *spec.aliases):
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            if spec.secret and _set(env, f"{spec.env}_FILE"):
                raise SettingsError(f"set {spec.env} or {spec.env}_FILE, not both")
            return raw
    if spec.secret and _set(env, f"{spec.env}_FILE"):
        return _read_secret_file(f"{spec.env}_FILE", env[f"{spec.env}_FILE"])
    return None


def _set(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip() != ""


def _read_secret_file(name: str, path: str) -> str | None:
    """A secret mounted as a file (a Kubernetes secret volume, a Docker secret): its text, the
    trailing newline an editor or ``echo`` leaves stripped. The message never quotes it."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise SettingsError(
            f"{name} names {path!r}, which cannot be read: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name} names {path!r}, which is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    return text if text.strip() != "" else None


def _parse(spec: Setting, kind: Any, raw: str) -> Any:
    name = spec.env or ""
    if spec.parse is not None:
        return spec.parse(name, raw)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name} must be a boolean, got {raw!r}")
    if kind is int or kind is float:
        try:
            number: float = int(raw) if kind is int else float(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
        if not math.isfinite(number) or not _in_bounds(spec, number):
            raise SettingsError(f"{name} must be {_bounds_text(spec)}, got {raw!r}")
        return number
    if spec.choices:
        for choice in spec.choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise SettingsError(f"{name} must be one of {', '.join(spec.choices)}, got {raw!r}")
    return raw


def _in_bounds(spec: Setting, number: float) -> bool:
    below = spec.minimum is not None and (
        number < spec.minimum or (spec.above_minimum and number == spec.minimum)
    )
    if below:
        return False
    return spec.maximum is None or number <= spec.maximum


def _bounds_text(spec: Setting) -> str:
    if spec.minimum == 0 and spec.above_minimum and spec.maximum is None:
        return "a positive number"
    parts = []
    if spec.minimum is not None:
        parts.append(
            f"above {spec.minimum:g}" if spec.above_minimum else f"at least {spec.minimum:g}"
        )
    if spec.maximum is not None:
        parts.append(f"at most {spec.maximum:g}")
    return " and ".join(parts) or "a finite number"


def reference() -> str:
    """The settings reference (docs/settings.md), rendered from the declarations."""
    hints = typing.get_type_hints(Settings)
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable, read once at start. An empty value counts as",
        "unset; a value of the wrong type or out of its bounds stops the process with a message",
        "naming the variable. Generated from `gateway/settings.py` by",
        "`python -m gateway.settings > docs/settings.md`; a test keeps the two equal.",
        "",
        "A secret (listed below with its `NAME_FILE` twin) may instead be read from a file: when",
        "`NAME` is unset and `NAME_FILE` names a file (a Kubernetes secret volume, a Docker",
        "secret), the file's content, its trailing newline stripped, is the value. Setting both",
        "stops the process, as does a file that cannot be read (the message names the variable",
        "and the path, never the content).",
    ]
    by_group: dict[Group, list[dataclasses.Field[Any]]] = {group: [] for group in Group}
    for spec_field in dataclasses.fields(Settings):
        by_group[spec_field.metadata["setting"].group].append(spec_field)
    for group, members in by_group.items():
        if not members:
            continue
        lines += ["", f"## {group}", "", "| Variable | Type | Default | Accepts | What it does |"]
        lines.append("|---|---|---|---|---|")
        for spec_field in members:
            spec: Setting = spec_field.metadata["setting"]
            variable = f"`{spec.env}`" if spec.env else f"(`{spec_field.name}`)"
            if spec.aliases:
                variable += " (formerly " + ", ".join(f"`{a}`" for a in spec.aliases) + ")"
            if spec.secret:
                variable += f" or `{spec.env}_FILE`"
            kind = hints[spec_field.name]
            default = _default_text(spec, spec_field.default)
            lines.append(
                f"| {variable} | {_type_text(kind)} | {default} | {_accepts_text(spec, kind)} "
                f"| {spec.doc} |"
            )
    return "\n".join(lines) + "\n"


def _type_text(kind: Any) -> str:
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(kind, "list")


def _default_text(spec: Setting, default: Any) -> str:
    if spec.default_text is not None:
        return f"`{spec.default_text}`" if "{" in spec.default_text else spec.default_text
    if default == "" or default == ():
        return "unset"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    return f"`{default}`"


def _accepts_text(spec: Setting, kind: Any) -> str:
    if spec.choices:
        return ", ".join(f"`{choice}`" for choice in spec.choices)
    if kind in (int, float) and (spec.minimum is not None or spec.maximum is not None):
        return _bounds_text(spec)
    if kind is bool:
        return "`true`/`false` (also 1/0, yes/no, on/off)"
    return ""


if __name__ == "__main__":
    print(reference(), end="")
