"""What a dependency monitor (``gateway.ops.dependencies``) said, read from its log lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def changes(logs: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Its ``dependency_down`` / ``dependency_up`` lines as ``(event, dependency)``, in order."""
    return [
        (line["event"], line["dependency"])
        for line in logs
        if line["event"] in {"dependency_down", "dependency_up"}
    ]


def inconclusive(logs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The dependencies whose probe it found inconclusive (the event loop was late), in order."""
    return [line["dependency"] for line in logs if line["event"] == "dependency_probe_inconclusive"]
