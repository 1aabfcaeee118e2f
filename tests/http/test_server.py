"""The gateway's listening socket as the kernel holds it: callers who arrive together queue."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import subprocess
from pathlib import Path

import pytest

from devkit.embedded import free_port
from gateway.http.app import create_app
from gateway.http.server import GatewayServer
from gateway.settings import Settings


def accept_queue_length(port: int) -> int:
    """What ``ss -ltn`` shows an operator as the Send-Q of the socket listening on ``port``:
    how many connections the kernel queues for accept()."""
    done = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("LISTEN")]
    return int(line.split()[2])


def somaxconn() -> int:
    """net.core.somaxconn: the kernel caps every listen backlog at it."""
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
@pytest.mark.parametrize("backlog", [None, 333])
async def test_a_serving_gateway_queues_as_many_connections_as_its_listen_backlog(
    settings: Settings, backlog: int | None
) -> None:
    port = free_port()
    settings = dataclasses.replace(settings, port=port, public_base_url=f"http://127.0.0.1:{port}")
    if backlog is not None:
        settings = dataclasses.replace(settings, listen_backlog=backlog)
    server = GatewayServer(create_app(settings), settings)
    await server.start()
    try:
        assert accept_queue_length(port) == min(settings.listen_backlog, somaxconn())
    finally:
        await server.close()


async def test_a_serving_gateway_leaves_what_startup_built_out_of_full_collections(
    settings: Settings,
) -> None:
    """Frozen, a full pass goes over what requests left; young passes come as often as
    GC_YOUNG_THRESHOLD says."""
    port = free_port()
    settings = dataclasses.replace(
        settings,
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        gc_young_threshold=12_345,
    )
    server = GatewayServer(create_app(settings), settings)
    gc.unfreeze()
    await server.start()
    try:
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] == 12_345
    finally:
        await server.close()
        gc.unfreeze()
