"""The ``consume`` command's process: what it sets up around the store consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import signal

import pytest

from gateway import cli
from gateway.settings import Settings
from store.consumer import StoreConsumer


async def test_the_heap_built_before_consuming_is_left_out_of_full_collections(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's modules, settings and clients live as long as the process: frozen, a
    full collection goes over what the batches left, not over all of them again."""
    frozen_when_run: list[int] = []

    async def record(_consumer: StoreConsumer) -> None:
        frozen_when_run.append(gc.get_freeze_count())

    monkeypatch.setattr(StoreConsumer, "run", record)
    gc.unfreeze()
    loop = asyncio.get_running_loop()
    try:
        await cli.run_consumer(dataclasses.replace(settings, consumer_port=0))
    finally:
        gc.unfreeze()  # the test session's own heap goes back to the collector
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    [frozen] = frozen_when_run
    assert frozen > 0
