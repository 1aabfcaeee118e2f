"""An agent's input format (workflow execute): typed fields, and a request coerced against them.

An agent may declare fields, each ``{"name", "type", "required"?, "description"?, "value"?}``
with ``type`` one of ``string``, ``number``, ``boolean``, ``json``, ``files``. A request is
coerced field by field ("3" for a number becomes 3, "true" for a boolean becomes true); a value
that cannot be coerced is a problem named after its field. ``files`` fields take the contract's two
forms: base64 data URLs (checked here, stored later) and URL references (passed through).

Domain code: no ``aiohttp.web`` here.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import mimetypes
import re
import unicodedata
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import loads_json

FIELD_TYPES = ("string", "number", "boolean", "json", "files")
# Keys of the execute body that steer the request rather than carry input.
CONTROL_KEYS = frozenset({"stream", "selectedOutputs"})
# Keys of the payload a runtime receives: a declared field may not shadow them.
PAYLOAD_KEYS = frozenset(
    {"runId", "agentId", "input", "agentApiKey", "credentialsToken", "callbackUrl"}
)
MAX_FIELDS = 200
_FIELD_KEYS = frozenset({"name", "type", "required", "description", "value"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,99}")
_INT = re.compile(r"[+-]?\d{1,300}")
_FLOAT = re.compile(r"[+-]?(?:\d{1,300}(?:\.\d{0,300})?|\.\d{1,300})(?:[eE][+-]?\d{1,4})?")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,126}/[\w.+-]{1,127}(?:\s*;[^\r\n]{0,200})?")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_SPACED = re.compile(r"[A-Za-z0-9+/\s]*(?:=\s*){0,2}")
_WHITESPACE = re.compile(r"\s+")
# A data URL's header (scheme, media type, ";base64") is short; the comma must come early.
_MAX_DATA_URL_HEADER = 1024
_MAX_FILE_NAME = 255
# How much base64 text is decoded at a time when a file is written out (a multiple of 4).
DECODE_STEP = 4 * 64 * 1024


class InputFormatError(ValueError):
    """An input format declaration that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class InputField:
    """One declared field of an agent's input format."""

    name: str
    type: str
    required: bool = False
    description: str | None = None


def parse_input_format(value: Any) -> list[InputField] | None:
    """The declared fields of ``value`` (an agent's ``input_format``); ``None`` when there is
    no declaration. Raises :class:`InputFormatError` for anything malformed."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputFormatError('must be a list of fields like {"name": ..., "type": ...}')
    if len(value) > MAX_FIELDS:
        raise InputFormatError(f"declares more than {MAX_FIELDS} fields")
    fields_: list[InputField] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"field {index}"
        if not isinstance(item, dict):
            raise InputFormatError(f"{where} must be an object")
        unknown = sorted(set(item) - _FIELD_KEYS)
        if unknown:
            raise InputFormatError(f"{where} has unknown keys: {', '.join(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputFormatError(
                f"{where}: name must be 1-100 letters, digits, '_' or '-', starting with a "
                "letter or '_'"
            )
        if name in CONTROL_KEYS or name in PAYLOAD_KEYS:
            raise InputFormatError(f"{where}: '{name}' is a reserved name")
        if name in seen:
            raise InputFormatError(f"{where}: '{name}' is declared twice")
        seen.add(name)
        kind = item.get("type")
        if kind not in FIELD_TYPES:
            raise InputFormatError(
                f"{where} ('{name}'): type must be one of {', '.join(FIELD_TYPES)}"
            )
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise InputFormatError(f"{where} ('{name}'): required must be true or false")
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            raise InputFormatError(f"{where} ('{name}'): description must be text")
        fields_.append(InputField(name, str(kind), required, description))
    return fields_


@dataclass(frozen=True, slots=True)
class FileUpload:
    """A base64 (or percent-encoded) data URL from the request, checked but not yet decoded.

    ``source[start:]`` is the encoded payload; it is decoded piece by piece when stored, so the
    decoded file is never held whole.
    """

    field: str
    position: int
    name: str
    mime_type: str
    size: int
    source: str = dataclasses.field(repr=False)
    start: int = 0
    is_base64: bool = True

    def decoded_chunks(self) -> Iterator[bytes]:
        """The file's bytes, in pieces of at most ``DECODE_STEP * 3 / 4``."""
        if not self.is_base64:
            yield urllib.parse.unquote_to_bytes(self.source[self.start :])
            return
        for offset in range(self.start, len(self.source), DECODE_STEP):
            yield base64.b64decode(self.source[offset : offset + DECODE_STEP])


@dataclass(frozen=True, slots=True)
class FileReference:
    """A file named by URL: passed to the runtime as it is, never fetched by the gateway."""

    field: str
    position: int
    url: str
    name: str
    mime_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class TooLargeFile:
    """A file over the per-file limit."""

    field: str
    position: int
    name: str
    size: int


class InputProblems(Exception):
    """Values that could not be coerced: ``problems`` maps each field to its messages."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__(problems)
        self.problems = problems

    def summary(self) -> str:
        """One line naming every field and its first problem."""
        parts = [f"'{name}' {messages[0]}" for name, messages in self.problems.items()]
        return "Invalid input: " + "; ".join(parts)


class FilesTooLarge(Exception):
    """Files over the per-file limit (checked once every other value is valid)."""

    def __init__(self, files: list[TooLargeFile], limit: int) -> None:
        super().__init__(files)
        self.files = files
        self.limit = limit

    def summary(self) -> str:
        """A message naming each file and its size."""
        named = ", ".join(
            f"'{f.name}' in '{f.field}' is {f.size} bytes ({_mib(f.size)})" for f in self.files
        )
        limit = f"{self.limit} bytes ({_mib(self.limit)})"
        return f"File too large: {named}; the limit is {limit} per file"


@dataclass(frozen=True, slots=True)
class FileBounds:
    """How many files one request may carry, per field and in all, and their decoded bytes
    together; each bound is named by its setting."""

    max_files: int
    max_files_per_field: int
    max_total_bytes: int


class FileBoundExceeded(Exception):
    """A request over one of its :class:`FileBounds` (found before any file is decoded)."""

    def __init__(self, setting: str, limit: int, actual: int, what: str) -> None:
        super().__init__(setting)
        self.setting = setting
        self.limit = limit
        self.actual = actual
        self.what = what

    def summary(self) -> str:
        """What was over, by how much, and the setting that bounds it."""
        return f"{self.what}; the limit is {self.limit} ({self.setting})"


@dataclass(frozen=True, slots=True)
class CoercedInput:
    """A request's input after coercion.

    ``values`` are the declared fields present in the request (files fields hold lists of
    :class:`FileUpload` and :class:`FileReference`); ``extra`` the request's other keys (kept
    under ``input`` only). Without an input format, everything is in ``extra``.
    """

    values: dict[str, Any]
    extra: dict[str, Any]
    declared: bool

    @property
    def uploads(self) -> list[FileUpload]:
        """Every file to store, in request order."""
        return [
            f
            for v in self.values.values()
            if isinstance(v, list)
            for f in v
            if isinstance(f, FileUpload)
        ]


def coerce_input(
    fields_: list[InputField] | None,
    body: Mapping[str, Any],
    *,
    max_file_bytes: int,
    bounds: FileBounds | None = None,
) -> CoercedInput:
    """Coerce ``body`` (the request without its control keys) against ``fields_``.

    Raises :class:`FileBoundExceeded` (a 413) as soon as the files are over ``bounds``,
    :class:`InputProblems` (a 400) or, when every value is otherwise valid,
    :class:`FilesTooLarge` (a 413).
    """
    if fields_ is None:
        return CoercedInput({}, dict(body), declared=False)
    if bounds is not None:
        _check_bounds(fields_, body, bounds)
    declared = {f.name: f for f in fields_}
    problems: dict[str, list[str]] = {}
    too_large: list[TooLargeFile] = []
    values: dict[str, Any] = {}
    for spec in fields_:
        raw = body.get(spec.name)
        if raw is None:
            if spec.required:
                problems[spec.name] = ["is required"]
            elif spec.name in body:
                values[spec.name] = None
            continue
        try:
            if spec.type == "files":
                values[spec.name] = _files(spec.name, raw, max_file_bytes, too_large)
            else:
                values[spec.name] = _COERCERS[spec.type](raw)
        except _Problem as problem:
            problems[spec.name] = [str(problem)]
    if problems:
        raise InputProblems(problems)
    if too_large:
        raise FilesTooLarge(too_large, max_file_bytes)
    extra = {k: v for k, v in body.items() if k not in declared}
    return CoercedInput(values, extra, declared=True)


def _check_bounds(fields_: list[InputField], body: Mapping[str, Any], bounds: FileBounds) -> None:
    """Count the files and their decoded bytes before any is parsed or decoded (the sizes come
    from the lengths of their data, as :func:`_upload` works them out)."""
    files = 0
    total = 0
    for spec in fields_:
        raw = body.get(spec.name)
        if spec.type != "files" or raw is None:
            continue
        items = [raw] if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            continue  # reported as a problem of its own
        if len(items) > bounds.max_files_per_field:
            raise FileBoundExceeded(
                "EXECUTE_MAX_FILES_PER_FIELD",
                bounds.max_files_per_field,
                len(items),
                f"Too many files in '{spec.name}': {len(items)}",
            )
        files += len(items)
        if files > bounds.max_files:
            raise FileBoundExceeded(
                "EXECUTE_MAX_FILES",
                bounds.max_files,
                files,
                f"Too many files in the request: {files}",
            )
        for item in items:
            data = item.get("data") if isinstance(item, dict) else None
            if isinstance(data, str) and data[:5].lower() == "data:":
                total += _approximate_size(data)
    if total > bounds.max_total_bytes:
        raise FileBoundExceeded(
            "EXECUTE_MAX_FILES_BYTES",
            bounds.max_total_bytes,
            total,
            f"The request's files are too large together: {total} bytes decoded",
        )


def _approximate_size(data: str) -> int:
    """A data URL's decoded size, from its length (no decoding: whitespace and padding make
    it at most a few bytes over; a percent-encoded payload is counted as its length)."""
    comma = data.find(",", 0, _MAX_DATA_URL_HEADER)
    if comma < 0:
        return 0
    payload = len(data) - comma - 1
    header = data[:comma].lower()
    return payload // 4 * 3 if header.endswith(";base64") else payload


class _Problem(ValueError):
    """Why one value cannot be coerced."""


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    raise _Problem(f"must be a string, got {_shown(value)}")


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise _Problem("must be a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Problem("must be a finite number")
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
    raise _Problem(f"must be a number, got {_shown(value)}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Problem(f"must be a boolean (true or false), got {_shown(value)}")


def _json(value: Any) -> dict[str, Any] | list[Any]:
    if isinstance(value, dict | list):
        return value
    if isinstance(value, str):
        try:
            parsed = loads_json(value)
        except (ValueError, RecursionError):
            raise _Problem("must be JSON (an object, an array, or a string holding one)") from None
        if isinstance(parsed, dict | list):
            return parsed
    raise _Problem(f"must be JSON (an object or an array), got {_shown(value)}")


_COERCERS = {"string": _string, "number": _number, "boolean": _boolean, "json": _json}


def _files(
    name: str, raw: Any, max_file_bytes: int, too_large: list[TooLargeFile]
) -> list[FileUpload | FileReference]:
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise _Problem(f"must be a list of files, got {_shown(raw)}")
    files: list[FileUpload | FileReference] = []
    for position, item in enumerate(items):
        try:
            parsed = _file(name, position, item)
        except _Problem as problem:
            raise _Problem(f"[{position}]: {problem}") from None
        if isinstance(parsed, FileUpload) and parsed.size > max_file_bytes:
            too_large.append(TooLargeFile(name, position, parsed.name, parsed.size))
        files.append(parsed)
    return files


def _file(field_name: str, position: int, item: Any) -> FileUpload | FileReference:
    if not isinstance(item, dict):
        raise _Problem('must be an object like {"type": "file", "data": ..., "name": ...}')
    data = item.get("data")
    if not isinstance(data, str) or not data:
        raise _Problem("data must be a data URL or an http(s) URL")
    kind = item.get("type")
    if kind is None:
        kind = "file" if data[:5].lower() == "data:" else "url"
    if kind not in ("file", "url"):
        raise _Problem("type must be 'file' (a base64 data URL) or 'url'")
    given_name = item.get("name")
    if given_name is not None and not isinstance(given_name, str):
        raise _Problem("name must be text")
    mime = item.get("mime")
    if mime is not None and (not isinstance(mime, str) or not _MEDIA_TYPE.fullmatch(mime)):
        raise _Problem("mime must be a media type such as application/pdf")
    if kind == "url":
        parts = urllib.parse.urlsplit(data)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(data) > 8192:
            raise _Problem("a 'url' file needs an http(s) URL in data")
        size = item.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            size = None
        name = _display_name(
            given_name or urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]),
            field_name,
            position,
            mime,
        )
        return FileReference(field_name, position, data, name, mime or _guess_type(name), size)
    return _upload(field_name, position, data, given_name, mime)


def _upload(
    field_name: str, position: int, data: str, given_name: str | None, mime: str | None
) -> FileUpload:
    comma = data.find(",", 0, _MAX_DATA_URL_HEADER)
    if data[:5].lower() != "data:" or comma < 0:
        raise _Problem("data is not a data URL (expected data:<type>;base64,<data>)")
    header = data[5:comma]
    params = [p.strip() for p in header.split(";")]
    is_base64 = bool(params) and params[-1].lower() == "base64"
    media = ";".join(params[:-1] if is_base64 else params).strip()
    if media and not _MEDIA_TYPE.fullmatch(media):
        raise _Problem("the data URL's media type is malformed")
    start = comma + 1
    source = data
    if is_base64:
        if not _BASE64.fullmatch(source, start):
            if not _BASE64_SPACED.fullmatch(source, start):
                raise _Problem("the data URL's base64 data is malformed")
            # Line-wrapped base64 (as `base64` prints it): drop the whitespace once.
            source, start = _WHITESPACE.sub("", source[start:]), 0
        length = len(source) - start
        if length % 4:
            raise _Problem("the data URL's base64 data is malformed (truncated)")
        # Counted from the end: rstrip() would copy the whole payload.
        padding = sum(1 for i in (1, 2) if length >= i and source[-i] == "=")
        size = length // 4 * 3 - padding
    else:
        try:
            size = len(urllib.parse.unquote_to_bytes(source[start:]))
        except (TypeError, ValueError):
            raise _Problem("the data URL's data is malformed") from None
    name = _display_name(given_name, field_name, position, mime or media)
    mime_type = mime or media or _guess_type(name)
    return FileUpload(field_name, position, name, mime_type, size, source, start, is_base64)


def _display_name(given: str | None, field_name: str, position: int, mime: str | None) -> str:
    """The file's name as the runtime sees it: no folders, no control characters."""
    base = (given or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if base in {"", ".", ".."}:
        extension = mimetypes.guess_extension((mime or "").split(";")[0].strip()) or ""
        base = f"{field_name}-{position + 1}{extension}"
    return base[:_MAX_FILE_NAME]


def _guess_type(name: str) -> str:
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.2f} MiB"
