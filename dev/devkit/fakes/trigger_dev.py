"""A small HTTP fake of Trigger.dev's REST API, for end-to-end tests and the demo.

It serves the three calls the adapter makes (trigger, retrieve run, cancel) with
Trigger.dev's shapes, checks ``Authorization: Bearer <secret_key>``, and records every call.
Task ``missing`` does not exist (``404 {"error": "Task not found"}``); any other task runs.

A run's behaviour is chosen by the trigger body's ``payload.input`` (the gateway's run input):

``statuses``         status names the run reports, one per ``GET``, staying on the last
                     (default ``["QUEUED", "EXECUTING", "COMPLETED"]``)
``not_ready_polls``  the first N ``GET`` answer ``404`` with ``x-should-retry: true`` (default 0)
``output``           the ``output`` once ``COMPLETED`` (default ``{"echo": input}``)
``error``            the error message for a failure status (default ``"Task failed"``)

The same ``options.idempotencyKey`` again returns the same run with ``isCached: true``.
``POST /api/v2/runs/{id}/cancel`` makes every later ``GET`` report ``CANCELED``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

TRIGGERS = web.AppKey("triggers", list[dict[str, Any]])
"""Every trigger call: ``{"task", "headers", "body"}``."""
RUNS = web.AppKey("runs", dict[str, dict[str, Any]])
"""Run id → ``{"task", "input", "idempotency_key", "polls", "cancelled", "created_at"}``."""
POLLS = web.AppKey("polls", list[dict[str, Any]])
"""Every retrieve call: ``{"id", "headers"}`` (``x-trigger-api-version`` is among them)."""
CANCELS = web.AppKey("cancels", list[str])
"""The run ids cancels were asked for, in order."""
SECRET_KEY = web.AppKey("secret_key", str)

DEFAULT_STATUSES = ("QUEUED", "EXECUTING", "COMPLETED")
_FAILED = frozenset({"FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT", "INTERRUPTED"})
# Trigger.dev's isCompleted: EXPIRED and TIMED_OUT are final but not "completed".
_COMPLETED = frozenset(
    {"COMPLETED", "CANCELED", "FAILED", "CRASHED", "INTERRUPTED", "SYSTEM_FAILURE"}
)
_QUEUED = frozenset({"QUEUED", "WAITING_FOR_DEPLOY", "DELAYED", "PENDING_VERSION"})
_EXECUTING = frozenset({"EXECUTING", "REATTEMPTING", "FROZEN", "DEQUEUED"})


def create_fake_trigger_dev(secret_key: str = "tr_dev_fake") -> web.Application:  # noqa: S107
    """The fake as an aiohttp application (serve it with ``TestServer`` or ``AppRunner``)."""
    app = web.Application()
    app[SECRET_KEY] = secret_key
    app[TRIGGERS] = []
    app[RUNS] = {}
    app[POLLS] = []
    app[CANCELS] = []
    app.router.add_post("/api/v1/tasks/{task}/trigger", _trigger)
    app.router.add_get("/api/v3/runs/{run_id}", _retrieve)
    app.router.add_post("/api/v2/runs/{run_id}/cancel", _cancel)
    return app


def _authorized(request: web.Request) -> bool:
    expected = f"Bearer {request.app[SECRET_KEY]}"
    return secrets.compare_digest(request.headers.get("Authorization", ""), expected)


def _unauthorized() -> web.Response:
    return web.json_response({"error": "Invalid API key"}, status=401)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


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
    key = (body.get("options") or {}).get("idempotencyKey")
    runs = request.app[RUNS]
    for run_id, run in runs.items():
        if key and run["task"] == task and run["idempotency_key"] == key:
            return web.json_response({"id": run_id, "isCached": True})
    run_id = f"run_{secrets.token_hex(10)}"
    payload = body.get("payload") or {}
    runs[run_id] = {
        "task": task,
        "input": payload.get("input") or {},
        "idempotency_key": key,
        "polls": 0,
        "cancelled": False,
        "created_at": _now(),
    }
    return web.json_response({"id": run_id, "isCached": False})


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
    statuses = list(data.get("statuses") or DEFAULT_STATUSES)
    step = min(run["polls"] - not_ready, len(statuses))
    status = "CANCELED" if run["cancelled"] else str(statuses[step - 1])
    answer: dict[str, Any] = {
        "id": run_id,
        "status": status,
        "taskIdentifier": run["task"],
        "isQueued": status in _QUEUED,
        "isExecuting": status in _EXECUTING,
        "isWaiting": status == "WAITING",
        "isCompleted": status in _COMPLETED,
        "isSuccess": status == "COMPLETED",
        "isFailed": status in _COMPLETED and status != "COMPLETED",
        "isCancelled": status == "CANCELED",
        "createdAt": run["created_at"],
        "startedAt": None if status in _QUEUED else run["created_at"],
        "finishedAt": _now() if status in _COMPLETED else None,
        "attemptCount": 0 if status in _QUEUED else 1,
    }
    if status == "COMPLETED":
        answer["output"] = data.get("output", {"echo": data})
    elif status in _FAILED:
        message = str(data.get("error", "Task failed"))
        answer["error"] = {"message": message, "name": "Error", "stackTrace": ""}
    return web.json_response(answer)


async def _cancel(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    request.app[CANCELS].append(run_id)
    if not _authorized(request):
        return _unauthorized()
    run = request.app[RUNS].get(run_id)
    if run is None:
        return web.json_response({"error": "Run not found"}, status=404)
    run["cancelled"] = True
    return web.json_response({"id": run_id})
