"""How the benchmark reports: one table per measurement, figure against reference and target.

Every row names a figure of the gateway's full path, the reference it is compared with (measured
in the same run), their ratio, the issue's target and whether this run met it. Targets are
printed, never asserted: a missed target is a finding, not a failure of the benchmark.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One figure with its reference, ratio and target."""

    what: str
    figure: str
    reference: str = "-"
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None
    # The raw numbers behind the row, for the JSON file.
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Section:
    """The outcome of one measurement."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Markdown tables with the detail behind the rows.
    details: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0

    def add(self, row: Row) -> Row:
        """Append ``row`` and return it."""
        self.rows.append(row)
        return row


def at_least(value: float | None, bound: float) -> bool | None:
    """Whether ``value`` reaches ``bound`` (None when it could not be measured)."""
    if value is None or math.isnan(value):
        return None
    return value >= bound


def at_most(value: float | None, bound: float) -> bool | None:
    """Whether ``value`` stays within ``bound`` (None when it could not be measured)."""
    if value is None or math.isnan(value):
        return None
    return value <= bound


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# Rows one measurement computes and another's table shows too: (from, to, what starts with).
PROMOTED = (("waits", "memory", "gateway RSS per held wait"),)


def promote(sections: list[Section]) -> None:
    """Copy each row of :data:`PROMOTED` into the table it belongs to as well, when both
    measurements ran (the memory table shows what a held wait costs, measured by the held
    waits)."""
    by_key = {section.key: section for section in sections if section.skipped is None}
    for source, target, prefix in PROMOTED:
        if source in by_key and target in by_key:
            for row in by_key[source].rows:
                if row.what.startswith(prefix):
                    by_key[target].add(replace(row, values={**row.values, "from": source}))


def _met(value: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a"}[value]


def render(section: Section) -> str:
    """A section as Markdown: title, the summary table, notes, then the details."""
    lines = [f"### {section.title}", ""]
    if section.skipped:
        lines += [f"{section.title}: skipped ({section.skipped})", ""]
        return "\n".join(lines)
    lines += [
        "| measurement | figure | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in section.rows:
        shown = "-" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(
            f"| {row.what} | {row.figure} | {row.reference} | {shown} | {row.target} "
            f"| {_met(row.met)} |"
        )
    if section.notes:
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
    for detail in section.details:
        lines += ["", detail]
    lines.append("")
    return "\n".join(lines)


def write_json(path: Path, sections: list[Section], meta: dict[str, Any]) -> None:
    """Every section's rows, notes and raw figures."""
    path.write_text(
        json.dumps(
            {"meta": meta, "sections": [asdict(s) for s in sections]},
            indent=2,
            default=str,
            allow_nan=True,
        )
    )


def load_json(path: Path) -> tuple[list[Section], dict[str, Any]]:
    """The sections and meta a run wrote with :func:`write_json`."""
    data = json.loads(path.read_text())
    sections = []
    for raw in data["sections"]:
        rows = [Row(**row) for row in raw.pop("rows")]
        sections.append(Section(**raw, rows=rows))
    return sections, data["meta"]


def main(argv: list[str] | None = None) -> None:
    """Print the tables of a saved run again: ``python -m bench.report bench-results.json``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path, help="a file written by bench.run --json")
    parser.add_argument("--only", help="section keys to print, comma-separated")
    args = parser.parse_args(argv)
    sections, meta = load_json(args.json)
    print(
        f"Measured {meta.get('date')} at {meta.get('commit')} ({meta.get('seconds')} s in all).\n"
    )
    chosen = set(args.only.split(",")) if args.only else None
    for section in sections:
        if chosen is None or section.key in chosen:
            print(render(section))


if __name__ == "__main__":
    main()
