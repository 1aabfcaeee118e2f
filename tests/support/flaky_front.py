"""A small HTTP front for the SDK cases: it forwards every request to a gateway, and plays the
faults a case names on the requests of the case's call.

A case's ``faults`` are played in order on the first requests of its call (the route the call
uses), one fault a request:

- ``"503"``: answer ``503`` at once, without forwarding (``"503:<n>"`` adds ``Retry-After: n``);
- ``"drop"``: forward the request, let the gateway answer it, then close the caller's connection
  without a byte of that answer (the answer is lost on the way back: the gateway did the work).

``hold_limit_ms`` cuts every request the gateway has not answered (status line and headers)
within that long: the caller's connection is closed, as Node's ``fetch`` gives up after 300 s
or a proxy drops a request held too long. The requests of the call are kept in ``seen``.

Served on its own (``live_stack``), the plan is set with ``POST /_front/plan`` ``{call, faults,
holdLimitMs}`` and the requests read with ``GET /_front/seen``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# The route each SDK call uses: (method, a pattern of the path's last segment).
CALL_ROUTES: dict[str, tuple[str, str]] = {
    "triggerRun": ("POST", "trigger"),
    "triggerRunAndWait": ("POST", "trigger-and-wait"),
    "triggerRunAndDownload": ("POST", "trigger-and-download"),
    "getRun": ("GET", r"\d+"),
    "cancelRun": ("POST", "cancel"),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
}


@dataclass
class Plan:
    """What the front does to the requests of one call."""

    call: str = ""
    faults: list[str] = field(default_factory=list)
    hold_limit_ms: float | None = None


@dataclass
class FlakyFront:
    """Forwards to ``upstream``; plays the plan's faults (see the module)."""

    upstream: str
    plan: Plan = field(default_factory=Plan)
    # The requests of the planned call: ``{"method", "path", "idempotencyKey", "fault"}``.
    seen: list[dict[str, Any]] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None

    def set_plan(
        self, call: str, faults: list[str] | None = None, hold_limit_ms: float | None = None
    ) -> None:
        """Play ``faults`` on ``call``'s requests from now on; forget the requests seen."""
        self.plan = Plan(call, list(faults or []), hold_limit_ms)
        self.seen = []

    def app(self) -> web.Application:
        """The front as an aiohttp application (control routes under ``/_front/``)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/_front/plan", self._plan_route)
        app.router.add_get("/_front/seen", self._seen_route)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    async def _plan_route(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.set_plan(body.get("call", ""), body.get("faults"), body.get("holdLimitMs"))
        return web.json_response({"ok": True})

    async def _seen_route(self, _: web.Request) -> web.Response:
        return web.json_response(self.seen)

    def _is_the_call(self, request: web.Request) -> bool:
        route = CALL_ROUTES.get(self.plan.call)
        if route is None:
            return False
        method, last = route
        segment = request.path.rstrip("/").rsplit("/", 1)[-1]
        return (
            request.method == method
            and request.path.startswith("/api/agents/")
            and re.fullmatch(last, segment) is not None
        )

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        fault = None
        if self._is_the_call(request):
            fault = self.plan.faults.pop(0) if self.plan.faults else None
            self.seen.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "idempotencyKey": request.headers.get("Idempotency-Key"),
                    "fault": fault,
                }
            )
        if fault is not None and fault.startswith("503"):
            headers = {"Retry-After": fault.split(":", 1)[1]} if ":" in fault else {}
            return web.json_response(
                {"error": "Service unavailable (the test front)"}, status=503, headers=headers
            )
        if self._http is None:
            self._http = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        sending = self._http.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        limit = self.plan.hold_limit_ms
        try:
            upstream = await asyncio.wait_for(sending, None if limit is None else limit / 1000)
        except TimeoutError:
            return _cut(request)
        async with upstream:
            if fault == "drop":
                await upstream.read()
                return _cut(request)
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    answer.headers.add(name, value)
            if upstream.headers.get("Content-Length") is not None:
                answer.content_length = int(upstream.headers["Content-Length"])
            await answer.prepare(request)
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer


def _cut(request: web.Request) -> web.StreamResponse:
    """Close the caller's connection without answering."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError
