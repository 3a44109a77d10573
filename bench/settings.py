"""What the benchmark trains and how hard it preempts: the full run's sizes and the smoke run's tiny ones.

Both contenders train the same ``Job``: the orchestrator's ``small_cnn`` recipe (the quickstart's conv
layers, ``dense_units`` set for a parameter count), the same synthetic data (the quickstart's settings, no
validation split: every second counted here is a training step), batch, optimizer, seed and workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

CONV_FILTERS = (16, 32)
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def dense_units_for(params: int) -> int:
    """``dense_units`` giving ``small_cnn`` about ``params`` parameters (28x28x1 input, conv 16 and 32, 10 classes)."""
    conv = 3 * 3 * 1 * 16 + 16 + 3 * 3 * 16 * 32 + 32
    flat = (IMAGE_SHAPE[0] // 4) * (IMAGE_SHAPE[1] // 4) * CONV_FILTERS[-1]
    return max(1, round((params - conv - NUM_CLASSES) / (flat + 1 + NUM_CLASSES)))


@dataclass(frozen=True)
class Job:
    """One training job, identical for both contenders."""

    epochs: int
    train_examples: int
    params: int = 1_000_000
    workers: int = 2
    batch_size: int = 64
    seed: int = 7
    learning_rate: float = 0.001

    @property
    def cpus_per_worker(self) -> float:
        return 1.0 if self.workers <= 2 else 2.0 / self.workers  # 2 cores here: 4 workers get half a core each

    @property
    def steps_per_epoch(self) -> int:
        return self.train_examples // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def model(self) -> dict[str, Any]:
        return {"recipe": "small_cnn", "conv_filters": list(CONV_FILTERS), "dense_units": dense_units_for(self.params)}

    @property
    def data(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "num_classes": NUM_CLASSES,
            "image_shape": list(IMAGE_SHAPE),
            "train_examples": self.train_examples,
            "validation_examples": 0,
            "noise": 1.5,
            "max_shift": 4,
        }

    def baseline_settings(self) -> dict[str, Any]:
        """What ``bench.baseline.run_baseline`` takes as ``settings``."""
        return {
            "seed": self.seed,
            "data": self.data,
            "model": self.model,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
        }

    def label(self) -> str:
        size = f"{self.params / 1e6:g}M" if self.params >= 1e6 else f"{self.params / 1e3:g}k"
        return f"{size} params, {self.workers} worker{'s' if self.workers > 1 else ''}"


@dataclass(frozen=True)
class Settings:
    """Everything a bench invocation needs besides the sections and the number of runs."""

    steady: Job  # uninterrupted runs: throughput, checkpoint overhead, control latency
    preempted: Job  # the 10-epoch job under a preemption schedule: goodput, lost steps, time to resume
    scale: tuple[Job, ...]  # one kill each: checkpoint time and time to resume by model size and workers
    steps_interval: int  # both contenders' "a save every N steps" overhead figure
    preemptions_per_job: float = 4.5  # T = expected training time / this: 3 to 5 preemptions a job
    max_preemptions: int = 5
    deadline_s: float = 30.0  # notice period: SIGTERM, then SIGKILL if still there
    kill_every_s: float | None = None  # T; None: calibrated from the first preempted run's first epoch
    lose_after_s: float = 30.0  # lost node: seconds of training before the worker node goes
    replace_after_s: float = 60.0  # lost node: seconds until its replacement joins
    extra: dict[str, Any] = field(default_factory=dict)


def full_settings() -> Settings:
    preempted = Job(epochs=10, train_examples=32768)
    base = replace(preempted, epochs=3, train_examples=8192)
    return Settings(
        steady=replace(preempted, epochs=3),
        preempted=preempted,
        scale=(
            base,
            replace(base, params=10_000_000),
            replace(base, params=50_000_000, train_examples=2048),
            replace(base, workers=1),
            replace(base, workers=4),
        ),
        steps_interval=20,
    )


def smoke_settings() -> Settings:
    """One run of everything at tiny sizes: proves the scripts work, measures nothing worth quoting."""
    preempted = Job(epochs=4, train_examples=2048, params=200_000)
    return Settings(
        steady=preempted,
        preempted=preempted,
        scale=(replace(preempted, epochs=3, train_examples=1024, workers=1),),
        steps_interval=8,
        lose_after_s=3.0,
        replace_after_s=10.0,
        max_preemptions=1,
        deadline_s=1.0,
        preemptions_per_job=2.0,
    )
