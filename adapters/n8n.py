"""n8n: runs are webhook calls, answered by a "Respond to Webhook" node or through callbacks.

How a webhook's answer is read (``invoke``):

- ``2xx`` with a JSON body: the workflow's result; the body is the run's ``output_data``.
- ``202``, ``204`` or an empty body: the workflow took the run and reports through the
  callback URL in its payload (``started``, ``output``, ``complete``, ``failed``, ``waiting``).
- ``5xx``: the workflow failed (n8n answers ``500 {"message": "Error in workflow"}``).
- ``4xx``: the webhook refused the call (unknown path, wrong method, failed header auth); the
  run could not be started.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp

from adapters.base import (
    Invocation,
    RunResult,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
    loads_json,
)

# An error body is read only this far, for its message.
_MAX_ERROR_BODY = 64 * 1024
_ACCEPTED_STATUSES = frozenset({202, 204})


class N8nAdapter:
    """POSTs the trigger payload to the agent's webhook URL with its configured headers."""

    kind: ClassVar[str] = "n8n"
    # The webhook call itself runs the workflow: there is nothing to poll.
    followed: ClassVar[bool] = False

    def __init__(
        self, session: aiohttp.ClientSession, *, max_result_bytes: int = 10 * 1024 * 1024
    ) -> None:
        self._session = session
        self._max_result_bytes = max_result_bytes

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Invoke the webhook and hand back its response as soon as the headers are in."""
        headers = _headers(runtime)
        # The caller's own Accept-Encoding travels on, so that an encoded body and its
        # Content-Encoding/Content-Length reach the caller together and untouched.
        if accept_encoding:
            headers["Accept-Encoding"] = accept_encoding
        try:
            async with asyncio.timeout(wait_s):
                return await self._session.post(
                    runtime["webhook_url"], json=payload.to_json(), headers=headers
                )
        except TimeoutError:
            raise RuntimeTimeout("Runtime did not respond within the wait window") from None
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise RuntimeUnavailable(f"Runtime invocation failed: {exc}") from exc

    async def invoke(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> Invocation:
        """Call the webhook and read its answer whole, all within ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s):
                async with self._session.post(
                    runtime["webhook_url"], json=payload.to_json(), headers=_headers(runtime)
                ) as response:
                    return await self._read_answer(response)
        except TimeoutError:
            raise RuntimeTimeout("Runtime did not respond within the wait window") from None
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise RuntimeUnavailable(f"Runtime invocation failed: {exc}") from exc
        except aiohttp.ClientPayloadError as exc:
            return Invocation(result=RunResult("failed", error=f"RuntimeResponseBroken: {exc}"))

    async def poll(self, runtime: Mapping[str, Any], runtime_run_id: str) -> RunResult:
        """n8n runs are never polled: the webhook answers or the workflow calls back."""
        raise RuntimeUnsupported("n8n runs report through their webhook answer or callbacks")

    async def cancel(self, runtime: Mapping[str, Any], runtime_run_id: str) -> None:
        """Nothing to ask: a webhook execution has no cancel endpoint."""

    async def _read_answer(self, response: aiohttp.ClientResponse) -> Invocation:
        status = response.status
        if status >= 400:
            raw = await response.content.read(_MAX_ERROR_BODY)
            reason = f"HTTP {status}: {_message(raw) or response.reason or ''}".rstrip(": ")
            if status < 500:
                raise RuntimeRefused(f"Webhook refused the run: {reason}")
            return Invocation(result=RunResult("failed", error=f"WorkflowFailed: {reason}"))
        if status in _ACCEPTED_STATUSES:
            return Invocation()
        raw = await response.content.read(self._max_result_bytes + 1)
        if len(raw) > self._max_result_bytes:
            return Invocation(
                result=RunResult(
                    "failed",
                    error=f"WorkflowResultTooLarge: over {self._max_result_bytes} bytes",
                )
            )
        if not raw.strip():
            return Invocation()
        try:
            output = loads_json(raw)
        except (ValueError, RecursionError):
            content_type = response.headers.get("Content-Type", "no content type")
            return Invocation(
                result=RunResult(
                    "failed",
                    error=f"WorkflowReturnedInvalidJson: HTTP {status}, {content_type}",
                )
            )
        return Invocation(result=RunResult("completed", output=output, has_output=True))


def _headers(runtime: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (runtime.get("headers") or {}).items()}


def _message(raw: bytes) -> str:
    """The ``message``/``error`` of a JSON error body, else its first line of text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:300] if text else ""
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return text[:300]
