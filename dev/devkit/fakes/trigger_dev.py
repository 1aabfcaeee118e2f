"""A small HTTP fake of Trigger.dev's REST and realtime APIs, for end-to-end tests and the demo.

It serves the calls the adapter makes (trigger, retrieve run, cancel, the realtime run feed)
with Trigger.dev's shapes, checks ``Authorization: Bearer <secret_key>``, and records every
call. Task ``missing`` does not exist (``404 {"error": "Task not found"}``); any other task runs.

A run's behaviour is chosen by the trigger body's ``payload.input`` (the gateway's run input):

``statuses``         status names the run goes through, staying on the last
                     (default ``["QUEUED", "EXECUTING", "COMPLETED"]``)
``advance``          what moves the run to its next status: ``"poll"`` (each ``GET`` of the run,
                     so tests can count polls), ``"time"`` (every ``step_s`` seconds, as a real
                     task runs on its own) or ``"manual"`` (only :func:`advance_run` or
                     ``POST /_fake/runs/{id}/advance``); default: the fake's own ``advance``
``step_s``           seconds per status in ``"time"`` mode (default: the fake's ``step_s``)
``not_ready_polls``  the first N ``GET`` answer ``404`` with ``x-should-retry: true`` (default 0)
``output``           the ``output`` once ``COMPLETED`` (default ``{"echo": input}``)
``error``            the error message for a failure status (default ``"Task failed"``)

The same ``options.idempotencyKey`` again returns the same run with ``isCached: true``; the
trigger's ``options.tags`` (a string or a list, at most 10 of at most 128 characters) are the
run's tags. ``POST /api/v2/runs/{id}/cancel`` moves the run to ``CANCELED``.

The realtime feed speaks Electric's HTTP shape protocol as Trigger.dev's webapp serves it
(``apps/webapp/app/routes/realtime.v1.runs.ts`` and ``realtime.v1.runs.$runId.ts``,
``apps/webapp/app/services/realtimeClient.server.ts``, and the wire format in
``apps/webapp/app/services/realtime/electricStreamProtocol.server.ts``):

- ``GET /realtime/v1/runs?tags=a,b`` (runs carrying all the tags; ``createdAt`` is accepted) and
  ``GET /realtime/v1/runs/{runId}`` (one run, by its friendly id); ``skipColumns=a,b`` leaves
  columns out (never ``id``, ``taskIdentifier``, ``friendlyId``, ``status``, ``createdAt``);
- ``offset=-1`` answers the current rows as ``insert`` messages then
  ``{"headers": {"control": "up-to-date"}}``; later requests send ``offset`` and ``handle`` (the
  ``electric-offset`` / ``electric-handle`` headers) and ``live=true`` once up to date; a live
  request is held until a row changes or ``live_timeout_s`` passes (then a bare up-to-date);
  ``live=true`` with ``offset=-1`` is a ``400``;
- a change message is ``{"key": "\\"public\\".\\"TaskRun\\"/\\"<id>\\"", "value": {...},
  "headers": {"operation": "insert" | "update"}}``; values are PostgreSQL text typed by the
  ``electric-schema`` header; an update carries the row's ``id`` and the changed columns only;
- rows carry the database's status names (``PENDING``, ``EXECUTING``, ``WAITING_TO_RESUME``,
  ``COMPLETED_SUCCESSFULLY``, ``COMPLETED_WITH_ERRORS``, ``CANCELED``, ``CRASHED``, …), ``runTags``
  as an array literal, ``output`` as a serialised ``application/super+json`` packet and ``error``
  as JSON text;
- a request without ``x-trigger-electric-version`` gets the legacy header names
  (``electric-shape-id``, ``electric-chunk-last-offset``) and must send ``shape_id``;
- after :func:`force_must_refetch` (``POST /_fake/realtime/must-refetch``) a request with the old
  handle answers ``409`` ``[{"headers": {"control": "must-refetch"}}]`` with the new handle;
- :func:`break_realtime` (``POST /_fake/realtime`` ``{"down": true}``) cuts the held requests'
  connections and answers ``503`` until :func:`restore_realtime` (``{"down": false}``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

TRIGGERS = web.AppKey("triggers", list[dict[str, Any]])
"""Every trigger call: ``{"task", "headers", "body"}``."""
RUNS = web.AppKey("runs", dict[str, dict[str, Any]])
"""Run id → the run's state (``task``, ``input``, ``tags``, ``status``, ``terminal_at``, …)."""
POLLS = web.AppKey("polls", list[dict[str, Any]])
"""Every retrieve call: ``{"id", "headers"}`` (``x-trigger-api-version`` is among them)."""
CANCELS = web.AppKey("cancels", list[str])
"""The run ids cancels were asked for, in order."""
SECRET_KEY = web.AppKey("secret_key", str)
REALTIME_REQUESTS = web.AppKey("realtime_requests", list[dict[str, Any]])
"""Every realtime call: ``{"path", "query", "headers", "status"}`` (``status`` once answered)."""

DEFAULT_STATUSES = ("QUEUED", "EXECUTING", "COMPLETED")
ADVANCE_MODES = frozenset({"poll", "time", "manual"})
ELECTRIC_VERSION_HEADER = "x-trigger-electric-version"
_FAILED = frozenset({"FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT", "INTERRUPTED"})
# Trigger.dev's isCompleted: EXPIRED and TIMED_OUT are final but not "completed".
_COMPLETED = frozenset(
    {"COMPLETED", "CANCELED", "FAILED", "CRASHED", "INTERRUPTED", "SYSTEM_FAILURE"}
)
_FINAL = _COMPLETED | {"EXPIRED", "TIMED_OUT"}
_QUEUED = frozenset({"QUEUED", "WAITING_FOR_DEPLOY", "DELAYED", "PENDING_VERSION"})
_EXECUTING = frozenset({"EXECUTING", "REATTEMPTING", "FROZEN", "DEQUEUED"})
# The API's status names → the TaskRun table's (the inverse of apiStatusFromRunStatus in
# packages/core/src/v3/apiClient/runStream.ts).
DB_STATUS = {
    "QUEUED": "PENDING",
    "PENDING_VERSION": "PENDING_VERSION",
    "WAITING_FOR_DEPLOY": "WAITING_FOR_DEPLOY",
    "DELAYED": "DELAYED",
    "DEQUEUED": "DEQUEUED",
    "EXECUTING": "EXECUTING",
    "REATTEMPTING": "RETRYING_AFTER_FAILURE",
    "WAITING": "WAITING_TO_RESUME",
    "FROZEN": "PAUSED",
    "COMPLETED": "COMPLETED_SUCCESSFULLY",
    "CANCELED": "CANCELED",
    "FAILED": "COMPLETED_WITH_ERRORS",
    "INTERRUPTED": "INTERRUPTED",
    "CRASHED": "CRASHED",
    "SYSTEM_FAILURE": "SYSTEM_FAILURE",
    "EXPIRED": "EXPIRED",
    "TIMED_OUT": "TIMED_OUT",
}
# The row's columns and their types, as the electric-schema header names them
# (RUN_ELECTRIC_COLUMNS in electricStreamProtocol.server.ts).
COLUMNS: dict[str, dict[str, Any]] = {
    "id": {"type": "text"},
    "taskIdentifier": {"type": "text"},
    "createdAt": {"type": "timestamp"},
    "updatedAt": {"type": "timestamp"},
    "startedAt": {"type": "timestamp"},
    "delayUntil": {"type": "timestamp"},
    "queuedAt": {"type": "timestamp"},
    "expiredAt": {"type": "timestamp"},
    "completedAt": {"type": "timestamp"},
    "friendlyId": {"type": "text"},
    "number": {"type": "int4"},
    "isTest": {"type": "bool"},
    "status": {"type": "text"},
    "usageDurationMs": {"type": "int4"},
    "costInCents": {"type": "float8"},
    "baseCostInCents": {"type": "float8"},
    "ttl": {"type": "text"},
    "payload": {"type": "text"},
    "payloadType": {"type": "text"},
    "metadata": {"type": "text"},
    "metadataType": {"type": "text"},
    "output": {"type": "text"},
    "outputType": {"type": "text"},
    "runTags": {"type": "text", "dims": 1},
    "error": {"type": "jsonb"},
    "realtimeStreams": {"type": "text", "dims": 1},
}
_RESERVED_COLUMNS = frozenset({"id", "taskIdentifier", "friendlyId", "status", "createdAt"})
_MAX_TAGS = 10
_MAX_TAG_LENGTH = 128


@dataclass(slots=True)
class FakeOptions:
    """The fake's defaults for runs that do not choose."""

    advance: str
    step_s: float
    live_timeout_s: float


@dataclass(slots=True)
class Feed:
    """The realtime shape: every row change in order (its index + 1 is its offset)."""

    handle: str = field(default_factory=lambda: f"{secrets.randbelow(10**8)}-{time.time_ns()}")
    # (run id, operation, the columns that changed; all of them for an insert)
    changes: list[tuple[str, str, dict[str, str | None]]] = field(default_factory=list)
    rows: dict[str, dict[str, str | None]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    down: bool = False
    held: dict[int, web.Request] = field(default_factory=dict)  # id(request) → request

    def record(self, run_id: str, row: dict[str, str | None]) -> None:
        """Store the run's new row and log what changed; wake the held requests."""
        before = self.rows.get(run_id)
        if before is None:
            self.changes.append((run_id, "insert", dict(row)))
        else:
            delta = {k: v for k, v in row.items() if before.get(k) != v}
            if not delta:
                return
            self.changes.append((run_id, "update", {"id": row["id"], **delta}))
        self.rows[run_id] = dict(row)
        self.wake()

    def wake(self) -> None:
        """Answer every held live request now."""
        self.changed.set()
        self.changed = asyncio.Event()


FEED = web.AppKey("feed", Feed)
"""The realtime feed's state: change log, handle, held requests."""
OPTIONS = web.AppKey("options", FakeOptions)


def create_fake_trigger_dev(
    secret_key: str = "tr_dev_fake",  # noqa: S107
    *,
    advance: str = "poll",
    step_s: float = 0.05,
    live_timeout_s: float = 20.0,
) -> web.Application:
    """The fake as an aiohttp application (serve it with ``TestServer`` or ``AppRunner``).

    ``advance`` and ``step_s`` are the defaults for runs that do not choose; ``live_timeout_s``
    is how long a live realtime request is held without a change (Electric holds about 20 s).
    """
    if advance not in ADVANCE_MODES:
        raise ValueError(f"advance must be one of {sorted(ADVANCE_MODES)}")
    app = web.Application()
    app[SECRET_KEY] = secret_key
    app[TRIGGERS] = []
    app[RUNS] = {}
    app[POLLS] = []
    app[CANCELS] = []
    app[REALTIME_REQUESTS] = []
    app[OPTIONS] = FakeOptions(advance, step_s, live_timeout_s)
    app[FEED] = Feed()
    app.router.add_post("/api/v1/tasks/{task}/trigger", _trigger)
    app.router.add_get("/api/v3/runs/{run_id}", _retrieve)
    app.router.add_post("/api/v2/runs/{run_id}/cancel", _cancel)
    app.router.add_get("/realtime/v1/runs", _realtime_runs)
    app.router.add_get("/realtime/v1/runs/{run_id}", _realtime_run)
    app.router.add_post("/_fake/realtime", _set_realtime)
    app.router.add_post("/_fake/realtime/must-refetch", _must_refetch)
    app.router.add_post("/_fake/runs/{run_id}/advance", _advance)
    app.on_shutdown.append(_close_held)
    return app


# --- test controls --------------------------------------------------------------------------


def advance_run(app: web.Application, run_id: str) -> str:
    """Move a run to its next status (any mode); returns the status it is now on."""
    run = app[RUNS][run_id]
    _set_step(app, run, int(run["step"]) + 1)
    status: str = run["status"]
    return status


def break_realtime(app: web.Application) -> None:
    """Cut the realtime connections held open and refuse new ones (``503``) until restored."""
    feed = app[FEED]
    feed.down = True
    for request in list(feed.held.values()):
        if request.transport is not None:
            request.transport.close()
    feed.wake()


def restore_realtime(app: web.Application) -> None:
    """Serve the realtime feed again."""
    app[FEED].down = False


def force_must_refetch(app: web.Application) -> str:
    """Rotate the shape (Electric does when it can no longer serve a handle): requests with the
    old handle answer ``409`` must-refetch. Returns the new handle."""
    feed = app[FEED]
    feed.handle = f"{secrets.randbelow(10**8)}-{time.time_ns()}"
    feed.wake()
    return feed.handle


# --- REST ------------------------------------------------------------------------------------


def _authorized(request: web.Request) -> bool:
    expected = f"Bearer {request.app[SECRET_KEY]}"
    return secrets.compare_digest(request.headers.get("Authorization", ""), expected)


def _unauthorized() -> web.Response:
    return web.json_response({"error": "Invalid API key"}, status=401)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _tags(options: dict[str, Any]) -> list[str] | str:
    """The trigger's tags, or the reason they are refused."""
    raw = options.get("tags")
    if raw is None:
        return []
    tags = [raw] if isinstance(raw, str) else raw
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return "tags must be a string or a list of strings"
    if len(tags) > _MAX_TAGS:
        return f"Runs can only have {_MAX_TAGS} tags"
    if any(len(t) > _MAX_TAG_LENGTH for t in tags):
        return "Tags must be less than 128 characters"
    return tags


async def _trigger(request: web.Request) -> web.Response:
    task = request.match_info["task"]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "Invalid JSON body"}, status=400)
    request.app[TRIGGERS].append({"task": task, "headers": dict(request.headers), "body": body})
    if not _authorized(request):
        return _unauthorized()
    if task == "missing":
        return web.json_response({"error": "Task not found"}, status=404)
    options = body.get("options") or {}
    tags = _tags(options)
    if isinstance(tags, str):
        return web.json_response({"error": tags}, status=400)
    key = options.get("idempotencyKey")
    runs = request.app[RUNS]
    for run_id, known in runs.items():
        if key and known["task"] == task and known["idempotency_key"] == key:
            return web.json_response({"id": run_id, "isCached": True})
    run_id = f"run_{secrets.token_hex(10)}"
    payload = body.get("payload") or {}
    data = payload.get("input") or {}
    defaults = request.app[OPTIONS]
    advance = str(data.get("advance", defaults.advance))
    if advance not in ADVANCE_MODES:
        return web.json_response({"error": f"unknown advance {advance!r}"}, status=400)
    run: dict[str, Any] = {
        "id": run_id,
        "task": task,
        "input": data,
        "payload": payload,
        "idempotency_key": key,
        "tags": tags,
        "polls": 0,
        "cancelled": False,
        "created_at": _now(),
        "internal_id": f"cm{secrets.token_hex(12)}",
        "number": len(runs) + 1,
        "advance": advance,
        "statuses": [str(s) for s in (data.get("statuses") or DEFAULT_STATUSES)],
        "step": 0,
        "status": None,
        "completed_at": None,
        "terminal_at": None,
    }
    runs[run_id] = run
    _set_step(request.app, run, 0)
    if advance == "time":
        step_s = float(data.get("step_s", defaults.step_s))
        loop = asyncio.get_running_loop()
        for step in range(1, len(run["statuses"])):
            loop.call_later(step * step_s, _timed_step, request.app, run, step)
    return web.json_response({"id": run_id, "isCached": False})


def _timed_step(app: web.Application, run: dict[str, Any], step: int) -> None:
    if run["step"] < step:
        _set_step(app, run, step)


def _set_step(app: web.Application, run: dict[str, Any], step: int) -> None:
    """Put the run on ``statuses[step]`` (the last one past the end) and tell the feed."""
    statuses = run["statuses"]
    if run["status"] in _FINAL:
        return  # a run that ended never changes again
    run["step"] = min(step, len(statuses) - 1)
    _set_status(app, run, "CANCELED" if run["cancelled"] else statuses[run["step"]])


def _set_status(app: web.Application, run: dict[str, Any], status: str) -> None:
    if run["status"] == status:
        return
    run["status"] = status
    if status in _FINAL and run["terminal_at"] is None:
        run["completed_at"] = _now()
        # When the fake reported the run ended (the bench measures from here).
        run["terminal_at"] = time.monotonic()
    app[FEED].record(run["id"], _row(run["id"], run))


async def _retrieve(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    request.app[POLLS].append({"id": run_id, "headers": dict(request.headers)})
    if not _authorized(request):
        return _unauthorized()
    run = request.app[RUNS].get(run_id)
    if run is None:
        return web.json_response({"error": "Run not found"}, status=404)
    run["polls"] += 1
    data = run["input"]
    not_ready = int(data.get("not_ready_polls", 0))
    if run["polls"] <= not_ready:
        return web.json_response(
            {"error": "Run not found"}, status=404, headers={"x-should-retry": "true"}
        )
    if run["advance"] == "poll":
        _set_step(request.app, run, run["polls"] - not_ready - 1)
    status = str(run["status"])
    answer: dict[str, Any] = {
        "id": run_id,
        "status": status,
        "taskIdentifier": run["task"],
        "tags": run["tags"],
        "isQueued": status in _QUEUED,
        "isExecuting": status in _EXECUTING,
        "isWaiting": status == "WAITING",
        "isCompleted": status in _COMPLETED,
        "isSuccess": status == "COMPLETED",
        "isFailed": status in _COMPLETED and status != "COMPLETED",
        "isCancelled": status == "CANCELED",
        "createdAt": run["created_at"],
        "startedAt": None if status in _QUEUED else run["created_at"],
        "finishedAt": run["completed_at"],
        "attemptCount": 0 if status in _QUEUED else 1,
    }
    if status == "COMPLETED":
        answer["output"] = _output(run)
    elif status in _FAILED:
        answer["error"] = _error(run)
    return web.json_response(answer)


def _output(run: dict[str, Any]) -> Any:
    data = run["input"]
    return data.get("output", {"echo": data})


def _error(run: dict[str, Any]) -> dict[str, Any]:
    return {"message": str(run["input"].get("error", "Task failed")), "name": "Error"}


async def _cancel(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    request.app[CANCELS].append(run_id)
    if not _authorized(request):
        return _unauthorized()
    run = request.app[RUNS].get(run_id)
    if run is None:
        return web.json_response({"error": "Run not found"}, status=404)
    run["cancelled"] = True
    _set_step(request.app, run, run["step"])
    return web.json_response({"id": run_id})


async def _advance(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    if run_id not in request.app[RUNS]:
        return web.json_response({"error": "Run not found"}, status=404)
    return web.json_response({"id": run_id, "status": advance_run(request.app, run_id)})


# --- realtime --------------------------------------------------------------------------------


def _timestamp(iso: str | None) -> str | None:
    # Electric's timestamp text has no zone suffix (the SDK appends "Z" before parsing).
    return None if iso is None else iso.removesuffix("Z")


def _array(values: list[str]) -> str:
    return (
        "{"
        + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def _row(run_id: str, run: dict[str, Any]) -> dict[str, str | None]:
    """The run as the TaskRun row's wire values (all text, typed by electric-schema)."""
    status = str(run["status"])
    created = _timestamp(run["created_at"])
    completed = _timestamp(run["completed_at"])
    output: str | None = None
    if status == "COMPLETED":
        output = json.dumps({"json": _output(run)})
    return {
        "id": run["internal_id"],
        "taskIdentifier": run["task"],
        "createdAt": created,
        "updatedAt": _timestamp(_now()),
        "startedAt": None if status in _QUEUED else created,
        "delayUntil": None,
        "queuedAt": created,
        "expiredAt": completed if status == "EXPIRED" else None,
        "completedAt": completed,
        "friendlyId": run_id,
        "number": str(run["number"]),
        "isTest": "f",
        "status": DB_STATUS.get(status, status),
        "usageDurationMs": "0",
        "costInCents": "0",
        "baseCostInCents": "0",
        "ttl": None,
        "payload": json.dumps(run["payload"]),
        "payloadType": "application/json",
        "metadata": None,
        "metadataType": "application/json",
        "output": output,
        "outputType": "application/super+json",
        "runTags": _array(run["tags"]) if run["tags"] else None,
        "error": json.dumps(_error(run)) if status in _FAILED else None,
        "realtimeStreams": "{}",
    }


def _offset(seq: int) -> str:
    return f"{seq}_0"


def _seq(offset: str) -> int | None:
    head = offset.split("_", 1)[0]
    return int(head) if head.isdigit() else None


async def _realtime_runs(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("tags")
    tags = [t for t in raw.split(",")] if raw else []
    if any(not t or any(c in t for c in '\\"') or any(ord(c) < 32 for c in t) for t in tags):
        return web.json_response({"error": "Invalid tag"}, status=400)
    wanted = set(tags)
    runs = request.app[RUNS]
    return await _shape(request, lambda run_id: wanted <= set(runs[run_id]["tags"]))


async def _realtime_run(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["run_id"]
    if _authorized(request) and run_id not in request.app[RUNS]:
        return web.json_response({"error": "Run not found"}, status=404)
    return await _shape(request, lambda rid: rid == run_id)


async def _shape(request: web.Request, matches: Any) -> web.StreamResponse:
    """One request of Electric's shape protocol over the rows ``matches`` selects."""
    app = request.app
    feed = app[FEED]
    entry: dict[str, Any] = {
        "path": request.path,
        "query": dict(request.query),
        "headers": dict(request.headers),
    }
    app[REALTIME_REQUESTS].append(entry)
    response = await _shape_response(request, feed, matches)
    entry["status"] = response.status
    return response


async def _shape_response(request: web.Request, feed: Feed, matches: Any) -> web.StreamResponse:
    if not _authorized(request):
        return _unauthorized()
    if feed.down:
        return web.json_response({"error": "Service unavailable"}, status=503)
    modern = ELECTRIC_VERSION_HEADER in request.headers
    query = request.query
    offset = query.get("offset", "-1")
    handle = query.get("handle") if modern else query.get("shape_id")
    live = query.get("live") == "true"
    if offset == "-1":
        if live:
            return web.json_response(
                {
                    "message": "Invalid request",
                    "errors": {"live": ["can't be true when offset is -1"]},
                },
                status=400,
            )
        return _answer(request, feed, _snapshot(feed, matches), len(feed.changes))
    seq = _seq(offset)
    if seq is None or not handle:
        return web.json_response({"message": "Invalid request"}, status=400)
    if handle != feed.handle:
        return _must_refetch_answer(request, feed)
    messages = _since(feed, seq, matches)
    if not messages and live:
        feed.held[id(request)] = request
        try:
            deadline = asyncio.get_running_loop().time() + request.app[OPTIONS].live_timeout_s
            while not messages:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                changed = feed.changed
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    break
                if feed.down:
                    return web.json_response({"error": "Service unavailable"}, status=503)
                if handle != feed.handle:
                    return _must_refetch_answer(request, feed)
                messages = _since(feed, seq, matches)
        finally:
            feed.held.pop(id(request), None)
    return _answer(request, feed, messages, len(feed.changes))


def _snapshot(feed: Feed, matches: Any) -> list[dict[str, Any]]:
    return [
        {"key": _key(row), "value": dict(row), "headers": {"operation": "insert"}}
        for run_id, row in feed.rows.items()
        if matches(run_id)
    ]


def _since(feed: Feed, seq: int, matches: Any) -> list[dict[str, Any]]:
    return [
        {"key": _key(feed.rows[run_id]), "value": value, "headers": {"operation": operation}}
        for run_id, operation, value in feed.changes[seq:]
        if matches(run_id)
    ]


def _key(row: dict[str, str | None]) -> str:
    return f'"public"."TaskRun"/"{row["id"]}"'


def _headers(request: web.Request, feed: Feed, seq: int) -> dict[str, str]:
    modern = ELECTRIC_VERSION_HEADER in request.headers
    names = (
        ("electric-handle", "electric-offset")
        if modern
        else (
            "electric-shape-id",
            "electric-chunk-last-offset",
        )
    )
    return {
        names[0]: feed.handle,
        names[1]: _offset(seq),
        "electric-cursor": str(seq),
        "electric-schema": json.dumps(
            {name: t for name, t in COLUMNS.items() if name not in _skipped(request)}
        ),
        "electric-up-to-date": "",
        "access-control-expose-headers": "*",
        "cache-control": "no-store",
    }


def _answer(
    request: web.Request, feed: Feed, messages: list[dict[str, Any]], seq: int
) -> web.Response:
    skipped = _skipped(request)
    if skipped:
        messages = [
            {**m, "value": {k: v for k, v in m["value"].items() if k not in skipped}}
            for m in messages
        ]
    body = [*messages, {"headers": {"control": "up-to-date"}}]
    return web.json_response(body, headers=_headers(request, feed, seq))


def _skipped(request: web.Request) -> set[str]:
    """The ``skipColumns`` asked for, less the columns that are always sent
    (RESERVED_COLUMNS in realtimeClient.server.ts)."""
    raw = request.query.get("skipColumns", "")
    return {c.strip() for c in raw.split(",") if c.strip()} - _RESERVED_COLUMNS


def _must_refetch_answer(request: web.Request, feed: Feed) -> web.Response:
    headers = _headers(request, feed, 0)
    headers.pop("electric-up-to-date")
    return web.json_response(
        [{"headers": {"control": "must-refetch"}}], status=409, headers=headers
    )


async def _set_realtime(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("down"):
        break_realtime(request.app)
    else:
        restore_realtime(request.app)
    return web.json_response({"down": request.app[FEED].down})


async def _must_refetch(request: web.Request) -> web.Response:
    return web.json_response({"handle": force_must_refetch(request.app)})


async def _close_held(app: web.Application) -> None:
    feed = app[FEED]
    for request in list(feed.held.values()):
        if request.transport is not None:
            request.transport.close()
    feed.wake()
