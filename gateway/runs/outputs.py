"""The ``outputs`` metric: a non-negative integer count of agent-defined output units.

It arrives as a top-level ``outputs`` in a JSON result (an n8n answer, a Trigger.dev return
value, a callback) or as the ``X-Outputs`` header of a file. Anything that is not a
non-negative integer is dropped silently; the value is never stripped from ``output_data``.
"""

from __future__ import annotations

from typing import Any

# runs.outputs is a bigint.
MAX_OUTPUTS = 2**63 - 1


def json_outputs(value: Any) -> int | None:
    """``value`` when it is a JSON integer in ``[0, 2**63)``; ``None`` otherwise.

    Booleans, floats (``1.0`` included), strings and negatives are dropped.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_OUTPUTS else None


def lift_outputs(output: Any) -> int | None:
    """The ``outputs`` of a JSON result: its top-level ``outputs`` member, when valid."""
    return json_outputs(output.get("outputs")) if isinstance(output, dict) else None


def header_outputs(value: str | None) -> int | None:
    """The ``X-Outputs`` header as a count: plain ASCII decimal digits only."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return json_outputs(int(text))
