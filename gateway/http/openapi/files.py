"""``GET /files/{key}``: a workflow execute's stored input file, behind a signed URL."""

from __future__ import annotations

from gateway.http.openapi.components import PUBLIC, Json, error, headers, param

TAG = {
    "name": "files",
    "description": "Input files of workflow executes, served to whoever holds a signed URL "
    "(the runtime that was handed it). No other credential.",
}

PATHS: dict[str, Json] = {
    "/files/{key}": {
        "parameters": [
            {
                "name": "key",
                "in": "path",
                "required": True,
                "description": "The stored file's key, `runs/<runId>/inputs/<n>-<name>`, "
                "slashes included, exactly as in the signed URL: the signature covers the path "
                "as sent (a `/` sent as `%2F` does not match).",
                "schema": {"type": "string", "examples": ["runs/7/inputs/0-document.pdf"]},
            },
            {
                "name": "expires",
                "in": "query",
                "required": True,
                "description": "When the URL stops being honoured (Unix seconds).",
                "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
            },
            {
                "name": "signature",
                "in": "query",
                "required": True,
                "description": "`<key id>.<HMAC-SHA256 hex>` over the path and `expires`, with "
                "a key derived from `SECRET_KEY` (or a previous key still in "
                "`SECRET_KEYS_PREVIOUS`): any replica honours any replica's URLs.",
                "schema": {"type": "string", "pattern": "^([0-9a-f]{8}\\.)?[0-9a-f]{64}$"},
            },
            param("X-Request-Id"),
        ],
        "get": {
            "tags": [TAG["name"]],
            "security": PUBLIC,
            "operationId": "getSignedFile",
            "summary": "Download a stored input file",
            "description": "The URL is a file object's `url` (valid for `FILE_URL_TTL_S`). "
            "`HEAD` answers the same headers without the body.",
            "responses": {
                "200": {
                    "description": "The file, streamed from the blob store.",
                    "headers": {
                        **headers(),
                        "Content-Length": {"required": True, "schema": {"type": "string"}},
                        "Content-Disposition": {
                            "required": True,
                            "schema": {"type": "string"},
                            "description": '`attachment; filename="<ASCII name>"; '
                            "filename*=UTF-8''<name>`",
                        },
                        "Cache-Control": {
                            "required": True,
                            "schema": {"const": "private, no-store"},
                        },
                        "X-Content-Type-Options": {
                            "required": True,
                            "schema": {"const": "nosniff"},
                        },
                    },
                    "content": {
                        "*/*": {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "`Content-Type` is the file's media type.",
                            }
                        }
                    },
                },
                "403": error(
                    "The URL is not signed, its expiry is malformed, its path, expiry or "
                    "signature was changed, or it has expired."
                ),
                "404": error("The file is gone."),
                "503": error(
                    "PostgreSQL or the blob store cannot be reached; retry shortly.",
                    "Retry-After",
                ),
            },
        },
    },
}
