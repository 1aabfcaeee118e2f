"""What a file download needs to know about the runtime's response: headers and names."""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from email.message import Message
from email.utils import collapse_rfc2231_value

_SAFE = re.compile(r"[^A-Za-z0-9._]+")


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type value, lowercased."""
    if not content_type:
        return "application/octet-stream"
    return content_type.split(";", 1)[0].strip().lower() or "application/octet-stream"


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (``application/json`` or any ``+json``)."""
    kind = media_type(content_type)
    return kind == "application/json" or kind.endswith("+json")


def filename_from_disposition(disposition: str | None) -> str | None:
    """The file name a Content-Disposition carries (``filename*`` preferred), unsanitised."""
    if not disposition:
        return None
    msg = Message()
    msg["content-disposition"] = disposition
    name = msg.get_filename()
    return name or None


def runtime_filename_is_safe(disposition: str) -> bool:
    """Whether every file name a runtime's Content-Disposition carries (``filename`` and
    ``filename*`` alike: a client may read either) is a bare name a caller can save as is: no
    path (``/``, ``\\``, ``..``), no control or format characters (bidi overrides such as
    U+202E included)."""
    msg = Message()
    msg["content-disposition"] = disposition
    params = msg.get_params(header="content-disposition") or []
    return all(
        _bare(collapse_rfc2231_value(value)) for key, value in params if key.lower() == "filename"
    )


def _bare(name: str) -> bool:
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        return False
    return all(unicodedata.category(c)[0] != "C" for c in name)


def slug(text: str) -> str:
    """``text`` reduced to letters, digits, dots, dashes and underscores."""
    return _SAFE.sub("-", text).strip(".-")[:150]


def safe_filename(name: str) -> str:
    """A file name with no path, no quotes and no control characters."""
    return slug(name.replace("\\", "/").rsplit("/", 1)[-1]) or "download"


def derive_filename(agent_name: str, run_id: int, content_type: str | None) -> str:
    """A name for a file whose runtime gave none: agent, run and the type's extension."""
    extension = mimetypes.guess_extension(media_type(content_type), strict=False) or ".bin"
    stem = slug(agent_name.lower()) or "download"
    return f"{stem}-run-{run_id}{extension}"


def synthesized_disposition(filename: str) -> str:
    """``attachment; filename="<name>"`` for a name that is already safe to quote."""
    return f'attachment; filename="{safe_filename(filename)}"'
