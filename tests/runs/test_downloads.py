"""Parsing what runtimes send: X-Outputs, content types and file names."""

from __future__ import annotations

import pytest

from gateway.runs import filenames, outputs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        (" 42 ", 42),
        ("0", 0),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("", None),
        (None, None),
        ("abc", None),
        ("١٢", None),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),
    ],
)
def test_x_outputs_keeps_only_non_negative_integers(
    value: str | None, expected: int | None
) -> None:
    assert outputs.header_outputs(value) == expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"outputs": 1, "pdfUrl": "x"}, 1),
        ({"outputs": 0}, 0),
        ({"outputs": -1}, None),
        ({"outputs": 1.0}, None),
        ({"outputs": 2.5}, None),
        ({"outputs": "3"}, None),
        ({"outputs": True}, None),
        ({"outputs": None}, None),
        ({"outputs": 2**63}, None),
        ({"nested": {"outputs": 4}}, None),
        ([{"outputs": 1}], None),
        ("outputs", None),
        (None, None),
    ],
)
def test_outputs_are_lifted_only_from_a_top_level_non_negative_integer(
    result: object, expected: int | None
) -> None:
    assert outputs.lift_outputs(result) == expected


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="q3-summary.pdf"', "q3-summary.pdf"),
        ("attachment; filename=plain.csv", "plain.csv"),
        ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ("attachment", None),
        (None, None),
    ],
)
def test_the_file_name_comes_from_content_disposition(header: str | None, name: str | None) -> None:
    assert filenames.filename_from_disposition(header) == name


@pytest.mark.parametrize(
    ("agent", "content_type", "expected"),
    [
        ("Quarterly Report", "application/pdf", "quarterly-report-run-7.pdf"),
        ("CSV export", "text/csv; charset=utf-8", "csv-export-run-7.csv"),
        ('"; rm -rf /', "image/png", "rm-rf-run-7.png"),
        ("", None, "download-run-7.bin"),
        ("x", "application/x-unknown-thing", "x-run-7.bin"),
    ],
)
def test_a_derived_name_is_safe_and_names_agent_run_and_type(
    agent: str, content_type: str | None, expected: str
) -> None:
    name = filenames.derive_filename(agent, 7, content_type)
    assert name == expected
    disposition = filenames.synthesized_disposition(name)
    assert disposition == f'attachment; filename="{expected}"'


@pytest.mark.parametrize(
    "evil", ["../../etc/passwd", "a\r\nSet-Cookie: x=1", 'a"b.pdf', "C:\\x\\y.exe"]
)
def test_safe_filenames_have_no_paths_quotes_or_control_characters(evil: str) -> None:
    name = filenames.safe_filename(evil)
    assert not set(name) & set('/\\"\r\n\t')
    assert not name.startswith(".")


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/csv", False),
        (None, False),
    ],
)
def test_json_is_recognised_by_content_type(content_type: str | None, json: bool) -> None:
    assert filenames.is_json(content_type) is json
