"""What PostgreSQL's ``jsonb`` cannot hold, checked before a value is sent on to be stored.

A run output that the store consumer cannot write would stay in the event stream forever; it
is refused where it enters instead, with a reason the runtime's author can act on.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Deep enough for any real document, shallow enough for json's recursion and PostgreSQL's.
MAX_DEPTH = 200
# Half of a UTF-16 pair on its own: Python's json accepts "\ud800", UTF-8 cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def jsonb_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as ``jsonb``, or ``None`` when it can."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            if "\x00" in item:
                return "contains a \\u0000 character"
            if not item.isascii() and _SURROGATE.search(item):
                return "contains an unpaired surrogate (\\ud800-\\udfff)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "contains NaN or Infinity"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return "has a non-string object key"
                if "\x00" in key:
                    return "contains a \\u0000 character"
                if not key.isascii() and _SURROGATE.search(key):
                    return "contains an unpaired surrogate (\\ud800-\\udfff)"
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif item is not None and not isinstance(item, bool | int):
            return f"holds a {type(item).__name__}, which is not JSON"
    return None


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: each ``\\u0000`` and each unpaired surrogate (which
    neither ``text`` nor ``jsonb`` accepts; JSON's ``"\\ud800"`` decodes to one) becomes U+FFFD.
    For reasons and names a runtime or caller wrote, which are recorded, not refused."""
    text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text
