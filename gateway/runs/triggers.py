"""Runs that report back: ``trigger`` (async), ``trigger-and-wait`` and ``cancel``.

Domain code: no ``aiohttp.web`` here. How a runtime reports a run's end differs (an n8n
webhook answers with the result or calls back later, a Trigger.dev task is followed by
polling); the outcomes and timeout rules are the same for every runtime. Each use case is one
method, from the agent's eligibility to its outcome (:class:`Triggered`, :class:`Waited`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from adapters.base import (
    WINDOW_ELAPSED,
    Invocation,
    RuntimeAdapter,
    RuntimeFailure,
    RuntimeTimeout,
    TriggerPayload,
)
from gateway.background import BackgroundTasks
from gateway.errors import ApiError, GatewayTimeout, RuntimeInvocationFailed
from gateway.ops.drain import Lifecycle
from gateway.runs.creation import IdempotencyKey, IdempotentReplay, RunCreation
from gateway.runs.lookups import RunLookups, already_ended
from gateway.runs.poller import FIRST_POLL_S
from gateway.runs.realtime import RealtimeFollower
from gateway.runs.recording import RunTransitions
from gateway.runs.waits import SETTLE_S, RunWaiters, Watch
from store import follows, runs
from store.enums import EventType, OutputKind, RunStatus, TriggerKind
from store.models import Agent, Run
from store.run_events import RunEvent

log = structlog.get_logger(__name__)

RUNNING_TIMEOUT = "Runtime did not respond within the agent's running timeout"
STOPPED_BEFORE_ANSWER = "The gateway shut down before the runtime answered"
# Runs that hand back JSON (:meth:`RunLookups.check_eligible`); a file agent is served by
# trigger-and-download only.
JSON_KINDS = (OutputKind.JSON, OutputKind.STREAM)
# Takes the caller's rate-limit token (raising when it is refused): called once a request is
# known to start something new, never for a replay.
Admit = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Triggered:
    """A run started by ``trigger``; ``replayed`` when an Idempotency-Key named it."""

    run: Run
    replayed: bool


@dataclass(frozen=True, slots=True)
class Waited:
    """The outcome of ``trigger-and-wait``: the run, terminal unless ``timed_out``;
    ``replayed`` when an Idempotency-Key named a run started before (the wait attached to it)."""

    run: Run
    timed_out: bool
    replayed: bool = False


class TriggerService:
    """Starts runs whose results come back later, and waits for them when asked to."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        lookups: RunLookups,
        creation: RunCreation,
        transitions: RunTransitions,
        waiters: RunWaiters,
        background: BackgroundTasks,
        lifecycle: Lifecycle | None = None,
        realtime: RealtimeFollower | None = None,
    ) -> None:
        self._pool = pool
        self._lookups = lookups
        self._creation = creation
        self._transitions = transitions
        self._waiters = waiters
        self._background = background
        # Asked for a feed of a followed run's environment as soon as the runtime took the run.
        self._realtime = realtime
        # Tells a held request the drain cut from one whose caller left.
        self._lifecycle = lifecycle

    async def trigger(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        idempotency: IdempotencyKey | None,
        admit: Admit,
    ) -> Triggered:
        """Create the run and start it on its runtime without waiting for the result.

        ``agent`` is one :data:`JSON_KINDS` allows. A key that already names a run answers
        with that run, before ``admit`` (a replay starts nothing)."""
        existing = await self._creation.replay(agent, idempotency)
        if existing is not None:
            return Triggered(existing, replayed=True)
        await admit()
        adapter = self._lookups.adapter_for(agent)
        created = await self._creation.create_once(
            agent,
            input_data=input_data,
            user_id=user_id,
            window_ms=0,
            trigger_kind=TriggerKind.TRIGGER,
            idempotency=idempotency,
        )
        if isinstance(created, IdempotentReplay):
            return Triggered(created.run, replayed=True)
        run = created.run
        self._background.spawn(self._drive(agent, adapter, run), name=f"drive-run-{run.id}")
        return Triggered(run, replayed=False)

    async def _drive(self, agent: Agent, adapter: RuntimeAdapter, run: Run) -> None:
        """Invoke the runtime for a run nobody waits on, and record how it took it."""
        if not adapter.followed:
            await self._transitions.publish(RunEvent(run.id, EventType.STARTED))
        payload = self._creation.trigger_payload(agent, run)
        outcome: Invocation | RuntimeFailure
        try:
            outcome = await adapter.invoke(
                agent.runtime, payload, wait_s=agent.running_timeout_ms / 1000
            )
        except RuntimeFailure as exc:
            outcome = exc
        except asyncio.CancelledError:
            # The gateway is stopping with the runtime's call still open. The runtime has the
            # run, and nothing says it failed: it is handed on, never failed here.
            self._hand_on(run)
            raise
        await self._record_invocation(agent, run, outcome, timeout_reason=RUNNING_TIMEOUT)

    def _hand_on(self, run: Run) -> None:
        """Leave a run whose runtime call this stopping replica drops to whatever else can end
        it: the runtime's callbacks, to any replica, and in the end the reaper at its deadline.
        (A Trigger.dev trigger call dropped before it answered leaves no runtime id to poll.)"""
        log.info("run_handed_on", run_id=run.id, reason="gateway stopping, runtime call open")

    async def _record_invocation(
        self,
        agent: Agent,
        run: Run,
        outcome: Invocation | RuntimeFailure,
        *,
        timeout_reason: str,
    ) -> ApiError | None:
        """Record what an invocation came to.

        Returns the error to answer with when the invocation failed and that failure became
        the run's end (it may have ended another way first: then there is nothing to report).
        """
        if isinstance(outcome, RuntimeTimeout):
            if await self._transitions.fail(run.id, timeout_reason):
                return GatewayTimeout(timeout_reason, extra={"runId": run.id})
            return None
        if isinstance(outcome, RuntimeFailure):
            message = f"Runtime invocation failed: {outcome}"
            if await self._transitions.fail(run.id, message):
                return RuntimeInvocationFailed(message, extra={"runId": run.id})
            return None
        if outcome.result is not None:
            await self._transitions.record_result(run.id, outcome.result)
        elif outcome.runtime_run_id is not None:
            await follows.start_following(
                self._pool, run.id, outcome.runtime_run_id, first_poll_in_s=FIRST_POLL_S
            )
            if self._realtime is not None:
                # The first run of a new environment: its feed opens now, not at the next
                # discovery, and its snapshot carries this run (whose id is stored by now).
                self._realtime.ensure(agent.id, agent.runtime)
            # A cancel that came while the trigger call was on its way could not name the
            # runtime's run; cancel() looks for the id after claiming the end, this looks for
            # the claim after storing the id, so one of the two always asks the runtime.
            if await self._transitions.was_cancelled(run.id):
                await self._cancel_on_runtime(agent, outcome.runtime_run_id)
        return None

    async def trigger_and_wait(
        self,
        agent: Agent,
        *,
        input_data: Mapping[str, Any],
        user_id: uuid.UUID | None,
        timeout_ms: float | None,
        idempotency: IdempotencyKey | None,
        admit: Admit,
    ) -> Waited:
        """Trigger-and-wait: start the run and hold on until it ends or the wait window elapses.

        ``agent`` is one :data:`JSON_KINDS` allows. Raises 504 when the runtime did not
        answer the invocation within the window and 500 when it could not be invoked at all;
        in both cases the run is marked failed. With ``idempotency``, a key that already names
        a run waits for that run instead, within this call's window, never invoking the
        runtime again (and before ``admit``: it starts nothing). A run that has ended answers
        at once; one still going answers when it ends, or ``timed_out`` when the window
        elapses first (it goes on, as any waited run does).
        """
        window_ms = self._lookups.wait_window_ms(agent, timeout_ms)
        deadline = asyncio.get_running_loop().time() + window_ms / 1000
        existing = await self._creation.replay(agent, idempotency)
        if existing is not None:
            return await self._attach(existing, deadline=deadline)
        await admit()
        adapter = self._lookups.adapter_for(agent)
        created = await self._creation.create_once(
            agent,
            input_data=input_data,
            user_id=user_id,
            window_ms=window_ms,
            trigger_kind=TriggerKind.WAIT,
            # A followed runtime says when the run starts; a webhook starts it with this call.
            started=not adapter.followed,
            idempotency=idempotency,
        )
        if isinstance(created, IdempotentReplay):
            # A request with the same key committed its run a moment ago.
            return await self._attach(created.run, deadline=deadline)
        return await self.run_and_wait(agent, adapter, created.run, deadline=deadline)

    async def _attach(self, run: Run, *, deadline: float) -> Waited:
        """Wait for the run an Idempotency-Key named (see :meth:`trigger_and_wait`)."""
        ended = await self._waiters.wait(run.id, deadline=deadline)
        if ended is None:
            ended = await runs.current(self._pool, run)
        return Waited(ended, timed_out=not ended.terminal, replayed=True)

    async def run_and_wait(
        self,
        agent: Agent,
        adapter: RuntimeAdapter,
        run: Run,
        *,
        deadline: float,
        payload: TriggerPayload | None = None,
        cancel_on_leave: bool = False,
    ) -> Waited:
        """Invoke the runtime for a created ``run`` and hold on until it ends or ``deadline``
        (event-loop time) passes.

        ``payload`` replaces the default trigger payload. When the caller leaves, the run goes
        on by default; with ``cancel_on_leave`` it is cancelled, and a webhook call still in
        flight is dropped at once.
        """
        with self._waiters.watch(run.id) as watch:
            return await self._run_and_wait(
                agent,
                adapter,
                run,
                watch,
                deadline=deadline,
                payload=payload,
                cancel_on_leave=cancel_on_leave,
            )

    async def _run_and_wait(
        self,
        agent: Agent,
        adapter: RuntimeAdapter,
        run: Run,
        watch: Watch,
        *,
        deadline: float,
        payload: TriggerPayload | None,
        cancel_on_leave: bool,
    ) -> Waited:
        loop = asyncio.get_running_loop()
        if not adapter.followed and run.status == RunStatus.QUEUED:
            await self._transitions.publish(RunEvent(run.id, EventType.STARTED))
        if payload is None:
            payload = self._creation.trigger_payload(agent, run)
        invoke = asyncio.ensure_future(
            adapter.invoke(agent.runtime, payload, wait_s=max(0.001, deadline - loop.time()))
        )
        invoke.add_done_callback(_retrieve)
        try:
            ended = await watch.wait(deadline=deadline, interrupt=invoke)
            if ended is None and not watch.ended:
                outcome = _outcome(invoke)
                error = await self._record_invocation(
                    agent, run, outcome, timeout_reason=WINDOW_ELAPSED
                )
                if error is not None:
                    raise error
                # A refused failure means the run ended another way: give the store a moment.
                settle = deadline if isinstance(outcome, Invocation) else loop.time() + SETTLE_S
                ended = await watch.wait(deadline=settle)
        except asyncio.CancelledError:
            if cancel_on_leave:
                self._background.spawn(
                    self._leave(agent, adapter, run, invoke), name=f"leave-run-{run.id}"
                )
            # Otherwise the run goes on: the runtime's answer is still recorded.
            elif not invoke.done():
                if self._background.stopping:
                    # Work nobody waits on (an async execute), cut by the stop: as a trigger's.
                    invoke.cancel()
                    self._hand_on(run)
                else:
                    self._background.spawn(
                        self._adopt(agent, run, invoke, fail_on_stop=self._cut_by_drain()),
                        name=f"adopt-run-{run.id}",
                    )
            raise
        if not invoke.done():
            # The run ended another way (a callback, a cancel) while the runtime was still
            # answering. A webhook's answer can change nothing now; a Trigger.dev trigger call
            # is let finish, so that the task it created is known and, if cancelled, cancelled.
            if adapter.followed:
                self._background.spawn(
                    self._adopt(agent, run, invoke, fail_on_stop=False),
                    name=f"adopt-run-{run.id}",
                )
            else:
                invoke.cancel()
        if ended is None:
            ended = await runs.current(self._pool, run)
        return Waited(ended, timed_out=not ended.terminal)

    async def _leave(
        self,
        agent: Agent,
        adapter: RuntimeAdapter,
        run: Run,
        invoke: asyncio.Future[Invocation],
    ) -> None:
        """The caller left a run it asked to cancel then: cancel it, and stop its runtime."""
        if not adapter.followed:
            invoke.cancel()
        await self._transitions.publish(
            RunEvent(run.id, EventType.CANCELLED, error="Caller disconnected before the run ended")
        )
        if adapter.followed:
            # The trigger call is let finish so the task it created can be cancelled too
            # (_record_invocation sees the cancel and asks the runtime).
            await self._adopt(agent, run, invoke, fail_on_stop=False)

    async def _adopt(
        self, agent: Agent, run: Run, invoke: asyncio.Future[Invocation], *, fail_on_stop: bool
    ) -> None:
        """Record what an invocation nobody waits on any more comes to.

        If the gateway stops first, the run is failed when ``fail_on_stop`` (a held wait the
        drain cut: its caller saw the cut, and the run says why) and handed on otherwise (its
        caller had left before: the run was going on without one, as a trigger's does).
        """
        try:
            await asyncio.wait([invoke])
        except asyncio.CancelledError:
            invoke.cancel()
            if fail_on_stop:
                await self._transitions.fail(run.id, STOPPED_BEFORE_ANSWER)
            else:
                self._hand_on(run)
            raise
        await self._record_invocation(agent, run, _outcome(invoke), timeout_reason=WINDOW_ELAPSED)

    def _cut_by_drain(self) -> bool:
        """Whether the request being cancelled was cut by the drain (not left by its caller)."""
        return self._lifecycle is not None and self._lifecycle.cancelling

    async def cancel(self, org_id: uuid.UUID, agent_id: int, run_id: int) -> Run:
        """Mark a run cancelled (and ask its runtime to stop it); 409 when it has ended."""
        run = await self._lookups.get_run(org_id, agent_id, run_id)
        cancelled = RunEvent(run.id, EventType.CANCELLED)
        if run.terminal or not await self._transitions.publish(cancelled):
            raise await already_ended(self._pool, run)
        # Read after the end is claimed: an id stored later is seen by _record_invocation.
        runtime_run_id = (await runs.current(self._pool, run)).runtime_run_id
        if runtime_run_id is not None:
            await follows.stop_following(self._pool, run.id)
            agent = await self._lookups.agent_for(org_id, agent_id)
            self._background.spawn(
                self._cancel_on_runtime(agent, runtime_run_id), name=f"cancel-run-{run.id}"
            )
        log.info("run_cancelled", run_id=run.id, agent_id=agent_id)
        return run

    async def _cancel_on_runtime(self, agent: Agent, runtime_run_id: str) -> None:
        try:
            await self._lookups.adapter_for(agent).cancel(agent.runtime, runtime_run_id)
        except RuntimeFailure as exc:
            log.warning("runtime_cancel_failed", agent_id=agent.id, error=str(exc))


def _outcome(invoke: asyncio.Future[Invocation]) -> Invocation | RuntimeFailure:
    """What a finished invocation came to; one still running when the window elapsed is
    stopped and counts as a timeout."""
    if not invoke.done():
        invoke.cancel()
        return RuntimeTimeout(WINDOW_ELAPSED)
    if invoke.cancelled():
        return RuntimeTimeout(WINDOW_ELAPSED)
    exc = invoke.exception()
    if exc is None:
        return invoke.result()
    if isinstance(exc, RuntimeFailure):
        return exc
    raise exc


def _retrieve(invoke: asyncio.Future[Invocation]) -> None:
    """Mark an invocation's failure as seen: once the run ended another way, nobody reads it."""
    if not invoke.cancelled():
        invoke.exception()
