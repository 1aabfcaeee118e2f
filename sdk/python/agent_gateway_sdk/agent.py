"""The agent SDK's exports, Pythonic and async (aiohttp).

Every function takes the gateway's ``base_url`` and a key, and optionally an
``aiohttp.ClientSession`` to reuse connections; without one, each call opens and closes its
own. HTTP errors raise :class:`~agent_gateway_sdk.errors.GatewayError`
(:class:`~agent_gateway_sdk.errors.RateLimited` for 429, with ``retry_after_s``).

Calls are retried (``retries``, default 3; ``0`` turns it off) after a 429 or a 503, waiting
what ``Retry-After`` asks when that is at most ``max_retry_delay_ms``, and after a connection
failure when repeating the call is safe: the triggers (each sends an ``Idempotency-Key``, the
caller's or one of its own, the same on every attempt), ``get_run``, ``cancel_run``,
``register_run`` and ``resolve_credential``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp

from agent_gateway_sdk.errors import GatewayError, RateLimited
from agent_gateway_sdk.models import (
    CallbackAccepted,
    CancelledRun,
    Credential,
    IngestedRun,
    RegisteredRun,
    Run,
    TimedOut,
    TriggeredRun,
)

T = TypeVar("T")

# Calls that answer at once.
_QUICK = aiohttp.ClientTimeout(total=60, connect=30)
# Calls the gateway holds open while a run works (the server caps the wait): no total bound.
_HELD = aiohttp.ClientTimeout(total=None, connect=30)
_ERROR_BODY_LIMIT = 1024 * 1024
_CHUNK = 256 * 1024
_TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_RETRIES = 3
DEFAULT_MAX_RETRY_DELAY_MS = 30_000.0


@dataclass(frozen=True, slots=True)
class _Retry:
    """How a call is retried: ``retries`` more attempts at most, pauses of at most ``max_ms``."""

    retries: int = DEFAULT_RETRIES
    max_ms: float = DEFAULT_MAX_RETRY_DELAY_MS


async def _retrying(
    retry: _Retry,
    safe: bool,
    attempt: Callable[[], Awaitable[T]],
    on_cut_off: Callable[[], None] | None = None,
) -> T:
    """Make ``attempt`` until it succeeds, retrying a 429 or 503 (after its ``Retry-After`` when
    that is within ``retry.max_ms``, else exponential backoff with jitter) and, when the call is
    ``safe`` to repeat, a connection failure (``on_cut_off`` hears of each)."""
    tried = 0
    while True:
        try:
            return await attempt()
        except GatewayError as exc:
            if tried >= retry.retries or exc.status not in (429, 503):
                raise
            delay_ms = (
                _backoff_ms(tried, retry.max_ms)
                if exc.retry_after_s is None
                else exc.retry_after_s * 1000
            )
            if delay_ms > retry.max_ms:
                raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            if not safe or tried >= retry.retries:
                raise
            if on_cut_off is not None:
                on_cut_off()
            delay_ms = _backoff_ms(tried, retry.max_ms)
        tried += 1
        await asyncio.sleep(delay_ms / 1000)


def _backoff_ms(tried: int, max_ms: float) -> float:
    """500 ms doubling per retry, at most ``max_ms``, half of it random."""
    ceiling = min(max_ms, 500.0 * 2.0**tried)
    return ceiling / 2 + random.random() * ceiling / 2


def _idempotency_key(given: str | None) -> str:
    """The caller's key, or a new random one for this call and its retries."""
    return given if given is not None else str(uuid.uuid4())


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks an optional argument that was not given (``None`` is a value: a null output)."""


class _Http:
    """One call's session: the caller's, or a private one closed when the call is done."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._given = session
        self._own: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = aiohttp.ClientSession()
        return self._own

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json: Any = None,
        client_timeout: aiohttp.ClientTimeout = _QUICK,
    ) -> aiohttp.ClientResponse:
        """Send; an error status is raised, a success answered with its response open."""
        response = await self.session.request(
            method, self.base_url + path, headers=dict(headers), json=json, timeout=client_timeout
        )
        if response.status >= 400:
            try:
                raise await _error(response)
            finally:
                response.release()
        return response

    async def json(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json: Any = None,
        client_timeout: aiohttp.ClientTimeout = _QUICK,
    ) -> tuple[int, Mapping[str, str], Any]:
        """Status, headers and JSON body of a call that answers JSON."""
        response = await self.request(
            method, path, headers=headers, json=json, client_timeout=client_timeout
        )
        async with response:
            return response.status, response.headers, await response.json(content_type=None)


async def _error(response: aiohttp.ClientResponse) -> GatewayError:
    # One read returns only what has arrived; read to the end (bounded).
    raw = b""
    while len(raw) < _ERROR_BODY_LIMIT and (
        chunk := await response.content.read(_ERROR_BODY_LIMIT - len(raw))
    ):
        raw += chunk
    body: Any
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    if response.status == 429:
        return RateLimited(429, body, retry_after_s=_retry_after(response.headers, body))
    if response.status == 503:
        return GatewayError(503, body, retry_after_s=_retry_after_header(response.headers))
    return GatewayError(response.status, body)


def _retry_after(headers: Mapping[str, str], body: Any) -> float:
    """The delay a 429 asks for: ``retryAfterMs`` when given, else ``Retry-After``, else 1 s."""
    if isinstance(body, dict) and isinstance(body.get("retryAfterMs"), int | float):
        return max(0.0, float(body["retryAfterMs"]) / 1000)
    given = _retry_after_header(headers)
    return 1.0 if given is None else given


def _retry_after_header(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) in seconds from now; None when absent or bad."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, at.timestamp() - time.time())


async def _with(http: _Http, call: Awaitable[T]) -> T:
    try:
        return await call
    finally:
        await http.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _trigger_body(
    input: Mapping[str, Any] | None, user_id: str | None, timeout_ms: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": dict(input or {})}
    if user_id is not None:
        body["userId"] = str(user_id)
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    return body


async def trigger_run(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    input: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    idempotency_key: str | None = None,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> TriggeredRun:
    """Start a platform-managed run; answers at once with its id (``POST .../runs/trigger``).

    A repeat with the same ``idempotency_key`` within 24 h returns the same run (``replayed``);
    without one, the call makes its own, so that its retries never start a second run.
    """
    http = _Http(base_url, session)
    retry = _Retry(retries, max_retry_delay_ms)
    key = _idempotency_key(idempotency_key)
    return await _with(http, _start_run(http, retry, ingest_api_key, agent_id, input, user_id, key))


async def _start_run(
    http: _Http,
    retry: _Retry,
    ingest_api_key: str,
    agent_id: int,
    input: Mapping[str, Any] | None,
    user_id: str | None,
    key: str,
) -> TriggeredRun:
    async def attempt() -> TriggeredRun:
        _, answer_headers, body = await http.json(
            "POST",
            f"/api/agents/{agent_id}/runs/trigger",
            headers={**_bearer(ingest_api_key), "Idempotency-Key": key},
            json=_trigger_body(input, user_id, None),
        )
        return TriggeredRun(
            run_id=int(body["runId"]),
            status=str(body["status"]),
            replayed=answer_headers.get("Idempotent-Replayed") == "true",
        )

    return await _retrying(retry, True, attempt)


async def trigger_run_and_wait(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    input: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    timeout_ms: float | None = None,
    idempotency_key: str | None = None,
    max_hold_ms: float | None = None,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> Run | TimedOut:
    """Start a run and wait for its end (``POST .../runs/trigger-and-wait``).

    Returns the :class:`Run` when it ended in the window (completed, failed or cancelled), or
    :class:`TimedOut` when the window ended first; both have ``timed_out``. With ``max_hold_ms``
    (for a proxy that cuts requests held longer), a longer ``timeout_ms`` starts the run with
    ``POST .../trigger`` and reads it until it ends or ``timeout_ms`` has passed.
    """
    http = _Http(base_url, session)
    retry = _Retry(retries, max_retry_delay_ms)
    key = _idempotency_key(idempotency_key)
    if timeout_ms is not None and max_hold_ms is not None and timeout_ms > max_hold_ms:
        return await _with(
            http,
            _start_then_read(
                http, retry, ingest_api_key, agent_id, input, user_id, key, timeout_ms
            ),
        )

    async def attempt() -> tuple[int, Mapping[str, str], Any]:
        return await http.json(
            "POST",
            f"/api/agents/{agent_id}/runs/trigger-and-wait",
            headers={**_bearer(ingest_api_key), "Idempotency-Key": key},
            json=_trigger_body(input, user_id, timeout_ms),
            client_timeout=_HELD,
        )

    status, _, body = await _with(http, _retrying(retry, True, attempt))
    if status == 202 and body.get("timedOut"):
        return TimedOut(
            run_id=int(body["runId"]), agent_id=int(body["agentId"]), status=str(body["status"])
        )
    return Run.from_json(body)


async def _start_then_read(
    http: _Http,
    retry: _Retry,
    ingest_api_key: str,
    agent_id: int,
    input: Mapping[str, Any] | None,
    user_id: str | None,
    key: str,
    timeout_ms: float,
) -> Run | TimedOut:
    """A long wait: trigger, then read the run (polling, 250 ms growing to 5 s) to its end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000
    started = await _start_run(http, retry, ingest_api_key, agent_id, input, user_id, key)
    pause = 0.25
    while True:
        run = await _read_run(http, retry, ingest_api_key, agent_id, started.run_id)
        if run.status in _TERMINAL:
            return run
        left = deadline - loop.time()
        if left <= 0:
            return TimedOut(run_id=run.run_id, agent_id=run.agent_id, status=run.status)
        await asyncio.sleep(min(pause, left))
        pause = min(5.0, pause * 1.5)


async def get_run(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    run_id: int,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> Run:
    """The run as it is now (``GET .../runs/{runId}``, the poll target)."""
    http = _Http(base_url, session)
    retry = _Retry(retries, max_retry_delay_ms)
    return await _with(http, _read_run(http, retry, ingest_api_key, agent_id, run_id))


async def _read_run(
    http: _Http, retry: _Retry, ingest_api_key: str, agent_id: int, run_id: int
) -> Run:
    async def attempt() -> Run:
        _, _, body = await http.json(
            "GET", f"/api/agents/{agent_id}/runs/{run_id}", headers=_bearer(ingest_api_key)
        )
        return Run.from_json(body)

    return await _retrying(retry, True, attempt)


async def cancel_run(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    run_id: int,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> CancelledRun:
    """Cancel a run that has not ended (``POST .../runs/{runId}/cancel``); a waiter on it
    answers ``cancelled``.

    A run that has ended raises a 409 :class:`GatewayError` (its ``body["status"]`` says how it
    ended), except when an earlier attempt of this call was cut off and the run now reads
    ``cancelled``: that attempt did it.
    """
    http = _Http(base_url, session)
    cut_off = False

    def note_cut_off() -> None:
        nonlocal cut_off
        cut_off = True

    async def attempt() -> CancelledRun:
        try:
            _, _, body = await http.json(
                "POST",
                f"/api/agents/{agent_id}/runs/{run_id}/cancel",
                headers=_bearer(ingest_api_key),
            )
        except GatewayError as exc:
            ended = exc.body.get("status") if isinstance(exc.body, dict) else None
            if cut_off and exc.status == 409 and ended == "cancelled":
                return CancelledRun(run_id=run_id, status="cancelled")
            raise
        return CancelledRun(run_id=int(body["runId"]), status=str(body["status"]))

    return await _with(
        http, _retrying(_Retry(retries, max_retry_delay_ms), True, attempt, note_cut_off)
    )


class _Closing:
    """``async with`` closes it."""

    async def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Download(_Closing):
    """A file a run is streaming back. Read ``body`` once, or ``save()`` it; then it is closed.

    Nothing is buffered: each chunk is handed on as it arrives. A body cut short raises
    ``aiohttp.ClientPayloadError`` rather than ending quietly.
    """

    def __init__(self, response: aiohttp.ClientResponse, http: _Http) -> None:
        self._response = response
        self._http = http
        self._taken = False
        self.run_id = int(response.headers["X-Run-Id"])
        self.content_type: str = response.headers.get("Content-Type", "application/octet-stream")
        length = response.headers.get("Content-Length")
        self.content_length: int | None = int(length) if length and length.isdigit() else None
        disposition = response.content_disposition
        name = disposition.filename if disposition is not None else None
        self.filename: str = name or f"run-{self.run_id}"

    @property
    def body(self) -> AsyncIterator[bytes]:
        """The bytes, chunk by chunk, exactly once."""
        if self._taken:
            raise RuntimeError("The download body can be read only once")
        self._taken = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        finally:
            await self.close()

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the body to ``path`` (a directory: the download's own, sanitised, filename).

        The bytes go to a ``.part`` file renamed into place only once whole, so a broken
        download never leaves a truncated file under the final name.
        """
        target = await asyncio.to_thread(_save_target, Path(path), self.filename)
        partial = target.with_name(target.name + ".part")
        written = 0
        out = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in self.body:
                await asyncio.to_thread(out.write, chunk)
                written += len(chunk)
            await asyncio.to_thread(out.close)
            if self.content_length is not None and written != self.content_length:
                raise aiohttp.ClientPayloadError(
                    f"Download ended after {written} of {self.content_length} bytes"
                )
            await asyncio.to_thread(partial.replace, target)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        return target

    async def close(self) -> None:
        """Let the connection go (unread bytes are dropped) and close a private session."""
        self._response.release()
        await self._http.close()


class _DownloadCall:
    """Awaitable (``download = await ...``) or an async context manager that closes it."""

    def __init__(self, call: Awaitable[Download]) -> None:
        self._call = call
        self._download: Download | None = None

    def __await__(self) -> Generator[Any, None, Download]:
        return self._call.__await__()

    async def __aenter__(self) -> Download:
        self._download = await self._call
        return self._download

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._download is not None:
            await self._download.close()


def trigger_run_and_download(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    input: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    timeout_ms: float | None = None,
    idempotency_key: str | None = None,
    max_hold_ms: float | None = None,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> _DownloadCall:
    """Start a run whose output is a file and stream it (``POST .../runs/trigger-and-download``).

    ``async with trigger_run_and_download(...) as download: await download.save(path)``, or
    ``download = await ...`` and read ``download.body`` once. Retried up to the answer's headers
    (never mid-file); with ``max_hold_ms``, the window asked for is at most that.
    """
    if timeout_ms is not None and max_hold_ms is not None:
        timeout_ms = min(timeout_ms, max_hold_ms)
    return _DownloadCall(
        _open_download(
            base_url,
            ingest_api_key,
            agent_id,
            _trigger_body(input, user_id, timeout_ms),
            _idempotency_key(idempotency_key),
            _Retry(retries, max_retry_delay_ms),
            session,
        )
    )


async def _open_download(
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    body: dict[str, Any],
    key: str,
    retry: _Retry,
    session: aiohttp.ClientSession | None,
) -> Download:
    http = _Http(base_url, session)

    async def attempt() -> aiohttp.ClientResponse:
        return await http.request(
            "POST",
            f"/api/agents/{agent_id}/runs/trigger-and-download",
            headers={**_bearer(ingest_api_key), "Idempotency-Key": key},
            json=body,
            client_timeout=_HELD,
        )

    try:
        response = await _retrying(retry, True, attempt)
    except BaseException:
        await http.close()
        raise
    return Download(response, http)


async def register_run(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    external_run_id: str,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> RegisteredRun:
    """Register a run the runtime started on its own; get a credentials token for it.

    Registering the same ``external_run_id`` again returns the same run with a fresh token.
    """
    http = _Http(base_url, session)

    async def attempt() -> RegisteredRun:
        _, _, body = await http.json(
            "POST",
            f"/api/agents/{agent_id}/runs/register",
            headers=_bearer(ingest_api_key),
            json={"externalRunId": external_run_id},
        )
        return RegisteredRun(
            run_id=int(body["runId"]),
            credentials_token=str(body["credentialsToken"]),
            expires_in_seconds=int(body["expiresInSeconds"]),
        )

    return await _with(http, _retrying(_Retry(retries, max_retry_delay_ms), True, attempt))


async def ingest_run(
    *,
    base_url: str,
    ingest_api_key: str,
    agent_id: int,
    external_run_id: str,
    status: str,
    output: Any = UNSET,
    outputs: int | None = None,
    error: str | Mapping[str, Any] | None = None,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> IngestedRun:
    """Report a standalone agent's run (``POST .../runs/ingest``), creating it on first sight.

    A run that has ended takes no more reports: that raises a 409 :class:`GatewayError`. A
    report is retried after a 429 or 503, never after a connection failure.
    """
    payload: dict[str, Any] = {"externalRunId": external_run_id, "status": status}
    if output is not UNSET:
        payload["output"] = output
    if outputs is not None:
        payload["outputs"] = outputs
    if error is not None:
        payload["error"] = error if isinstance(error, str) else dict(error)
    http = _Http(base_url, session)

    async def attempt() -> IngestedRun:
        _, _, body = await http.json(
            "POST",
            f"/api/agents/{agent_id}/runs/ingest",
            headers=_bearer(ingest_api_key),
            json=payload,
        )
        return IngestedRun(
            run_id=int(body["runId"]), status=str(body["status"]), created=bool(body.get("created"))
        )

    return await _with(http, _retrying(_Retry(retries, max_retry_delay_ms), False, attempt))


class AgentClient(_Closing):
    """A runtime's client for one run: report on it, resolve its credentials.

    Use it as ``async with create_agent_client(...) as client:`` or call ``close()``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        run_id: int,
        credentials_token: str | None = None,
        retries: int = DEFAULT_RETRIES,
        max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.run_id = run_id
        self._http = _Http(base_url, session)
        self._api_key = api_key
        self._credentials_token = credentials_token
        self._retry = _Retry(retries, max_retry_delay_ms)

    async def _callback(self, body: dict[str, Any]) -> CallbackAccepted:
        async def attempt() -> CallbackAccepted:
            _, _, answer = await self._http.json(
                "POST",
                f"/api/runs/{self.run_id}/callback",
                headers=_bearer(self._api_key),
                json=body,
            )
            return CallbackAccepted(run_id=int(answer["runId"]), status=str(answer["status"]))

        # A report is retried after a 429 or 503, never after a connection failure.
        return await _retrying(self._retry, False, attempt)

    async def started(self) -> CallbackAccepted:
        """The run has started."""
        return await self._callback({"type": "started"})

    async def output(self, output: Any, *, outputs: int | None = None) -> CallbackAccepted:
        """An intermediate output; the run carries on."""
        return await self._callback(_output_body(output, outputs))

    async def complete(self, output: Any, *, outputs: int | None = None) -> CallbackAccepted:
        """The run completed with ``output``."""
        return await self._callback({**_output_body(output, outputs), "complete": True})

    async def fail(
        self, message: str, *, name: str | None = None, stack: str | None = None
    ) -> CallbackAccepted:
        """The run failed."""
        error: dict[str, Any] = {"message": message}
        if name is not None:
            error["name"] = name
        if stack is not None:
            error["stack"] = stack
        return await self._callback({"type": "output", "failed": True, "error": error})

    async def waiting(
        self, *, token_id: str, description: str | None = None, output: Any = UNSET
    ) -> CallbackAccepted:
        """The run waits for something (a human, a token) named by ``token_id``."""
        body: dict[str, Any] = {"type": "waiting", "tokenId": token_id, "description": description}
        if output is not UNSET:
            body["output"] = output
        return await self._callback(body)

    async def resolve_credential(self, connection_id: str) -> Credential:
        """A credential of the agent's organisation, opened for this run."""
        if not self._credentials_token:
            raise ValueError(
                "resolve_credential needs the credentials_token given to create_agent_client"
            )
        headers = {
            **_bearer(self._api_key),
            "X-Credentials-Token": self._credentials_token,
        }

        async def attempt() -> Credential:
            _, _, body = await self._http.json(
                "GET", f"/api/credentials/{_path_segment(connection_id)}/resolve", headers=headers
            )
            return Credential(
                id=str(body["id"]),
                name=str(body["name"]),
                type=str(body["type"]),
                data=body["data"],
            )

        return await _retrying(self._retry, True, attempt)

    async def close(self) -> None:
        """Close the client's own session (a session passed in stays open)."""
        await self._http.close()


def create_agent_client(
    *,
    base_url: str,
    api_key: str,
    run_id: int,
    credentials_token: str | None = None,
    retries: int = DEFAULT_RETRIES,
    max_retry_delay_ms: float = DEFAULT_MAX_RETRY_DELAY_MS,
    session: aiohttp.ClientSession | None = None,
) -> AgentClient:
    """A client bound to one run and its agent API key (from the run's trigger payload)."""
    return AgentClient(
        base_url=base_url,
        api_key=api_key,
        run_id=run_id,
        credentials_token=credentials_token,
        retries=retries,
        max_retry_delay_ms=max_retry_delay_ms,
        session=session,
    )


def _output_body(output: Any, outputs: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "output", "output": output}
    if outputs is not None:
        body["outputs"] = outputs
    return body


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _save_target(path: Path, filename: str) -> Path:
    return path / _safe_name(filename) if path.is_dir() else path


def _safe_name(name: str) -> str:
    """A file name that stays inside the directory it is saved to."""
    base = _UNSAFE.sub("_", os.path.basename(name.replace("\\", "/"))).strip(" .")
    return base[:200] or "download"


def _path_segment(value: str) -> str:
    return quote(str(value), safe="")


__all__ = [
    "UNSET",
    "AgentClient",
    "Download",
    "cancel_run",
    "create_agent_client",
    "get_run",
    "ingest_run",
    "register_run",
    "trigger_run",
    "trigger_run_and_download",
    "trigger_run_and_wait",
]
