"""The commands' tables: ``list`` and ``compare`` (which fit the terminal's width: ``list`` drops its "what"
column, ``compare`` numbers its rows, where the width has no room), ``history`` and ``snapshots``; all in one style
(:func:`table`). Only presentation, as :mod:`orchestrator.render`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from orchestrator.render import ago, learning_rates, money, status_text
from orchestrator.status import JobStatus

if TYPE_CHECKING:
    from orchestrator.views import CompareRow, HistoryOutput, JobListOutput, SnapshotsOutput

SHORT_METRICS = {"accuracy": "acc", "precision": "prec", "recall": "rec"}


def short_metric(key: str) -> str:
    """A metric's column header: ``val_accuracy`` -> ``val`` over ``acc`` (``--json`` keeps the full names)."""
    prefix = "val\n" if key.startswith("val_") else ""
    name = key.removeprefix("val_")
    return prefix + SHORT_METRICS.get(name, name)


def table(title: str | None = None, caption: str | None = None) -> Table:
    """The tables' one style: a rule under the header, one space between columns, no side borders, so that
    they fit 80 columns and read the same piped (no wrapped box-drawing rows)."""
    return Table(
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=0,
    )


def seconds(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


# ------------------------------------------------------------------------------------------------ list


def job_list(output: JobListOutput) -> RenderableType:
    problems: list[RenderableType] = []
    if output.unreadable:
        count = len(output.unreadable)
        readable = f"{len(output.jobs)} job{'s' if len(output.jobs) != 1 else ''} read" if output.jobs else "none read"
        problems.append(
            Text(
                f"{count} job{'s' if count != 1 else ''} in store {output.store} could not be read "
                f"({readable}); `orchestrator status JOB` says what to do:",
                style="red",
            )
        )
        problems += [Text(f"  {job}: {why}", style="red") for job, why in output.unreadable.items()]
    if not output.jobs:
        if problems:
            return Group(*problems)
        if output.statuses:
            return Text(f"no {' or '.join(output.statuses)} jobs in store {output.store}")
        return Text(f"no jobs in store {output.store}; start one with: orchestrator run jobs/quickstart.yaml")
    jobs = JobTable(output)
    return Group(jobs, *problems) if problems else jobs


class JobTable:
    """``list``'s table, with the "what" column only where the width leaves it room (job names are never cut)."""

    def __init__(self, output: JobListOutput) -> None:
        self.output = output

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        jobs = self.output.jobs
        rows: list[list[str | Text]] = []
        for job in jobs:
            done = "-" if job.epoch is None else f"{job.epoch}/{job.epochs}"
            rows.append([job.name, status_text(job.status), done, str(job.attempt), ago(job.updated_at, short=True)])
        headers = ("job", "status", "epochs", "att", "updated")
        widths = [max(len(header), *(len(str(row[i])) for row in rows)) for i, header in enumerate(headers)]
        what = max(len(job.brief or job.summary) for job in jobs)
        room = options.max_width - sum(widths) - len(widths)
        output = self.output
        which = f"{' or '.join(output.statuses)} " if output.statuses else ""
        newest = f" (the newest {output.limit})" if output.limit is not None and len(jobs) == output.limit else ""
        result = table(f"{which}jobs in {output.store}{newest}")
        for header in headers:
            result.add_column(header, no_wrap=True, justify="left" if header in ("job", "status") else "right")
        if room >= min(what, 20):
            result.add_column("what")
        for job, row in zip(jobs, rows, strict=True):
            result.add_row(*row, *([job.brief or job.summary] if room >= min(what, 20) else []))
        yield result


# ------------------------------------------------------------------------------------------------ history


def history_table(output: HistoryOutput) -> RenderableType:
    if not output.epochs:
        return Text(f"job '{output.name}' has no finished epoch yet")
    keys = list(dict.fromkeys(key for record in output.epochs for key in record.metrics))
    phases = list(dict.fromkeys(record.phase for record in output.epochs if record.phase))
    branches = any(record.branch for record in output.epochs)
    notes = ["seg: run of epochs at one LR" + (", bN its branch" if branches else "") + "; att: attempt"]
    if phases:
        notes.append("phases: " + ", ".join(f"p{i} {name}" for i, name in enumerate(phases, start=1)))
    if any(record.end_learning_rate is not None for record in output.epochs):
        notes.append("lr a→b: the LR changed inside the epoch, from a to b")
    if output.resizes:  # the reasons are in `status`: a caption line keeps to 80 columns
        notes.append(
            "workers by att: "
            + ", ".join(f"{a}: {n}" for a, n in sorted(output.workers.items()))
            + " (elastic; `status` says why)"
        )
    result = table(f"history of {output.name}", caption="\n".join(notes))
    for column in ("epoch", "seg", "att", "lr", *(short_metric(k) for k in keys), "s"):
        result.add_column(column, justify="right", no_wrap=True)
    for record in output.epochs:
        values = [f"{record.metrics[k]:.4f}" if k in record.metrics else "" for k in keys]
        segment = str(record.segment) + (f" b{record.branch}" if record.branch else "")
        if record.phase:
            segment += f" p{phases.index(record.phase) + 1}"
        result.add_row(
            str(record.epoch + 1),
            segment,
            str(record.attempt),
            learning_rates(record),
            *values,
            seconds(record.seconds),
        )
    return result


# ------------------------------------------------------------------------------------------------ snapshots


def snapshots_table(output: SnapshotsOutput) -> RenderableType:
    if not output.snapshots:
        return Text(f"job '{output.name}' has no snapshot (backup.snapshot_every_epochs in its spec takes them)")
    result = table(f"snapshots of {output.name}")
    for column in ("after epoch", "branch", "lr", "MB", "taken", "name"):
        result.add_column(column, justify="right", no_wrap=True)
    for row in output.snapshots:
        style = "red" if row.damaged else ("dim" if row.superseded else None)
        result.add_row(
            str(row.epoch),
            str(row.branch) + (" (superseded)" if row.superseded else ""),
            f"{row.learning_rate:.3g}",
            f"{row.size_bytes / 1e6:.2f}",
            ago(row.created_at, short=True),
            row.name + (" DAMAGED" if row.damaged else ""),
            style=style,
        )
    notes = [
        Text(f"{row.name} is damaged ({row.damaged}): export and resume --from-epoch refuse it", style="red")
        for row in output.snapshots
        if row.damaged
    ]
    return Group(result, *notes) if notes else result


# ------------------------------------------------------------------------------------------------ compare


class CompareTable:
    """``compare``'s table; where the job names leave the figures no room in the width, the rows are numbered
    and the names listed below them, whole."""

    COLUMNS = ("optimizer", "epochs", "val\nacc", "val\nloss", "test\nacc", "test\nloss", "final\nlr", "s")

    def __init__(self, rows: list[CompareRow]) -> None:
        self.rows = rows
        self.costs = any(row.cost is not None and row.cost.cost is not None for row in rows)
        self.columns = (*self.COLUMNS, "cost") if self.costs else self.COLUMNS

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        cells = [self._cells(row) + ([self._cost(row)] if self.costs else []) for row in self.rows]
        widths = [
            max(*(len(line) for line in header.split("\n")), *(max(map(len, str(c[i]).split("\n"))) for c in cells))
            for i, header in enumerate(self.columns)
        ]
        name_width = max((len(row.job) for row in self.rows), default=3)
        numbered = name_width + 1 + sum(widths) + len(widths) - 1 > options.max_width
        result = table("comparison", caption=self._caption(numbered))
        result.add_column(
            "#" if numbered else "job",
            no_wrap=True,
            justify="right" if numbered else "left",
            min_width=1 if numbered else name_width,
        )
        for header in self.columns:
            result.add_column(header, no_wrap=True, justify="left" if header == "optimizer" else "right")
        for index, (row, values) in enumerate(zip(self.rows, cells, strict=True), start=1):
            result.add_row(f"#{index}" if numbered else row.job, *values)
        yield result

    @staticmethod
    def _cells(row: CompareRow) -> list[str | Text]:
        def number(value: float | None, digits: int = 4) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        return [
            row.optimizer,
            compare_epochs(row),
            number(row.best_val_accuracy),
            number(row.best_val_loss),
            number(row.test_accuracy),
            number(row.test_loss),
            "-" if row.final_learning_rate is None else f"{row.final_learning_rate:.3g}",
            f"{row.training_seconds:.0f}",
        ]

    @staticmethod
    def _cost(row: CompareRow) -> str:
        if row.cost is None or row.cost.cost is None:
            return "-"
        return money(row.cost.currency, row.cost.cost)

    def _caption(self, numbered: bool) -> str:
        caption = "val: the best over the epochs; s: training seconds"
        if self.costs:
            caption += "\ncost: the hours held x the spot price (`status JOB`: on demand, restarts)"
        if any(row.test_model == "best" for row in self.rows):
            caption += "\ntest: " + "; ".join(
                f"{'#' + str(i) if numbered else row.job} {row.test_model} (epoch {row.test_model_epoch})"
                for i, row in enumerate(self.rows, start=1)
                if row.test_model is not None
            )
        if numbered:
            caption += "".join(f"\n#{i} {row.job}" for i, row in enumerate(self.rows, start=1))
        return caption


def compare_epochs(row: CompareRow) -> Text:
    """``30``; ``17`` over ``early`` (EarlyStopping); ``12/30`` over ``STOPPED`` for a job that did not succeed
    (two lines: the table keeps to 80 columns)."""
    if row.stopped_early_at is not None:
        return Text(f"{row.stopped_early_at}\nearly")
    if row.status is JobStatus.SUCCEEDED:
        return Text(str(row.epochs))
    planned = f"/{row.epochs_planned}" if row.epochs_planned else ""
    return Text.assemble(f"{row.epochs}{planned}\n", status_text(row.status))
