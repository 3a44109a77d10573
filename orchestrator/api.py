"""The Python API: what a notebook uses, and what the ``orchestrator`` command itself calls, so the two agree.

Example::

    import orchestrator

    spec = orchestrator.load_spec("jobs/quickstart.yaml", epochs=3)
    job = orchestrator.run(spec)            # trains on an embedded local Ray, returns when it ends
    job.history()                           # a pandas DataFrame, one row per epoch
    job.plot()                              # a matplotlib Figure (shown inline in a notebook)

Every public name here is exported from ``orchestrator``; everything else in the package is private by
convention. See docs/python-api.md. Importing this module imports no TensorFlow and no Ray: running a job does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.errors import UsageError
from orchestrator.handle import Job, OnUpdate, StoreLike, open_store, ray_address
from orchestrator.spec import CallableModel, JobSpec
from orchestrator.spec_loader import build_spec, read_raw_spec
from orchestrator.store import validate_job_name

if TYPE_CHECKING:
    from orchestrator.views import CompareOutput, LiveSnapshot, RunOutput

__all__ = ["Job", "job", "load_spec", "run", "run_sweep", "submit"]

SpecSource = str | os.PathLike[str] | Mapping[str, Any] | JobSpec


def load_spec(
    source: SpecSource | None = None,
    /,
    *,
    name: str | None = None,
    overrides: list[str] | None = None,
    model_fn: Callable[..., Any] | None = None,
    **fields: Any,
) -> JobSpec:
    """Load and validate a job spec from a YAML file, a dict, keyword arguments, or a spec to change.

    Args:
        source: a YAML file's path (relative paths in it are taken from its folder), a dict of spec fields
            (relative paths taken from the working directory), a `JobSpec` to change, or nothing (then the
            keyword arguments are the whole spec).
        name: the job's name, replacing the spec's.
        overrides: `"dotted.key=YAML value"` strings, as `--set` takes them (e.g. `"optimizer.learning_rate=3e-4"`).
        model_fn: a Python function `build(input_shape, num_classes, **params) -> tf_keras.Model` (uncompiled)
            that builds the model; it replaces the spec's model (`model.params`, if the spec gives only that,
            are passed to it). Works for jobs run here (`run`), not submitted ones (`submit`).
        **fields: whole top-level fields, replacing the spec's (e.g. `epochs=3`, `data={...}`).

    Returns:
        The validated `JobSpec`.

    Raises:
        SpecError: the spec is invalid; one line per problem, with the YAML line for a file.
        UsageError: the file is a sweep, or `model_fn` is not callable.

    Example:
        >>> spec = orchestrator.load_spec("jobs/quickstart.yaml", epochs=3, name="try-1")
        >>> spec = orchestrator.load_spec(name="mine", data={"kind": "synthetic"}, model_fn=build,
        ...                               optimizer={"name": "adam", "learning_rate": 1e-3}, epochs=3, batch_size=64)
    """
    if model_fn is not None and not callable(model_fn):
        raise UsageError(f"model_fn: got {model_fn!r}, must be a function build(input_shape, num_classes, **params)")
    builder = model_fn
    lines: dict[Any, int] = {}
    if isinstance(source, JobSpec):
        raw, label, base = source.model_dump(mode="json"), "spec", Path.cwd()
        if builder is None and isinstance(source.model, CallableModel) and "model" not in fields:
            builder = source.model.builder
    elif isinstance(source, Mapping) or source is None:
        raw, label, base = dict(source or {}), "spec", Path.cwd()
    else:
        path = Path(source)
        raw, lines = read_raw_spec(path)
        label, base = str(path), path.parent.resolve()
    raw = {**raw, **fields}
    replaced = {*fields, *(["model"] if model_fn is not None else [])}
    lines = {loc: line for loc, line in lines.items() if not loc or loc[0] not in replaced}  # not the file's now
    if model_fn is not None:
        raw["model"] = {"callable": _qualname(model_fn), "params": _given_params(raw.get("model"))}
    spec = build_spec(raw, source=label, base=base, lines=lines, name=name, overrides=overrides)
    if isinstance(spec.model, CallableModel) and builder is not None:
        spec = spec.model_copy(update={"model": spec.model.with_builder(builder)})
    return spec


def _qualname(function: Callable[..., Any]) -> str:
    return str(getattr(function, "__qualname__", None) or type(function).__name__)


def _given_params(model: Any) -> dict[str, Any]:
    """The params a spec's model gives a Python function: a model that is only ``params`` (or a callable's)."""
    if isinstance(model, Mapping) and set(model) <= {"params", "callable", "url"}:
        return dict(model.get("params") or {})
    return {}


def run(
    spec: SpecSource,
    *,
    store: StoreLike = None,
    name: str | None = None,
    address: str | None = None,
    model_fn: Callable[..., Any] | None = None,
    overrides: list[str] | None = None,
    or_resume: bool = False,
    wait: bool = True,
    on_update: OnUpdate | None = None,
) -> Job:
    """Run a job on Ray from this process: an embedded local Ray unless an address is given.

    Args:
        spec: a YAML path, a dict or a `JobSpec` (see `load_spec`).
        store: where the job's records, backups and logs go (URL, folder or `JobStore`); default: as the
            command's `--store` (`$ORCHESTRATOR_STORE`, the config file, `~/.orchestrator/store`).
        name: the job's name, replacing the spec's.
        address: a Ray cluster (`ray://...`) to drive the job on from here; default `$RAY_ADDRESS`, the config
            file's `address`, else an embedded local Ray.
        model_fn: a Python function that builds the model (see `load_spec`). Ray ships it to the workers
            (pickled with cloudpickle: a notebook's function by value, a module's by reference); a resume
            needs it again.
        overrides: `"dotted.key=YAML value"` strings (`--set`).
        or_resume: continue a job of that name if the store has one (a finished one is left as it is).
        wait: `True` blocks until the job ends (Ctrl+C / interrupting the kernel stops it with a backup);
            `False` trains in a background thread of this process and returns once the job is recorded: use
            `Job.wait()`, `Job.stop()`. The job ends with this process.
        on_update: called with a `LiveSnapshot` about twice a second while it trains.

    Returns:
        The `Job`; with `wait=True` its `result` (a `RunOutput`: status, epochs, final metrics) is set.

    Raises:
        SpecError: the spec is invalid. JobExistsError: the name is taken (without `or_resume`).
        ClusterError: Ray cannot be started or reached. OrchestratorError: the job failed (`Job.status()` says
            why); InterruptedByUserError on Ctrl+C.

    Example:
        >>> job = orchestrator.run("jobs/quickstart.yaml", overrides=["epochs=3"])
        >>> job.result.status
        <JobStatus.SUCCEEDED: 'SUCCEEDED'>
    """
    from orchestrator import runner

    job_store = open_store(store)
    # resolved now: the working directory may not outlive Ray's start-up in a Ray job
    spec_path = Path(spec).resolve() if isinstance(spec, str | os.PathLike) else None
    job_spec = load_spec(spec_path or spec, name=name, overrides=overrides, model_fn=model_fn)
    ray_at = ray_address(address, "address")

    def drive(on_update: OnUpdate) -> RunOutput:
        return runner.run_spec(
            job_spec,
            store=job_store,
            spec_path=spec_path,
            address=ray_at,
            or_resume=or_resume,
            on_update=on_update,
        )

    handle = Job(job_spec.name, store=job_store)
    if wait:
        handle.result = drive(on_update or _ignore)
        return handle
    if not or_resume:
        runner.check_new_name(job_store, job_spec.name)  # in the caller's thread: its errors are the caller's
    runner.attach_to_ray(ray_at)  # Ray's start-up errors too
    handle._start(lambda: drive(on_update or _ignore), known=job_spec.name in job_store.job_names())
    return handle


def _ignore(snapshot: LiveSnapshot) -> None:
    return None


def submit(
    spec: SpecSource,
    *,
    store: StoreLike = None,
    name: str | None = None,
    address: str | None = None,
    overrides: list[str] | None = None,
    or_resume: bool = False,
) -> Job:
    """Run a job on a Ray cluster through its Jobs API; returns once the job is recorded in the store.

    The spec's folder is shipped to the cluster (with the files the spec names), so a spec given as a dict or
    `JobSpec` is written to a temporary folder first, and must then name no local file. A model built by a
    Python function cannot be submitted: the cluster's driver runs elsewhere, without this process's function;
    put the builder in a file beside the spec (`model: {function: model.py:build}`) and submit that.

    Args:
        spec: a YAML path, a dict or a `JobSpec`.
        store: a store both this machine and the cluster reach (gs://, s3://; a local folder for a local head).
        name: the job's name, replacing the spec's.
        address: the cluster's Jobs API (`http://HEAD:8265`); default `$RAY_ADDRESS`, the config file's
            `jobs_address`, else the local head of `orchestrator up` (started if needed).
        overrides: `"dotted.key=YAML value"` strings.
        or_resume: continue a job of that name if the store has one.

    Returns:
        The `Job`, with `submission` set (the Ray submission id and address).

    Raises:
        SpecError, UsageError: the spec is invalid or cannot be submitted as given. ClusterError: the cluster
            cannot be reached, or the job's driver failed before recording it.

    Example:
        >>> job = orchestrator.submit("jobs/quickstart.yaml", store="gs://bucket/orchestrator")
        >>> job.wait().status
        <JobStatus.SUCCEEDED: 'SUCCEEDED'>
    """
    from orchestrator import submission

    if name is not None:
        validate_job_name(name)
    job_store = open_store(store)
    jobs_address = ray_address(address, "jobs_address")
    if isinstance(spec, str | os.PathLike):
        _refuse_callable(load_spec(spec, name=name, overrides=overrides))
        submitted = submission.submit(
            Path(spec), store=job_store, name=name, overrides=overrides, address=jobs_address, or_resume=or_resume
        )
    else:
        job_spec = load_spec(spec, name=name, overrides=overrides)
        _refuse_callable(job_spec)
        if job_spec.local_files():
            field, path = job_spec.local_files()[0]
            raise UsageError(
                f"{field}: {path} is a file on this machine, and a spec given as a dict is shipped alone",
                hint="write the spec as YAML beside its files and submit that path: its folder is shipped",
            )
        with tempfile.TemporaryDirectory(prefix="orchestrator-submit-") as folder:
            spec_file = Path(folder) / f"{job_spec.name}.yaml"
            spec_file.write_text(yaml.safe_dump(job_spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
            submitted = submission.submit(spec_file, store=job_store, address=jobs_address, or_resume=or_resume)
    handle = Job(submitted.name, store=job_store)
    handle.submission = submitted
    return handle


def _refuse_callable(spec: JobSpec) -> None:
    if isinstance(spec.model, CallableModel):
        raise UsageError(
            f"model: {spec.model.callable}() is a Python function of this process; a submitted job's driver runs on "
            "the cluster, which does not have it",
            hint="put the builder in a file beside the spec (model: {function: model.py:build}) and submit the "
            "spec's path, or run it here with orchestrator.run(spec, model_fn=...)",
        )


def job(name: str, store: StoreLike = None) -> Job:
    """A handle to a job already in a store, whoever started it (`run`, `submit`, the command, another notebook).

    Args:
        name: the job's name.
        store: its store (URL, folder or `JobStore`); default as `run`'s.

    Returns:
        The `Job`.

    Raises:
        JobNotFoundError: the store has no job of that name (the hint names the closest it has).
        UsageError: `name` is not a job name.

    Example:
        >>> job = orchestrator.job("quickstart", store="gs://bucket/orchestrator")
        >>> job.set_lr(3e-4)
    """
    handle = Job(validate_job_name(name), store=open_store(store))
    handle.store.load_job(name)
    return handle


def run_sweep(
    path: str | os.PathLike[str],
    *,
    store: StoreLike = None,
    address: str | None = None,
    overrides: list[str] | None = None,
    figure: str | None = None,
) -> CompareOutput:
    """Run a sweep file's variants one after another (a finished one is kept), then compare them.

    Args:
        path: the sweep's YAML (`sweep`, `base`, `variants`).
        store, address, overrides: as `run`'s.
        figure: the learning curves PNG (default `<sweep file's stem>.png`).

    Returns:
        The comparison (`CompareOutput`: one row per variant); a failed variant does not stop the others.

    Raises:
        SpecError: a variant is invalid (nothing runs). InterruptedByUserError: Ctrl+C stops the sweep.

    Example:
        >>> table = orchestrator.run_sweep("jobs/optimizer_comparison.yaml")
        >>> [(row.job, row.best_val_accuracy) for row in table.rows]
    """
    from orchestrator import sweep

    return sweep.run_sweep(
        Path(path), store=store, address=ray_address(address, "address"), overrides=overrides, figure=figure
    )
