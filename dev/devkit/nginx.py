"""The shipped ``deploy/nginx.conf``, run by the system's nginx in front of local replicas.

The configuration is the deployment's own: only what ties it to a container (listen port,
upstream hosts, pid, log and temp paths, worker counts) is replaced, and every replacement
must find its line, so a change to the shipped file that breaks this fails loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devkit.embedded import stop_process

# The repository's own file: the dev kit is installed editable from the checkout.
DEPLOYED_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    """The system's nginx, if installed (often in sbin, outside a user's PATH)."""
    return shutil.which("nginx") or next(
        (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()),
        None,
    )


def render(conf: str, *, workdir: Path, port: int, upstreams: list[str]) -> str:
    """``conf`` listening on ``127.0.0.1:port`` in front of ``upstreams`` (host:port)."""
    servers = "\n".join(f"        server {upstream} max_fails=0;" for upstream in upstreams)
    temp_paths = "\n".join(
        f"    {name}_temp_path {workdir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    replacements = [
        ("worker_processes auto;", "worker_processes 1;"),
        ("worker_rlimit_nofile 65536;", ""),
        ("worker_connections 16384;", "worker_connections 1024;"),
        ("error_log /dev/stderr warn;", f"error_log {workdir / 'error.log'} info;"),
        ("pid /tmp/nginx.pid;", f"pid {workdir / 'nginx.pid'};"),
        ("access_log /dev/stdout gateway;", f"access_log {workdir / 'access.log'} gateway;"),
        ("        server gateway:8080 max_fails=0;", servers),
        ("        listen 80;", f"        listen 127.0.0.1:{port};"),
        ("http {\n", "http {\n" + temp_paths + "\n"),
    ]
    for old, new in replacements:
        if conf.count(old) != 1:
            raise AssertionError(f"deploy/nginx.conf no longer has exactly one {old.strip()!r}")
        conf = conf.replace(old, new)
    return conf


class Nginx:
    """One nginx master in the foreground, as a child of the test."""

    def __init__(self, binary: str, workdir: Path, port: int, upstreams: list[str]) -> None:
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "nginx.conf"
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            render(DEPLOYED_CONF.read_text(), workdir=workdir, port=port, upstreams=upstreams)
        )
        self._binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, *extra: str) -> list[str]:
        return [self._binary, "-p", str(self.workdir), "-c", str(self.conf), *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        return subprocess.run(
            self._command("-t"), capture_output=True, text=True, timeout=30, check=False
        )

    def start(self) -> None:
        """Run the master in the foreground (``daemon off``), so the test owns its PID."""
        log = open(self.workdir / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            self._command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        """Stop the master (and so its workers) by PID."""
        if self.process is not None:
            stop_process(self.process, timeout=10)
            self.process = None
            self._log.close()

    @property
    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text() if path.exists() else ""
