"""Running ``agent-gateway`` as an operator does, in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support.backends import Backends
from tests.support.tokens import SECRET_KEY


def run_console(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``agent-gateway *args`` with exactly ``env``, its output captured (bounded wait)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_env(backends: Backends) -> dict[str, str]:
    """What an ``admin`` command needs: the database and the secret key."""
    return {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "WARNING",
    }


def admin(backends: Backends, *args: str) -> Any:
    """``agent-gateway admin *args``, which must succeed: its JSON answer."""
    done = run_console("admin", *args, env=admin_env(backends))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failure_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON line a command that could not start wrote on stderr, checked as such."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line: dict[str, Any] = json.loads(lines[0])
    return line
