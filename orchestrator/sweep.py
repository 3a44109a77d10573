"""Sweeps and comparisons: one base job, a list of variants, one job per variant, and a table of how they did.

A sweep spec (YAML)::

    sweep: optimizers                # the jobs are named <sweep>-<variant>
    base: {...a job spec without its name...}
    variants:
      - {name: adam, optimizer: {name: adam, learning_rate: 0.001}, lr_schedule: {reduce_on_plateau: {...}}}
      - {name: sgd, optimizer: {name: sgd, learning_rate: 0.01, momentum: 0.9}}

Each variant's fields replace the base's (a whole field: a variant's ``optimizer`` is its whole optimizer).
Every variant is validated before anything runs. ``compare`` reads only the store.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from orchestrator.cost import CostSummary, job_cost
from orchestrator.errors import InterruptedByUserError, OrchestratorError, SpecError
from orchestrator.records import EpochRecord, JobState
from orchestrator.spec import JOB_NAME_PATTERN, JobSpec, resolve_relative_paths
from orchestrator.spec_loader import apply_override, check_local_files, parse_yaml, read_spec_text, validate_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.user_config import prices
from orchestrator.views import CompareOutput, CompareRow, describe_spec

if TYPE_CHECKING:
    from orchestrator.views import LiveSnapshot, RunOutput

Run = Callable[[Callable[["LiveSnapshot"], None]], "RunOutput"]

VARIANT_NAME = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"


def load_sweep(path: Path, overrides: list[str] | None = None) -> list[JobSpec]:
    """Every variant's job spec, validated; all problems of all variants at once."""
    raw, _lines = parse_yaml(read_spec_text(path), str(path))
    problems = []
    unknown = sorted(set(raw) - {"sweep", "base", "variants"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}: a sweep has sweep, base and variants")
    name, base, variants = raw.get("sweep"), raw.get("base"), raw.get("variants")
    if not isinstance(name, str) or not re.fullmatch(JOB_NAME_PATTERN, name):
        problems.append(f"sweep: got {name!r}, must be a job-name prefix (a-z, 0-9, '-')")
    if not isinstance(base, dict):
        problems.append("base: must be a job spec (a mapping) without its name")
    if not isinstance(variants, list) or not variants:
        problems.append("variants: must be a non-empty list of {name: ..., <fields that replace the base's>}")
    if problems:
        raise SpecError(str(path), problems)
    assert isinstance(base, dict) and isinstance(variants, list) and isinstance(name, str)
    for override in overrides or []:
        base = apply_override(base, override)
    specs, seen = [], set()
    for index, variant in enumerate(variants):
        if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
            problems.append(f"variants[{index}]: must be a mapping with a name")
            continue
        label = variant["name"]
        if not re.fullmatch(VARIANT_NAME, label) or label in seen:
            problems.append(f"variants[{index}].name: got {label!r}, must be unique, 1-32 of a-z, 0-9, '-'")
            continue
        seen.add(label)
        merged = {**base, **{k: v for k, v in variant.items() if k != "name"}, "name": f"{name}-{label}"}
        try:
            spec = validate_spec(resolve_relative_paths(merged, path.parent.resolve()), source=f"variant {label}")
            check_local_files(spec, source=f"variant {label}", lines={})
            specs.append(spec)
        except SpecError as error:
            problems.extend(f"variant {label}: {problem}" for problem in error.problems)
    if problems:
        raise SpecError(str(path), problems, hint="each variant is the base with the variant's fields replaced")
    return specs


def run_sweep(
    path: Path,
    *,
    store: str | JobStore | None = None,
    address: str | None = None,
    overrides: list[str] | None = None,
    figure: str | None = None,
    say: Callable[[str, bool], None] = lambda line, failed: print(line, flush=True),
    drive: Callable[[Run], RunOutput] = lambda run: run(lambda snapshot: None),
) -> CompareOutput:
    """Run every variant of the sweep at ``path`` to its end, one after another, then compare them.

    Every variant is validated before anything runs. A variant that SUCCEEDED in an earlier run of the sweep is
    kept; any other continues (``run --or-resume``). One variant failing does not stop the others; Ctrl+C stops
    the sweep. ``say`` gets each line to show (and whether it reports a failure); ``drive`` runs one variant,
    given the run as a function of its ``on_update`` (the command shows live progress through it). The learning
    curves go to ``figure`` (default ``<sweep file's stem>.png``).
    """
    from orchestrator.commands import write_figure
    from orchestrator.handle import open_store
    from orchestrator.runner import run_spec

    specs = load_sweep(path, overrides)  # every variant validated before anything runs
    job_store = open_store(store)
    for index, job_spec in enumerate(specs, start=1):
        say(f"[{index}/{len(specs)}] {job_spec.name}: {describe_spec(job_spec)}", False)
        if job_spec.name in job_store.job_names() and job_store.read_state(job_spec.name).status is JobStatus.SUCCEEDED:
            done = len(job_store.read_history(job_spec.name))
            plural = "" if done == 1 else "s"
            say(f"{job_spec.name}: kept: it SUCCEEDED in an earlier run of the sweep ({done} epoch{plural})", False)
            continue
        try:
            ran = drive(
                lambda on_update, job_spec=job_spec: run_spec(  # type: ignore[misc]
                    job_spec, store=job_store, spec_path=path, address=address, or_resume=True, on_update=on_update
                )
            )
            if ran.note:
                say(f"{job_spec.name}: {ran.note}", False)
        except InterruptedByUserError:
            raise  # Ctrl+C stops the sweep, not just this variant
        except OrchestratorError as error:  # one failed variant must not stop the others
            say(f"{job_spec.name}: {error.message}", True)
    names = [job_spec.name for job_spec in specs]
    target = figure or f"{path.stem}.png"
    write_figure(target, "-o/--figure", lambda png: learning_curves(job_store, names, png))
    return compare(job_store, names).model_copy(update={"figure": target})


def compare(store: JobStore, jobs: list[str]) -> CompareOutput:
    """One row per job: best validation figures, the test split's, epochs run and training time."""
    rows = []
    for job in jobs:
        record = store.load_job(job)
        history = store.read_history(job)
        evaluation = store.read_evaluation(job)
        spec = record.spec
        metrics = [r.metrics for r in history]
        ending = store.read_ending(job)
        state = store.read_state(job)
        rows.append(
            CompareRow(
                job=job,
                optimizer=f"{spec.optimizer.name} {spec.optimizer.learning_rate:g}",
                status=state.status,
                epochs=len(history),
                epochs_planned=spec.epochs,
                stopped_early_at=ending.epoch if ending is not None and ending.kind == "early_stopped" else None,
                best_val_accuracy=max(_finite(metrics, "val_accuracy"), default=None),
                best_val_loss=min(_finite(metrics, "val_loss"), default=None),
                test_accuracy=evaluation.metrics.get("accuracy") if evaluation else None,
                test_loss=evaluation.metrics.get("loss") if evaluation else None,
                test_model=evaluation.model if evaluation else None,
                test_model_epoch=(evaluation.model_epoch or evaluation.epochs_trained) if evaluation else None,
                training_seconds=round(sum(r.seconds for r in history), 1),
                final_learning_rate=(history[-1].end_learning_rate or history[-1].learning_rate) if history else None,
                cost=_cost(store, job, spec, state, history),
            )
        )
    return CompareOutput(rows=rows)


def _cost(store: JobStore, job: str, spec: JobSpec, state: JobState, history: list[EpochRecord]) -> CostSummary | None:
    """The job's cost (as ``status`` shows it); the records are read only where a price is configured."""
    configured = prices(spec.cost)
    if configured is None:
        return None
    progress = store.read_progress(job)
    return job_cost(
        configured,
        spec.scaling,
        store.read_attempts(job),
        store.read_failures(job),
        history,
        store.read_history_lines(job),
        ended_at=state.ended_at,
        backups=store.read_backup_records(job),
        branches=store.read_branches(job),
        progress=progress,
        ended_without_backup=progress if state.status in (JobStatus.STOPPED, JobStatus.FAILED) else None,
    )


def _finite(metrics: list[dict[str, float]], key: str) -> list[float]:
    """The epochs' finite values of ``key``: a diverged epoch's NaN or infinity is no one's best."""
    return [m[key] for m in metrics if key in m and math.isfinite(m[key])]


def learning_curves(store: JobStore, jobs: list[str], target: str | os.PathLike[str] | BinaryIO) -> Any:
    """One figure, two panels (loss, accuracy): each job's validation curve (training curve dashed), overlaid."""
    from matplotlib.figure import Figure

    from orchestrator.plot import finite

    figure = Figure(figsize=(11, 4.5))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for job in jobs:
        history = store.read_history(job)
        epochs = [r.epoch + 1 for r in history]
        for axis, key in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
            line = None
            if all(f"val_{key}" in r.metrics for r in history) and history:
                values = [finite(r.metrics[f"val_{key}"]) for r in history]
                (line,) = axis.plot(epochs, values, label=f"{job} val", gid=job)
            if all(key in r.metrics for r in history) and history:
                color = line.get_color() if line is not None else None
                axis.plot(
                    epochs,
                    [finite(r.metrics[key]) for r in history],
                    linestyle="--",
                    alpha=0.5,
                    color=color,
                    label=f"{job} train",
                    gid=f"{job}:train",
                )
    for axis, title in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(target, format="png", dpi=110)
    return figure
