"""Input files of runs: stored in the blob store, handed to runtimes as signed URLs.

A base64 upload becomes workflow execute's file object ``{url, name, size, type, uploadedAt,
expiresAt}`` whose ``url`` is a signed, expiring URL this gateway serves; a URL reference is
passed through as ``{url, name, size, type}`` and never fetched.

Domain code: no ``aiohttp.web`` here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from gateway.errors import Forbidden, NotFound, ServiceUnavailable
from gateway.execute.input_format import CoercedInput, FileReference, FileUpload
from gateway.security.signing import SignatureError, UrlSigner
from gateway.storage.blobs import BlobNotFound, BlobStore, BlobStoreError, run_input_key
from store import run_files
from store.models import iso
from store.run_files import RunFile

log = structlog.get_logger(__name__)

# Signed file URLs live under this path, followed by the blob key.
FILES_PATH = "/files/"


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """A stored file about to be sent: its record and its bytes."""

    record: RunFile
    chunks: AsyncGenerator[bytes, None]


async def _chunks_of(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


class FileService:
    """Stores a run's uploads, names them with signed URLs, and serves them back."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        blobs: BlobStore,
        signer: UrlSigner,
        *,
        public_base_url: str,
        url_ttl_s: int,
    ) -> None:
        self._pool = pool
        self._blobs = blobs
        self._signer = signer
        self._base = public_base_url.rstrip("/")
        self._ttl_s = url_ttl_s

    @property
    def blobs(self) -> BlobStore:
        """The blob store files are kept in."""
        return self._blobs

    def placeholder(self, value: Any) -> Any:
        """A coerced value as the run records it before its files are stored."""
        if not isinstance(value, list):
            return value
        return [
            {"name": f.name, "size": f.size, "type": f.mime_type}
            if isinstance(f, FileUpload)
            else self._reference(f)
            if isinstance(f, FileReference)
            else f
            for f in value
        ]

    async def store(self, run_id: int, org_id: uuid.UUID, coerced: CoercedInput) -> dict[str, Any]:
        """Store every upload of ``coerced`` for the run; the declared values with each file
        replaced by its file object. Raises ``BlobStoreError`` when the store fails."""
        stored: dict[tuple[str, int], dict[str, Any]] = {}
        for ordinal, upload in enumerate(coerced.uploads):
            key = run_input_key(run_id, ordinal, upload.name)
            blob = await self._blobs.put(
                key, _chunks_of(upload.decoded_chunks()), content_type=upload.mime_type
            )
            record = await run_files.insert_run_file(
                self._pool,
                run_id=run_id,
                org_id=org_id,
                field=upload.field,
                position=upload.position,
                name=upload.name,
                mime_type=upload.mime_type,
                size_bytes=blob.size,
                sha256=blob.sha256,
                blob_key=key,
            )
            stored[(upload.field, upload.position)] = self.file_object(record)
        values: dict[str, Any] = {}
        for name, value in coerced.values.items():
            if isinstance(value, list) and any(
                isinstance(f, FileUpload | FileReference) for f in value
            ):
                values[name] = [
                    stored[(f.field, f.position)]
                    if isinstance(f, FileUpload)
                    else self._reference(f)
                    if isinstance(f, FileReference)
                    else f
                    for f in value
                ]
            else:
                values[name] = value
        return values

    def file_object(self, record: RunFile, *, now: float | None = None) -> dict[str, Any]:
        """Workflow execute's file object for a stored file, with a freshly signed URL."""
        signed = self._signer.sign(
            self._base, FILES_PATH + record.blob_key, ttl_s=self._ttl_s, now=now
        )
        return {
            "url": signed.url,
            "name": record.name,
            "size": record.size_bytes,
            "type": record.mime_type,
            "uploadedAt": iso(record.created_at),
            "expiresAt": iso(signed.expires_at),
        }

    @staticmethod
    def _reference(ref: FileReference) -> dict[str, Any]:
        return {"url": ref.url, "name": ref.name, "size": ref.size, "type": ref.mime_type}

    async def open_signed(
        self, path: str, expires: str | None, signature: str | None
    ) -> OpenedFile:
        """The stored file a signed URL names, once its signature and expiry check out.

        403 for a URL that is not signed, was tampered with or has expired; 404 when the
        file is gone; 503 when the blob store cannot be read.
        """
        try:
            self._signer.verify(path, expires, signature)
        except SignatureError as exc:
            raise Forbidden(str(exc)) from None
        key = path.removeprefix(FILES_PATH)
        record = await run_files.get_run_file_by_key(self._pool, key)
        if record is None:
            raise NotFound("File not found")
        chunks = self._blobs.read(key)
        try:
            # The first step finds out whether the blob is there, before any header is sent.
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except BlobNotFound:
            log.warning("stored_file_missing", key=key)
            raise NotFound("File not found") from None
        except BlobStoreError as exc:
            # The store is down (S3 unreachable, a disk error): the URL is fine, retry later.
            log.error("stored_file_unreadable", key=key, error=str(exc))
            raise ServiceUnavailable(
                "The file cannot be read right now; retry shortly", headers={"Retry-After": "1"}
            ) from None
        return OpenedFile(record, _prepend(first, chunks))


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
