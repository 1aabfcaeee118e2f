"""Child processes of the benchmark and what ``/proc`` says about them.

Every process the benchmark starts is a :class:`Child`: started in its own session with its
output in a log file, and stopped by its PID. Figures about a process (memory, CPU, bytes
read and written) come from ``/proc/<pid>/``, so they never depend on the process helping.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devkit.embedded import stop_process

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
MIB = 1024 * 1024
GB = 1e9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A part of the benchmark could not start, or a result came back wrong."""


@dataclass
class Child:
    """A child process of ours, with its log file, stopped by its PID."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's PID."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the child by its PID and wait; kill it if it does not exit in time."""
        stop_process(self.process, sig=sig, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Child:
    """Start ``argv`` in its own session with stdout/stderr going to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def python_module(module: str, *args: str) -> list[str]:
    """``python -m bench.<module> args...`` with the running interpreter."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def wait_for_port(child: Child, port: int, timeout: float) -> None:
    """Wait (bounded) until ``child`` accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchError(
                f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on {port} within {timeout:g} s")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    return memory_kib(pid)["VmRSS"] / 1024


def reset_peak(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current VmRSS (``clear_refs`` 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def io_bytes(pid: int) -> tuple[int, int]:
    """(rchar, wchar) of ``pid``: bytes it passed through read and write system calls."""
    found = {"rchar": 0, "wchar": 0}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value)
    return found["rchar"], found["wchar"]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (``/proc/<pid>/stat``), or None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """User + system CPU seconds of our reaped children (the client processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs so far, from the ``cpu`` line of ``/proc/stat``."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


Pids = int | None | Sequence[int] | Callable[[], Sequence[int]]


def _resolve(pids: Pids) -> list[int]:
    if pids is None:
        return []
    if isinstance(pids, int):
        return [pids]
    if callable(pids):
        return list(pids())
    return list(pids)


class CpuWatch:
    """CPU seconds of some processes and the hypervisor's steal over one stretch of time.

    A name may stand for a group of PIDs, or for a function giving them (PostgreSQL: the
    postmaster and its backends, read again at the end so that a backend started meanwhile
    counts from zero). A member that exits meanwhile drops out, so a group's share is a lower
    bound when its members come and go.
    """

    def __init__(self, pids: dict[str, Pids]) -> None:
        self._pids = pids
        self._before = {
            name: {pid: cpu_seconds(pid) or 0.0 for pid in _resolve(group)}
            for name, group in pids.items()
        }
        self._ticks = cpu_ticks()
        self._started = time.monotonic()

    def done(self) -> dict[str, float | None]:
        """Share of one core each process used since the start, plus ``steal`` (of all)."""
        seconds = max(1e-9, time.monotonic() - self._started)
        shares: dict[str, float | None] = {}
        for name, group in self._pids.items():
            used = None
            for pid in _resolve(group):
                after = cpu_seconds(pid)
                if after is not None:
                    used = (used or 0.0) + after - self._before[name].get(pid, 0.0)
            shares[name] = None if used is None else used / seconds
        steal_after, total_after = cpu_ticks()
        shares["steal"] = (steal_after - self._ticks[0]) / max(1, total_after - self._ticks[1])
        return shares


def children_of(pid: int | None) -> list[int]:
    """The direct children of ``pid`` (``/proc/<pid>/task/<pid>/children``)."""
    if pid is None:
        return []
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def nginx_worker(master_pid: int) -> int | None:
    """The PID of the (single) nginx worker, from ``/proc/<pid>/task/<pid>/children``."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values`` by the nearest-rank method."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
