"""The documentation holds together: relative links land, and the README stays a front door.

For README.md, CHANGELOG.md and every docs/*.md, each relative Markdown link ``[text](path)``
or ``[text](path#anchor)`` must name a file of the repository, and an anchor must match a
heading of its target, slugified as GitHub does (lower-case, spaces to ``-``, punctuation other
than ``-`` and ``_`` dropped, ``-1``, ``-2``, … for repeats). Links inside code are not links.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README_LIMIT_BYTES = 10_240


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_MARKUP = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_NOT_SLUG = re.compile(r"[^\w\- ]")


def documents() -> list[Path]:
    """The Markdown files whose links are checked."""
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slugify(heading: str) -> str:
    """A heading's anchor, as GitHub derives it."""
    text = _MARKUP.sub(r"\1", heading).strip().lower()
    return _NOT_SLUG.sub("", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of ``path`` define (repeats numbered as GitHub does)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _number, line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = slugify(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every relative link in ``path``, code excluded."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            if not _SCHEME.match(target):
                yield number, target


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of ``path``, one line each."""
    problems: list[str] = []
    for number, target in relative_links(path):
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: points outside the repository")
            continue
        name = resolved.relative_to(ROOT).as_posix()
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading in {name} slugifies to #{anchor}")
    return problems


def test_the_checked_documents_exist() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in documents()}
    expected = {
        "README.md",
        "CHANGELOG.md",
        "docs/api.md",
        "docs/operations.md",
        "docs/settings.md",
    }
    assert expected <= names
    assert all(path.is_file() for path in documents())


def test_every_relative_link_lands() -> None:
    problems = [problem for path in documents() for problem in broken_links(path)]
    assert problems == []


def test_readme_is_a_front_door() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes (at most {README_LIMIT_BYTES})"


def test_readme_keeps_its_operations_heading() -> None:
    # The OpenAPI document says "The metric list is in README, Operations."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "operations" in anchors(ROOT / "README.md")
    assert "(docs/operations.md)" in readme


def test_slugify_follows_github() -> None:
    route = "`POST /api/agents/{agentId}/runs/trigger`"
    assert slugify(route) == "post-apiagentsagentidrunstrigger"
    assert slugify("Job download packages (`/v0`)") == "job-download-packages-v0"
    assert slugify("Unreleased — layout by layer") == "unreleased--layout-by-layer"
    assert slugify("What a runtime receives, and how it reports back") == (
        "what-a-runtime-receives-and-how-it-reports-back"
    )
