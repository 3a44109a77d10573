"""What the store holds about a job, one pydantic model per file (every file and its writer:
docs/architecture.md, "Who writes what").

Most files have a single writer: ``job.json`` the CLI at submission, ``status.json`` the job's owner (its
driving process while active: ``lifecycle``), ``driver.json`` that driving process, ``progress.json`` and
``history.jsonl`` the rank-0 worker. The few with several writers are appended to (``failures.jsonl``, the logs),
which never loses a line (``store``), or created exclusively (``commands/``, ``acks/``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from orchestrator.errors import FailureKind
from orchestrator.spec import JobSpec, StrictModel
from orchestrator.status import JobStatus


def utc_now() -> datetime:
    return datetime.now(UTC)


def _null_is_nan(value: Any) -> Any:
    """Earlier versions wrote a NaN metric as ``null`` (JSON has no NaN): it was a NaN, so it reads back as one."""
    return math.nan if value is None else value


Real = Annotated[float, BeforeValidator(_null_is_nan)]
"""A measured float that may be NaN or infinite (a diverged run's loss): written as "NaN"/"Infinity", read back
from those strings, from JSON's NaN/Infinity constants, or from the ``null`` older versions wrote."""
Metrics = dict[str, Real]


def _utc_if_naive(moment: datetime) -> datetime:
    """Every record is written in UTC with its offset; one without an offset (edited by hand) is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc_if_naive)]


class JobRecord(StrictModel):
    """``job.json``: the spec as submitted, never rewritten."""

    name: str
    id: str
    created_at: Timestamp
    spec_path: str | None = None
    spec: JobSpec


class JobState(StrictModel):
    """``status.json``: the job's lifecycle, written by its owner through ``JobStore.set_status`` (``lifecycle``)."""

    status: JobStatus
    attempt: int = Field(default=0, ge=0)
    reason: str | None = None
    stopped_by: Literal["user", "signal"] | None = Field(
        default=None,
        description="STOPPED only: user = a person asked (stop, cancel, Ctrl+C), so a retry (run --or-resume) "
        "leaves it stopped; signal = the command driving it was terminated, so a retry continues it",
    )
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    updated_at: Timestamp = Field(default_factory=utc_now)


class DriverRecord(StrictModel):
    """``driver.json``: the process driving the job (``run``, ``resume``, ``run --or-resume``: its runner and
    driver), written by that process only: when it claims the job, every ``lifecycle.HEARTBEAT_S`` while it
    drives, and once more with ``ended_at`` when it lets go. How another process knows it is gone:
    ``lifecycle.driver_gone``."""

    host: str
    pid: int = Field(ge=1)
    command: str = Field(description="what drives it: run, resume, run --or-resume")
    ray_submission: str | None = Field(
        default=None, description="the Ray Jobs API submission whose entrypoint this process is (submit)"
    )
    started_at: Timestamp = Field(default_factory=utc_now)
    heartbeat_at: Timestamp = Field(default_factory=utc_now)
    ended_at: Timestamp | None = None


class Progress(StrictModel):
    """``progress.json``: where training is now, written by rank 0 about once a second and at every epoch end."""

    attempt: int
    epoch: int = Field(ge=0, description="0-based epoch being trained")
    epochs: int
    step: int = Field(ge=0, description="steps done in this epoch")
    steps_per_epoch: int
    learning_rate: float
    metrics: Metrics = Field(default_factory=dict)
    samples_per_second: float | None = Field(default=None, description="over the epoch so far, all replicas")
    replicas: int | None = Field(default=None, description="model replicas in sync: workers x devices per worker")
    updated_at: Timestamp = Field(default_factory=utc_now)


class EpochRecord(StrictModel):
    """One line of ``history.jsonl``: an epoch as it ended."""

    epoch: int = Field(ge=0)
    attempt: int
    learning_rate: float = Field(description="LR of the epoch's first step (for a resumed epoch, of its restore point)")
    end_learning_rate: float | None = Field(
        default=None,
        description="LR of the epoch's last step where it differs from learning_rate (set-lr --now, resume --lr "
        "inside the epoch); None: the epoch trained at one LR",
    )
    metrics: Metrics
    seconds: float
    first_step: int = Field(default=0, ge=0, description="training metrics cover this step on (mid-epoch resume)")
    segment: int = Field(default=0, ge=0, description="run of epochs with one LR and one configuration")
    branch: int = Field(default=0, ge=0, description="resume --from-epoch starts a new branch")
    phase: str | None = Field(default=None, description="the spec's phase that trained this epoch, if it has phases")
    ended_at: Timestamp = Field(default_factory=utc_now)


class BackupRecord(StrictModel):
    """``backups.jsonl``: one line per backup stored, with what it cost (kept after the backup is pruned)."""

    name: str
    epoch: int
    step: int
    attempt: int
    reason: str
    blocking_seconds: float = Field(description="training waited this long (checkpoint write, earlier upload)")
    upload_seconds: float = Field(description="upload to the store, in the background unless a stop/notice waits")
    size_bytes: int
    at: Timestamp = Field(default_factory=utc_now)


class WorkerStart(StrictModel):
    """How one worker of a worker group started: in a warm process (TensorFlow imported in advance) or cold."""

    rank: int = Field(ge=0)
    node: str = Field(description="Ray node id (first 12 characters)")
    pid: int
    process_started_at: datetime | None = Field(default=None, description="when the worker's process started")
    preloaded_at: datetime | None = Field(
        default=None, description="when the process had imported TensorFlow and the worker's modules (warm pool)"
    )


class Position(StrictModel):
    """A point in training: ``step`` steps of (0-based) ``epoch`` done, out of ``steps_per_epoch``."""

    epoch: int = Field(ge=0)
    step: int = Field(ge=0)
    steps_per_epoch: int = Field(ge=1)
    attempt: int = Field(ge=1, description="the attempt that trained to this point")


class AttemptRecord(StrictModel):
    """One line of ``attempts.jsonl`` (rank 0): a worker group started, and from where."""

    attempt: int = Field(ge=1)
    started_at: Timestamp = Field(default_factory=utc_now)
    start_epoch: int = Field(ge=0)
    start_step: int = Field(default=0, ge=0, description="steps of start_epoch already done (mid-epoch resume)")
    restored_from: str | None = None
    startup: dict[str, float] = Field(
        default_factory=dict,
        description="seconds each start-up phase took on rank 0: process (worker process start to training "
        "function: Python, TensorFlow and Ray imports), strategy, data, model (build and compile), restore",
    )
    workers: list[WorkerStart] = Field(default_factory=list, description="every rank's process, by rank")
    replicas: int | None = Field(
        default=None, description="model replicas in sync in this attempt: workers x devices (GPUs) per worker"
    )
    previous_reached: Position | None = Field(
        default=None,
        description="where the attempt before this one last reported training (its progress.json as this "
        "attempt started): with the restore point, the steps lost when it ended without a backup (Ctrl+C, a lost "
        "head); None for the first attempt",
    )


class ResizeRecord(StrictModel):
    """One line of ``resizes.jsonl`` (Ray Train's controller): an elastic job's worker group starts at another
    size than the one before it (``scaling.min_workers``)."""

    at: Timestamp = Field(default_factory=utc_now)
    from_workers: int = Field(ge=1)
    to_workers: int = Field(ge=1)
    reason: str
    backup: str | None = Field(default=None, description="grow: where the paused group backed up for it")


class FailureRecord(StrictModel):
    """One line of ``failures.jsonl``: a worker group failed (Ray Train's controller), or paused for a drain's
    deadline (rank 0)."""

    failed_at: Timestamp = Field(default_factory=utc_now)
    reasons: list[str]
    kind: FailureKind = Field(
        default="failure",
        description="preemption: a drained node went (its backups say the attempt acted on a drain notice); "
        "notice: the workers ended the attempt themselves after a just-in-time backup (their error's "
        "failure_kind); failure: anything else. Set from typed facts, never from the reasons' text",
    )
    epoch: int | None = Field(default=None, description="where training was (progress.json) when it failed")
    step: int | None = None
    steps_per_epoch: int | None = None


class PlateauState(StrictModel):
    best: float | None = None
    wait: int = 0
    cooldown: int = 0


class MonitorState(StrictModel):
    best: float | None = None
    wait: int = 0
    epoch: int | None = None


class ControlState(StrictModel):
    """The LR controller's and callbacks' state at a backup: everything the next epoch depends on besides the
    model and optimizer (docs/architecture.md, "Everything the next step depends on is in the backup")."""

    learning_rate: float
    segment: int = 0
    branch: int = 0
    phase: int = Field(default=0, ge=0, description="index of the spec's phase whose model and optimizer these are")
    manual: bool = Field(default=False, description="a set-lr took over from the planned drops")
    applied: list[int] = Field(default_factory=list, description="sequence numbers of the commands applied")
    plateau: PlateauState = Field(default_factory=PlateauState)
    early_stopping: MonitorState = Field(default_factory=MonitorState)
    best_model: MonitorState = Field(default_factory=MonitorState)


CommandKind = Literal["set_lr", "stop"]
CommandWhen = Literal["epoch", "now", "at_epoch", "epoch_end"]


class Command(StrictModel):
    """``commands/<seq>.json``: a person's request, append-only; the running job applies it exactly once.

    ``when``: ``epoch`` the next epoch boundary, ``now`` the next step boundary the workers agree at,
    ``at_epoch`` once ``at_epoch`` epochs are done, ``epoch_end`` (stop only) the end of the current epoch.
    """

    seq: int = Field(ge=1)
    kind: CommandKind
    learning_rate: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    when: CommandWhen = "epoch"
    at_epoch: int | None = Field(default=None, ge=0)
    issued_at: Timestamp = Field(default_factory=utc_now)
    issued_by: str = ""


class CommandAck(StrictModel):
    """``acks/<seq>.json`` (rank 0): where a command first took effect; a restore from an earlier backup
    replays it at exactly this point."""

    seq: int
    epoch: int = Field(ge=0, description="0-based epoch at whose step the command took effect")
    step: int = Field(ge=0, description="steps of that epoch done when it took effect")
    attempt: int
    branch: int = 0
    learning_rate: float | None = None
    note: str | None = None
    void: str | None = Field(
        default=None,
        description="why the command never took effect (a stop still pending when the job ended otherwise and was "
        "resumed); written by the resuming process, when no worker runs; epoch and step: where the job was",
    )
    applied_at: Timestamp = Field(default_factory=utc_now)


class BranchRecord(StrictModel):
    """``branches.jsonl``: ``resume --from-epoch`` started a new branch; later epochs of older ones are superseded."""

    branch: int = Field(ge=1)
    from_epoch: int = Field(ge=0, description="epochs done at the fork")
    snapshot: str
    created_at: Timestamp = Field(default_factory=utc_now)


class Ending(StrictModel):
    """``ending.json`` (rank 0): how the last worker group ended its training normally."""

    kind: Literal["completed", "stopped", "early_stopped", "diverged"]
    epoch: int
    step: int = 0
    reason: str
    attempt: int
    ended_at: Timestamp = Field(default_factory=utc_now)


class Evaluation(StrictModel):
    """``evaluation.json`` (rank 0): the model the job keeps on the held-out test split, once training has ended:
    the best model (``callbacks.best_model``) where the job keeps one, else the final model."""

    split: str = "test"
    examples: int
    metrics: Metrics
    epochs_trained: int
    model: Literal["final", "best"] = Field(default="final", description="which model was evaluated")
    model_epoch: int | None = Field(default=None, description="epochs trained by the evaluated model")
    note: str | None = Field(default=None, description="why the final model was evaluated although a best one exists")
    evaluated_at: Timestamp = Field(default_factory=utc_now)


class BackupFile(StrictModel):
    size: int = Field(ge=0)
    sha256: str


NoticeSource = Literal["sigterm", "drain"]  # a SIGTERM to a worker; a Ray node drain


class BackupManifest(StrictModel):
    """``checkpoints/<name>/manifest.json``: written after every file of the backup, so its presence means complete.

    ``(epoch, step)`` is where training continues: a backup taken at the end of epoch 3 (0-based 2) has
    ``epoch`` 3 and ``step`` 0; one taken after 10 steps of that epoch has ``epoch`` 2 and ``step`` 10.
    """

    name: str
    epoch: int = Field(ge=0)
    step: int = Field(default=0, ge=0)
    attempt: int
    learning_rate: float
    files: dict[str, BackupFile]
    control: ControlState | None = None
    reason: str = "scheduled"
    notices: list[NoticeSource] = Field(
        default_factory=list,
        description="the preemption notices this backup was taken for (a just-in-time or a last backup); "
        "empty for any other backup, and in manifests written before this field",
    )
    created_at: Timestamp = Field(default_factory=utc_now)


class WorkerSummary(StrictModel):
    """``workers/rank-N.json``: what one worker ended with, to check that replicas stayed in sync."""

    rank: int
    world_size: int
    hostname: str
    epochs_trained: int
    weights_sha256: str
    weights_norm: Real
    learning_rate: float


class TrackedRun(StrictModel):
    """One MLflow run of a job: the one of its original training (branch 0) or of a ``resume --from-epoch``
    branch (a child run of the run that was live when the branch started)."""

    branch: int = Field(ge=0)
    run_id: str
    parent_run_id: str | None = None
    epochs_logged: int = Field(default=0, ge=0, description="the run holds the metrics of the epochs before this one")
    logged_until: datetime | None = Field(
        default=None,
        description="the newest epoch record logged ended then: a later record of an epoch already logged was "
        "trained again (a restore from an older backup) and is logged again",
    )
    models_logged: list[str] = Field(default_factory=list, description="the model artifacts logged: final, best")


class TrackingRecord(StrictModel):
    """``tracking.json`` (the driving process, or ``mlflow-sync``): where the job's MLflow runs are; every
    attempt, every resume continues the run of its branch from here."""

    tracking_uri: str
    experiment_id: str
    runs: list[TrackedRun] = Field(default_factory=list)
    updated_at: Timestamp = Field(default_factory=utc_now)
