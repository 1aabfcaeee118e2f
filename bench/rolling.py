"""Rolling restarts: requests sent and failed while both replicas behind the shipped nginx are
replaced one after the other, under steady trigger-and-wait and trigger-and-download load.

Two ``serve`` replicas and the stack's store consumer, behind ``deploy/nginx.conf`` as
:mod:`devkit.nginx` renders it for loopback. Callers send without pause; each round restarts
both replicas in turn (SIGTERM, wait for the exit, start the replacement on the same address,
wait for ``/readyz``). The reference is the same load with no restart. A download counts as
failed unless it arrived whole (its byte count).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp

from bench.processes import BenchError
from bench.report import Row, Section, at_most
from bench.stack import Gateway, Stack, agent_body, find_nginx
from devkit.embedded import free_port
from devkit.nginx import Nginx

FILE_SIZE = 256 * 1024
# The shipped drain, with its waits shortened where they only add time on one machine; the
# idle close stays above nginx's upstream keepalive_timeout (4 s), which is what matters.
DRAIN = {"DRAIN_PRE_STOP_S": "1", "DRAIN_TIMEOUT_S": "10", "DRAIN_IDLE_CLOSE_S": "5"}


@dataclass
class RollingConfig:
    """How many rounds, how many callers."""

    rounds: int = 3
    wait_callers: int = 16
    download_callers: int = 4
    reference_s: float = 5.0


@dataclass
class Tally:
    """What the callers saw."""

    statuses: Counter[str]
    sent: int = 0

    @property
    def failed(self) -> int:
        """Calls that did not get a 200 with a whole body."""
        return self.sent - self.statuses["200"]


async def _load(
    urls: list[tuple[str, bool]], headers: dict[str, str], stop: asyncio.Event
) -> Tally:
    tally = Tally(Counter())

    async def caller(url: str, download: bool) -> None:
        while not stop.is_set():
            tally.sent += 1
            try:
                async with http.post(url, headers=headers, json={"input": {}}) as resp:
                    body = await resp.read()
                    whole = not download or len(body) == FILE_SIZE
                    tally.statuses[str(resp.status) if whole else "cut file"] += 1
            except aiohttp.ClientError as exc:
                tally.statuses[type(exc).__name__] += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(caller(url, download) for url, download in urls))
    return tally


async def _ready(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise BenchError(f"{base} never became ready")


def measure(stack: Stack, config: RollingConfig) -> Section:
    """The rolling-restart section: statuses seen with and without restarts."""
    section = Section("rolling", "6. Rolling restarts")
    binary = find_nginx(None)
    if binary is None:
        section.skipped = "nginx not installed (apt-get install -y nginx)"
        return section
    front_port = free_port()
    ports = [free_port(), free_port()]
    settings = {
        **DRAIN,
        "SYNC_RATE_LIMIT": "100000000",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{front_port}",
    }
    gateways = stack.start_gateways(
        [(f"replica {i}", {**settings, "GATEWAY_PORT": str(port)}) for i, port in enumerate(ports)]
    )
    nginx = Nginx(
        binary, stack.root / "rolling-nginx", front_port, [f"127.0.0.1:{p}" for p in ports]
    )
    nginx.start()
    try:
        front = f"http://127.0.0.1:{front_port}"
        asyncio.run(_ready(front))
        waiter, download = stack.create_agents(
            [
                agent_body("rolling-wait", f"{stack.origin_base}/webhook/json", "json"),
                agent_body(
                    "rolling-file",
                    f"{stack.origin_base}/webhook/bytes?size={FILE_SIZE}",
                    "file_download",
                ),
            ]
        )
        urls = [(f"{front}/api/agents/{waiter}/runs/trigger-and-wait", False)] * config.wait_callers
        urls += [
            (f"{front}/api/agents/{download}/runs/trigger-and-download", True)
        ] * config.download_callers
        headers = {"Authorization": f"Bearer {stack.ingest_key}"}
        reference = asyncio.run(_timed_load(urls, headers, config.reference_s))
        rolled, seconds = asyncio.run(
            _rolling_load(stack, gateways, settings, ports, urls, headers, config.rounds)
        )
    finally:
        nginx.stop()
        # The replicas (the last replacements: the list is updated in place) would otherwise
        # run on until the end, polling PostgreSQL under the measurements that follow.
        for gateway in gateways:
            gateway.child.stop()
    for name, tally in (
        ("no restart (reference)", reference),
        (f"{config.rounds} rolling restarts", rolled),
    ):
        section.rows.append(
            Row(
                f"failed calls, {name}",
                f"{tally.failed} of {tally.sent}",
                target="0" if tally is rolled else "-",
                met=at_most(tally.failed, 0) if tally is rolled else None,
                values={
                    "sent": tally.sent,
                    "failed": tally.failed,
                    "statuses": dict(tally.statuses),
                },
            )
        )
    section.notes.append(
        f"statuses with restarts: {dict(rolled.statuses)}; without: {dict(reference.statuses)}; "
        f"{config.rounds} rounds took {seconds:.1f} s"
    )
    return section


async def _timed_load(
    urls: list[tuple[str, bool]], headers: dict[str, str], seconds: float
) -> Tally:
    stop = asyncio.Event()
    running = asyncio.ensure_future(_load(urls, headers, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return await running


async def _rolling_load(
    stack: Stack,
    gateways: list[Gateway],
    settings: dict[str, str],
    ports: list[int],
    urls: list[tuple[str, bool]],
    headers: dict[str, str],
    rounds: int,
) -> tuple[Tally, float]:
    stop = asyncio.Event()
    running = asyncio.ensure_future(_load(urls, headers, stop))
    started = time.monotonic()
    await asyncio.sleep(1)
    for _ in range(rounds):
        for i, port in enumerate(ports):
            gateways[i].child.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(gateways[i].child.process.wait, 60)
            gateways[i] = stack.start_gateways(
                [(f"replica {i}", {**settings, "GATEWAY_PORT": str(port)})]
            )[0]
            await _ready(f"http://127.0.0.1:{port}")
    await asyncio.sleep(1)
    stop.set()
    return await running, time.monotonic() - started


def config_for(quick: bool) -> RollingConfig:
    """The rounds and callers of a full or a quick run."""
    return RollingConfig(rounds=1, wait_callers=8, download_callers=2) if quick else RollingConfig()
