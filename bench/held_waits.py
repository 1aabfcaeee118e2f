"""Held waits: thousands of trigger-and-wait calls held at once on one gateway.

The bench runtime's slow route (``bench/origin_server.py``, ``/webhook/slow``) holds every call
and answers them all at once, ``delay_s`` seconds (20) after the last one arrived, each with an
echo of its own ``runId`` and ``input``: every call is held for at least 20 s, all of them at
the same time, however long they took to get in. ``bench/loadgen.py hold`` opens ``held``
calls at once (5,000; quick 1,000), each with a wait window well over that, spread over enough
agents that the default 5-a-minute bucket never refuses one, and waits for every answer. The
same is done again with ``held / divisor`` calls (a fresh gateway each time), so that the
PostgreSQL load of the two holds can be compared: the waiters are rechecked in one statement
per ``WAIT_RECHECK_S`` for all of them, so that load should not depend on how many there are.

Figures, per hold:

- answered correctly: 200, ``completed``, with the run's own echo as ``output_data``;
- the gateway's VmRSS idle before (fresh, warmed up), its peak during the hold (VmHWM reset
  before it, and VmRSS sampled every 50 ms), and a few seconds after the last answer;
- PostgreSQL's statements per second while every call is held, from a moment after the last
  call reached the runtime to a second before the answers are due, against the same gateway
  idle just before: from PostgreSQL's statement log (``log_statement = all`` for those windows
  only) and, beside it, ``pg_stat_database`` (which reports late: see :class:`StatementLog`);
- how long after the last answer the VmRSS is back near idle (polled for up to 30 s), and the
  peak's growth per held call (reported in the memory table too: ``bench/report.py``);
- fan-in: the client's last answer minus the runtime's last answer (one CLOCK_MONOTONIC);
- the kernel's count of connections dropped because a listening socket's queue was full.

The gateway of a hold may open as many connections to the runtime's one host as it holds
calls (``RUNTIME_MAX_CONNECTIONS_PER_HOST``): the runtime answers none before all have
arrived, so with the default bound the calls past it would wait for a connection until the
runtime gives up gathering (``gather_s``), which is not what is measured here.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.memory import Sampler
from bench.processes import BenchError, CpuWatch, Pids, memory_kib, python_module, reset_peak
from bench.report import Row, Section, at_most, ratio
from bench.stack import Gateway, Stack, agent_body

BUCKET = 5  # the default SYNC_RATE_LIMIT: tokens per agent per minute
# The sync-path issue's memory allowance for the held calls (5,000 of them), what "back near
# idle" is taken to mean here (15 MiB over it), and how soon after the last answer.
PEAK_ALLOWANCE_MIB = 100.0
AFTER_ALLOWANCE_MIB = 15.0
BACK_WITHIN_S = 30.0
# The allowance per held call, as the memory table reports it (KiB).
PER_WAIT_KIB = PEAK_ALLOWANCE_MIB * 1024 / 5000
# The last caller answered within this of the runtime's last answer (s).
FAN_IN_S = 1.0
# "Independent of the number of waiters": the busier hold's transactions/s within this factor
# of the smaller one's, either way.
LOAD_FACTOR = 1.5
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "blks_hit")
PG_STATS = (
    f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = current_database()"
)


@dataclass
class WaitsConfig:
    """How many calls to hold, and for how long."""

    held: int = 5000
    # The second hold has held // divisor calls.
    divisor: int = 5
    # The runtime answers every call at once, delay_s after the last one arrived (or gather_s
    # after the first, if some never come).
    delay_s: float = 20.0
    gather_s: float = 60.0
    # The calls' timeoutMs: the wait window, well over gather_s + delay_s.
    wait_ms: int = 120_000
    # The idle gateway's PostgreSQL load is read over this long before each hold.
    idle_s: float = 5.0
    # After every call reached the runtime, before the hold's PostgreSQL window opens (the
    # consumer applies the runs' first events meanwhile).
    quiet_s: float = 2.0
    settle_s: float = 5.0


@dataclass
class Hold:
    """What one hold of ``count`` calls measured."""

    count: int
    client: dict[str, Any]
    origin: dict[str, Any]
    idle_mib: float
    peak_mib: float
    after_mib: float
    pg_idle: dict[str, float]
    pg_hold: dict[str, float]
    statements_idle: Statements
    statements_hold: Statements | None
    hold_window_s: float
    cpu_run: dict[str, float | None]
    cpu_hold: dict[str, float | None]
    cpu_answer: dict[str, float | None]
    answering_s: float
    gateway_nofile: str
    gateway_backlog: int | None
    tcp: dict[str, int]
    # Seconds from the last answer until VmRSS was back within AFTER_ALLOWANCE_MIB of idle
    # (None: not within BACK_WITHIN_S).
    back_s: float | None = None
    rss_samples: list[float] = field(default_factory=list)

    @property
    def per_wait_kib(self) -> float:
        """The peak's growth over idle per held call."""
        return (self.peak_mib - self.idle_mib) * 1024 / self.count

    @property
    def fan_in_s(self) -> float | None:
        """The client's last answer after the runtime's last answer."""
        if not self.client.get("last_answer") or not self.origin.get("last_answer"):
            return None
        return float(self.client["last_answer"]) - float(self.origin["last_answer"])

    @property
    def client_answering_share(self) -> float:
        """The client's CPU share of one core from its first answer to its last."""
        span = float(self.client["last_answer"]) - float(self.client["first_answer"])
        return float(self.client.get("answering_cpu_s", 0.0)) / span if span > 0 else 0.0

    @property
    def arrival_s(self) -> float:
        """From the first call reaching the runtime to the last."""
        return float(self.origin["last_received"]) - float(self.origin["first_received"])


async def _pg_counters(conn: Any) -> tuple[float, dict[str, int]]:
    row = await conn.fetchrow(PG_STATS)
    return time.monotonic(), {name: int(row[name]) for name in PG_COUNTERS}


def _rates(
    before: tuple[float, dict[str, int]], after: tuple[float, dict[str, int]]
) -> dict[str, float]:
    seconds = after[0] - before[0]
    rates = {name: (after[1][name] - before[1][name]) / seconds for name in PG_COUNTERS}
    rates["seconds"] = seconds
    return rates


# A statement as log_statement = 'all' writes it with log_line_prefix '%n [%p] ': the epoch
# time, the backend's PID, then "statement: ..." (simple protocol) or "execute <name>: ..."
# (extended protocol, what asyncpg sends); a statement's further lines start with a tab.
_LOGGED = re.compile(r"^(\d+\.\d+) \[(\d+)\] \S*\s*LOG:  (?:statement|execute [^:]+): (.*)$")


@dataclass
class Statements:
    """The statements PostgreSQL ran in one window, from its own log."""

    seconds: float
    total: int
    kinds: dict[str, int]

    @property
    def per_s(self) -> float:
        """Statements per second."""
        return self.total / self.seconds if self.seconds > 0 else math.nan

    def top(self, count: int = 4) -> str:
        """The most frequent kinds, as 'n x text'."""
        ranked = sorted(self.kinds.items(), key=lambda kv: -kv[1])[:count]
        # A '|' in a statement would end a Markdown table cell.
        shown = [(n, text.replace("|", "\\|")) for text, n in ranked]
        return "; ".join(f"{n} x `{text}`" for n, text in shown) or "none"


class StatementLog:
    """Turns PostgreSQL's statement log on for a stretch and reads what it ran meanwhile.

    ``pg_stat_database`` alone cannot time a window of seconds: a backend reports its counts
    when it goes idle, but at most once a second, and one that reported less than a second
    before waits up to 10 s (PGSTAT_IDLE_INTERVAL), so a burst's transactions land in the
    following seconds. The statement log is written as each statement starts.
    """

    def __init__(self, conn: Any, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._offset = 0

    async def _set(self, on: bool) -> None:
        if on:
            await self._conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            await self._conn.execute("ALTER SYSTEM SET log_line_prefix = '%n [%p] '")
        else:
            await self._conn.execute("ALTER SYSTEM RESET log_statement")
            await self._conn.execute("ALTER SYSTEM RESET log_line_prefix")
        await self._conn.execute("SELECT pg_reload_conf()")

    async def start(self) -> None:
        """Log every statement from now on (a backend applies it before its next statement)."""
        self._offset = self._path.stat().st_size if self._path.exists() else 0
        await self._set(True)

    async def stop(self) -> None:
        """Stop logging statements."""
        await self._set(False)

    def read(self, start_wall: float, end_wall: float, *, skip_pid: int) -> Statements:
        """The statements started between the two wall times (``time.time()``), except those
        of backend ``skip_pid`` (this measurement's own connection)."""
        kinds: dict[str, int] = {}
        current: list[str] | None = None

        def close() -> None:
            if current is not None:
                text = " ".join(" ".join(current).split())[:90]
                kinds[text] = kinds.get(text, 0) + 1

        with open(self._path, errors="replace") as log:
            log.seek(self._offset)
            for line in log:
                if line.startswith("\t"):
                    if current is not None:
                        current.append(line.strip())
                    continue
                close()
                current = None
                found = _LOGGED.match(line.rstrip("\n"))
                if found is None or int(found[2]) == skip_pid:
                    continue
                if start_wall <= float(found[1]) <= end_wall:
                    current = [found[3]]
            close()
        return Statements(end_wall - start_wall, sum(kinds.values()), kinds)


# Kernel counters of refused connections (the whole machine, loopback included): SYNs and
# handshakes dropped because a listening socket's accept queue was full, and SYN cookies sent
# because its SYN queue was.
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent")


def tcp_counters() -> dict[str, int]:
    """The ``TCP_COUNTERS`` of ``/proc/net/netstat`` now."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            found = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return {name: found.get(name, 0) for name in TCP_COUNTERS}
    return dict.fromkeys(TCP_COUNTERS, 0)


def _gateway_nofile(pid: int) -> str:
    """The gateway's open-file limits, as ``/proc/<pid>/limits`` gives them (soft / hard)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft} / {hard}"
    return "?"


def listen_backlog(port: int) -> int | None:
    """The accept queue's length of the socket listening on 127.0.0.1:``port``, as the kernel
    has it (``ss -ltn``: Send-Q of a listening socket), whatever the program asked for."""
    import subprocess

    try:
        done = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "LISTEN":
            return int(fields[2])
    return None


async def _back_near_idle(pid: int, idle_mib: float, since: float) -> float | None:
    """Seconds from ``since`` (monotonic) until the VmRSS of ``pid`` is within
    AFTER_ALLOWANCE_MIB of ``idle_mib``, polled every 0.25 s; None when not by BACK_WITHIN_S."""
    while True:
        now = time.monotonic()
        if memory_kib(pid)["VmRSS"] / 1024 - idle_mib <= AFTER_ALLOWANCE_MIB:
            return max(0.0, now - since)
        if now - since >= BACK_WITHIN_S:
            return None
        await asyncio.sleep(0.25)


def _warm_up(gateway: Gateway, stack: Stack, agent_id: int, calls: int = 3) -> None:
    """A few trigger-and-wait calls against an instant answer: every path loaded once."""
    url = f"{gateway.base}/api/agents/{agent_id}/runs/trigger-and-wait"
    for seq in range(calls):
        body = json.dumps({"input": {"seq": seq}}).encode()
        request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - loopback
        for header in stack.auth_headers():
            name, _, value = header.partition(":")
            request.add_header(name.strip(), value.strip())
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            run = json.loads(answer.read())
        if run.get("status") != "completed" or run["output_data"].get("input") != {"seq": seq}:
            raise BenchError(f"warm-up trigger-and-wait answered {run}")


class _HoldRun:
    """One hold against one fresh gateway."""

    def __init__(self, stack: Stack, cfg: WaitsConfig, gateway: Gateway, count: int) -> None:
        self.stack = stack
        self.cfg = cfg
        self.gateway = gateway
        self.count = count
        self.tag = f"hold-{count}"

    def loadgen_argv(self, ids_file: Path) -> list[str]:
        """The client process: every call opened at once."""
        argv = [
            *python_module("loadgen"),
            "hold",
            "--url",
            f"{self.gateway.base}/api/agents/{{id}}/runs/trigger-and-wait",
            "--ids",
            str(ids_file),
            "--count",
            str(self.count),
            "--wait-ms",
            str(self.cfg.wait_ms),
            # Generous: the runtime's delay, plus however long the calls take to get in.
            "--timeout",
            str(self.cfg.wait_ms / 1000 + 120),
        ]
        for header in self.stack.auth_headers():
            argv += ["--header", header]
        return argv

    async def run(self, ids_file: Path) -> Hold:
        """Idle PostgreSQL load, then the hold: memory, PostgreSQL load, answers, fan-in."""
        import aiohttp
        import asyncpg

        assert self.stack.backends is not None
        pid = self.gateway.pid
        conn = await asyncpg.connect(self.stack.backends.database_url)
        session = aiohttp.ClientSession()
        process: asyncio.subprocess.Process | None = None
        own_pid = conn.get_server_pid()
        statements = StatementLog(conn, self.stack.postgres_log)
        # The statement log is stamped with wall time, the windows with monotonic time.
        to_wall = time.time() - time.monotonic()
        try:
            idle_mib = memory_kib(pid)["VmRSS"] / 1024
            await statements.start()
            idle_from = await _pg_counters(conn)
            await asyncio.sleep(self.cfg.idle_s)
            idle_to = await _pg_counters(conn)
            await statements.stop()
            pg_idle = _rates(idle_from, idle_to)
            statements_idle = statements.read(
                idle_from[0] + to_wall, idle_to[0] + to_wall, skip_pid=own_pid
            )
            watched: dict[str, Pids] = {
                "gateway": pid,
                "postgres": self.stack.postgres_pids,
                "consumer": self.stack.consumer.pid if self.stack.consumer else None,
                "redis": self.stack.redis_pid,
            }
            reset = reset_peak(pid)
            tcp_before = tcp_counters()
            with Sampler(pid) as sampler:
                cpu_run = CpuWatch(watched)
                process = await asyncio.create_subprocess_exec(
                    *self.loadgen_argv(ids_file),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                client_done = asyncio.ensure_future(process.communicate())
                stats = await self._until_all_in(session, client_done)
                await asyncio.sleep(self.cfg.quiet_s)
                await statements.start()
                hold_from = await _pg_counters(conn)
                cpu_hold = CpuWatch(watched)
                # A second before the answers are due: every call is held throughout.
                due = float(stats["answer_due"] or time.monotonic()) - 1.0
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                hold_to = await _pg_counters(conn)
                cpu_hold_shares = cpu_hold.done()
                await statements.stop()
                await asyncio.sleep(max(0.0, due + 1.0 - time.monotonic()))
                # From the runtime's answers to the last caller's: who is busy meanwhile.
                answering_from = time.monotonic()
                cpu_answer = CpuWatch(
                    {
                        **watched,
                        "runtime": self.stack.origin.pid if self.stack.origin else None,
                    }
                )
                timeout = self.cfg.delay_s + self.cfg.wait_ms / 1000 + 300
                stdout, stderr = await asyncio.wait_for(client_done, timeout)
                answering_s = time.monotonic() - answering_from
                cpu_answer_shares = cpu_answer.done()
                cpu_run_shares = cpu_run.done()
            tcp_after = tcp_counters()
            if process.returncode != 0:
                raise BenchError(f"loadgen hold failed: {stderr.decode()[-2000:]}")
            client: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
            peak_hwm = memory_kib(pid)["VmHWM"] / 1024 if reset else 0.0
            peak_mib = max([peak_hwm, *sampler.rss])
            back_s = await _back_near_idle(pid, idle_mib, float(client["last_answer"]))
            # Read settle_s after the last answer, or once back near idle if that took longer.
            await asyncio.sleep(
                max(0.0, float(client["last_answer"]) + self.cfg.settle_s - time.monotonic())
            )
            after_mib = memory_kib(pid)["VmRSS"] / 1024
            origin = await self._stats(session)
        finally:
            if process is not None and process.returncode is None:
                process.kill()  # our own child, by its PID
                await process.wait()
            await session.close()
            await conn.close()
        window = hold_to[0] - hold_from[0]
        held = window >= 1.0
        statements_hold = (
            statements.read(hold_from[0] + to_wall, hold_to[0] + to_wall, skip_pid=own_pid)
            if held
            else None
        )
        return Hold(
            count=self.count,
            client=client,
            origin=origin,
            idle_mib=idle_mib,
            peak_mib=peak_mib,
            after_mib=after_mib,
            pg_idle=pg_idle,
            pg_hold=_rates(hold_from, hold_to) if held else {},
            statements_idle=statements_idle,
            statements_hold=statements_hold,
            hold_window_s=window,
            cpu_run=cpu_run_shares,
            cpu_hold=cpu_hold_shares,
            cpu_answer=cpu_answer_shares,
            answering_s=answering_s,
            gateway_nofile=_gateway_nofile(pid),
            gateway_backlog=listen_backlog(int(self.gateway.base.rsplit(":", 1)[1])),
            tcp={name: tcp_after[name] - tcp_before[name] for name in TCP_COUNTERS},
            back_s=back_s,
            rss_samples=sampler.rss[:: max(1, len(sampler.rss) // 400)],
        )

    async def _stats(self, session: Any) -> dict[str, Any]:
        async with session.get(f"{self.stack.origin_base}/stats?tag={self.tag}") as answer:
            stats: dict[str, Any] = await answer.json()
            return stats

    async def _until_all_in(self, session: Any, client_done: asyncio.Future[Any]) -> dict[str, Any]:
        """Until the runtime has scheduled its answers (every call arrived, or it stopped
        waiting for more), or the client ended: the runtime's counts then."""
        while True:
            stats = await self._stats(session)
            if stats["released"] or client_done.done():
                if not stats["first_received"]:
                    raise BenchError("no call reached the runtime")
                return stats
            await asyncio.sleep(0.1)


def hold(stack: Stack, cfg: WaitsConfig, count: int) -> Hold:
    """Hold ``count`` calls at once on a fresh gateway."""
    origin = stack.origin_base
    slow = (
        f"{origin}/webhook/slow?delay_s={cfg.delay_s:g}&together={count}"
        f"&gather_s={cfg.gather_s:g}&tag=hold-{count}"
    )
    print(f"waits: {count} calls, creating {math.ceil(count / BUCKET)} agents ...", flush=True)
    ids = stack.clone_agents(agent_body(f"waits {count}", slow, "json"), math.ceil(count / BUCKET))
    (warm,) = stack.create_agents(
        [agent_body(f"waits {count} warm-up", f"{origin}/webhook/slow?delay_s=0&tag=warm", "json")]
    )
    ids_file = stack.write_ids(f"waits-{count}", ids)
    # As many runtime connections as calls held (see the module docstring).
    gateway = stack.start_gateway(
        f"waits-{count}", RUNTIME_MAX_CONNECTIONS_PER_HOST=str(count + 64)
    )
    try:
        _warm_up(gateway, stack, warm)
        time.sleep(1.0)
        result = asyncio.run(_HoldRun(stack, cfg, gateway, count).run(ids_file))
    finally:
        gateway.child.stop()
    fan_in = result.fan_in_s
    print(
        f"  [waits {count:>5} held] {result.client['correct']} correct, statuses "
        f"{result.client['statuses']} errors {result.client['errors']}; RSS idle "
        f"{result.idle_mib:.1f} peak {result.peak_mib:.1f} after {result.after_mib:.1f} MiB; "
        f"PostgreSQL {_per_s(result.statements_hold)} statements held "
        f"(idle {_per_s(result.statements_idle)}); fan-in "
        f"{'n/a' if fan_in is None else f'{fan_in * 1000:.0f} ms'}",
        flush=True,
    )
    return result


def _per_s(statements: Statements | None) -> str:
    return "n/a" if statements is None else f"{statements.per_s:.1f}/s"


def rows(section: Section, holds: list[Hold]) -> None:
    """The summary rows of every hold, then the PostgreSQL load ratio."""
    for h in holds:
        n = f"{h.count} held"
        correct = int(h.client["correct"])
        section.add(
            Row(
                f"answered correctly, {n}",
                f"{correct} of {h.count}",
                "-",
                None,
                "all",
                correct == h.count,
                {"correct": correct, "count": h.count, "statuses": h.client["statuses"]},
            )
        )
        growth = h.peak_mib - h.idle_mib
        section.add(
            Row(
                f"gateway RSS peak, {n}",
                f"{h.peak_mib:.1f} MiB ({growth:+.1f})",
                f"idle {h.idle_mib:.1f}",
                None,
                f"≤ idle + {PEAK_ALLOWANCE_MIB:g} MiB",
                at_most(growth, PEAK_ALLOWANCE_MIB),
                {"peak_mib": h.peak_mib, "idle_mib": h.idle_mib},
            )
        )
        section.add(per_wait_row(h))
        back = h.after_mib - h.idle_mib
        section.add(
            Row(
                f"gateway RSS after, {n}",
                f"{h.after_mib:.1f} MiB ({back:+.1f})",
                f"idle {h.idle_mib:.1f}",
                None,
                f"≤ idle + {AFTER_ALLOWANCE_MIB:g} MiB",
                at_most(back, AFTER_ALLOWANCE_MIB),
                {"after_mib": h.after_mib, "idle_mib": h.idle_mib},
            )
        )
        section.add(
            Row(
                f"gateway RSS back within idle + {AFTER_ALLOWANCE_MIB:g} MiB, {n}",
                "not within 30 s" if h.back_s is None else f"{h.back_s:.1f} s",
                "the last answer",
                None,
                f"≤ {BACK_WITHIN_S:g} s",
                h.back_s is not None and h.back_s <= BACK_WITHIN_S,
                {"back_s": h.back_s},
            )
        )
        overflows = h.tcp["ListenOverflows"]
        section.add(
            Row(
                f"accept-queue overflows while the calls connected, {n}",
                f"{overflows}",
                f"listen backlog {h.gateway_backlog}",
                None,
                "0",
                overflows == 0,
                {"overflows": overflows, "syncookies": h.tcp["SyncookiesSent"]},
            )
        )
        held = h.statements_hold
        section.add(
            Row(
                f"PostgreSQL statements/s while held, {n}",
                _per_s(held),
                f"idle gateway {_per_s(h.statements_idle)}",
                None if held is None else ratio(held.per_s, h.statements_idle.per_s),
                "-",
                None,
                {
                    "held_per_s": None if held is None else held.per_s,
                    "idle_per_s": h.statements_idle.per_s,
                    "window_s": h.hold_window_s,
                },
            )
        )
        fan_in = h.fan_in_s
        section.add(
            Row(
                f"fan-in: last caller after the runtime's last answer, {n}",
                "n/a" if fan_in is None else f"{fan_in * 1000:.0f} ms",
                "-",
                None,
                f"≤ {FAN_IN_S:g} s",
                at_most(fan_in, FAN_IN_S),
                {"fan_in_s": fan_in},
            )
        )
    if len(holds) == 2:
        big, small = holds
        load = ratio(
            None if big.statements_hold is None else big.statements_hold.per_s,
            None if small.statements_hold is None else small.statements_hold.per_s,
        )
        section.add(
            Row(
                f"PostgreSQL statements/s ratio, {big.count} vs {small.count} held",
                "n/a" if load is None else f"{load:.2f}",
                f"{big.count / small.count:g}x the waiters",
                load,
                f"≈ 1 (within {LOAD_FACTOR:g}x either way)",
                None if load is None else at_most(max(load, 1 / load), LOAD_FACTOR),
                {"ratio": load},
            )
        )


def per_wait_row(h: Hold) -> Row:
    """The gateway's RSS per held call (its peak's growth over idle / the calls held): the row
    the memory table shows too (bench/report.py, ``promote``)."""
    return Row(
        f"gateway RSS per held wait, {h.count} held",
        f"{h.per_wait_kib:.1f} KiB",
        f"peak +{h.peak_mib - h.idle_mib:.1f} MiB",
        None,
        f"≤ {PER_WAIT_KIB:.1f} KiB ({PEAK_ALLOWANCE_MIB:g} MiB / 5000)",
        at_most(h.per_wait_kib, PER_WAIT_KIB),
        {"per_wait_kib": h.per_wait_kib, "count": h.count},
    )


def _cpu(shares: dict[str, float | None]) -> str:
    return ", ".join(
        f"{name} {share * 100:.0f} %" for name, share in shares.items() if share is not None
    )


def details(holds: list[Hold]) -> str:
    """The detail tables: how the calls got in, what PostgreSQL did, CPU."""
    lines = [
        "| held | reached the runtime in | client p50 / max | statements/s idle / held "
        "| pg_stat_database xact/s idle / held | rows returned + fetched/s idle / held "
        "| window | gateway open files (soft / hard) | gateway listen backlog "
        "| accept-queue overflows / SYN cookies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in holds:
        lat = h.client["latency_s"]
        hold = h.pg_hold or dict.fromkeys((*PG_COUNTERS, "seconds"), math.nan)
        idle = h.pg_idle
        lines.append(
            f"| {h.count} | {h.arrival_s:.1f} s | {lat['p50']:.1f} / {lat['max']:.1f} s "
            f"| {h.statements_idle.per_s:.1f} / {_per_s(h.statements_hold).removesuffix('/s')} "
            f"| {idle['xact_commit']:.1f} / {hold['xact_commit']:.1f} "
            f"| {idle['tup_returned'] + idle['tup_fetched']:.0f} / "
            f"{hold['tup_returned'] + hold['tup_fetched']:.0f} "
            f"| {h.hold_window_s:.1f} s | {h.gateway_nofile} | {h.gateway_backlog} "
            f"| {h.tcp['ListenOverflows']} / {h.tcp['SyncookiesSent']} |"
        )
    lines += ["", "| held | window | statements (count x start of its text) |", "|---|---|---|"]
    for h in holds:
        lines.append(
            f"| idle before {h.count} | {h.statements_idle.seconds:.1f} s "
            f"| {h.statements_idle.top()} |"
        )
        if h.statements_hold is not None:
            lines.append(
                f"| {h.count} | {h.statements_hold.seconds:.1f} s | {h.statements_hold.top()} |"
            )
    lines += [
        "",
        "CPU share of one core while every call was held (the PostgreSQL window): "
        + "; ".join(f"{h.count} held: {_cpu(h.cpu_hold)}" for h in holds)
        + ". While answering (from the runtime's answers to the client's end): "
        + "; ".join(
            f"{h.count} held, {h.answering_s:.1f} s: {_cpu(h.cpu_answer)}, client "
            f"{h.client_answering_share * 100:.0f} % (from its first answer to its last)"
            for h in holds
        )
        + ". Over the whole hold (first call to last answer): "
        + "; ".join(f"{h.count} held: {_cpu(h.cpu_run)}" for h in holds)
        + ".",
    ]
    return "\n".join(lines)


def measure(stack: Stack, cfg: WaitsConfig) -> Section:
    """Hold ``held`` calls, then ``held // divisor``, each on a fresh gateway."""
    section = Section("waits", "8. Held waits: trigger-and-wait calls held at once")
    holds = [hold(stack, cfg, cfg.held)]
    if cfg.divisor > 1:
        holds.append(hold(stack, cfg, max(1, cfg.held // cfg.divisor)))
    rows(section, holds)
    section.details.append(details(holds))
    bad = [h for h in holds if h.client["correct"] != h.count]
    for h in bad:
        section.notes.append(
            f"{h.count} held: statuses {h.client['statuses']}, errors {h.client['errors']}, "
            f"samples {json.dumps(h.client['samples'])[:600]}"
        )
    section.notes.append(
        f"The runtime answered every call of a hold at once, {cfg.delay_s:g} s after the last one "
        f"arrived (so each was held at least {cfg.delay_s:g} s, all at the same time); the calls "
        "asked for "
        f"a {cfg.wait_ms / 1000:g} s window. PostgreSQL's statements/s come from its own "
        "statement log (log_statement = all while a window lasts; every backend: the gateway, "
        "the store consumer and its reaper, not this bench's own reads), from "
        f"{cfg.quiet_s:g} s after the last call reached the runtime to 1 s before the answers "
        f"were due, against the same gateway idle for {cfg.idle_s:g} s before its hold. "
        "pg_stat_database's xact_commit over the same window is in the details: a backend "
        "reports its counts at most once a second and, when it reported less than a second "
        "before, up to 10 s later, so the calls' own transactions just before a window land "
        "in it. RSS 'after' "
        f"is read {cfg.settle_s:g} s after the last answer. Fan-in: the client's last answer "
        "minus the runtime's last answer (both CLOCK_MONOTONIC)."
    )
    section.raw = {
        "config": cfg.__dict__,
        "holds": [
            {
                "count": h.count,
                "client": h.client,
                "origin": h.origin,
                "idle_mib": h.idle_mib,
                "peak_mib": h.peak_mib,
                "after_mib": h.after_mib,
                "pg_idle": h.pg_idle,
                "pg_hold": h.pg_hold,
                "statements_idle": h.statements_idle.__dict__,
                "statements_hold": None
                if h.statements_hold is None
                else h.statements_hold.__dict__,
                "hold_window_s": h.hold_window_s,
                "fan_in_s": h.fan_in_s,
                "arrival_s": h.arrival_s,
                "cpu_run": h.cpu_run,
                "cpu_hold": h.cpu_hold,
                "cpu_answer": h.cpu_answer,
                "answering_s": h.answering_s,
                "gateway_nofile": h.gateway_nofile,
                "gateway_backlog": h.gateway_backlog,
                "tcp": h.tcp,
                "back_s": h.back_s,
                "per_wait_kib": h.per_wait_kib,
                "rss_samples_mib": h.rss_samples,
            }
            for h in holds
        ],
    }
    return section
