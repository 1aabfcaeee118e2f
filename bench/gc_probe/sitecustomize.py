"""Time every garbage collector pass of the gateway processes a bench starts.

Put this folder first on their ``PYTHONPATH`` and name a folder in ``GC_PROBE_DIR``::

    .venv/bin/python -m bench.run --only waits \\
        --gateway-env PYTHONPATH=$PWD/bench/gc_probe --gateway-env GC_PROBE_DIR=/tmp/gc

Each ``serve`` process then writes ``gc-<pid>.txt`` there: a line per pass over 5 ms (its end
on CLOCK_MONOTONIC, the generation, how long, what it freed), and about once a second the
totals so far per generation beside the process's CPU time, the last of which is the run's.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

_LONG_S = 0.005
_TOTALS_EVERY_S = 1.0


def _install(folder: Path) -> None:
    out = (folder / f"gc-{os.getpid()}.txt").open("w", buffering=1)
    started = [0.0]
    last_totals = [0.0]
    totals = {generation: [0, 0.0] for generation in range(3)}

    def on_pass(phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            started[0] = now
            return
        took = now - started[0]
        generation = info["generation"]
        totals[generation][0] += 1
        totals[generation][1] += took
        if took > _LONG_S:
            out.write(
                f"{time.monotonic():.4f} gen{generation} {took * 1000:.2f}ms "
                f"collected={info['collected']}\n"
            )
        if now - last_totals[0] > _TOTALS_EVERY_S:
            last_totals[0] = now
            passes = " ".join(
                f"g{gen}={count}/{seconds * 1000:.1f}ms" for gen, (count, seconds) in totals.items()
            )
            out.write(f"{time.monotonic():.4f} TOTAL cpu={time.process_time():.3f} {passes}\n")

    gc.callbacks.append(on_pass)


if os.environ.get("GC_PROBE_DIR") and "serve" in sys.argv[1:]:
    _install(Path(os.environ["GC_PROBE_DIR"]))
