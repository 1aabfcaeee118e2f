"""Serving the gateway, and draining it gracefully on SIGTERM.

The drain, in order:

1. ``/readyz`` answers 503 (``process: draining``) at once, so load balancers and
   orchestrators stop sending new work, and every answer from now on carries
   ``Connection: close``: a connection the load balancer reuses is closed after its answer,
   by the gateway's choice and in the open, never under a request;
2. new connections are still accepted for ``DRAIN_PRE_STOP_S`` (while they notice), then
   the listening socket is closed: a new connection is refused, which a load balancer retries
   on another replica (nothing was sent);
3. requests in flight (downloads, held waits) get up to ``DRAIN_TIMEOUT_S`` to finish;
4. whatever is still running is then cancelled; a cancelled download marks its run failed
   with the reason ("Gateway shut down mid-stream ...");
5. idle keep-alive connections stay open ``DRAIN_IDLE_CLOSE_S`` more, longer than the load
   balancer keeps an idle upstream connection (nginx's upstream ``keepalive_timeout``), so it
   is the balancer that closes each of them: closing one the balancer may be about to reuse is
   what would turn into a failed request (a POST that may have been sent is never retried);
6. background work is flushed (what still waits on a runtime then, an async trigger's webhook
   call say, is dropped and its run handed on, never failed), pools and clients are closed, and
   the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import structlog
from aiohttp import web

from gateway.http.app_keys import LIFECYCLE, METRICS
from gateway.http.middleware.access_log import AccessLogger
from gateway.ops.heap import prepare_heap_for_work
from gateway.settings import Settings

log = structlog.get_logger(__name__)

# After the drain timeout, aiohttp gives each handler this long once more, cancels it, and
# gives it this long again to record its end.
CANCEL_GRACE_S = 0.5
# After an early answer (413, 408) the rest of a body is read and dropped this long, so that
# the caller gets to read the answer, then the connection closes (aiohttp's default is 10 s of
# reading whatever an oversized body brings).
LINGER_S = 2.0
# What the deployment allows for the application's own cleanup after the handlers are gone
# (tests/deploy checks the manifests' grace period against it): gateway/http/app.py bounds each
# of its steps (the realtime feeds, the poller's stop, background work, the recorder's flush,
# the waiters) by 5 s.
CLEANUP_BOUND_S = 15.0


class GatewayServer:
    """One gateway application on one TCP port, with the graceful drain."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self._settings = settings
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log_class=AccessLogger,
            # Only reached after our own wait for in-flight requests (see drain()).
            shutdown_timeout=CANCEL_GRACE_S,
            # Also the bound on receiving a request's headers (aiohttp closes a connection that
            # has not sent a whole request line and headers when it expires): slowloris.
            keepalive_timeout=settings.keepalive_timeout_s,
            lingering_time=LINGER_S,
        )
        self._site: web.SockSite | None = None
        # A second descriptor of the listening socket: it keeps the kernel's accept queue
        # alive after the site stops, so that what is queued there is served, not reset.
        self._listener: socket.socket | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the pools (the application's startup) and start listening."""
        await self._runner.setup()
        host, port = self._settings.host, self._settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        backlog = self._settings.listen_backlog
        listening = socket.create_server((host, port), family=family, backlog=backlog)
        self._listener = listening.dup()
        # SockSite calls listen() again, with its own default (128) unless told.
        self._site = web.SockSite(self._runner, listening, backlog=backlog)
        await self._site.start()
        prepare_heap_for_work(self._settings.gc_young_threshold)
        log.info("gateway_listening", host=self._settings.host, port=self._settings.port)

    async def close(self) -> None:
        """Close at once, without the drain (a failed start); a no-op after :meth:`drain`."""
        if not self._closed:
            self._closed = True
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            await self._runner.cleanup()

    async def drain(self) -> None:
        """Stop as described in the module docstring; returns once everything is closed."""
        settings = self._settings
        lifecycle = self.app[LIFECYCLE]
        lifecycle.draining = True
        self.app[METRICS].draining.set(1)
        log.info(
            "drain_started",
            pre_stop_s=settings.drain_pre_stop_s,
            drain_timeout_s=settings.drain_timeout_s,
            in_flight=lifecycle.in_flight,
        )
        if settings.drain_pre_stop_s > 0:
            await asyncio.sleep(settings.drain_pre_stop_s)
        await self._stop_listening()
        log.info("drain_stopped_listening", in_flight=lifecycle.in_flight)
        await self._finish_in_flight()
        server = self._runner.server
        if server is not None and server.connections and settings.drain_idle_close_s > 0:
            # Connections that answered before the drain began may sit in the balancer's pool.
            log.info("drain_idle_close_wait", connections=len(server.connections))
            await asyncio.sleep(settings.drain_idle_close_s)
            # A request that came in on such a connection meanwhile finishes too (bounded).
            await self._finish_in_flight()
        await self.close()
        log.info("drain_finished")

    async def _stop_listening(self) -> None:
        """Stop accepting, and serve the connections the kernel had already queued.

        Closing a listening socket resets every connection still in its accept queue, and
        the load balancer may have sent a request on one: a POST it never retries. So the
        site stops first (asyncio no longer accepts, the queue lives on through our second
        descriptor), what is queued is accepted and served, and only then is it closed.
        """
        if self._site is not None:
            await self._site.stop()
            self._site = None
        listener, self._listener = self._listener, None
        server = self._runner.server
        if listener is None or server is None:
            return
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        with listener:
            while True:
                try:
                    connection, _ = listener.accept()
                except BlockingIOError:
                    break
                await loop.connect_accepted_socket(server, connection)

    async def _finish_in_flight(self) -> None:
        """Let requests in flight end within the drain timeout; past it, they are cancelled."""
        lifecycle = self.app[LIFECYCLE]
        if not await lifecycle.wait_idle(self._settings.drain_timeout_s):
            lifecycle.cancelling = True
            log.warning("drain_timeout_cancelling", in_flight=lifecycle.in_flight)


async def wait_for_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain it."""
    server = GatewayServer(app, settings)
    try:
        await server.start()
    except BaseException:
        await server.close()
        raise
    await wait_for_stop_signal()
    await server.drain()
