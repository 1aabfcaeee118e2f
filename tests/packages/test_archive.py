"""ZIP archives streamed from async sources: what comes out, and what happens when a source
misbehaves or the reader leaves."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from devkit.fakes.n8n import make_bytes
from gateway.packages.archive import STEP_BYTES, ArchiveEntry, ArchiveError, Archiver
from gateway.storage.blobs import FilesystemBlobStore


@pytest.fixture
def archiver() -> Iterator[Archiver]:
    archiver = Archiver(read_timeout_s=2.0)
    yield archiver
    archiver.close()


class Source:
    """An async source that records whether it was opened and closed."""

    def __init__(self, data: bytes, *, piece: int = 100_000, fail_after: int = -1) -> None:
        self.data = data
        self.piece = piece
        self.fail_after = fail_after
        self.opened = False
        self.closed = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        self.opened = True
        try:
            for start in range(0, len(self.data), self.piece):
                if 0 <= self.fail_after <= start:
                    raise OSError("disk went away")
                await asyncio.sleep(0)
                yield self.data[start : start + self.piece]
        finally:
            self.closed = True

    def entry(self, path: str, size: int | None = None) -> ArchiveEntry:
        return ArchiveEntry(path, len(self.data) if size is None else size, open=self._chunks)


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        assert len(chunk) <= STEP_BYTES + 100_000
        out += chunk
    return bytes(out)


async def test_entries_come_out_byte_identical_and_the_length_is_known_first(
    archiver: Archiver,
) -> None:
    big, small, empty = Source(make_bytes(1_500_000)), Source(b"tiny"), Source(b"")
    archive = archiver.archive(
        [
            ArchiveEntry("manifest.json", 2, data=b"{}"),
            big.entry("inputs/big.bin"),
            small.entry("inputs/tiny.txt"),
            empty.entry("outputs/empty"),
        ]
    )

    body = await collect(archive.chunks())

    assert len(body) == archive.size
    zipped = zipfile.ZipFile(io.BytesIO(body))
    assert zipped.testzip() is None
    assert zipped.namelist() == [
        "manifest.json",
        "inputs/big.bin",
        "inputs/tiny.txt",
        "outputs/empty",
    ]
    assert zipped.read("inputs/big.bin") == big.data
    assert zipped.read("outputs/empty") == b""
    # Stored, not compressed: the bytes inside are the bytes given.
    assert {i.compress_type for i in zipped.infolist()} == {zipfile.ZIP_STORED}
    assert all(s.opened and s.closed for s in (big, small, empty))


@pytest.mark.parametrize(("declared", "why"), [(999, "more"), (1001, "fewer")])
async def test_a_source_that_does_not_hold_its_declared_size_fails_the_archive(
    archiver: Archiver, declared: int, why: str
) -> None:
    source = Source(make_bytes(1000), piece=300)
    archive = archiver.archive([source.entry("a.bin", size=declared)])

    with pytest.raises(ArchiveError, match=why):
        await collect(archive.chunks())
    assert source.closed


async def test_a_source_failing_midway_fails_the_archive_and_is_closed(
    archiver: Archiver,
) -> None:
    source = Source(make_bytes(4_000_000), fail_after=3_000_000)
    archive = archiver.archive([source.entry("a.bin")])
    received = bytearray()

    async def read_into() -> None:
        async for chunk in archive.chunks():
            received.extend(chunk)

    with pytest.raises(ArchiveError, match="disk went away"):
        await read_into()

    assert 0 < len(received) < archive.size
    assert source.closed


async def test_a_stalled_source_fails_after_the_read_timeout() -> None:
    archiver = Archiver(read_timeout_s=0.2)

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x"
        await asyncio.sleep(3600)
        yield b"y"

    archive = archiver.archive([ArchiveEntry("a.bin", 2, open=stalls)])
    try:
        with pytest.raises(ArchiveError, match="no data"):
            await collect(archive.chunks())
    finally:
        archiver.close()


async def test_a_reader_leaving_closes_what_was_opened_and_never_opens_the_rest(
    archiver: Archiver,
) -> None:
    first, second = Source(make_bytes(2_000_000)), Source(make_bytes(10))
    archive = archiver.archive([first.entry("first.bin"), second.entry("second.bin")])

    chunks = archive.chunks()
    await anext(chunks)
    await anext(chunks)
    await chunks.aclose()

    assert (first.opened, first.closed) == (True, True)
    assert second.opened is False


async def test_more_archives_than_threads_stream_at_once_from_a_folder_store(
    tmp_path: Path,
) -> None:
    # The folder store reads on the loop's default executor; the archiver's steps wait on
    # those reads from its own threads, so neither pool can starve the other.
    archiver = Archiver(read_timeout_s=10.0, threads=2)
    blobs = FilesystemBlobStore(tmp_path)
    content = make_bytes(600_000)

    async def once() -> AsyncIterator[bytes]:
        yield content

    await blobs.put("runs/1/inputs/0-a.bin", once(), content_type="application/octet-stream")
    reader: Callable[[], AsyncIterator[bytes]] = lambda: blobs.read(  # noqa: E731
        "runs/1/inputs/0-a.bin", chunk_size=64 * 1024
    )
    archives = [
        archiver.archive([ArchiveEntry("a.bin", len(content), open=reader)]) for _ in range(24)
    ]
    try:
        bodies = await asyncio.wait_for(
            asyncio.gather(*(collect(a.chunks()) for a in archives)), 60
        )
    finally:
        archiver.close()

    for body in bodies:
        assert zipfile.ZipFile(io.BytesIO(body)).read("a.bin") == content


def test_entries_must_be_unique_and_well_formed(archiver: Archiver) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ArchiveEntry("a", 1)
    with pytest.raises(ValueError, match="size"):
        ArchiveEntry("a", 3, data=b"ab")
