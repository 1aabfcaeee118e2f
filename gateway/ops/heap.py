"""The collector and what a long-running process builds before it starts its work."""

from __future__ import annotations

import gc


def prepare_heap_for_work(young_threshold: int) -> None:
    """Leave what the process built to get here (modules, settings, pools, clients: alive as
    long as it is) out of the collector's full passes, which then go over what the work leaves,
    and let ``young_threshold`` allocations (less deallocations) pass between young passes.

    Measured on the store consumer under the events bench: a full pass over the whole heap
    stalled its loop for up to 120-150 ms, about once a second (added to the lag of every event
    in hand); frozen, the longest took 40-56 ms and all of them a quarter of the time.

    Measured on serve (bench/README.md, "Garbage collector"): at CPython's 700, a
    trigger-and-wait's objects were examined by a young pass, and those still alive promoted,
    every few requests; while 5,000 calls were held, a full pass (up to 460 ms, none of it
    garbage) ran each time the heap had grown by a quarter, 14 of them while the calls came in.
    The older generations keep CPython's thresholds: they count young passes, so they run
    as much less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)
