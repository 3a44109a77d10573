"""Running one job of either contender, optionally under a preemption schedule, and keeping what it recorded.

The orchestrator runs through its public API (``orchestrator.runner.run_job`` on a YAML spec, a ``JobStore``
on a local folder or a ``gs://`` URL); its model is the ``small_cnn`` recipe built through
``bench/instrument.py`` so that its steps are timed exactly like the baseline's. The baseline runs
``bench.baseline.run_baseline``. Both share the Ray instance the bench started.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.chaos import Calibration, Preempter, Preemption
from bench.settings import Job
from bench.timeline import Timeline

INSTRUMENT = Path(__file__).resolve().parent / "instrument.py"


@dataclass(frozen=True)
class Schedule:
    """How a run is preempted (see ``bench.chaos``)."""

    kind: str
    calibration: Calibration
    max_count: int
    ranks: tuple[int, ...] = (1, 0)
    deadline_s: float = 30.0
    spare_steps: int = 0

    def preempter(self, steps_dir: Path, job: Job, ready: Any) -> Preempter:
        ranks = [r for r in self.ranks if r < job.workers] or [0]
        return Preempter(
            steps_dir=steps_dir,
            kind=self.kind,
            calibration=self.calibration,
            steps_per_epoch=job.steps_per_epoch,
            total_steps=job.total_steps,
            max_count=self.max_count,
            ranks=ranks,
            deadline_s=self.deadline_s,
            spare_steps=self.spare_steps,
            ready=ready,
        )


@dataclass
class Run:
    """One job of one contender: where its records are, what was done to it, how it ended."""

    contender: str
    kind: str
    round: int
    job: Job
    steps_dir: Path
    started: float
    seconds: float = 0.0
    preemptions: list[Preemption] = field(default_factory=list)
    error: str | None = None
    store_url: str | None = None  # orchestrator runs
    name: str | None = None
    commands: dict[str, tuple[datetime, datetime | None]] = field(default_factory=dict)  # issued, applied
    failure_times: list[float] = field(default_factory=list)  # baseline: when Ray Train saw each failure
    marks: dict[str, float] = field(default_factory=dict)  # named moments (bench.lostnode: lost, joined)

    def timeline(self) -> Timeline:
        return Timeline.read(self.steps_dir, steps_per_epoch=self.job.steps_per_epoch, global_batch=self.job.batch_size)

    def summary(self) -> dict[str, Any]:
        return {
            "contender": self.contender,
            "kind": self.kind,
            "round": self.round,
            "job": self.job.label(),
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "store": self.store_url,
            "name": self.name,
            "preemptions": [vars(p) for p in self.preemptions],
            "commands": {label: [str(t) for t in times] for label, times in self.commands.items()},
            "failures_seen": self.failure_times,
            "marks": self.marks,
        }


def orchestrator_spec(
    job: Job,
    name: str,
    steps_dir: Path,
    backup: dict[str, Any],
    *,
    monitoring: bool = True,
    sigterm_grace_s: float | None = None,
) -> dict[str, Any]:
    """The job as an orchestrator spec (the quickstart's fields and defaults), its model timed by
    ``bench/instrument.py``; ``sigterm_grace_s``: the notice period a user on such machines sets."""
    return {
        "name": name,
        "seed": job.seed,
        "model": {"function": f"{INSTRUMENT}:build", "params": {"steps_dir": str(steps_dir), "recipe": job.model}},
        "data": job.data,
        "optimizer": {"name": "adam", "learning_rate": job.learning_rate},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "epochs": job.epochs,
        "batch_size": job.batch_size,
        "scaling": {"workers": job.workers, "cpus_per_worker": job.cpus_per_worker},
        "backup": backup,
        "failures": {"max_failures": 10, **({"sigterm_grace_s": sigterm_grace_s} if sigterm_grace_s else {})},
        # TensorBoard files and the run's plot, on as a user gets them unless ``monitoring`` is False
        "monitoring": {"tensorboard": monitoring, "plot": monitoring},
    }


def run_orchestrator(
    work: Path,
    kind: str,
    round_index: int,
    job: Job,
    *,
    store_url: str,
    backup: dict[str, Any],
    schedule: Schedule | None = None,
    control: bool = False,
    monitoring: bool = True,
) -> Run:
    """One orchestrator job via ``run_job``; with ``control``, a set-lr --now and a set-lr are issued mid-run."""
    from orchestrator.errors import InterruptedByUserError
    from orchestrator.runner import run_job
    from orchestrator.store import JobStore

    name = f"bench-{kind}-r{round_index}-{uuid.uuid4().hex[:6]}"
    folder = work / name
    steps_dir = folder / "steps"
    folder.mkdir(parents=True)
    spec = folder / "job.yaml"
    sigterm_grace_s = schedule.deadline_s if schedule is not None and schedule.kind == "notice" else None
    raw = orchestrator_spec(job, name, steps_dir, backup, monitoring=monitoring, sigterm_grace_s=sigterm_grace_s)
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    store = JobStore(store_url)
    run = Run("orchestrator", kind, round_index, job, steps_dir, time.time(), store_url=store_url, name=name)

    def ready() -> bool:
        return name in store.job_names() and bool(store.backup_names(name))

    preempter = schedule.preempter(steps_dir, job, ready).start() if schedule else None
    commander = _Commander(store, name, steps_dir, job, run).start() if control else None
    try:
        run_job(spec, store=store)
    except InterruptedByUserError:
        raise KeyboardInterrupt from None  # Ctrl+C stops the bench, not just this job
    except Exception as exc:  # recorded with the run: the figure is then missing, and the report says why
        run.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        run.seconds = time.time() - run.started
        if preempter is not None:
            run.preemptions = preempter.stop()
        if commander is not None:
            commander.stop()
        if not store.is_local:  # the driver keeps Ray Train's run folder in ~/.orchestrator/ray for such stores
            for folder in (Path.home() / ".orchestrator" / "ray").glob(f"{name}-*"):
                shutil.rmtree(folder, ignore_errors=True)
    return run


def run_baseline(
    work: Path, kind: str, round_index: int, job: Job, *, variants: list[str], schedule: Schedule | None = None
) -> Run:
    """One baseline Ray Train run (one model per variant, in order); steps of variant ``v`` in ``<run>/<v>/``."""
    from bench import baseline

    folder = work / f"baseline-{kind}-r{round_index}-{uuid.uuid4().hex[:6]}"
    steps_dir = folder / variants[0].replace(":", "-") / "steps"
    run = Run("baseline", kind, round_index, job, steps_dir, time.time())
    backups = steps_dir.parent / "backup"

    def ready() -> bool:
        return any(backups.rglob("checkpoint"))

    preempter = schedule.preempter(steps_dir, job, ready).start() if schedule else None
    settings = job.baseline_settings()
    try:
        baseline.run_baseline(
            folder,
            workers=job.workers,
            cpus_per_worker=job.cpus_per_worker,
            variants=variants,
            settings=settings,
            max_failures=10,
        )
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        run.seconds = time.time() - run.started
        if preempter is not None:
            run.preemptions = preempter.stop()
    failures = folder / "failures.txt"
    run.failure_times = [float(x) for x in failures.read_text().split()] if failures.exists() else []
    return run


class _Commander:
    """Issues ``set-lr --now`` in the job's second epoch, then, once it has taken effect, a plain ``set-lr`` (next
    epoch boundary), through ``orchestrator set-lr``'s own function; records when each was issued and when its
    effect was acknowledged (``acks/``: the epoch and step where the workers applied it)."""

    def __init__(self, store: Any, name: str, steps_dir: Path, job: Job, run: Run) -> None:
        self._store, self._name, self._steps_dir, self._job, self._run = store, name, steps_dir, job, run
        self._stop = threading.Event()
        self._seqs: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="commander", daemon=True)

    def start(self) -> _Commander:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        acks = self._store.read_acks(self._name) if self._name in self._store.job_names() else {}
        for label, (issued, _) in list(self._run.commands.items()):
            ack = acks.get(self._seqs[label])
            self._run.commands[label] = (issued, ack.applied_at if ack is not None else None)

    def _loop(self) -> None:
        from orchestrator.commands import set_lr

        spe, total = self._job.steps_per_epoch, self._job.total_steps
        if not self._wait(lambda: _last_step(self._steps_dir) >= spe + spe // 4):
            return
        self._issue(set_lr, "now")
        if not self._wait(lambda: len(self._store.read_acks(self._name)) >= 1):
            return
        if _last_step(self._steps_dir) < total - spe:  # an epoch boundary is still to come
            self._issue(set_lr, "epoch")

    def _wait(self, condition: Any) -> bool:
        while not condition():
            if self._stop.wait(0.05):
                return False
        return True

    def _issue(self, set_lr: Any, label: str) -> None:
        output = set_lr(self._store, self._name, self._job.learning_rate / 2, now=label == "now", at_epoch=None)
        self._run.commands[label] = (output.command.issued_at, None)
        self._seqs[label] = output.command.seq


def _last_step(steps_dir: Path) -> int:
    last = -1
    for path in steps_dir.glob("rank0-*.steps"):
        lines = path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)
        parts = lines[-1].split()
        if len(parts) == 4 and parts[0] == b"S":
            last = max(last, int(parts[1]))
    return last
