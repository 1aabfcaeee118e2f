"""Entry names inside a package: one safe segment each, unique on any desktop."""

from __future__ import annotations

import pytest

from gateway.packages.service import EntryNames, safe_entry_name


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Users\\ana\\cv.docx", "cv.docx"),
        ("folder/", "folder"),
        ("..", ""),
        (".", ""),
        ("", ""),
        ("   ", ""),
        ("name. . .", "name"),
        (".env", ".env"),
        ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
        ("line\nbreak\x00.txt", "linebreak.txt"),
        ("NUL", "_NUL"),
        ("com1.txt", "_com1.txt"),
        ("console.txt", "console.txt"),
        ("résumé 2024.pdf", "résumé 2024.pdf"),
    ],
)
def test_a_name_becomes_one_safe_segment(given: str, safe: str) -> None:
    assert safe_entry_name(given) == safe


def test_a_long_name_is_cut_to_200_bytes_keeping_its_extension() -> None:
    name = safe_entry_name("é" * 300 + ".pdf")

    assert name.endswith(".pdf")
    assert len(name.encode()) <= 200
    assert name.encode().decode() == name


def test_names_are_unique_ignoring_case_within_the_archive() -> None:
    names = EntryNames()

    claimed = [
        names.claim("inputs", "a.pdf"),
        names.claim("inputs", "A.PDF"),
        names.claim("inputs", "sub/a.pdf"),
        names.claim("inputs", "README"),
        names.claim("inputs", "readme"),
        names.claim("inputs", ".."),
        names.claim("inputs", ""),
        names.claim("outputs", "a.pdf"),
    ]

    assert claimed == [
        "inputs/a.pdf",
        "inputs/A (2).PDF",
        "inputs/a (3).pdf",
        "inputs/README",
        "inputs/readme (2)",
        "inputs/file",
        "inputs/file (2)",
        "outputs/a.pdf",
    ]
