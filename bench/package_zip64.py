"""Checks that a package ZIP holds an entry over 4 GiB (Zip64) and prints what it cost.

Figures and a correctness check, never part of the test pass/fail. The archive is built by
the gateway's own ``gateway.packages.archive.Archiver`` (zipstream-ng in its worker threads) from an
async source of deterministic bytes, written to a temp file as a client would save it, then
opened with Python's ``zipfile``: every entry's size, its CRC (checked by ``zipfile`` on
reading) and every byte must match what went in. A small entry after the big one puts its
local header past the 4 GiB offset too.

    .venv/bin/python bench/package_zip64.py --gib 4.5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.packages.archive import ArchiveEntry, Archiver

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


async def pattern(size: int) -> AsyncIterator[bytes]:
    """``size`` bytes: one random 256 KiB block over and over (cheap to check on the way back)."""
    sent = 0
    while sent < size:
        piece = _BLOCK[: min(PIECE, size - sent)]
        sent += len(piece)
        yield piece


async def build(path: Path, big: int) -> None:
    archiver = Archiver(read_timeout_s=60)
    tail = b"after the big entry\n"
    archive = archiver.archive(
        [
            ArchiveEntry("manifest.json", 2, data=b"{}"),
            ArchiveEntry("inputs/huge.bin", big, open=lambda: pattern(big)),
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


def verify(path: Path, big: int) -> None:
    started = time.perf_counter()
    with zipfile.ZipFile(path) as zipped:
        infos = {i.filename: i for i in zipped.infolist()}
        huge = infos["inputs/huge.bin"]
        tail = infos["inputs/tail.txt"]
        if huge.file_size != big or tail.header_offset <= 0xFFFFFFFF:
            raise SystemExit(f"unexpected layout: {huge.file_size=} {tail.header_offset=}")
        read = 0
        with zipped.open(huge) as entry:  # zipfile checks the CRC at the end
            while block := entry.read(PIECE):
                if block != _BLOCK[: len(block)]:
                    raise SystemExit(f"the big entry's bytes differ at offset {read}")
                read += len(block)
        if read != big:
            raise SystemExit(f"read {read} bytes of the big entry, expected {big}")
        if zipped.read("inputs/tail.txt") != b"after the big entry\n":
            raise SystemExit("the entry after the big one is wrong")
    print(
        f"zipfile: {big / 2**30:.2f} GiB entry read back, CRC and every byte match; "
        f"the next entry's header is at offset {tail.header_offset} (> 4 GiB); "
        f"{time.perf_counter() - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.5, help="size of the big entry (GiB)")
    parser.add_argument("--dir", default=None, help="where to write the temp ZIP")
    args = parser.parse_args()
    big = int(args.gib * 2**30)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "package.zip"
        asyncio.run(build(path, big))
        verify(path, big)
    print(f"process peak RSS: {peak_mib():.1f} MiB")


if __name__ == "__main__":
    main()
