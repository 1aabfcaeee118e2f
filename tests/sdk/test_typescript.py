"""The TypeScript SDK's own suite (``sdk/typescript``), run by Node's test runner.

It plays the same case table as the Python SDK (``sdk/cases.json``) against a real gateway
started by ``tests.support.live_stack``, downloads 100 MB to disk with flat memory, checks a
runtime dying mid-file surfaces as a stream error, and waits past a (shortened) headers timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openapi_agreement import SentRequest, disagreements

PACKAGE = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
# Where the installed lockfile's digest is kept, so `npm ci` runs only when it changed.
INSTALLED = PACKAGE / "node_modules" / ".lockfile-sha256"


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["npm", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=600, check=False
    )


def install_and_build() -> None:
    lock = hashlib.sha256((PACKAGE / "package-lock.json").read_bytes()).hexdigest()
    if not INSTALLED.exists() or INSTALLED.read_text() != lock:
        installed = npm("ci", "--no-audit", "--no-fund")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        INSTALLED.write_text(lock)
    built = npm("run", "build")
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="needs Node 18+ and npm (e.g. `apt-get install nodejs npm`)",
)
def test_the_typescript_sdk_passes_its_suite_against_a_real_gateway(tmp_path: Path) -> None:
    install_and_build()
    suites = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.glob("test/*.test.js"))
    log = tmp_path / "requests.jsonl"
    env = {**os.environ, "GATEWAY_PYTHON": sys.executable, "SDK_REQUESTS_LOG": str(log)}
    ran = subprocess.run(
        ["node", "--test", *suites],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = [line for line in ran.stdout.splitlines() if line.startswith("# ")]
    assert ran.returncode == 0, ran.stdout[-20_000:] + ran.stderr[-5_000:]
    assert "# fail 0" in summary, summary
    print("\n".join(summary))
    # Every request the SDK made is a route of the OpenAPI document, with documented fields.
    sent = [
        SentRequest(line["method"], line["path"], line["body"])
        for line in map(json.loads, log.read_text().splitlines())
    ]
    assert {request.path.rsplit("/", 1)[-1] for request in sent} >= {
        "trigger", "trigger-and-wait", "trigger-and-download", "register", "ingest", "callback",
        "resolve", "cancel",
    }  # fmt: skip
    assert disagreements(sent) == []
