"""n8n: runs are webhook calls, answered by a "Respond to Webhook" node or through callbacks.

How a webhook's answer is read (``invoke``) depends first on the agent's
``runtime.result_delivery`` (:class:`~store.enums.ResultDelivery`):

- ``callback``: any ``2xx`` only acknowledges the run, whatever its body; the workflow reports
  through the callback URL in its payload (``started``, ``output``, ``complete``, ``failed``,
  ``waiting``).
- ``response`` (the default): a ``2xx`` with a JSON body is the workflow's result; the body is
  the run's ``output_data``. An acknowledgement is still one: ``202``, ``204``, an empty body,
  or n8n's own answer of a Webhook node in "Respond: Immediately" mode (``onReceived``),
  exactly ``200 {"message": "Workflow was started"}`` (n8n's
  ``webhook-on-received-response-extractor``, when no response code or body is configured).

Either way:

- ``5xx``: the workflow failed (n8n answers ``500 {"message": "Error in workflow"}``).
- ``4xx``: the webhook refused the call (unknown path, wrong method, failed header auth); the
  run could not be started.

A Webhook node whose response mode is "Streaming" (``open_stream``) answers ``200
application/json; charset=utf-8``, chunked, and writes each chunk a node sends as one line of
JSON (n8n's ``StructuredChunk``: ``{"type": "begin"|"item"|"end"|"error", "content"?: string,
"metadata": {"nodeId", "nodeName", "itemIndex", "runIndex", "timestamp"}}``), then ends the body
when the workflow ends. Lines are handed on as they arrive. A body whose first line is not such
a chunk is read as a plain answer instead, by the rules above; a ``callback`` agent's chunks are
passed on, and its run then waits for its callbacks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from adapters.base import (
    CHUNK_TYPES,
    WINDOW_ELAPSED,
    Invocation,
    OpenSecrets,
    RunResult,
    RuntimeFailure,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    StreamChunk,
    TriggerPayload,
    connection_failure,
    is_redirect,
    keep_runtime,
    loads_json,
    read_bounded,
    redirect_failure,
)
from store.enums import ResultDelivery, RunStatus, RuntimeKind

# An error body is read only this far, for its message.
_MAX_ERROR_BODY = 64 * 1024
_ACCEPTED_STATUSES = frozenset({202, 204})
# What n8n answers for a Webhook node in "Respond: Immediately" mode, before the workflow runs.
N8N_STARTED_BODY: dict[str, Any] = {"message": "Workflow was started"}


def result_delivery(runtime: Mapping[str, Any]) -> ResultDelivery:
    """How the agent's workflow delivers its result (``response`` when not configured)."""
    try:
        return ResultDelivery(runtime.get("result_delivery", ResultDelivery.RESPONSE))
    except ValueError:
        return ResultDelivery.RESPONSE


def is_acknowledgement(status: int, body: Any) -> bool:
    """Whether a 2xx answer only says the workflow took the run (whatever the agent's setting):
    ``202``, ``204``, or n8n's "Workflow was started". ``body`` is the parsed JSON."""
    return status in _ACCEPTED_STATUSES or (status == 200 and body == N8N_STARTED_BODY)


class N8nAdapter:
    """POSTs the trigger payload to the agent's webhook URL with its configured headers."""

    kind: ClassVar[RuntimeKind] = RuntimeKind.N8N
    # The webhook call itself runs the workflow: there is nothing to poll.
    followed: ClassVar[bool] = False
    streams: ClassVar[bool] = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_result_bytes: int = 10 * 1024 * 1024,
        open_secrets: OpenSecrets = keep_runtime,
    ) -> None:
        self._session = session
        self._max_result_bytes = max_result_bytes
        self._open_secrets = open_secrets

    def acknowledges(self, runtime: Mapping[str, Any], status: int, body: Any) -> bool:
        """A 2xx of a callback agent, or n8n's own acknowledgement (:func:`is_acknowledgement`)
        whatever the setting."""
        return status < 300 and (
            result_delivery(runtime) == ResultDelivery.CALLBACK or is_acknowledgement(status, body)
        )

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Invoke the webhook and hand back its response as soon as the headers are in."""
        runtime = self._open_secrets(runtime)
        headers = _headers(runtime, payload)
        # The caller's own Accept-Encoding travels on, so that an encoded body and its
        # Content-Encoding/Content-Length reach the caller together and untouched.
        if accept_encoding:
            headers["Accept-Encoding"] = accept_encoding
        try:
            async with asyncio.timeout(wait_s):
                response = await self._session.post(
                    runtime["webhook_url"],
                    json=payload.to_json(),
                    headers=headers,
                    allow_redirects=False,
                )
        except TimeoutError:
            raise RuntimeTimeout(WINDOW_ELAPSED) from None
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise RuntimeUnavailable(connection_failure(exc)) from exc
        except aiohttp.ClientResponseError as exc:
            raise RuntimeUnavailable(_not_http(exc)) from None
        if is_redirect(response):
            response.close()
            raise redirect_failure(response)
        return response

    async def open_stream(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> N8nChunkStream:
        """Invoke the webhook; its answer is read as n8n's streamed chunks (or a plain answer).

        A ``4xx`` is refused here (the run could not be started); anything else is left to the
        stream to read.
        """
        response = await self.open_download(runtime, payload, wait_s=wait_s, accept_encoding=None)
        if 400 <= response.status < 500:
            try:
                raw = await read_bounded(response.content, _MAX_ERROR_BODY)
            except aiohttp.ClientError:
                raw = b""
            finally:
                response.close()
            reason = f"HTTP {response.status}: {_message(raw) or response.reason or ''}"
            raise RuntimeRefused(f"Webhook refused the run: {reason.rstrip(': ')}")
        return N8nChunkStream(
            response, max_result_bytes=self._max_result_bytes, delivery=result_delivery(runtime)
        )

    async def invoke(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> Invocation:
        """Call the webhook and read its answer whole, all within ``wait_s``."""
        runtime = self._open_secrets(runtime)
        try:
            async with asyncio.timeout(wait_s):
                async with self._session.post(
                    runtime["webhook_url"],
                    json=payload.to_json(),
                    headers=_headers(runtime, payload),
                    allow_redirects=False,
                ) as response:
                    if is_redirect(response):
                        raise redirect_failure(response)
                    return await self._read_answer(response, result_delivery(runtime))
        except TimeoutError:
            raise RuntimeTimeout(WINDOW_ELAPSED) from None
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise RuntimeUnavailable(connection_failure(exc)) from exc
        except aiohttp.ClientResponseError as exc:
            raise RuntimeUnavailable(_not_http(exc)) from None
        except aiohttp.ClientPayloadError as exc:
            return Invocation(
                result=RunResult(RunStatus.FAILED, error=f"RuntimeResponseBroken: {exc}")
            )

    async def poll(self, runtime: Mapping[str, Any], runtime_run_id: str) -> RunResult:
        """n8n runs are never polled: the webhook answers or the workflow calls back."""
        raise RuntimeUnsupported("n8n runs report through their webhook answer or callbacks")

    async def cancel(self, runtime: Mapping[str, Any], runtime_run_id: str) -> None:
        """Nothing to ask: a webhook execution has no cancel endpoint."""

    async def _read_answer(
        self, response: aiohttp.ClientResponse, delivery: ResultDelivery
    ) -> Invocation:
        """The one decision of this adapter: is the answer the run's result, or does it only
        acknowledge the run (which then waits for its callbacks and its deadline)?"""
        status = response.status
        if status >= 400:
            raw = await read_bounded(response.content, _MAX_ERROR_BODY)
            reason = f"HTTP {status}: {_message(raw) or response.reason or ''}".rstrip(": ")
            if status < 500:
                raise RuntimeRefused(f"Webhook refused the run: {reason}")
            return Invocation(result=RunResult(RunStatus.FAILED, error=f"WorkflowFailed: {reason}"))
        if delivery == ResultDelivery.CALLBACK or status in _ACCEPTED_STATUSES:
            return Invocation()
        raw = await read_bounded(response.content, self._max_result_bytes + 1)
        if len(raw) > self._max_result_bytes:
            return Invocation(
                result=RunResult(
                    RunStatus.FAILED,
                    error=f"WorkflowResultTooLarge: over {self._max_result_bytes} bytes",
                )
            )
        if not raw.strip():
            return Invocation()
        try:
            output = loads_json(raw)
        except (ValueError, RecursionError):
            streamed = collect_chunks(raw)
            if streamed is not None:
                # A streaming webhook answered a caller that waits: its chunks, joined.
                return Invocation(result=streamed)
            content_type = response.headers.get("Content-Type", "no content type")
            return Invocation(
                result=RunResult(
                    RunStatus.FAILED,
                    error=f"WorkflowReturnedInvalidJson: HTTP {status}, {content_type}",
                )
            )
        if is_acknowledgement(status, output):
            return Invocation()
        return Invocation(result=RunResult(RunStatus.COMPLETED, output=output, has_output=True))


class N8nChunkStream:
    """An n8n webhook's streamed answer, read line by line as the bytes arrive.

    ``max_result_bytes`` bounds one line (a chunk) and a plain answer; memory per stream is one
    line plus aiohttp's read buffer, however long the stream runs. With ``delivery`` ``callback``
    the answer never ends the run: chunks are passed on, and the stream ends with ``running``.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        max_result_bytes: int,
        delivery: ResultDelivery = ResultDelivery.RESPONSE,
    ) -> None:
        self._response = response
        self._max = max_result_bytes
        self._callback = delivery == ResultDelivery.CALLBACK

    @property
    def status(self) -> int:
        """The HTTP status the runtime answered with."""
        return self._response.status

    def close(self) -> None:
        """Drop the connection (the workflow sees its caller leave)."""
        self._response.close()

    async def __aiter__(self) -> AsyncIterator[StreamChunk | RunResult]:
        """Chunks as they arrive, or one :class:`RunResult` for a plain answer."""
        response = self._response
        if response.status >= 500:
            raw = await read_bounded(response.content, _MAX_ERROR_BODY)
            reason = f"HTTP {response.status}: {_message(raw) or response.reason or ''}"
            yield RunResult(RunStatus.FAILED, error=f"WorkflowFailed: {reason.rstrip(': ')}")
            return
        if response.status in _ACCEPTED_STATUSES:
            yield RunResult(RunStatus.RUNNING)
            return
        first = True
        lines = _Lines(response.content, self._max)
        async for batch in lines.batches():
            for index, line in enumerate(batch):
                if not line.strip():
                    continue
                chunk = _chunk(line)
                if chunk is not None:
                    first = False
                    yield chunk
                    continue
                if not first:
                    raise RuntimeFailure(
                        "RuntimeStreamInvalid: a line of the stream is not an n8n chunk: "
                        + line[:200].decode("utf-8", "replace")
                    )
                # Not a streaming webhook: the whole body is one plain answer.
                answer = await self._plain_answer(lines.unread(batch, index))
                yield RunResult(RunStatus.RUNNING) if self._callback else answer
                return
        if first or self._callback:
            # An empty body acknowledges the run; a callback agent's run ends by its callbacks.
            yield RunResult(RunStatus.RUNNING)

    async def _plain_answer(self, first_line: bytes) -> RunResult:
        body = bytearray(first_line)
        while chunk := await self._response.content.read(64 * 1024):
            body += chunk
            if len(body) > self._max:
                return RunResult(
                    RunStatus.FAILED, error=f"WorkflowResultTooLarge: over {self._max} bytes"
                )
        try:
            output = loads_json(bytes(body))
        except (ValueError, RecursionError):
            content_type = self._response.headers.get("Content-Type", "no content type")
            return RunResult(
                RunStatus.FAILED,
                error=f"WorkflowReturnedInvalidJson: HTTP {self._response.status}, {content_type}",
            )
        if is_acknowledgement(self._response.status, output):
            return RunResult(RunStatus.RUNNING)
        return RunResult(RunStatus.COMPLETED, output=output, has_output=True)


class _Lines:
    """A stream's lines (without their newline), as soon as they are complete.

    :meth:`batches` hands over together the lines each read completes (a burst of chunks
    costs one step of the generator per read, not per line); the last line may lack its
    newline. A line over ``limit`` bytes is a :class:`RuntimeFailure`.
    """

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        # The bytes read after the last complete line.
        self._pending = bytearray()
        self._ended = False

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Each read's complete lines."""
        pending = self._pending
        async for data in self._content.iter_any():
            lines: list[bytes] = []
            start = 0
            while (end := data.find(b"\n", start)) >= 0:
                if pending:
                    pending += data[start:end]
                    line = bytes(pending)
                    pending.clear()
                else:
                    line = data[start:end]
                if len(line) > self._limit:
                    raise RuntimeFailure(
                        f"RuntimeStreamInvalid: a chunk is over {self._limit} bytes"
                    )
                lines.append(line)
                start = end + 1
            pending += data[start:]
            if lines:
                yield lines
            if len(pending) > self._limit:
                raise RuntimeFailure(f"RuntimeStreamInvalid: a chunk is over {self._limit} bytes")
        self._ended = True
        if pending:
            last = bytes(pending)
            pending.clear()
            yield [last]

    def unread(self, batch: list[bytes], index: int) -> bytes:
        """The bytes of the stream read so far from ``batch[index]`` on, exactly as sent (what
        is still unread follows them in the response)."""
        text = b"\n".join(batch[index:])
        if self._ended:
            return text  # the stream's last line, which had no newline
        return text + b"\n" + bytes(self._pending)


def collect_chunks(raw: bytes) -> RunResult | None:
    """A whole streamed answer as one result: each node's items joined, by node id (as
    execute's output keys them); ``None`` when ``raw`` is not n8n chunks."""
    parts: dict[str, list[str]] = {}
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        chunk = _chunk(line)
        if chunk is None:
            return None
        if chunk.kind == "error":
            reason = chunk.content or "the node failed"
            return RunResult(RunStatus.FAILED, error=f"{chunk.node_name}: {reason}")
        if chunk.kind == "item":
            parts.setdefault(chunk.node_id, []).append(chunk.content)
    if not parts:
        return None
    output = {node: {"content": "".join(texts)} for node, texts in parts.items()}
    return RunResult(RunStatus.COMPLETED, output=output, has_output=True)


def _chunk(line: bytes) -> StreamChunk | None:
    """``line`` as an n8n ``StructuredChunk``; ``None`` when it is not one.

    orjson parses a line in a fraction of the time (a stream's CPU goes there), but it reads an
    integer over 64 bits as a float and refuses what ``loads_json`` takes (a lone surrogate
    escape, a byte-order mark, ``1e400``): its answer is taken only when it is a chunk whose
    every field has the plain type, otherwise the line is parsed again the strict way.
    """
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if type(value) is dict and (chunk := _plain_chunk(value)) is not None:
        return chunk
    try:
        return _strict_chunk(loads_json(line))
    except (ValueError, RecursionError):
        return None


def _plain_chunk(value: dict[str, Any]) -> StreamChunk | None:
    """A chunk whose fields all have their plain types (text or null, integer or null);
    ``None`` for anything else, which the strict way decides."""
    kind = value.get("type")
    metadata = value.get("metadata")
    content = value.get("content")
    if type(kind) is not str or type(metadata) is not dict or type(content) not in _PLAIN_STR:
        return None
    node_id = metadata.get("nodeId")
    node_name = metadata.get("nodeName")
    item_index = metadata.get("itemIndex")
    run_index = metadata.get("runIndex")
    if (
        kind not in CHUNK_TYPES
        or type(node_id) not in _PLAIN_STR
        or type(node_name) not in _PLAIN_STR
        or type(item_index) not in _PLAIN_INT
        or type(run_index) not in _PLAIN_INT
    ):
        return None
    return _stream_chunk(kind, node_id, node_name, content or "", item_index or 0, run_index or 0)


def _strict_chunk(value: Any) -> StreamChunk | None:
    """A chunk from a line parsed the strict way (any field of any type)."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in CHUNK_TYPES:
        return None
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        return None
    content = value.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        # n8n sends text; an object is JSON-stringified by sendChunk, so do the same.
        content = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return _stream_chunk(
        kind,
        metadata.get("nodeId"),
        metadata.get("nodeName"),
        content,
        _int(metadata.get("itemIndex")),
        _int(metadata.get("runIndex")),
    )


def _stream_chunk(
    kind: str, node_id: Any, node_name: Any, content: str, item_index: int, run_index: int
) -> StreamChunk:
    """The chunk, its node named by whichever of its id and name it has."""
    return StreamChunk(
        kind,
        str(node_id) if node_id is not None else str(node_name or ""),
        str(node_name) if node_name is not None else str(node_id or ""),
        content,
        item_index,
        run_index,
    )


_PLAIN_STR = (str, type(None))
_PLAIN_INT = (int, type(None))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _not_http(exc: aiohttp.ClientResponseError) -> str:
    """The reason for an answer aiohttp could not parse as HTTP (a bad status line, bytes
    after the declared body); the runtime's bytes themselves are left out."""
    what = str(exc.message).strip().splitlines()[0].rstrip(":") if exc.message else "unparsable"
    return f"Runtime answered with invalid HTTP ({what[:120]})"


def _headers(runtime: Mapping[str, Any], payload: TriggerPayload) -> dict[str, str]:
    # The request's id and trace context first: the agent's configured headers win a clash.
    configured = {str(k): str(v) for k, v in (runtime.get("headers") or {}).items()}
    return {**payload.trace_headers, **configured}


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
