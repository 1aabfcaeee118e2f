"""Job download packages (the /v0 API): a job's inputs and outputs as one ZIP behind a signed URL.

``PUT /v0/workflows/{workflow_id}/jobs/{job_id}/download`` (the workflow is an agent, the job
one of its runs) gives the run a package id, stable per run, and a signed URL for it. Fetching
the URL streams the ZIP, built on the fly from the run row and its stored files:

    manifest.json   the run (id, agent, status, times, outputs) and a line for each asset
    input.json      the run's recorded input
    inputs/...      every stored input file, byte for byte
    output.json     the run's recorded output
    outputs/...     every stored output file, byte for byte

A package is ``pending`` while its run is in flight (its URL then answers 409) and ``ready``
once the run has ended; a run never changes after that, so neither does its package.

Domain code: no ``aiohttp.web`` here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from gateway.errors import BadRequest, Conflict, Forbidden, NotFound, v0_error
from gateway.execute.input_format import InputFormatError, parse_input_format
from gateway.packages.archive import ArchiveEntry, Archiver, StreamedArchive
from gateway.runs.filenames import slug
from gateway.security.signing import SignatureError, SignatureExpired, UrlSigner, url_path
from gateway.storage.blobs import BlobNotFound, BlobStore
from store import packages, run_files, runs
from store.enums import OutputKind
from store.lookup_cache import LookupCache
from store.models import Agent, Run, iso
from store.run_files import RunFile

log = structlog.get_logger(__name__)

PENDING = "pending"
READY = "ready"
# Signed package URLs: /v0/packages/<package id>.zip
PACKAGES_PATH = "/v0/packages/"
MANIFEST_VERSION = 1
_INPUTS = "inputs"
_OUTPUTS = "outputs"
# Characters no file name may hold on the common desktops (Windows' list; "/" and "\" split).
_RESERVED_CHARACTERS = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = re.compile(r"(?i)^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$")
_MAX_NAME_BYTES = 200
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NOT_STORED_DOWNLOAD = (
    "The runtime's file was streamed straight to the caller of trigger-and-download; "
    "the gateway never stores those bytes, only this record of them."
)
_NOT_STORED_REFERENCE = "A URL reference: handed to the runtime as given, never fetched or stored."
_NOT_STORED_MISSING = "The file is no longer in the blob store."


@dataclass(frozen=True, slots=True)
class PackageTicket:
    """A package's id and status and a freshly signed URL (the /v0 package route's 200)."""

    id: uuid.UUID
    status: str
    signed_url: str
    workflow_id: int
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OpenedPackage:
    """A ready package about to be streamed: its file name and its archive."""

    package_id: uuid.UUID
    run_id: int
    filename: str
    archive: StreamedArchive


class EntryNames:
    """Safe, unique entry names for an archive.

    A name keeps only its last path segment (no folders, no absolute paths, no ``..``), loses
    control characters and the characters desktops refuse, and is made unique ignoring case
    (``report.pdf``, ``report (2).pdf``), since most desktops would otherwise overwrite one file
    with another on extraction.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, folder: str, name: str, *, fallback: str = "file") -> str:
        """A unique ``folder/<safe name>`` for ``name``."""
        base = safe_entry_name(name) or fallback
        stem, dot, extension = base.rpartition(".")
        if not stem or not dot:
            stem, extension = base, ""
        candidate = f"{folder}/{base}"
        n = 1
        while candidate.casefold() in self._taken:
            n += 1
            numbered = f"{stem} ({n}).{extension}" if extension else f"{stem} ({n})"
            candidate = f"{folder}/{numbered}"
        self._taken.add(candidate.casefold())
        return candidate


def safe_entry_name(name: str) -> str:
    """``name`` as one safe path segment ('' when nothing usable is left)."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = _RESERVED_CHARACTERS.sub("_", base)
    # Trailing dots and spaces vanish on Windows (two names would collide); leading spaces hide.
    base = base.lstrip(" ").rstrip(". ")
    if base in {"", ".", ".."}:
        return ""
    if _WINDOWS_DEVICES.match(base):
        base = f"_{base}"
    return _truncated(base)


def _truncated(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 16:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    room = _MAX_NAME_BYTES - len(suffix.encode())
    cut = stem.encode()[:room].decode(errors="ignore")
    return cut + suffix


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def package_filename(agent: Agent, run: Run) -> str:
    """The ZIP's download name: the workflow's name and the job's id."""
    stem = slug(agent.name.lower()) or "workflow"
    return f"{stem}-job-{run.id}.zip"


@dataclass(frozen=True, slots=True)
class _StoredAsset:
    record: RunFile
    size: int | None  # None: gone from the blob store


class PackageService:
    """Hands out packages of a run and streams them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        blobs: BlobStore,
        signer: UrlSigner,
        archiver: Archiver,
        *,
        public_base_url: str,
        url_ttl_s: int,
        lookups: LookupCache | None = None,
    ) -> None:
        self._pool = pool
        self._lookups = lookups or LookupCache(pool)
        self._blobs = blobs
        self._signer = signer
        self._archiver = archiver
        self._base = public_base_url.rstrip("/")
        self._ttl_s = url_ttl_s

    async def request(
        self, org_id: uuid.UUID, workflow_id: int, job_id: int, *, now: float | None = None
    ) -> PackageTicket:
        """The run's package (created on the first request) with a freshly signed URL.

        403 for a workflow or job the key's organisation cannot see (another organisation's,
        or none at all: the two are never told apart); 400 for a job of another workflow.
        """
        agent = await self._lookups.agent_in_org(workflow_id, org_id)
        if agent is None:
            raise v0_error(
                Forbidden,
                f"Workflow {workflow_id} is not accessible with this API key",
                "forbidden",
                {"workflow_id": str(workflow_id)},
            )
        run = await runs.get_run(self._pool, job_id)
        if run is None or run.org_id != org_id:
            raise v0_error(
                Forbidden,
                f"Job {job_id} is not accessible with this API key",
                "forbidden",
                {"job_id": str(job_id)},
            )
        if run.agent_id != agent.id:
            raise v0_error(
                BadRequest,
                f"Job {job_id} is not a job of workflow {workflow_id}",
                "job_not_in_workflow",
                {"workflow_id": str(workflow_id), "job_id": str(job_id)},
            )
        package = await packages.package_for_run(self._pool, run_id=run.id, org_id=org_id)
        signed = self._signer.sign(
            self._base, url_path("v0", "packages", f"{package.id}.zip"), ttl_s=self._ttl_s, now=now
        )
        status = READY if run.terminal else PENDING
        log.info(
            "package_requested",
            package_id=str(package.id),
            run_id=run.id,
            agent_id=agent.id,
            status=status,
        )
        return PackageTicket(package.id, status, signed.url, agent.id, signed.expires_at)

    async def open(self, path: str, expires: str | None, signature: str | None) -> OpenedPackage:
        """The package a signed URL names, ready to stream.

        403 for a URL that is not signed, was tampered with or has expired; 404 when the
        package's job is gone; 409 while the job is still in flight.
        """
        try:
            self._signer.verify(path, expires, signature)
        except SignatureExpired as exc:
            raise v0_error(Forbidden, str(exc), "signature_expired") from None
        except SignatureError as exc:
            raise v0_error(Forbidden, str(exc), "invalid_signature") from None
        raw_id = path.removeprefix(PACKAGES_PATH).removesuffix(".zip")
        package = None
        if _UUID.fullmatch(raw_id):
            package = await packages.get_package(self._pool, uuid.UUID(raw_id))
        run = None if package is None else await runs.get_run(self._pool, package.run_id)
        agent = None if run is None else await self._lookups.agent_in_org(run.agent_id, run.org_id)
        if package is None or run is None or agent is None:
            raise v0_error(NotFound, "Package not found (its job no longer exists)", "not_found")
        if not run.terminal:
            raise v0_error(
                Conflict,
                f"Job {run.id} is still {run.status}: its package is ready once the job ends",
                "package_pending",
                {"job_id": str(run.id), "status": run.status},
            )
        archive = await self._archive(package.id, agent, run)
        log.info("package_opened", package_id=str(package.id), run_id=run.id, size=archive.size)
        return OpenedPackage(package.id, run.id, package_filename(agent, run), archive)

    async def _archive(self, package_id: uuid.UUID, agent: Agent, run: Run) -> StreamedArchive:
        records = await run_files.list_run_files(self._pool, run.id)
        # Sizes come from the store itself: the archive's length is promised before any byte.
        sizes = await asyncio.gather(*(self._size(r.blob_key) for r in records))
        stored = [_StoredAsset(r, s) for r, s in zip(records, sizes, strict=True)]
        # Stored files live in folders, so they never meet the top-level JSON entries.
        names = EntryNames()
        input_json = _json_bytes(run.input)
        output_json = _json_bytes(run.output_data)
        assets: list[dict[str, Any]] = []
        entries: list[ArchiveEntry] = []

        def add_json(path: str, role: str, data: bytes) -> None:
            assets.append(_asset(path, role, "application/json", len(data), _sha256(data)))
            entries.append(ArchiveEntry(path, len(data), data=data))

        def add_files(role: str, folder: str) -> None:
            for item in stored:
                record = item.record
                if record.kind != role:
                    continue
                line = _asset(None, role, record.mime_type, record.size_bytes, record.sha256)
                line |= {"name": record.name, "field": record.field, "index": record.position}
                line["uploadedAt" if role == run_files.INPUT else "storedAt"] = iso(
                    record.created_at
                )
                if item.size is None:
                    line |= {"stored": False, "note": _NOT_STORED_MISSING}
                else:
                    line["path"] = names.claim(folder, record.name)
                    line["size"] = item.size
                    entries.append(
                        ArchiveEntry(line["path"], item.size, open=self._reader(record.blob_key))
                    )
                assets.append(line)

        add_json("input.json", run_files.INPUT, input_json)
        add_files(run_files.INPUT, _INPUTS)
        assets.extend(_references(agent, run))
        add_json("output.json", run_files.OUTPUT, output_json)
        add_files(run_files.OUTPUT, _OUTPUTS)
        if (download := _downloaded_file(run)) is not None:
            assets.append(download)
        manifest = _json_bytes(
            {
                "manifestVersion": MANIFEST_VERSION,
                "packageId": str(package_id),
                "generatedAt": iso(dt.datetime.now(dt.UTC)),
                "runId": run.id,
                "workflowId": str(agent.id),
                "agent": {"id": agent.id, "name": agent.name, "output_kind": agent.output_kind},
                "status": run.status,
                "error": run.error,
                "times": {
                    "created_at": iso(run.created_at),
                    "started_at": iso(run.started_at),
                    "completed_at": iso(run.completed_at),
                    "duration_ms": run.duration_ms,
                },
                "outputs": run.outputs,
                "assets": assets,
            }
        )
        entries.insert(0, ArchiveEntry("manifest.json", len(manifest), data=manifest))
        return self._archiver.archive(entries)

    async def _size(self, key: str) -> int | None:
        try:
            return await self._blobs.size(key)
        except BlobNotFound:
            log.warning("package_file_missing", key=key)
            return None

    def _reader(self, key: str) -> Callable[[], AsyncIterator[bytes]]:
        return lambda: self._blobs.read(key)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _asset(
    path: str | None, role: str, mime_type: str | None, size: int | None, sha256: str | None
) -> dict[str, Any]:
    return {
        "path": path,
        "role": role,
        "type": mime_type,
        "size": size,
        "sha256": sha256,
        "stored": True,
    }


def _references(agent: Agent, run: Run) -> list[dict[str, Any]]:
    """A manifest line for each URL reference among the run's file inputs (never stored)."""
    try:
        declared = parse_input_format(agent.input_format) or []
    except InputFormatError:
        return []
    lines = []
    for field in declared:
        if field.type != "files":
            continue
        value = run.input.get(field.name)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            # Stored uploads carry uploadedAt (and are listed from run_files).
            if isinstance(item, dict) and "url" in item and "uploadedAt" not in item:
                line = _asset(None, run_files.INPUT, item.get("type"), item.get("size"), None)
                line |= {
                    "name": item.get("name"),
                    "field": field.name,
                    "index": index,
                    "url": item["url"],
                    "stored": False,
                    "note": _NOT_STORED_REFERENCE,
                }
                lines.append(line)
    return lines


def _downloaded_file(run: Run) -> dict[str, Any] | None:
    """The manifest line of a trigger-and-download run's file: recorded, never stored."""
    output = run.output_data
    if not isinstance(output, dict) or output.get("kind") != OutputKind.FILE_DOWNLOAD:
        return None
    line = _asset(None, run_files.OUTPUT, output.get("mimeType"), output.get("sizeBytes"), None)
    line |= {"name": output.get("filename"), "stored": False, "note": _NOT_STORED_DOWNLOAD}
    return line
