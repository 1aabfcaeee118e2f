"""The one Protocol every runtime adapter implements, and what it exchanges with the gateway."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

import aiohttp
import yarl

from store.enums import TERMINAL_STATUSES, RunStatus, RuntimeKind


def loads_json(raw: bytes | str) -> Any:
    """Strict JSON: ``NaN`` and ``Infinity`` (which Python accepts and PostgreSQL's ``jsonb``
    does not) are refused like any other invalid JSON, with ``ValueError``."""
    return json.loads(raw, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end, or its first ``limit`` bytes when it is longer.

    ``StreamReader.read(n)`` answers with whatever has arrived so far (one TCP read's worth),
    not with ``n`` bytes: a body that arrives in pieces must be read until it ends.
    """
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


OpenSecrets = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""What an adapter opens an agent's runtime with before it calls the runtime: the gateway's
sealed runtime secrets (``gateway.security.runtime_secrets``) in plaintext, for that call only.
It raises :class:`RuntimeRefused` when they do not open."""


def keep_runtime(runtime: Mapping[str, Any]) -> Mapping[str, Any]:
    """The runtime as given (nothing sealed in it): the adapters' default opener."""
    return runtime


class RuntimeFailure(Exception):
    """Base of the failures an adapter reports."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime could not be invoked at all (refused, unresolvable, reset before headers)."""


# What a run that timed out waiting for its runtime says, wherever the window elapsed.
WINDOW_ELAPSED = "Runtime did not respond within the wait window"


class RuntimeTimeout(RuntimeFailure):
    """The runtime sent no answer within the wait window."""


class RuntimeUnsupported(RuntimeFailure):
    """The runtime kind cannot serve this kind of run."""


class RuntimeRefused(RuntimeFailure):
    """The runtime answered and refused for good (bad credentials, unknown task or run)."""


class RuntimeRedirected(RuntimeRefused):
    """The runtime answered with a redirect. No runtime call follows one (``allow_redirects=False``
    everywhere): the trigger payload and the agent's auth headers never reach another origin."""


def is_redirect(response: aiohttp.ClientResponse) -> bool:
    """Whether ``response`` is a ``3xx`` (with redirects off, aiohttp hands those back as is)."""
    return 300 <= response.status < 400


def redirect_failure(response: aiohttp.ClientResponse) -> RuntimeRedirected:
    """The failure a redirect is: ``RuntimeRedirected: HTTP 307 to <origin>`` (the target's
    scheme, host and port only; its path and query may carry tokens)."""
    location = response.headers.get("Location")
    where = "no Location"
    if location:
        try:
            target = response.url.join(yarl.URL(location))
            where = str(target.origin()) if target.host else "an invalid Location"
        except ValueError:
            where = "an invalid Location"
    return RuntimeRedirected(f"RuntimeRedirected: HTTP {response.status} to {where}")


def connection_failure(exc: BaseException) -> str:
    """What a failed connection to a runtime was, without its host name or address (those stay
    in the logs): ``Cannot connect to the runtime (Connection refused)``."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "The runtime URL is invalid"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return "Cannot resolve the runtime's host name"
        # The errno's own text: strerror may carry the address.
        reason = os.strerror(os_error.errno) if os_error.errno else type(os_error).__name__
        return f"Cannot connect to the runtime ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "The runtime closed the connection before answering"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS with the runtime failed"
    return f"The runtime connection failed ({type(exc).__name__})"


class RuntimeRetryLater(RuntimeFailure):
    """A transient failure (overloaded, not readable yet, network): ask again later.

    ``delay_s`` is the runtime's own hint (e.g. its rate-limit reset), when it gave one.
    """

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


@dataclass(frozen=True, slots=True)
class TriggerPayload:
    """What a runtime receives when a run starts (docs/architecture.md)."""

    run_id: int
    agent_id: int
    input: Mapping[str, Any]
    agent_api_key: str
    callback_url: str
    credentials_token: str | None = None
    # Unique to this run even across databases (a fresh dev database reuses run ids), so a
    # runtime that deduplicates triggers never mistakes a new run for an old one.
    idempotency_key: str = ""
    # Declared input fields, also given at the top level of the payload (workflow execute's
    # <api.fieldName> beside <api.input.fieldName>); the payload's own keys always win.
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Headers the runtime call carries for the request that started the run, never in the
    # body: ``X-Request-Id`` and the W3C ``traceparent``/``tracestate`` (the gateway fills
    # them; adapters only pass them on, under the agent's own configured headers).
    trace_headers: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The payload as the JSON body the runtime sees."""
        return {
            **self.fields,
            "runId": self.run_id,
            "agentId": self.agent_id,
            "input": dict(self.input),
            "agentApiKey": self.agent_api_key,
            "credentialsToken": self.credentials_token,
            "callbackUrl": self.callback_url,
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a runtime says about a run: its state and, once terminal, output or error.

    ``status`` is one of the gateway's run states. ``has_output`` tells an output of ``None``
    (the task returned null) from no output at all.
    """

    status: RunStatus
    output: Any = None
    has_output: bool = False
    error: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the run has ended on the runtime."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Invocation:
    """How a runtime took a run.

    ``result`` is set when the runtime answered with the run's outcome in the same call (an
    n8n webhook ending in "Respond to Webhook"). ``runtime_run_id`` is set when the runtime
    runs it on its own and must be followed by polling (a Trigger.dev task). Neither is set
    when the runtime accepted the run and will report through callbacks.
    """

    result: RunResult | None = None
    runtime_run_id: str | None = None


# n8n's StructuredChunk types (packages/workflow: ChunkType = 'begin' | 'item' | 'end' | 'error').
CHUNK_TYPES = frozenset({"begin", "item", "end", "error"})


# A NamedTuple, not a frozen dataclass: one is built per streamed chunk, and a tuple is built
# in a fraction of the time (a frozen dataclass sets each field through object.__setattr__).
class StreamChunk(NamedTuple):
    """One chunk a runtime streamed while a run works, from one of its nodes (blocks).

    ``kind`` is ``begin`` (the node starts an item), ``item`` (a piece of its output),
    ``end`` (the item is complete) or ``error`` (the node failed; ``content`` says why).
    """

    kind: str
    node_id: str
    node_name: str
    content: str = ""
    item_index: int = 0
    run_index: int = 0


class ChunkStream(Protocol):
    """A runtime's streamed answer: its chunks as they arrive, then possibly a result.

    Iterating yields :class:`StreamChunk` s and, at most once and last, a :class:`RunResult`
    when the runtime answered with a plain result instead of (or after) chunks: ``completed``
    with its output, ``failed`` with its reason, or ``running`` when it took the run to report
    through callbacks. Transport failures raise ``aiohttp.ClientError``; a chunk that cannot be
    read raises :class:`RuntimeFailure`.
    """

    def __aiter__(self) -> AsyncIterator[StreamChunk | RunResult]:
        """The chunks, read as they arrive (never collected first)."""
        ...

    def close(self) -> None:
        """Drop the connection to the runtime (at once; safe to call twice)."""
        ...


@dataclass(frozen=True, slots=True)
class RunChange:
    """What a runtime's real-time feed said about one of its runs.

    ``result`` is the run's state as the feed carries it; ``complete`` is False when the feed
    only points at the output (stored elsewhere by the runtime): a poll reads it then.
    """

    runtime_run_id: str
    result: RunResult
    complete: bool = True


@dataclass(frozen=True, slots=True)
class FeedBatch:
    """One answer of a real-time feed: the runs it changed, and whether it was a snapshot
    (every run the feed carries, as it is now) rather than the changes since the last answer."""

    changes: tuple[RunChange, ...]
    snapshot: bool


class RunFeed(Protocol):
    """A real-time subscription to the runs of one runtime environment."""

    def batches(self) -> AsyncIterator[FeedBatch]:
        """The feed's answers, a snapshot first, for as long as it stays connected.

        Ends by raising :class:`RuntimeRetryLater` (the connection failed or the runtime asked
        to be left alone) or :class:`RuntimeRefused` (it refuses this subscription for good).
        """
        ...


class FollowsInRealTime(Protocol):
    """An optional capability of a runtime adapter: following runs through one real-time
    subscription per runtime environment instead of polling each run."""

    def environment(self, runtime: Mapping[str, Any]) -> str:
        """A key naming the environment an agent's runtime config belongs to (one feed each)."""
        ...

    def feed(self, runtime: Mapping[str, Any]) -> RunFeed:
        """A subscription to the runs this adapter triggered in ``runtime``'s environment."""
        ...


class RuntimeAdapter(Protocol):
    """A workflow runtime the gateway can start runs on.

    Adapters speak HTTP to their runtime and never touch the database.
    """

    kind: ClassVar[RuntimeKind]
    # True when the runtime runs a run on its own after the trigger call and is followed by
    # polling (the run stays queued until the runtime says it executes); False when the
    # invocation itself runs it.
    followed: ClassVar[bool]
    # True when the runtime can stream a run's output as it is produced (open_stream).
    streams: ClassVar[bool]

    async def open_stream(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> ChunkStream:
        """Start the run and return its streamed answer once the runtime's headers arrived.

        Raises :class:`RuntimeTimeout` (no headers within ``wait_s``), :class:`RuntimeUnavailable`
        (unreachable), :class:`RuntimeRefused` (the runtime refused the call) or
        :class:`RuntimeUnsupported` (this runtime cannot stream).
        """
        ...

    def acknowledges(self, runtime: Mapping[str, Any], status: int, body: Any) -> bool:
        """Whether the runtime's answer ``status`` (with ``body``, its parsed JSON, or ``None``
        before it is read) only says it took the run, whose result comes through callbacks."""
        ...

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Start the run and return the runtime's response once its headers arrived.

        The body is left unread for the caller to stream; the caller must release or close
        the response. Raises :class:`RuntimeTimeout` when no headers arrive within ``wait_s``
        and :class:`RuntimeUnavailable` when the runtime cannot be reached.
        """
        ...

    async def invoke(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> Invocation:
        """Start the run, waiting at most ``wait_s`` seconds for the runtime to take it.

        Raises :class:`RuntimeTimeout` when a runtime that answers synchronously says nothing
        in time, :class:`RuntimeUnavailable` or :class:`RuntimeRefused` when the run could not
        be started.
        """
        ...

    async def poll(self, runtime: Mapping[str, Any], runtime_run_id: str) -> RunResult:
        """The runtime's current view of a run it runs on its own.

        Raises :class:`RuntimeRetryLater` for a transient failure, :class:`RuntimeRefused` when
        the runtime will never answer for this run, :class:`RuntimeUnsupported` for a runtime
        that is never polled.
        """
        ...

    async def cancel(self, runtime: Mapping[str, Any], runtime_run_id: str) -> None:
        """Ask the runtime to stop a run it runs on its own (a no-op where there is none)."""
        ...
