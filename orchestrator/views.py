"""Every command's output model, in one place: the same object renders as rich text and as ``--json``, so they
cannot drift. The module that owns the data builds each one (``jobs``, ``commands``, ``runner``, ``sweep``,
``submission``, ``local_head``); how the bigger ones look is in :mod:`orchestrator.render` and
:mod:`orchestrator.tables`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Group, RenderableType
from rich.text import Text

from orchestrator import render, tables
from orchestrator.cost import CostSummary
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
)
from orchestrator.recovery import Accounting
from orchestrator.render import STATUS_STYLE, metrics_text, status_text
from orchestrator.spec import FunctionModel, JobSpec, KerasData, StrictModel
from orchestrator.status import JobStatus


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
        + render.devices_text(spec)
        + (f"; phases {' then '.join(f'{p.name} ({p.epochs})' for p in spec.phases)}" if spec.phases else "")
    )


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
        return tables.job_list(self)


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
    cost: CostSummary | None = Field(default=None, description="what it cost so far; null: no price configured")
    driver_gone: str | None = Field(default=None, description="an active job's driver known gone: how it is known")

    def render(self) -> RenderableType:
        return render.status_grid(self)


class CommandRow(Output):
    command: Command
    ack: CommandAck | None = None

    def describe(self) -> str:
        return render.describe_command(self.command, self.ack)


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
        return tables.snapshots_table(self)


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
    cost: CostSummary | None = Field(default=None, description="what it cost; null: no price configured")


class CompareOutput(Output):
    rows: list[CompareRow]
    figure: str | None = None

    def render(self) -> RenderableType:
        table = tables.CompareTable(self.rows)
        if self.figure:
            return Group(table, Text(f"learning curves: {self.figure}"))
        return table


class HistoryOutput(Output):
    name: str
    epochs: list[EpochRecord]
    workers: dict[int, int] = Field(default={}, description="attempt -> its workers, for an elastic job that resized")
    resizes: list[ResizeRecord] = []

    def render(self) -> RenderableType:
        return tables.history_table(self)


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
        return render.config_lines(self)


class WatchEvent(Output):
    """One line of ``watch --json``: a new status (``state``), a progress report (``progress``), a finished
    epoch (``epoch``), or the job's end (``end``, the last line; ``driver_gone`` instead when its status stays
    active but its driver is known gone, with the ``reason``); ``submit --follow --json`` starts with the
    submission (``submitted``)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["submitted", "state", "progress", "epoch", "end", "driver_gone"]
    job: str
    submission: SubmitOutput | None = None
    state: JobState | None = None
    progress: Progress | None = None
    epoch: EpochRecord | None = None
    reason: str | None = None


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
                status_text(self.status),
                f" after {self.epochs_done}/{self.epochs} epochs in {self.wall_seconds:.1f} s",
            ),
        ]
        if self.reason and self.status is not JobStatus.SUCCEEDED:
            lines.append(Text(f"reason: {self.reason}", style=STATUS_STYLE[self.status]))
        if self.final_metrics:
            lines.append(Text(f"final: {metrics_text(self.final_metrics)}"))
        if self.note:
            lines.append(Text(self.note))
        if self.model_url:
            lines.append(Text(f"model: {self.model_url}"))
        lines.append(Text(f"next: orchestrator history {self.name}  |  orchestrator status {self.name}", style="dim"))
        return Group(*lines)


class HeadRecord(StrictModel):
    """The local head ``orchestrator up`` started (``~/.orchestrator/head.json``, and ``up --json``'s ``head``);
    no credentials."""

    dashboard_url: str
    gcs_address: str
    temp_dir: str
    num_cpus: int | None = None


class HeadOutput(Output):
    head: HeadRecord
    started: bool  # False: an existing head was reused

    def render(self) -> RenderableType:
        verb = "started" if self.started else "already running:"
        return Text.assemble(
            f"local Ray head {verb} ",
            (self.head.dashboard_url, "bold"),
            f" (GCS {self.head.gcs_address}); submit with: orchestrator submit SPEC; stop it with: orchestrator down",
        )


class DownOutput(Output):
    dashboard_url: str | None
    processes: int

    def render(self) -> RenderableType:
        if self.dashboard_url is None:
            return Text("no local Ray head was running (nothing to stop)")
        return Text(f"stopped the local Ray head at {self.dashboard_url} ({self.processes} processes)")


class SubmitOutput(Output):
    name: str
    submission_id: str
    address: str
    store: str
    status: JobStatus | None  # the job's status in the store once its driver recorded it

    def store_option(self) -> str:
        """`` --store URL`` for the commands it suggests, unless the store is the default one."""
        from orchestrator.store import default_store_url

        return "" if self.store == default_store_url(None) else f" --store {self.store}"

    def render(self) -> RenderableType:
        store = self.store_option()
        return Text.assemble(
            ("submitted ", ""),
            (self.name, "bold"),
            f" to {self.address} as Ray job {self.submission_id}",
            f" ({self.status.value if self.status else 'not recorded yet'})\n",
            f"follow it: orchestrator watch {self.name}{store}    logs: orchestrator logs {self.name} -f{store}\n",
            f"change the LR: orchestrator set-lr {self.name} 1e-3{store}    stop it: orchestrator stop "
            f"{self.name}{store}    cancel: orchestrator cancel {self.name}{store}",
        )


class CancelOutput(Output):
    name: str
    address: str
    stopped: list[str]  # Ray submission ids stopped
    status: JobStatus | None
    note: str | None = None  # why the job is not STOPPED yet

    def render(self) -> RenderableType:
        ids = ", ".join(self.stopped) or "none running"
        status = self.status.value if self.status else "never recorded"
        note = f" ({self.note})" if self.note else ""
        return Text(f"cancelled {self.name}: Ray job(s) {ids} at {self.address}; job status {status}{note}")


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
        return render.live_display(self)


def in_sync(summaries: list[WorkerSummary]) -> bool:
    """True when every worker ended with bit-identical weights (synchronous data parallelism held)."""
    return len({summary.weights_sha256 for summary in summaries}) == 1


StatusOutput.model_rebuild()
