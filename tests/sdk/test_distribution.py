"""The Python SDK installs alone: its distribution brings aiohttp and nothing of the server."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
SERVER_ONLY = {"agent-gateway", "asyncpg", "redis", "marshmallow", "structlog", "cryptography"}


def test_installing_the_python_sdk_in_an_empty_virtualenv_brings_no_server_package(
    tmp_path: Path,
) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip"]
    report = tmp_path / "report.json"
    # What pip would install there, resolved for real, without installing it.
    resolved = subprocess.run(
        [*pip, "install", "--quiet", "--dry-run", "--report", str(report), str(SDK)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resolved.returncode == 0, resolved.stderr

    installs = {
        item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]
    }
    assert "aiohttp" in installs
    assert set(installs).isdisjoint(SERVER_ONLY), set(installs) & SERVER_ONLY
    # The distribution's one declared dependency is aiohttp.
    requires = installs["agent-gateway-sdk"]["metadata"]["requires_dist"]
    assert [name.split(">")[0].split("=")[0].strip() for name in requires] == ["aiohttp"]
