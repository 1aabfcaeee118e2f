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
    full collection goes over what the batches left, not over all of them again; young passes
    come as often as GC_YOUNG_THRESHOLD says."""
    heap_when_run: list[tuple[int, int]] = []

    async def record(_consumer: StoreConsumer) -> None:
        heap_when_run.append((gc.get_freeze_count(), gc.get_threshold()[0]))

    monkeypatch.setattr(StoreConsumer, "run", record)
    gc.unfreeze()
    loop = asyncio.get_running_loop()
    try:
        await cli.run_consumer(
            dataclasses.replace(settings, consumer_port=0, gc_young_threshold=12_345)
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    [(frozen, young_threshold)] = heap_when_run
    assert frozen > 0
    assert young_threshold == 12_345
