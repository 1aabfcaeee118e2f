"""What PostgreSQL's ``jsonb`` cannot hold, checked before a value is sent on to be stored;
and the JSON codec of the sync path (:func:`dumps`, :func:`loads`).

A run output that the store consumer cannot write would stay in the event stream forever; it
is refused where it enters instead, with a reason the runtime's author can act on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson

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


# orjson reads an integer past 64 bits as a float (json keeps it exact): a text with a run of
# 19 ASCII digits anywhere (a number, or digits inside a string) is left to json, which is
# rare. The run is found by mapping every digit to "0" and every other byte to " " and looking
# for 19 zeros: a fifth of a regex search's CPU on the store consumer's events.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_digit_run(raw: bytes | str) -> bool:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return _LONG_DIGIT_RUN in data.translate(_DIGITS_AS_ZEROS)


def loads(raw: bytes | str, fallback: Callable[[bytes | str], Any] = json.loads) -> Any:
    """The value of a JSON text, as ``fallback`` (``json.loads``) reads it, in a fraction of its
    CPU: orjson reads it where the two agree; whatever orjson refuses (NaN, a lone surrogate
    escape, a number past a double's range, a nesting past its limit, invalid JSON) and every
    text with a long digit run is handed to ``fallback``, so its value or its error is
    ``fallback``'s exactly."""
    if not _has_long_digit_run(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return fallback(raw)


def dumps_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON: orjson, or ``json.dumps`` for what orjson refuses (an
    integer past 64 bits, a lone surrogate, a type it does not know), so that nothing json
    could write fails here. NaN and infinities, which no JSON reader accepts, are written as
    ``null`` by orjson (json wrote them bare); :func:`jsonb_problem` keeps them out of the
    store before they get this far."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":")).encode()


def dumps(value: Any) -> str:
    """:func:`dumps_bytes` as text (what asyncpg's text codecs and Redis fields take)."""
    return dumps_bytes(value).decode()
