"""The running as-deployed tree as the tests reach it: its addresses, its containers (replaced
as the kubelet replaces pods), host processes, and organisations made through the admin API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from devkit.embedded import EmbeddedRedis, stop_process
from devkit.nginx import Nginx
from tests.support.deployed import Podman, Workload

# startupProbe: periodSeconds 2 x failureThreshold 30.
STARTUP_S = 60.0


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http only
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


class Host:
    """Host processes of the tree (moto, the fake n8n), stopped by their PIDs."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            stop_process(child, timeout=10)


@dataclass
class Tree:
    """The running tree, as the tests reach it."""

    front: str
    admin_token: str
    runtime: str
    podman: Podman
    redis: EmbeddedRedis
    nginx: Nginx
    serve_ports: list[int]
    consumer_ports: list[int]
    serve_names: list[str] = field(default_factory=list)
    consumer_names: list[str] = field(default_factory=list)
    serve_works: list[Workload] = field(default_factory=list)
    consumer_works: list[Workload] = field(default_factory=list)
    generation: int = 0

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def replica(self, i: int) -> str:
        """Replica ``i``'s own address, past the load balancer."""
        return f"http://127.0.0.1:{self.serve_ports[i]}"

    def webhook(self, path: str) -> str:
        """A fake n8n webhook URL (``json``, ``bytes?size=…``, ``immediate``…)."""
        return f"{self.runtime}/webhook/{path}"

    def wait_serve_ready(self, i: int) -> None:
        wait_for(self.podman, self.serve_names[i], f"{self.replica(i)}/readyz")

    def wait_consumer_ready(self, i: int) -> None:
        wait_for(
            self.podman,
            self.consumer_names[i],
            f"http://127.0.0.1:{self.consumer_ports[i]}/healthz",
        )

    def replace_serve(self, i: int) -> int:
        """Terminate replica ``i`` as the kubelet does, start its replacement on the same
        port, wait until it is ready; the old one's exit code."""
        code = self.podman.terminate(self.serve_names[i], self.serve_works[i])
        self.generation += 1
        self.serve_names[i] = self.podman.start(
            f"serve-{i}-g{self.generation}", self.serve_works[i]
        )
        self.wait_serve_ready(i)
        return code

    def replace_consumer(self, i: int) -> int:
        """The same for consumer ``i``."""
        code = self.podman.terminate(self.consumer_names[i], self.consumer_works[i])
        self.generation += 1
        self.consumer_names[i] = self.podman.start(
            f"consume-{i}-g{self.generation}", self.consumer_works[i]
        )
        self.wait_consumer_ready(i)
        return code


def wait_for(podman: Podman, name: str, url: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if http_status(url) == 200:
            return
        if not podman.running(name):
            raise AssertionError(
                f"{name} exited before it was ready:\n{podman.output(name)[-4000:]}"
            )
        time.sleep(0.25)
    raise AssertionError(
        f"{url} ({name}) not ready in {STARTUP_S:g} s:\n{podman.output(name)[-4000:]}"
    )


@dataclass
class Org:
    """An organisation with an ingest key, made through the admin API behind nginx."""

    tree: Tree
    http: aiohttp.ClientSession
    org_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def agent(self, webhook: str, **fields: Any) -> dict[str, Any]:
        """An agent on the fake n8n's ``webhook`` (``{id, api_key, …}``)."""
        runtime = {"kind": "n8n", "webhook_url": self.tree.webhook(webhook)}
        runtime.update(fields.pop("runtime", {}))
        body = {"name": "As deployed", "output_kind": "json", "runtime": runtime, **fields}
        async with self.http.post(
            f"{self.tree.front}/admin/orgs/{self.org_id}/agents", json=body, headers=self.tree.admin
        ) as resp:
            text = await resp.text()
            assert resp.status == 201, text
            agent: dict[str, Any] = json.loads(text)
            return agent
