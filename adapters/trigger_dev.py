"""Trigger.dev: runs are task runs, triggered once and then followed by polling.

The REST calls (Trigger.dev v3/v4, read from its source):

- ``invoke``: ``POST {api_url}/api/v1/tasks/{task_id}/trigger`` with ``Authorization: Bearer
  <secret_key>`` and ``{"payload": ..., "options": {"idempotencyKey": ...}}``; ``200
  {"id": "run_…", "isCached": bool}``. The call only enqueues the run, so transient failures
  (connection errors, ``408``/``409``/``429``/``5xx``, or ``x-should-retry: true``) are retried
  within ``wait_s``: the idempotency key makes a repeated trigger return the same run.
- ``poll``: ``GET {api_url}/api/v3/runs/{id}`` with ``x-trigger-api-version: 2025-07-16``. The
  run's state is read from its ``status`` name only (``isCompleted`` is false for ``EXPIRED``
  and ``TIMED_OUT``). ``output`` is the task's return value, already deserialised; a large one
  is offloaded behind ``outputPresignedUrl`` and fetched (without credentials) like the SDK does:
  parsed by its ``Content-Type`` (``application/super+json``, ``application/json``,
  ``text/plain``).
- ``cancel``: ``POST {api_url}/api/v2/runs/{id}/cancel``.
- ``feed``: the runs it triggered carry a tag (``options.tags``; Trigger.dev takes at most 10
  tags of at most 128 characters, ``packages/core/src/v3/schemas/api.ts``), and
  ``GET {api_url}/realtime/v1/runs?tags=<tag>`` follows all of them in one subscription (see
  :class:`TriggerDevRunFeed`).

The secret key never appears in an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp

from adapters.base import (
    ChunkStream,
    FeedBatch,
    Invocation,
    OpenSecrets,
    RunChange,
    RunResult,
    RuntimeRefused,
    RuntimeRetryLater,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
    connection_failure,
    is_redirect,
    keep_runtime,
    loads_json,
    read_bounded,
    redirect_failure,
)
from store.enums import RunStatus, RuntimeKind

API_VERSION = "2025-07-16"
# What Trigger.dev's SDK sends on realtime requests (packages/core/src/v3/apiClient/stream.ts);
# without it the webapp renames Electric's headers and expects ``shape_id`` for ``handle``.
ELECTRIC_VERSION = "1.0.0-beta.1"
MAX_TAG_LENGTH = 128
# Characters Trigger.dev refuses in a realtime tag filter (UNSAFE_REALTIME_TAG_CHARS in
# apps/webapp/app/v3/electricShape.server.ts); a comma would split the ``tags=`` filter.
UNSAFE_TAG_CHARS = re.compile(r'[\x00-\x1f\x7f\\",]')

# Trigger.dev's run status names (current and older API versions) → the gateway's states.
STATUS_MAP: Mapping[str, RunStatus] = {
    "PENDING_VERSION": RunStatus.QUEUED,
    "QUEUED": RunStatus.QUEUED,
    "DELAYED": RunStatus.QUEUED,
    "WAITING_FOR_DEPLOY": RunStatus.QUEUED,
    "DEQUEUED": RunStatus.RUNNING,
    "EXECUTING": RunStatus.RUNNING,
    "REATTEMPTING": RunStatus.RUNNING,
    "WAITING": RunStatus.WAITING,
    "FROZEN": RunStatus.WAITING,
    "COMPLETED": RunStatus.COMPLETED,
    "CANCELED": RunStatus.CANCELLED,
    "FAILED": RunStatus.FAILED,
    "CRASHED": RunStatus.FAILED,
    "SYSTEM_FAILURE": RunStatus.FAILED,
    "EXPIRED": RunStatus.FAILED,
    "TIMED_OUT": RunStatus.FAILED,
    "INTERRUPTED": RunStatus.FAILED,
}

# The TaskRun table's status names, as the realtime rows carry them → the gateway's states
# (apiStatusFromRunStatus in packages/core/src/v3/apiClient/runStream.ts names them all).
ROW_STATUS_MAP: Mapping[str, RunStatus] = {
    "PENDING": RunStatus.QUEUED,
    "PENDING_VERSION": RunStatus.QUEUED,
    "WAITING_FOR_DEPLOY": RunStatus.QUEUED,
    "DELAYED": RunStatus.QUEUED,
    "DEQUEUED": RunStatus.RUNNING,
    "EXECUTING": RunStatus.RUNNING,
    "RETRYING_AFTER_FAILURE": RunStatus.RUNNING,
    "WAITING_TO_RESUME": RunStatus.WAITING,
    "PAUSED": RunStatus.WAITING,
    "COMPLETED_SUCCESSFULLY": RunStatus.COMPLETED,
    "CANCELED": RunStatus.CANCELLED,
    "COMPLETED_WITH_ERRORS": RunStatus.FAILED,
    "INTERRUPTED": RunStatus.FAILED,
    "CRASHED": RunStatus.FAILED,
    "SYSTEM_FAILURE": RunStatus.FAILED,
    "EXPIRED": RunStatus.FAILED,
    "TIMED_OUT": RunStatus.FAILED,
}
# Columns the feed does not need (the payload can be large); Trigger.dev's ``skipColumns``.
_SKIPPED_COLUMNS = "payload,payloadType,metadata,metadataType,realtimeStreams"
# Columns kept of a row between answers: an update carries only the ones that changed.
_KEPT_COLUMNS = ("friendlyId", "status", "output", "outputType", "error", "completedAt")

_MAX_ERROR_BODY = 64 * 1024
_MAX_ERROR_TEXT = 2000
# The run body carries the payload as well as the output: allow it some room over the output.
_RUN_BODY_SLACK = 1024 * 1024
_TRANSIENT_STATUSES = frozenset({408, 409, 429})


class _Transient(Exception):
    """A trigger attempt that may be repeated; ``delay_s`` is the runtime's hint."""

    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class TriggerDevAdapter:
    """Triggers a Trigger.dev task with the run's payload, then polls the run it created.

    The agent's runtime config holds ``api_url`` (e.g. ``https://api.trigger.dev``),
    ``task_id`` and ``secret_key``.
    """

    kind: ClassVar[RuntimeKind] = RuntimeKind.TRIGGER_DEV
    # The trigger call only enqueues the run: its progress is followed by polling.
    followed: ClassVar[bool] = True
    streams: ClassVar[bool] = False

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_result_bytes: int = 10 * 1024 * 1024,
        request_timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_s: float = 0.25,
        run_tag: str | None = None,
        feed_timeout_s: float = 30.0,
        open_secrets: OpenSecrets = keep_runtime,
    ) -> None:
        if run_tag is not None and (
            not run_tag or len(run_tag) > MAX_TAG_LENGTH or UNSAFE_TAG_CHARS.search(run_tag)
        ):
            raise ValueError(f"{run_tag!r} cannot be a Trigger.dev run tag")
        self._session = session
        self._run_tag = run_tag
        self._feed_timeout_s = feed_timeout_s
        self._max_result_bytes = max_result_bytes
        self._request_timeout_s = request_timeout_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._open_secrets = open_secrets

    def acknowledges(self, runtime: Mapping[str, Any], status: int, body: Any) -> bool:
        """Never: a task's trigger answer names the run, which is then followed."""
        return False

    async def open_stream(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> ChunkStream:
        """Trigger.dev tasks are followed by polling: there is no answer to stream."""
        raise RuntimeUnsupported("Trigger.dev tasks cannot stream their output")

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Trigger.dev tasks return JSON through polling: there is no response to stream."""
        raise RuntimeUnsupported("Trigger.dev tasks cannot stream a file download")

    async def invoke(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> Invocation:
        """Trigger the task and return the run id, retrying transient failures within ``wait_s``.

        Raises :class:`RuntimeRefused` when Trigger.dev refuses the trigger (unknown task, bad
        key, invalid payload) and :class:`RuntimeUnavailable` when it could not be reached or
        kept failing until the retries or ``wait_s`` ran out.
        """
        runtime = self._open_secrets(runtime)
        url = f"{_api_url(runtime)}/api/v1/tasks/{quote(str(runtime['task_id']), safe='')}/trigger"
        options: dict[str, Any] = {"idempotencyKey": payload.idempotency_key or str(payload.run_id)}
        if self._run_tag is not None:
            # What the environment's realtime feed follows (one subscription for all runs).
            options["tags"] = [self._run_tag]
        body = {"payload": payload.to_json(), "options": options}
        # The request's id and trace context (Trigger.dev's trigger path reads the
        # traceparent), under the environment's auth.
        headers = {**payload.trace_headers, **_auth(runtime)}
        secret = str(runtime.get("secret_key", ""))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        reason = "no attempt made"
        for attempt in range(self._max_attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(min(remaining, self._request_timeout_s)):
                    return await self._trigger_once(url, body, headers, secret)
            except _Transient as exc:
                reason, hint = exc.reason, exc.delay_s
            except TimeoutError:
                reason, hint = "no answer in time", None
            except aiohttp.InvalidURL:
                raise RuntimeUnavailable("Trigger.dev URL is invalid") from None
            except (aiohttp.ClientError, OSError) as exc:
                reason, hint = connection_failure(exc), None
            if attempt + 1 >= self._max_attempts:
                break
            delay = hint if hint is not None else self._backoff_s * 2**attempt
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        raise RuntimeUnavailable(f"Trigger.dev trigger failed: {reason}")

    async def poll(self, runtime: Mapping[str, Any], runtime_run_id: str) -> RunResult:
        """Read the run once and map its status name to the gateway's run state.

        Raises :class:`RuntimeRetryLater` for anything transient (not readable yet, rate
        limited, 5xx, network, a broken body) and :class:`RuntimeRefused` when Trigger.dev
        will never answer for this run (bad key, unknown run).
        """
        runtime = self._open_secrets(runtime)
        url = f"{_api_url(runtime)}/api/v3/runs/{quote(runtime_run_id, safe='')}"
        headers = {**_auth(runtime), "x-trigger-api-version": API_VERSION}
        secret = str(runtime.get("secret_key", ""))
        limit = self._max_result_bytes + _RUN_BODY_SLACK
        try:
            async with asyncio.timeout(self._request_timeout_s):
                async with self._session.get(
                    url, headers=headers, allow_redirects=False
                ) as response:
                    if is_redirect(response):
                        raise redirect_failure(response)
                    if response.status >= 300:
                        raw = await read_bounded(response.content, _MAX_ERROR_BODY)
                        _raise_for_poll(response, raw, secret)
                    raw = await read_bounded(response.content, limit + 1)
        except TimeoutError:
            raise RuntimeRetryLater("Trigger.dev did not answer the run poll in time") from None
        except aiohttp.InvalidURL:
            raise RuntimeRefused("Trigger.dev URL is invalid") from None
        except (aiohttp.ClientError, OSError) as exc:
            message = f"Trigger.dev run poll failed: {connection_failure(exc)}"
            raise RuntimeRetryLater(message) from None
        if len(raw) > limit:
            return RunResult(
                RunStatus.FAILED, error=f"TriggerDevResultTooLarge: run over {limit} bytes"
            )
        try:
            run = loads_json(raw)
        except (ValueError, RecursionError):
            raise RuntimeRetryLater("Trigger.dev answered the run poll with no JSON") from None
        if not isinstance(run, dict) or not isinstance(run.get("status"), str):
            raise RuntimeRetryLater("Trigger.dev answered the run poll without a status")
        return await self._result(run)

    async def cancel(self, runtime: Mapping[str, Any], runtime_run_id: str) -> None:
        """Ask Trigger.dev to cancel the run (and its children).

        Raises :class:`RuntimeRetryLater` for a transient failure, :class:`RuntimeRefused` when
        Trigger.dev refuses (bad key, unknown or already finished run), and
        :class:`RuntimeUnavailable` when the URL is unusable.
        """
        runtime = self._open_secrets(runtime)
        url = f"{_api_url(runtime)}/api/v2/runs/{quote(runtime_run_id, safe='')}/cancel"
        secret = str(runtime.get("secret_key", ""))
        try:
            async with asyncio.timeout(self._request_timeout_s):
                async with self._session.post(
                    url, headers=_auth(runtime), allow_redirects=False
                ) as response:
                    if is_redirect(response):
                        raise redirect_failure(response)
                    if response.status < 300:
                        return
                    raw = await read_bounded(response.content, _MAX_ERROR_BODY)
        except TimeoutError:
            raise RuntimeRetryLater("Trigger.dev did not answer the cancel in time") from None
        except aiohttp.InvalidURL:
            raise RuntimeUnavailable("Trigger.dev URL is invalid") from None
        except (aiohttp.ClientError, OSError) as exc:
            message = f"Trigger.dev cancel failed: {connection_failure(exc)}"
            raise RuntimeRetryLater(message) from None
        reason = _redact(_reason(response.status, raw), secret)
        if _is_transient(response):
            raise RuntimeRetryLater(
                f"Trigger.dev cancel failed: {reason}", delay_s=_reset_delay_s(response)
            )
        raise RuntimeRefused(f"Trigger.dev refused the cancel: {reason}")

    def environment(self, runtime: Mapping[str, Any]) -> str:
        """The Trigger.dev environment of an agent's runtime: its API URL and secret key (each
        key belongs to one environment). The key is hashed: this names logs and metrics."""
        # One that does not open is grouped apart, under its sealed form: its runs fail anyway.
        with contextlib.suppress(RuntimeRefused):
            runtime = self._open_secrets(runtime)
        digest = hashlib.sha256(str(runtime.get("secret_key", "")).encode()).hexdigest()[:16]
        return f"{_api_url(runtime)}#{digest}"

    def feed(self, runtime: Mapping[str, Any]) -> TriggerDevRunFeed:
        """The realtime feed of the runs this adapter tagged in ``runtime``'s environment.

        Raises ``ValueError`` when the adapter tags no runs (there would be nothing to follow).
        """
        if self._run_tag is None:
            raise ValueError("runs are not tagged: there is no feed to follow")
        return TriggerDevRunFeed(
            self._session,
            self._open_secrets(runtime),
            tag=self._run_tag,
            timeout_s=self._feed_timeout_s,
            max_result_bytes=self._max_result_bytes,
        )

    async def _trigger_once(
        self, url: str, body: dict[str, Any], headers: dict[str, str], secret: str
    ) -> Invocation:
        async with self._session.post(
            url, json=body, headers=headers, allow_redirects=False
        ) as response:
            if is_redirect(response):
                raise redirect_failure(response)
            if response.status >= 300:
                raw = await read_bounded(response.content, _MAX_ERROR_BODY)
                reason = _redact(_reason(response.status, raw), secret)
                if _is_transient(response):
                    raise _Transient(reason, _reset_delay_s(response))
                if response.status < 500:
                    raise RuntimeRefused(f"Trigger.dev refused the trigger: {reason}")
                raise RuntimeUnavailable(f"Trigger.dev trigger failed: {reason}")
            raw = await read_bounded(response.content, _MAX_ERROR_BODY)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        run_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(run_id, str) or not run_id:
            raise RuntimeUnavailable(
                f"Trigger.dev accepted the trigger without a run id (HTTP {response.status})"
            )
        return Invocation(runtime_run_id=run_id)

    async def _result(self, run: dict[str, Any]) -> RunResult:
        name = str(run["status"])
        status = STATUS_MAP.get(name, RunStatus.RUNNING)  # an unknown (newer) name: keep following
        if status == RunStatus.COMPLETED:
            if "output" in run and run["output"] is not None:
                return RunResult(RunStatus.COMPLETED, output=run["output"], has_output=True)
            presigned = run.get("outputPresignedUrl")
            if isinstance(presigned, str) and presigned:
                return await self._offloaded_output(presigned)
            return RunResult(RunStatus.COMPLETED, output=None, has_output="output" in run)
        if status == RunStatus.FAILED:
            return RunResult(RunStatus.FAILED, error=_error_text(run.get("error"), name))
        return RunResult(status)

    async def _offloaded_output(self, url: str) -> RunResult:
        """Fetch an output Trigger.dev stored behind a presigned URL (no credentials sent)."""
        limit = self._max_result_bytes
        try:
            async with asyncio.timeout(self._request_timeout_s):
                async with self._session.get(url, allow_redirects=False) as response:
                    if is_redirect(response):
                        # The presigned URL is fetched as is, never followed elsewhere.
                        return RunResult(RunStatus.FAILED, error=str(redirect_failure(response)))
                    if response.status >= 300:
                        # The URL expires after a few minutes; the next poll gets a fresh one.
                        raise RuntimeRetryLater(
                            f"Trigger.dev output download failed: HTTP {response.status}"
                        )
                    content_type = response.headers.get("Content-Type", "application/json")
                    raw = await read_bounded(response.content, limit + 1)
        except TimeoutError:
            raise RuntimeRetryLater("Trigger.dev output download timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeRetryLater(
                f"Trigger.dev output download failed: {type(exc).__name__}"
            ) from None
        if len(raw) > limit:
            return RunResult(
                RunStatus.FAILED, error=f"TriggerDevResultTooLarge: over {limit} bytes"
            )
        try:
            output = _parse_packet(raw, content_type)
        except (ValueError, RecursionError):
            return RunResult(RunStatus.FAILED, error=f"TriggerDevOutputInvalid: {content_type}")
        return RunResult(RunStatus.COMPLETED, output=output, has_output=True)


class TriggerDevRunFeed:
    """Every run carrying a tag in one Trigger.dev environment, followed in real time.

    Trigger.dev serves run changes over Electric's HTTP shape protocol (the webapp's
    ``apps/webapp/app/routes/realtime.v1.runs.ts`` and
    ``apps/webapp/app/services/realtimeClient.server.ts``; the SDK's client is
    ``packages/core/src/v3/apiClient/stream.ts`` over Electric's ``ShapeStream``):

    - the first request has ``offset=-1``: the current rows, then an ``up-to-date`` control
      message; each answer's ``electric-offset``, ``electric-handle`` and ``electric-cursor``
      headers are sent back as ``offset``, ``handle`` and ``cursor``, with ``live=true`` once up
      to date: the server holds a live request (about 20 s) until a row changes;
    - a ``409`` (or a ``must-refetch`` control message) means the shape was rotated: the rows
      known are dropped and the feed starts again from ``offset=-1`` (a new snapshot);
    - messages are ``{"key", "value", "headers": {"operation"}}``; values are PostgreSQL text;
      an ``update`` carries only the changed columns, so rows are merged by ``key``;
    - rows carry the TaskRun table's status names (:data:`ROW_STATUS_MAP`); ``output`` is a
      serialised packet typed by ``outputType`` (``application/store`` when it is offloaded:
      the run's retrieve gives its URL, so such a change is marked incomplete);
    - ``tags=<tag>`` selects the runs carrying the tag, created within the last 24 hours.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        runtime: Mapping[str, Any],
        *,
        tag: str,
        timeout_s: float,
        max_result_bytes: int,
    ) -> None:
        self._session = session
        self._url = f"{_api_url(runtime)}/realtime/v1/runs"
        self._secret = str(runtime.get("secret_key", ""))
        self._headers = {
            **_auth(runtime),
            "x-trigger-api-version": API_VERSION,
            "x-trigger-electric-version": ELECTRIC_VERSION,
        }
        self._tag = tag
        self._timeout_s = timeout_s
        self._max_result_bytes = max_result_bytes
        # A snapshot carries every tagged run's output: allow it room over one output.
        self._body_limit = max(4 * max_result_bytes, 64 * 1024 * 1024)

    async def batches(self) -> AsyncIterator[FeedBatch]:
        """The feed's answers, a snapshot first, until the connection fails.

        Raises :class:`RuntimeRetryLater` when Trigger.dev cannot be reached, answers a
        transient error or something unreadable, and :class:`RuntimeRefused` when it refuses
        the subscription (bad key).
        """
        rows: dict[str, dict[str, str | None]] = {}
        offset, handle, cursor, live = "-1", "", "", False
        while True:
            params = {"tags": self._tag, "offset": offset, "skipColumns": _SKIPPED_COLUMNS}
            if handle:
                params["handle"] = handle
            if live:
                params["live"] = "true"
                if cursor:
                    params["cursor"] = cursor
            snapshot = offset == "-1"
            status, headers, raw = await self._request(params)
            if status == 409:
                # A rotated shape: start again with its new handle, from a new snapshot.
                rows.clear()
                offset, handle, cursor, live = "-1", headers.get("electric-handle", ""), "", False
                continue
            try:
                messages = loads_json(raw)
            except (ValueError, RecursionError):
                raise RuntimeRetryLater("Trigger.dev realtime answered no JSON") from None
            if not isinstance(messages, list):
                raise RuntimeRetryLater("Trigger.dev realtime answered something else than a list")
            changed: dict[str, None] = {}
            up_to_date = refetch = False
            for message in messages:
                if not isinstance(message, dict):
                    continue
                control = (message.get("headers") or {}).get("control")
                if control == "up-to-date":
                    up_to_date = True
                elif control == "must-refetch":
                    refetch = True
                    break
                elif isinstance(message.get("key"), str):
                    _merge(rows, message)
                    changed[message["key"]] = None
            if refetch:
                rows.clear()
                offset, handle, cursor, live = "-1", "", "", False
                continue
            changes = tuple(
                change for key in changed if (change := self._change(rows, key)) is not None
            )
            yield FeedBatch(changes, snapshot=snapshot)
            offset = headers.get("electric-offset", offset)
            handle = headers.get("electric-handle", handle)
            cursor = headers.get("electric-cursor", "")
            live = live or up_to_date

    async def _request(self, params: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.get(
                    self._url, params=params, headers=self._headers, allow_redirects=False
                ) as response:
                    if is_redirect(response):
                        raise redirect_failure(response)
                    if response.status == 409:
                        return 409, response.headers, b""
                    if response.status >= 300:
                        raw = await read_bounded(response.content, _MAX_ERROR_BODY)
                        reason = _redact(_reason(response.status, raw), self._secret)
                        if _is_transient(response) or response.status == 400:
                            # 400: a handle or offset the server no longer takes; start again.
                            raise RuntimeRetryLater(
                                f"Trigger.dev realtime failed: {reason}",
                                delay_s=_reset_delay_s(response),
                            )
                        raise RuntimeRefused(f"Trigger.dev refused the realtime feed: {reason}")
                    raw = await read_bounded(response.content, self._body_limit + 1)
                    headers = response.headers
        except TimeoutError:
            raise RuntimeRetryLater("Trigger.dev realtime did not answer in time") from None
        except aiohttp.InvalidURL:
            raise RuntimeRefused("Trigger.dev URL is invalid") from None
        except (aiohttp.ClientError, OSError) as exc:
            message = _redact(
                f"Trigger.dev realtime failed: {type(exc).__name__}: {exc}", self._secret
            )
            raise RuntimeRetryLater(message) from None
        if len(raw) > self._body_limit:
            raise RuntimeRetryLater(f"Trigger.dev realtime answer over {self._body_limit} bytes")
        return response.status, headers, raw

    def _change(self, rows: dict[str, dict[str, str | None]], key: str) -> RunChange | None:
        row = rows.get(key)
        if row is None or not row.get("friendlyId") or not row.get("status"):
            return None
        run_id = str(row["friendlyId"])
        name = str(row["status"])
        status = ROW_STATUS_MAP.get(name, RunStatus.RUNNING)  # a newer name: keep following
        if status == RunStatus.FAILED:
            result = RunResult(status, error=_error_text(_json_or_text(row.get("error")), name))
        elif status == RunStatus.COMPLETED:
            if row.get("outputType") == "application/store":
                _forget_output(row)
                return RunChange(run_id, RunResult(status), complete=False)
            result = self._output(row)
        else:
            result = RunResult(status)
        if result.terminal:
            _forget_output(row)  # an ended run never changes again: keep only its name
        return RunChange(run_id, result)

    def _output(self, row: dict[str, str | None]) -> RunResult:
        raw = row.get("output")
        if raw is None:
            return RunResult(RunStatus.COMPLETED)
        if len(raw.encode()) > self._max_result_bytes:
            return RunResult(
                RunStatus.FAILED,
                error=f"TriggerDevResultTooLarge: over {self._max_result_bytes} bytes",
            )
        content_type = row.get("outputType") or "application/json"
        try:
            output = _parse_packet(raw.encode(), content_type)
        except (ValueError, RecursionError):
            return RunResult(RunStatus.FAILED, error=f"TriggerDevOutputInvalid: {content_type}")
        return RunResult(RunStatus.COMPLETED, output=output, has_output=True)


def _merge(rows: dict[str, dict[str, str | None]], message: dict[str, Any]) -> None:
    """Apply one change message to the rows known, by key (an update carries changed columns)."""
    key = message["key"]
    operation = (message.get("headers") or {}).get("operation")
    raw = message.get("value")
    value: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if operation == "delete":
        rows.pop(key, None)
        return
    kept = {name: value[name] for name in _KEPT_COLUMNS if name in value}
    if operation == "insert" or key not in rows:
        rows[key] = kept
    else:
        rows[key].update(kept)


def _forget_output(row: dict[str, str | None]) -> None:
    for name in ("output", "error"):
        row.pop(name, None)


def _json_or_text(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return loads_json(raw)
    except (ValueError, RecursionError):
        return raw


def _api_url(runtime: Mapping[str, Any]) -> str:
    return str(runtime["api_url"]).rstrip("/")


def _auth(runtime: Mapping[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {runtime['secret_key']}"}


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[secret]") if secret else text


def _is_transient(response: aiohttp.ClientResponse) -> bool:
    """Trigger.dev's own SDK retry rule: ``x-should-retry`` first, then the status."""
    directive = response.headers.get("x-should-retry", "").lower()
    if directive in ("true", "false"):
        return directive == "true"
    return response.status in _TRANSIENT_STATUSES or response.status >= 500


def _reset_delay_s(response: aiohttp.ClientResponse) -> float | None:
    """Seconds until a 429's ``x-ratelimit-reset`` (Unix ms), else ``Retry-After`` seconds."""
    if response.status != 429:
        return None
    reset = response.headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(int(reset) / 1000 - time.time(), 0.0)
        except ValueError:
            pass
    retry_after = response.headers.get("Retry-After")
    if retry_after and retry_after.strip().isdigit():
        return float(retry_after)
    return None


def _raise_for_poll(response: aiohttp.ClientResponse, raw: bytes, secret: str) -> None:
    reason = _redact(_reason(response.status, raw), secret)
    if _is_transient(response):
        raise RuntimeRetryLater(
            f"Trigger.dev run not readable: {reason}", delay_s=_reset_delay_s(response)
        )
    raise RuntimeRefused(f"Trigger.dev refused the run poll: {reason}")


def _reason(status: int, raw: bytes) -> str:
    """``HTTP <status>: <error>`` from a Trigger.dev error body (``{"error": ...}``)."""
    text = raw.decode("utf-8", "replace").strip()
    message = ""
    try:
        body = json.loads(text)
    except ValueError:
        message = text.splitlines()[0] if text else ""
    else:
        if isinstance(body, dict):
            for key in ("error", "message"):
                value = body.get(key)
                if isinstance(value, str):
                    message = value
                    break
                if isinstance(value, dict) and isinstance(value.get("message"), str):
                    message = value["message"]
                    break
    return f"HTTP {status}: {message[:300]}" if message else f"HTTP {status}"


def _error_text(error: Any, status_name: str) -> str:
    """``<name>: <message>`` from a run's serialised error, else the status it ended on."""
    text = ""
    if isinstance(error, dict):
        name = error.get("name") if isinstance(error.get("name"), str) else ""
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        text = f"{name}: {message}" if name and message else str(name or message)
    elif isinstance(error, str):
        text = error
    if not text.strip():
        text = f"Trigger.dev run ended {status_name}"
    return text[:_MAX_ERROR_TEXT]


def _parse_packet(raw: bytes, content_type: str) -> Any:
    """Decode an offloaded packet the way Trigger.dev's ``parsePacket`` does.

    Task outputs are stored as SuperJSON (``{"json": value, "meta": ...}``); the plain JSON
    value is kept (values SuperJSON revives, such as dates, stay in their JSON form).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/plain":
        return raw.decode("utf-8", "replace")
    value = loads_json(raw)
    if media == "application/super+json" and isinstance(value, dict) and "json" in value:
        return value["json"]
    return value
