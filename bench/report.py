"""The table (terminal and README) and the JSON file of one bench invocation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.figures import Figure

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
COLUMNS = ("figure", "orchestrator", "baseline", "ratio", "target", "met?")


def cell(figure: Figure, contender: str) -> str:
    values = figure.orchestrator if contender == "orchestrator" else figure.baseline
    if not values:
        return "n/a"
    median = figure.median(contender)
    assert median is not None
    if len(values) == 1:
        return _number(median)
    return f"{_number(median)} [{_number(min(values))}-{_number(max(values))}]"


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for figure in figures:
        ratio = figure.ratio()
        met = {True: "yes", False: "NO", None: ""}[figure.met]
        table.append(
            (
                f"{figure.label} ({figure.unit})",
                cell(figure, "orchestrator"),
                cell(figure, "baseline"),
                f"{ratio:.2f}" if ratio is not None else "",
                figure.target,
                met,
            )
        )
    return table


def print_table(figures: list[Figure], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows(figures):
        table.add_row(*row)
    console = Console(width=200)
    console.print(table)
    for figure in figures:
        if figure.note:
            console.print(f"[dim]{figure.key}: {figure.note}[/dim]")


def markdown(figures: list[Figure], title: str) -> str:
    lines = [f"{title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(part.replace("|", "/") for part in row) + " |" for row in rows(figures)]
    notes = [f"- {figure.label.strip()}: {figure.note}" for figure in figures if figure.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def write_json(path: Path, figures: list[Figure], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**extra, "figures": {figure.key: figure.as_json() for figure in figures}}
    path.write_text(json.dumps(document, indent=2, default=str))


def write_readme(readme: Path, block: str) -> None:
    """Replace what lies between the bench markers in ``readme`` with ``block``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} block to replace")
    readme.write_text(pattern.sub(lambda _: f"{README_BEGIN}\n{block}\n{README_END}", text, count=1))
