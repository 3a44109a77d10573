"""One output model per command: the same object renders as rich text and as ``--json``, so they cannot drift."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.records import (
    AttemptRecord,
    BackupRecord,
    Command,
    CommandAck,
    EpochRecord,
    FailureRecord,
    JobState,
    Progress,
    ResizeRecord,
    WorkerSummary,
    utc_now,
)
from orchestrator.recovery import Accounting, time_to_resume, warm_starts
from orchestrator.spec import FunctionModel, JobSpec, KerasData
from orchestrator.status import JobStatus

STATUS_STYLE = {
    JobStatus.PENDING: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.RECOVERING: "magenta",
    JobStatus.STOPPING: "yellow",
    JobStatus.STOPPED: "blue",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
}


class Output(BaseModel):
    """A command's result; a NaN or infinite metric (a diverged run) is "NaN"/"Infinity" in ``--json``."""

    model_config = ConfigDict(ser_json_inf_nan="strings")


def describe_spec(spec: JobSpec) -> str:
    """One line a person reads to recognise a job."""
    model = spec.model.function if isinstance(spec.model, FunctionModel) else spec.model.recipe
    data = f"keras {spec.data.name}" if isinstance(spec.data, KerasData) else spec.data.kind
    return (
        f"{model} on {data} data, {spec.optimizer.name} lr={spec.optimizer.learning_rate:g}, "
        f"{spec.epochs} epochs x batch {spec.batch_size}, {spec.scaling.workers} worker(s)"
        + (f" (elastic: at least {spec.scaling.min_workers})" if spec.scaling.elastic else "")
        + _devices(spec)
        + (f"; phases {' then '.join(f'{p.name} ({p.epochs})' for p in spec.phases)}" if spec.phases else "")
    )


def _devices(spec: JobSpec) -> str:
    """`` x 4 GPUs = 8 replicas``, `` x 2 CPU replicas (testing) = 4 replicas``, precision and XLA; empty for
    a plain CPU job (one replica per worker, float32)."""
    scaling = spec.scaling
    text = ""
    if scaling.gpus_per_worker:
        text = f" x {scaling.gpus_per_worker} GPU(s) = {scaling.replicas} replicas"
    elif scaling.cpu_replicas_per_worker > 1:
        text = f" x {scaling.cpu_replicas_per_worker} CPU replicas (testing) = {scaling.replicas} replicas"
    if spec.precision != "float32":
        text += f", {spec.precision}"
    return text + (", XLA" if spec.jit_compile else "")


def throughput(samples_per_second: float, replicas: int | None) -> str:
    """Samples/s of the current epoch, and per replica where the replicas are known."""
    if not replicas:
        return f"{samples_per_second:.1f} samples/s"
    return (
        f"{samples_per_second:.1f} samples/s on {replicas} replica(s), {samples_per_second / replicas:.1f} per replica"
    )


SHORT_METRICS = {"accuracy": "acc", "precision": "prec", "recall": "rec"}


def _short_metric(key: str) -> str:
    """A metric's column header: ``val_accuracy`` -> ``val`` over ``acc`` (``--json`` keeps the full names)."""
    prefix = "val\n" if key.startswith("val_") else ""
    name = key.removeprefix("val_")
    return prefix + SHORT_METRICS.get(name, name)


def _table(title: str | None = None, caption: str | None = None) -> Table:
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


def learning_rates(record: EpochRecord) -> str:
    """The LR an epoch trained with, or its first and last where they differ (a change inside the epoch)."""
    if record.end_learning_rate is None:
        return f"{record.learning_rate:.3g}"
    return f"{record.learning_rate:.3g}→{record.end_learning_rate:.3g}"


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _status_text(status: JobStatus) -> Text:
    return Text(status.value, style=f"bold {STATUS_STYLE[status]}")


def _metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key, value in metrics.items())


def _ago(moment: datetime | None, *, short: bool = False) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((utc_now() - moment).total_seconds()))
    if not short:
        return f"{timedelta(seconds=seconds)} ago"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def brief_spec(spec: JobSpec) -> str:
    """The few words of ``describe_spec`` a table row has room for."""
    model = spec.model.function if isinstance(spec.model, FunctionModel) else spec.model.recipe
    return f"{model} {spec.optimizer.name} {spec.optimizer.learning_rate:g}"


class ValidateOutput(Output):
    spec_path: str
    name: str
    summary: str
    kind: str = "job"

    def render(self) -> RenderableType:
        return Text.assemble(("valid ", "bold green"), f"{self.spec_path}: {self.kind} '{self.name}': {self.summary}")


class JobRow(Output):
    name: str
    status: JobStatus
    attempt: int
    epoch: int | None
    epochs: int
    created_at: datetime
    updated_at: datetime
    summary: str
    brief: str = ""


class JobListOutput(Output):
    store: str
    jobs: list[JobRow]
    unreadable: dict[str, str] = {}
    statuses: list[JobStatus] = Field(default_factory=list)  # list --status: only these (empty: every status)
    limit: int | None = None  # list --limit: at most this many, newest first

    def render(self) -> RenderableType:
        problems: list[RenderableType] = []
        if self.unreadable:
            count = len(self.unreadable)
            readable = f"{len(self.jobs)} job{'s' if len(self.jobs) != 1 else ''} read" if self.jobs else "none read"
            problems.append(
                Text(
                    f"{count} job{'s' if count != 1 else ''} in store {self.store} could not be read "
                    f"({readable}); `orchestrator status JOB` says what to do:",
                    style="red",
                )
            )
            problems += [Text(f"  {job}: {why}", style="red") for job, why in self.unreadable.items()]
        if not self.jobs:
            if problems:
                return Group(*problems)
            if self.statuses:
                return Text(f"no {' or '.join(self.statuses)} jobs in store {self.store}")
            return Text(f"no jobs in store {self.store}; start one with: orchestrator run jobs/quickstart.yaml")
        table = _JobTable(self)
        return Group(table, *problems) if problems else table


class _JobTable:
    """``list``'s table, with the "what" column only where the width leaves it room (job names are never cut)."""

    def __init__(self, output: JobListOutput) -> None:
        self.output = output

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        jobs = self.output.jobs
        rows: list[list[str | Text]] = []
        for job in jobs:
            done = "-" if job.epoch is None else f"{job.epoch}/{job.epochs}"
            rows.append([job.name, _status_text(job.status), done, str(job.attempt), _ago(job.updated_at, short=True)])
        headers = ("job", "status", "epochs", "att", "updated")
        widths = [max(len(header), *(len(str(row[i])) for row in rows)) for i, header in enumerate(headers)]
        what = max(len(job.brief or job.summary) for job in jobs)
        room = options.max_width - sum(widths) - len(widths)
        output = self.output
        which = f"{' or '.join(output.statuses)} " if output.statuses else ""
        newest = f" (the newest {output.limit})" if output.limit is not None and len(jobs) == output.limit else ""
        table = _table(f"{which}jobs in {output.store}{newest}")
        for header in headers:
            table.add_column(header, no_wrap=True, justify="left" if header in ("job", "status") else "right")
        if room >= min(what, 20):
            table.add_column("what")
        for job, row in zip(jobs, rows, strict=True):
            table.add_row(*row, *([job.brief or job.summary] if room >= min(what, 20) else []))
        yield table


class StatusOutput(Output):
    name: str
    id: str
    store: str
    summary: str
    state: JobState
    progress: Progress | None
    epochs_done: int
    epochs: int
    attempts: list[AttemptRecord]
    failures: list[FailureRecord]
    backups: list[str]
    damaged_backups: dict[str, str] = Field(default={}, description="backup -> why its files do not match (skipped)")
    commands: list[CommandRow] = []
    accounting: Accounting | None = None
    checkpoints: list[BackupRecord] = []
    resizes: list[ResizeRecord] = Field(default=[], description="an elastic job's worker-group size changes")

    def render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("job", f"{self.name} ({self.id})")
        grid.add_row("status", _status_text(self.state.status))
        if self.state.reason:
            grid.add_row("reason", Text(self.state.reason, style=STATUS_STYLE[self.state.status]))
        grid.add_row("attempt", str(len(self.attempts)) if self.attempts else "-")
        gaps = time_to_resume(self.failures, self.attempts)
        warm = {start.attempt: start for start in warm_starts(self.failures, self.attempts)}
        for attempt in self.attempts[1:]:
            after = f", {gaps[attempt.attempt]:.1f} s after a failure" if attempt.attempt in gaps else ""
            if attempt.attempt in warm:
                after += f", {warm[attempt.attempt].warm}/{warm[attempt.attempt].workers} workers warm"
            if self.resizes and attempt.workers:
                after += f", on {len(attempt.workers)} worker(s)"
            grid.add_row(
                "",
                f"attempt {attempt.attempt} started at epoch {attempt.start_epoch + 1} from backup "
                f"{attempt.restored_from or '(none)'}{after}",
            )
        for resize in self.resizes:
            grid.add_row("resize" if resize is self.resizes[0] else "", describe_resize(resize))
        if self.failures:
            grid.add_row(
                "failures",
                f"{len(self.failures)}; last: {self.failures[-1].reasons[0][:100]}"
                if self.failures[-1].reasons
                else str(len(self.failures)),
            )
        listed = [f"{b} (DAMAGED: {self.damaged_backups[b]})" if b in self.damaged_backups else b for b in self.backups]
        grid.add_row("backups", Text(", ".join(listed) or "-", style="red" if self.damaged_backups else ""))
        if self.accounting is not None and self.attempts:
            a = self.accounting
            goodput = f"{a.goodput:.1%}" if a.goodput is not None else "-"
            lost = "-" if a.lost_steps is None else str(a.lost_steps)
            time = f"wall {a.wall_seconds:.1f} s, training {a.training_seconds:.1f} s, goodput {goodput}"
            restarted = sum(start.workers for start in warm.values())
            hits = f", warm {sum(start.warm for start in warm.values())}/{restarted} workers" if restarted else ""
            grid.add_row(
                "accounting", f"{time}; restarts {a.restarts} ({a.preemptions} preempted{hits}), lost steps {lost}"
            )
        if self.checkpoints:
            blocked = sum(r.blocking_seconds for r in self.checkpoints)
            share = (
                f" ({blocked / self.accounting.training_seconds:.1%} of training)"
                if self.accounting and self.accounting.training_seconds
                else ""
            )
            grid.add_row(
                "checkpoints",
                f"{len(self.checkpoints)} backups; training blocked {blocked:.2f} s{share}, "
                f"uploads {sum(r.upload_seconds for r in self.checkpoints):.2f} s in the background, "
                f"last {self.checkpoints[-1].size_bytes / 1e6:.2f} MB",
            )
        for row in self.commands:
            grid.add_row("command" if row is self.commands[0] else "", row.describe())
        grid.add_row("epochs done", f"{self.epochs_done}/{self.epochs}")
        if self.progress is not None:
            grid.add_row(
                "position",
                f"epoch {self.progress.epoch + 1}, step {self.progress.step}/"
                f"{self.progress.steps_per_epoch} ({_ago(self.progress.updated_at)})",
            )
            grid.add_row("learning rate", f"{self.progress.learning_rate:.6g}")
            if self.progress.samples_per_second:
                grid.add_row("throughput", throughput(self.progress.samples_per_second, self.progress.replicas))
            if self.progress.metrics:
                grid.add_row("metrics", _metrics_text(self.progress.metrics))
        grid.add_row("what", self.summary)
        grid.add_row("started", str(self.state.started_at or "-"))
        grid.add_row("ended", str(self.state.ended_at or "-"))
        grid.add_row("store", self.store)
        if self.state.status in (JobStatus.STOPPED, JobStatus.FAILED):
            grid.add_row("next", f"orchestrator resume {self.name}  (continues from the latest backup)")
        return grid


class CommandRow(Output):
    command: Command
    ack: CommandAck | None = None

    def describe(self) -> str:
        c = self.command
        what = f"set-lr {c.learning_rate:g}" if c.kind == "set_lr" else "stop"
        flags = {"now": " --now", "at_epoch": f" --at-epoch {c.at_epoch}", "epoch_end": " --at-epoch-end"}
        when = "" if c.kind == "stop" and c.when == "now" else flags.get(c.when, "")  # a stop's default is now
        if self.ack is None:
            return f"#{c.seq} {what}{when}: pending (issued {_ago(c.issued_at)})"
        if self.ack.void is not None:
            return f"#{c.seq} {what}{when}: not applied ({self.ack.void})"
        where = (
            f"at epoch {self.ack.epoch + 1}, step {self.ack.step}" if self.ack.step else f"after epoch {self.ack.epoch}"
        )
        note = f"; {self.ack.note}" if self.ack.note else ""
        return f"#{c.seq} {what}{when}: applied {where} (attempt {self.ack.attempt}){note}"


class CommandOutput(Output):
    name: str
    command: Command
    status: JobStatus
    effect: str

    def render(self) -> RenderableType:
        row = CommandRow(command=self.command).describe().split(":")[0]
        return Text.assemble((f"{self.name}: ", "bold"), f"command {row} {self.effect}")


class SnapshotRow(Output):
    name: str
    epoch: int
    branch: int
    learning_rate: float
    created_at: datetime
    size_bytes: int
    superseded: bool = False
    damaged: str | None = Field(default=None, description="why its files do not match its manifest (not usable)")


class SnapshotsOutput(Output):
    name: str
    snapshots: list[SnapshotRow]

    def render(self) -> RenderableType:
        if not self.snapshots:
            return Text(f"job '{self.name}' has no snapshot (backup.snapshot_every_epochs in its spec takes them)")
        table = _table(f"snapshots of {self.name}")
        for column in ("after epoch", "branch", "lr", "MB", "taken", "name"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in self.snapshots:
            style = "red" if row.damaged else ("dim" if row.superseded else None)
            table.add_row(
                str(row.epoch),
                str(row.branch) + (" (superseded)" if row.superseded else ""),
                f"{row.learning_rate:.3g}",
                f"{row.size_bytes / 1e6:.2f}",
                _ago(row.created_at, short=True),
                row.name + (" DAMAGED" if row.damaged else ""),
                style=style,
            )
        notes = [
            Text(f"{row.name} is damaged ({row.damaged}): export and resume --from-epoch refuse it", style="red")
            for row in self.snapshots
            if row.damaged
        ]
        return Group(table, *notes) if notes else table


class ExportOutput(Output):
    name: str
    source: str
    destination: str
    size_bytes: int

    def render(self) -> RenderableType:
        return Text(f"{self.name}: exported the {self.source} ({self.size_bytes / 1e6:.2f} MB) to {self.destination}")


class PlotOutput(Output):
    name: str
    path: str
    epochs: int
    markers: int

    def render(self) -> RenderableType:
        return Text(f"{self.name}: wrote {self.path} ({self.epochs} epochs, {self.markers} event marker(s))")


class CompareRow(Output):
    job: str
    optimizer: str
    status: JobStatus
    epochs: int
    best_val_accuracy: float | None
    best_val_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    test_model: str | None = Field(default=None, description="the model evaluated on the test split: best or final")
    test_model_epoch: int | None = Field(default=None, description="epochs trained by the evaluated model")
    training_seconds: float
    final_learning_rate: float | None
    epochs_planned: int | None = None
    stopped_early_at: int | None = Field(default=None, description="epochs done when EarlyStopping ended the job")

    def epochs_text(self) -> Text:
        """``30``; ``17`` over ``early`` (EarlyStopping); ``12/30`` over ``STOPPED`` for a job that did not
        succeed (two lines: the table keeps to 80 columns)."""
        if self.stopped_early_at is not None:
            return Text(f"{self.stopped_early_at}\nearly")
        if self.status is JobStatus.SUCCEEDED:
            return Text(str(self.epochs))
        planned = f"/{self.epochs_planned}" if self.epochs_planned else ""
        return Text.assemble(f"{self.epochs}{planned}\n", _status_text(self.status))


class CompareOutput(Output):
    rows: list[CompareRow]
    figure: str | None = None

    def render(self) -> RenderableType:
        table = _CompareTable(self.rows)
        if self.figure:
            return Group(table, Text(f"learning curves: {self.figure}"))
        return table


class _CompareTable:
    """``compare``'s table; where the job names leave the figures no room in the width, the rows are numbered
    and the names listed below them, whole."""

    COLUMNS = ("optimizer", "epochs", "val\nacc", "val\nloss", "test\nacc", "test\nloss", "final\nlr", "s")

    def __init__(self, rows: list[CompareRow]) -> None:
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        def number(value: float | None, digits: int = 4) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        cells: list[list[str | Text]] = [
            [
                row.optimizer,
                row.epochs_text(),
                number(row.best_val_accuracy),
                number(row.best_val_loss),
                number(row.test_accuracy),
                number(row.test_loss),
                "-" if row.final_learning_rate is None else f"{row.final_learning_rate:.3g}",
                f"{row.training_seconds:.0f}",
            ]
            for row in self.rows
        ]
        widths = [
            max(*(len(line) for line in header.split("\n")), *(max(map(len, str(c[i]).split("\n"))) for c in cells))
            for i, header in enumerate(self.COLUMNS)
        ]
        name_width = max((len(row.job) for row in self.rows), default=3)
        numbered = name_width + 1 + sum(widths) + len(widths) - 1 > options.max_width
        caption = "val: the best over the epochs; s: training seconds"
        if any(row.test_model == "best" for row in self.rows):
            caption += "\ntest: " + "; ".join(
                f"{'#' + str(i) if numbered else row.job} {row.test_model} (epoch {row.test_model_epoch})"
                for i, row in enumerate(self.rows, start=1)
                if row.test_model is not None
            )
        if numbered:
            caption += "".join(f"\n#{i} {row.job}" for i, row in enumerate(self.rows, start=1))
        table = _table("comparison", caption=caption)
        table.add_column(
            "#" if numbered else "job",
            no_wrap=True,
            justify="right" if numbered else "left",
            min_width=1 if numbered else name_width,
        )
        for header in self.COLUMNS:
            table.add_column(header, no_wrap=True, justify="left" if header == "optimizer" else "right")
        for index, (row, values) in enumerate(zip(self.rows, cells, strict=True), start=1):
            table.add_row(f"#{index}" if numbered else row.job, *values)
        yield table


def describe_resize(resize: ResizeRecord) -> str:
    when = resize.at.astimezone().strftime("%H:%M:%S")
    source = f" (from backup {resize.backup})" if resize.backup else ""
    return f"{resize.from_workers} -> {resize.to_workers} worker(s) at {when}{source}: {resize.reason}"


class HistoryOutput(Output):
    name: str
    epochs: list[EpochRecord]
    workers: dict[int, int] = Field(default={}, description="attempt -> its workers, for an elastic job that resized")
    resizes: list[ResizeRecord] = []

    def render(self) -> RenderableType:
        if not self.epochs:
            return Text(f"job '{self.name}' has no finished epoch yet")
        keys = list(dict.fromkeys(key for record in self.epochs for key in record.metrics))
        phases = list(dict.fromkeys(record.phase for record in self.epochs if record.phase))
        branches = any(record.branch for record in self.epochs)
        notes = ["seg: run of epochs at one LR" + (", bN its branch" if branches else "") + "; att: attempt"]
        if phases:
            notes.append("phases: " + ", ".join(f"p{i} {name}" for i, name in enumerate(phases, start=1)))
        if any(record.end_learning_rate is not None for record in self.epochs):
            notes.append("lr a→b: the LR changed inside the epoch, from a to b")
        if self.resizes:  # the reasons are in `status`: a caption line keeps to 80 columns
            notes.append(
                "workers by att: "
                + ", ".join(f"{a}: {n}" for a, n in sorted(self.workers.items()))
                + " (elastic; `status` says why)"
            )
        table = _table(f"history of {self.name}", caption="\n".join(notes))
        for column in ("epoch", "seg", "att", "lr", *(_short_metric(k) for k in keys), "s"):
            table.add_column(column, justify="right", no_wrap=True)
        for record in self.epochs:
            values = [f"{record.metrics[k]:.4f}" if k in record.metrics else "" for k in keys]
            segment = str(record.segment) + (f" b{record.branch}" if record.branch else "")
            if record.phase:
                segment += f" p{phases.index(record.phase) + 1}"
            table.add_row(
                str(record.epoch + 1),
                segment,
                str(record.attempt),
                learning_rates(record),
                *values,
                _seconds(record.seconds),
            )
        return table


class ErrorDetail(Output):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    hint: str | None = None
    exit_code: int
    problems: list[str] = Field(default_factory=list)  # a spec's, one per line (also in the message)
    excerpt: str = ""  # the end of a traceback, for errors that come from code (the user's or a worker's)


class ErrorOutput(Output):
    """What a failed command prints under ``--json``, on stdout, instead of its result: ``{"error": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class DeleteOutput(Output):
    model_config = ConfigDict(extra="forbid")

    name: str
    store: str
    status: JobStatus
    whole: bool  # the job's whole folder (False: only its backups and Ray's run folder, --keep-snapshots)
    files: int
    bytes: int
    kept_snapshots: list[str] = Field(default_factory=list)

    def render(self) -> RenderableType:
        size = f"{self.files} file{'s' if self.files != 1 else ''}, {self.bytes / 1e6:.1f} MB"
        if self.whole:
            return Text.assemble(
                ("deleted ", "bold"), f"job '{self.name}' ({self.status}) from store {self.store}: {size}"
            )
        kept = ", ".join(self.kept_snapshots) or "none"
        return Text.assemble(
            ("deleted ", "bold"),
            f"the backups of job '{self.name}' ({self.status}): {size}; "
            f"kept its records, models and snapshots ({kept})",
        )


class SettingRow(Output):
    model_config = ConfigDict(extra="forbid")

    key: str
    value: str | None  # None: the built-in default applies
    source: str  # "$ENV_VAR", "config file" or "default: ..."
    option: str
    env: str


class ConfigOutput(Output):
    model_config = ConfigDict(extra="forbid")

    path: str | None  # None: $ORCHESTRATOR_CONFIG is set empty (no config file)
    exists: bool
    settings: list[SettingRow]

    def render(self) -> RenderableType:
        where = "none ($ORCHESTRATOR_CONFIG is empty)" if self.path is None else self.path
        lines = [Text(f"config file: {where}" + ("" if self.exists or self.path is None else " (none there)"))]
        width = max(len(row.key) for row in self.settings)
        for row in self.settings:
            value = row.value if row.value is not None else "-"
            lines.append(
                Text.assemble(
                    (row.key.ljust(width), "bold"), f"  {value}  ", (f"({row.source}; {row.option}, ${row.env})", "dim")
                )
            )
        lines.append(
            Text(
                "precedence: the option, else its environment variable, else the config file, else the built-in default"
            )
        )
        return Group(*lines)


class WatchEvent(Output):
    """One line of ``watch --json``: a new status (``state``), a progress report (``progress``), a finished
    epoch (``epoch``), or the job's end (``end``, the last line)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["state", "progress", "epoch", "end"]
    job: str
    state: JobState | None = None
    progress: Progress | None = None
    epoch: EpochRecord | None = None


class LogLine(Output):
    """One line of ``logs -f --json``."""

    model_config = ConfigDict(extra="forbid")

    job: str
    source: str  # driver, controller, worker-N
    line: str


class LogsOutput(Output):
    name: str
    logs: dict[str, str]

    def render(self) -> RenderableType:
        if not self.logs:
            return Text(f"job '{self.name}' has no logs yet")
        parts: list[RenderableType] = []
        for log, text in self.logs.items():
            parts += [Text(f"==> {log} <==", style="bold"), Text(text.rstrip("\n"))]
        return Group(*parts)


class RunOutput(Output):
    name: str
    store: str
    status: JobStatus
    attempt: int
    epochs_done: int
    epochs: int
    final_metrics: dict[str, float]
    wall_seconds: float
    workers_in_sync: bool
    model_url: str | None
    reason: str | None = None
    note: str | None = None

    def render(self) -> RenderableType:
        lines = [
            Text.assemble(
                f"job '{self.name}' ",
                _status_text(self.status),
                f" after {self.epochs_done}/{self.epochs} epochs in {self.wall_seconds:.1f} s",
            ),
        ]
        if self.reason and self.status is not JobStatus.SUCCEEDED:
            lines.append(Text(f"reason: {self.reason}", style=STATUS_STYLE[self.status]))
        if self.final_metrics:
            lines.append(Text(f"final: {_metrics_text(self.final_metrics)}"))
        if self.note:
            lines.append(Text(self.note))
        if self.model_url:
            lines.append(Text(f"model: {self.model_url}"))
        lines.append(Text(f"next: orchestrator history {self.name}  |  orchestrator status {self.name}", style="dim"))
        return Group(*lines)


class LiveSnapshot(Output):
    """What ``orchestrator run`` shows while the job trains, read from the store."""

    name: str
    state: JobState
    progress: Progress | None
    history: list[EpochRecord]
    batch_size: int
    epochs: int
    pending: list[Command] = []

    def render(self) -> RenderableType:
        head = Text.assemble(
            (self.name, "bold"),
            "  ",
            _status_text(self.state.status),
            f"  attempt {self.progress.attempt if self.progress else max(1, self.state.attempt)}",
        )
        progress = self.progress
        if progress is None:
            return Group(head, Text("starting workers...", style="dim"))
        done = progress.epoch * progress.steps_per_epoch + progress.step
        total = progress.epochs * progress.steps_per_epoch
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"epoch {progress.epoch + 1}/{progress.epochs}",
            ProgressBar(total=progress.steps_per_epoch, completed=progress.step, width=30),
            f"{progress.step}/{progress.steps_per_epoch} steps",
            f"ETA {self._eta(total - done)}",
        )
        lines: list[RenderableType] = [
            head,
            bar,
            Text(f"lr {progress.learning_rate:.4g}  " + _metrics_text(progress.metrics)),
        ]
        if self.history:
            last = self.history[-1]
            lines.append(Text(f"epoch {last.epoch + 1}: {_metrics_text(last.metrics)}", style="dim"))
        for command in self.pending:
            lines.append(Text(f"pending: {CommandRow(command=command).describe()}", style="yellow"))
        return Group(*lines)

    def _eta(self, steps_left: int) -> str:
        if not self.progress or not self.progress.samples_per_second:
            return "-"
        seconds = steps_left * self.batch_size / self.progress.samples_per_second
        return str(timedelta(seconds=int(seconds)))


def epoch_line(name: str, record: EpochRecord, epochs: int) -> str:
    """The plain line printed per epoch when the output is not a terminal (CI logs, pipes)."""
    return (
        f"{name}: epoch {record.epoch + 1}/{epochs} lr {learning_rates(record)} "
        f"{_metrics_text(record.metrics)} ({record.seconds:.1f} s)"
    )


def in_sync(summaries: list[WorkerSummary]) -> bool:
    """True when every worker ended with bit-identical weights (synchronous data parallelism held)."""
    return len({summary.weights_sha256 for summary in summaries}) == 1


StatusOutput.model_rebuild()
