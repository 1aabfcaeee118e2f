"""Handing the heap back after a burst of downloads: once per burst, never for a few streams."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http.streaming import memory_trim
from gateway.http.streaming.memory_trim import BurstTrim

pytestmark = pytest.mark.skipif(not memory_trim.AVAILABLE, reason="glibc's malloc_trim only")


async def _streams(trim: BurstTrim, count: int, burst: int) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    running = 0

    async def one() -> None:
        nonlocal running
        with trim.stream(burst):
            running += 1
            if running == count:
                started.set()
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await started.wait()
    release.set()
    await asyncio.gather(*tasks)


async def _settled(trim: BurstTrim, settle_s: float) -> None:
    # Past the settle delay, and the trim's thread (if one started) done.
    await asyncio.sleep(settle_s * 2)
    for _ in range(100):
        if trim._running is None or trim._running.done():
            return
        await asyncio.sleep(0.05)


async def test_a_burst_ending_trims_the_heap_once() -> None:
    trim = BurstTrim(settle_s=0.05)
    await _streams(trim, 8, burst=8)
    await _settled(trim, 0.05)
    assert trim.trims == 1


async def test_fewer_streams_than_the_burst_or_a_burst_of_zero_never_trim() -> None:
    trim = BurstTrim(settle_s=0.05)
    await _streams(trim, 7, burst=8)
    await _streams(trim, 50, burst=0)
    await _settled(trim, 0.05)
    assert trim.trims == 0


async def test_a_burst_that_goes_on_is_trimmed_after_its_new_end() -> None:
    trim = BurstTrim(settle_s=0.2)
    await _streams(trim, 8, burst=8)
    # Before the delay passed, another wave: still one trim, after the second wave.
    await _streams(trim, 8, burst=8)
    await _settled(trim, 0.2)
    assert trim.trims == 1
