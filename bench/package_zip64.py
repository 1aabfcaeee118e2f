"""Checks that a package ZIP holds an entry over 4 GiB (Zip64) and prints what it cost.

Figures and a correctness check, never part of the test pass/fail. The archive is built by
the gateway's own ``gateway.archive.Archiver`` (zipstream-ng in its worker threads) from an
async source of deterministic bytes, written to a temp file as a client would save it, then
opened with Python's ``zipfile``: every entry's size, its CRC (checked by ``zipfile`` on
reading) and its SHA-256 must match what went in. A small entry after the big one puts its
local header past the 4 GiB offset too.

    .venv/bin/python bench/package_zip64.py --gib 4.5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.archive import ArchiveEntry, Archiver

PIECE = 256 * 1024
_BLOCK = os.urandom(PIECE)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def pattern(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = _BLOCK[: min(PIECE, size - sent)]
        digest.update(piece)
        sent += len(piece)
        yield piece


async def build(path: Path, big: int) -> tuple[int, str, float, float]:
    archiver = Archiver(read_timeout_s=60)
    digest = hashlib.sha256()
    tail = b"after the big entry\n"
    archive = archiver.archive(
        [
            ArchiveEntry("manifest.json", 2, data=b"{}"),
            ArchiveEntry("inputs/huge.bin", big, open=lambda: pattern(big, digest)),
            ArchiveEntry("inputs/tail.txt", len(tail), data=tail),
        ]
    )
    rss_before = rss_mib()
    rss_max = rss_before
    written = 0
    started = time.perf_counter()
    with path.open("wb") as out:
        async for chunk in archive.chunks():
            out.write(chunk)
            written += len(chunk)
            if written % (256 * 1024 * 1024) < len(chunk):
                rss_max = max(rss_max, rss_mib())
    elapsed = time.perf_counter() - started
    archiver.close()
    if written != archive.size:
        raise SystemExit(f"wrote {written} bytes, the archive announced {archive.size}")
    rate = written / elapsed / 1e9
    print(f"archive: {written / 2**30:.2f} GiB in {elapsed:.1f} s ({rate:.2f} GB/s)")
    print(f"RSS while streaming: {rss_before:.1f} MiB before, {rss_max:.1f} MiB at most (sampled)")
    return written, digest.hexdigest(), elapsed, rss_max - rss_before


def verify(path: Path, big: int, sha: str) -> None:
    started = time.perf_counter()
    with zipfile.ZipFile(path) as zipped:
        infos = {i.filename: i for i in zipped.infolist()}
        huge = infos["inputs/huge.bin"]
        tail = infos["inputs/tail.txt"]
        if huge.file_size != big or tail.header_offset <= 0xFFFFFFFF:
            raise SystemExit(f"unexpected layout: {huge.file_size=} {tail.header_offset=}")
        digest = hashlib.sha256()
        with zipped.open(huge) as entry:  # zipfile checks the CRC at the end
            while block := entry.read(8 * 1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != sha:
            raise SystemExit("the big entry's bytes differ from what went in")
        if zipped.read("inputs/tail.txt") != b"after the big entry\n":
            raise SystemExit("the entry after the big one is wrong")
    print(
        f"zipfile: {big / 2**30:.2f} GiB entry read back, CRC and SHA-256 match; the next entry's "
        f"header is at offset {tail.header_offset} (> 4 GiB); {time.perf_counter() - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.5, help="size of the big entry (GiB)")
    parser.add_argument("--dir", default=None, help="where to write the temp ZIP")
    args = parser.parse_args()
    big = int(args.gib * 2**30)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "package.zip"
        _written, sha, _elapsed, _grew = asyncio.run(build(path, big))
        verify(path, big, sha)
    print(f"process peak RSS: {peak_mib():.1f} MiB")


if __name__ == "__main__":
    main()
