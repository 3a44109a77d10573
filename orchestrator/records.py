"""What the store holds about a job, one pydantic model per file (see the storage layout in ARCHITECTURE.md).

Each file has a single writer, so no two processes ever race on one file:
``job.json`` the CLI at submission, ``status.json`` the job's driver, ``progress.json`` and
``history.jsonl`` the rank-0 worker.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field

from orchestrator.spec import JobSpec, StrictModel
from orchestrator.status import JobStatus


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobRecord(StrictModel):
    """``job.json``: the spec as submitted, never rewritten."""

    name: str
    id: str
    created_at: datetime
    spec_path: str | None = None
    spec: JobSpec


class JobState(StrictModel):
    """``status.json``: the job's lifecycle, written by its driver."""

    status: JobStatus
    attempt: int = Field(default=0, ge=0)
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utc_now)


class Progress(StrictModel):
    """``progress.json``: where training is now, written by rank 0 about once a second and at every epoch end."""

    attempt: int
    epoch: int = Field(ge=0, description="0-based epoch being trained")
    epochs: int
    step: int = Field(ge=0, description="steps done in this epoch")
    steps_per_epoch: int
    learning_rate: float
    metrics: dict[str, float] = Field(default_factory=dict)
    samples_per_second: float | None = None
    updated_at: datetime = Field(default_factory=utc_now)


class EpochRecord(StrictModel):
    """One line of ``history.jsonl``: an epoch as it ended."""

    epoch: int = Field(ge=0)
    attempt: int
    learning_rate: float
    metrics: dict[str, float]
    seconds: float
    first_step: int = Field(default=0, ge=0, description="training metrics cover this step on (mid-epoch resume)")
    ended_at: datetime = Field(default_factory=utc_now)


class AttemptRecord(StrictModel):
    """One line of ``attempts.jsonl`` (rank 0): a worker group started, and from where."""

    attempt: int = Field(ge=1)
    started_at: datetime = Field(default_factory=utc_now)
    start_epoch: int = Field(ge=0)
    start_step: int = Field(default=0, ge=0, description="steps of start_epoch already done (mid-epoch resume)")
    restored_from: str | None = None


class FailureRecord(StrictModel):
    """One line of ``failures.jsonl`` (Ray Train's controller): a worker group failed."""

    failed_at: datetime = Field(default_factory=utc_now)
    reasons: list[str]


class BackupFile(StrictModel):
    size: int = Field(ge=0)
    sha256: str


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
    created_at: datetime = Field(default_factory=utc_now)


class WorkerSummary(StrictModel):
    """``workers/rank-N.json``: what one worker ended with, to check that replicas stayed in sync."""

    rank: int
    world_size: int
    hostname: str
    epochs_trained: int
    weights_sha256: str
    weights_norm: float
    learning_rate: float
