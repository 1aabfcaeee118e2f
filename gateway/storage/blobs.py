"""The blob store: where uploaded input files (and later, run outputs) are kept.

One interface, two backends:

- :class:`FilesystemBlobStore`, a folder (the embedded default; one replica, or several that
  share a volume);
- :class:`S3BlobStore`, any S3-compatible store through aiobotocore (what several replicas
  behind a load balancer need).

Blobs are written from an async iterable of chunks and read back as an async iterator of
chunks, so neither side ever holds a whole blob. Keys are stable, ``/``-separated paths made
of safe characters; :func:`run_input_key` gives each input file of a run its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

# What one read hands back; the caller's socket takes it in one write.
READ_CHUNK = 256 * 1024
# S3 multipart parts must be at least 5 MiB (but the last); 8 MiB keeps memory per upload low.
S3_PART_SIZE = 8 * 1024 * 1024
MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120


class BlobNotFound(LookupError):
    """No blob under that key."""


class BlobStoreError(RuntimeError):
    """The backend failed (disk full, S3 unreachable, ...)."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """What was written: the key, its size in bytes and its SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    """Where blobs live. Every method may raise :class:`BlobStoreError`."""

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> StoredBlob:
        """Write ``chunks`` under ``key`` (replacing what was there), all or nothing."""
        ...

    def read(self, key: str, *, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The blob's bytes, chunk by chunk; :class:`BlobNotFound` on the first step when
        there is no such blob."""
        ...

    async def size(self, key: str) -> int:
        """The blob's size in bytes; :class:`BlobNotFound` when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob (nothing happens when there is none)."""
        ...


def check_key(key: str) -> str:
    """``key`` when it is a valid blob key; ``ValueError`` otherwise.

    Valid: ``/``-separated segments of ``[A-Za-z0-9._-]``, none of them ``.`` or ``..``, at
    most 1024 characters. Such a key is safe as a file path and as an S3 key, and needs no
    escaping in a URL.
    """
    segments = key.split("/")
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or any(not _SEGMENT.fullmatch(s) or s in {".", ".."} for s in segments)
    ):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def safe_filename(name: str) -> str:
    """``name`` reduced to characters that are safe in a key, keeping its extension."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._") or "file"
    if len(cleaned) > _MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        ext = ext[:16] if dot else ""
        cleaned = (stem if dot else cleaned)[: _MAX_NAME - len(ext) - 1] + (
            f".{ext}" if ext else ""
        )
    return cleaned


def run_prefix(run_id: int) -> str:
    """Every blob of a run lives under this prefix."""
    return f"runs/{run_id}/"


def run_input_key(run_id: int, ordinal: int, filename: str) -> str:
    """The key of the ``ordinal``-th input file of a run (stable: same run, same key)."""
    return check_key(f"{run_prefix(run_id)}inputs/{ordinal}-{safe_filename(filename)}")


def run_output_key(run_id: int, ordinal: int, filename: str) -> str:
    """The key of the ``ordinal``-th output file of a run (stable: same run, same key)."""
    return check_key(f"{run_prefix(run_id)}outputs/{ordinal}-{safe_filename(filename)}")


class _Opening:
    """A file opened in a worker thread for a reader that may leave meanwhile: whichever of
    :meth:`open` and :meth:`abandon` comes second closes the file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._abandoned = False
        self._handle: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        handle: IO[bytes] = open(self._path, "rb")  # noqa: SIM115 (closed by the reader)
        with self._lock:
            self._handle = handle
            if self._abandoned:
                handle.close()
        return handle

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._handle is not None:
                self._handle.close()


async def _hashed(chunks: AsyncIterable[bytes], digest: Any) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk:
            digest.update(chunk)
            yield chunk


class FilesystemBlobStore:
    """Blobs as files under a root folder; writes land in a temp file and are renamed in."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).resolve()

    @property
    def root(self) -> Path:
        """The folder blobs are kept in."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    def check_writable(self) -> None:
        """Create the folder and a file in it, or raise :class:`BlobStoreError` saying which
        settings to change: a folder that cannot be written fails every file feature, so a
        start that meets one (a read-only root filesystem, another user's folder) refuses."""
        probe = self._root / f".write-check.{uuid.uuid4().hex}"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BlobStoreError(
                f"BLOB_DIR {str(self._root)!r} is not writable ({exc.strerror or exc}): with "
                "BLOB_BACKEND=fs, point BLOB_DIR at a writable volume shared by every replica, "
                "or set BLOB_BACKEND=s3 and S3_BUCKET (what several replicas need)"
            ) from exc

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> StoredBlob:
        """Write the chunks to a temp file beside the target, then rename it in."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            handle: IO[bytes] = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in _hashed(chunks, digest):
                    await asyncio.to_thread(handle.write, chunk)
                    size += len(chunk)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, tmp, path)
        except OSError as exc:
            raise BlobStoreError(f"could not write blob {key}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return StoredBlob(key, size, digest.hexdigest())

    async def read(self, key: str, *, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The file's bytes, read off the event loop."""
        path = self._path(key)
        opening = _Opening(path)
        try:
            handle = await asyncio.to_thread(opening.open)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobStoreError(f"could not read blob {key}: {exc}") from exc
        except asyncio.CancelledError:
            # The thread may open the file all the same (or just have): it is closed either way.
            opening.abandon()
            raise
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            # Inline: closing a file opened for reading does not wait on the disk, and a
            # to_thread(close) cancelled before its thread starts (the reader left) never runs.
            handle.close()

    async def size(self, key: str) -> int:
        """The file's size."""
        try:
            stat = await asyncio.to_thread(self._path(key).stat)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobStoreError(f"could not stat blob {key}: {exc}") from exc
        return stat.st_size

    async def delete(self, key: str) -> None:
        """Remove the file if it is there."""
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"could not delete blob {key}: {exc}") from exc


class S3BlobStore:
    """Blobs as objects in one bucket of an S3-compatible store, under an optional prefix.

    Uploads go in parts of :data:`S3_PART_SIZE` (one ``PutObject`` when the blob is smaller),
    so memory per upload is one part whatever the blob's size.
    """

    def __init__(self, client: S3Client, bucket: str, *, prefix: str = "") -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def _object(self, key: str) -> str:
        return self._prefix + check_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> StoredBlob:
        """Upload the chunks: one object if small, else a multipart upload (aborted on failure)."""
        name = self._object(key)
        digest = hashlib.sha256()
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in _hashed(chunks, digest):
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= S3_PART_SIZE:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self._bucket, Key=name, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    part = bytes(buffer[:S3_PART_SIZE])
                    del buffer[:S3_PART_SIZE]
                    number = len(parts) + 1
                    answer = await self._client.upload_part(
                        Bucket=self._bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part,
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            if upload_id is None:
                await self._client.put_object(
                    Bucket=self._bucket, Key=name, Body=bytes(buffer), ContentType=content_type
                )
            else:
                if buffer:
                    number = len(parts) + 1
                    answer = await self._client.upload_part(
                        Bucket=self._bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=bytes(buffer),
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
                upload_id = None
        except _s3_errors() as exc:
            raise BlobStoreError(f"could not write blob {key}: {exc}") from exc
        finally:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=name, UploadId=upload_id
                    )
        return StoredBlob(key, size, digest.hexdigest())

    async def read(self, key: str, *, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The object's body, streamed."""
        try:
            answer = await self._client.get_object(Bucket=self._bucket, Key=self._object(key))
        except _s3_errors() as exc:
            if _is_missing(exc):
                raise BlobNotFound(key) from None
            raise BlobStoreError(f"could not read blob {key}: {exc}") from exc
        body = answer["Body"]
        try:
            async for chunk in body.iter_chunks(chunk_size):
                yield chunk
        except _s3_errors() as exc:
            raise BlobStoreError(f"could not read blob {key}: {exc}") from exc
        finally:
            body.close()

    async def size(self, key: str) -> int:
        """``HeadObject``'s content length."""
        try:
            answer = await self._client.head_object(Bucket=self._bucket, Key=self._object(key))
        except _s3_errors() as exc:
            if _is_missing(exc):
                raise BlobNotFound(key) from None
            raise BlobStoreError(f"could not stat blob {key}: {exc}") from exc
        return int(answer["ContentLength"])

    async def delete(self, key: str) -> None:
        """``DeleteObject`` (S3 answers the same whether or not it existed)."""
        try:
            await self._client.delete_object(Bucket=self._bucket, Key=self._object(key))
        except _s3_errors() as exc:
            raise BlobStoreError(f"could not delete blob {key}: {exc}") from exc


def _s3_errors() -> tuple[type[BaseException], ...]:
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    return (BotoClientError, BotoCoreError, ClientError, OSError)


def _is_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"NoSuchKey", "404", "NotFound"} or status == 404


@contextlib.asynccontextmanager
async def open_blob_store(settings: Settings) -> AsyncIterator[BlobStore]:
    """The blob store ``settings`` choose, open for the duration of the block."""
    if settings.blob_backend != "s3":
        store = FilesystemBlobStore(settings.blob_dir)
        await asyncio.to_thread(store.check_writable)
        yield store
        return
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        # Path-style addressing works with every S3-compatible server (MinIO, Ceph, moto).
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    async with get_session().create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url or None,
        config=config,
        # None: the standard AWS credential chain (AWS_* variables, profiles, IAM roles).
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
    ) as client:
        yield S3BlobStore(client, settings.s3_bucket, prefix=settings.s3_prefix)
