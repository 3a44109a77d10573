"""The ``orchestrator`` commands that read or tidy the jobs in the store: ``list``, ``status``, ``history``,
``logs``, ``watch``, ``delete``, ``prune``, ``snapshots``, ``export``, ``plot``, ``compare``, ``tensorboard`` and
``mlflow-sync``. Registered on ``cli.app``, which imports this module; wiring only, as in ``cli``.
"""

from __future__ import annotations

import typer

from orchestrator import api
from orchestrator.cli import (
    JobArgument,
    JsonOption,
    StoreOption,
    app,
    complete_job,
    emit,
    exit_for,
    open_store,
    reports_errors,
)
from orchestrator.cli_live import console, follow_job, follow_logs
from orchestrator.commands import write_figure
from orchestrator.handle import history_of, status_of
from orchestrator.store import validate_job_name


@app.command("list")
@reports_errors
def list_jobs(
    statuses: list[str] | None = typer.Option(
        None, "--status", help="Only jobs in this status (e.g. running, or stopped,failed). Repeatable."
    ),
    limit: int | None = typer.Option(None, "--limit", help="At most N jobs, the newest."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """List the jobs in the store, newest first."""
    from orchestrator import jobs

    wanted = jobs.parse_statuses(statuses)
    emit(jobs.list_jobs(open_store(store), wanted, limit), as_json)


@app.command()
@reports_errors
def status(
    job: str = JobArgument,
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a job's status, position, learning rate and latest metrics."""
    emit(status_of(open_store(store), validate_job_name(job)), as_json)


@app.command()
@reports_errors
def history(
    job: str = JobArgument,
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one row per finished epoch: learning rate, metrics and time."""
    emit(history_of(open_store(store), validate_job_name(job)), as_json)


@app.command("mlflow-sync")
@reports_errors
def mlflow_sync(
    job: str = JobArgument,
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="Default: the spec's tracking.mlflow, $MLFLOW_TRACKING_URI, the config file's."
    ),
    experiment: str | None = typer.Option(None, "--experiment", help="Default: the spec's, else 'orchestrator'."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Log a job no driver runs to its MLflow run: parameters, settled epochs once each, models (docs/tracking.md)."""
    from orchestrator.tracking import sync_job

    name = validate_job_name(job)
    emit(sync_job(open_store(store), name, tracking_uri=tracking_uri, experiment=experiment), as_json)


@app.command()
@reports_errors
def logs(
    job: str = JobArgument,
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines until the job ends."),
    tail: int | None = typer.Option(None, "--tail", help="Only the last N lines of each log (with -f: then new ones)."),
    sources: list[str] | None = typer.Option(
        None, "--source", help="Only this log: driver, controller, worker (every rank), worker-N or N. Repeatable."
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        help="Only lines at or after this: a duration back from now (30s, 10m, 2h, 1d) or an ISO-8601 time "
        "(2026-12-07T17:00:00+01:00; without a zone: UTC). A line without a time goes with the line before it.",
    ),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the driver's, the controller's and every worker's log, from the store (-f: each line prefixed with
    its source, until the job ends; exit 1 if its driver is gone without recording an end; with --json, one JSON
    object per line)."""
    from orchestrator import jobs
    from orchestrator.log_times import parse_since

    moment = parse_since(since) if since is not None else None
    job_store = open_store(store)
    chosen = jobs.parse_sources(sources)
    validate_job_name(job)
    if not follow:
        emit(jobs.read_logs(job_store, job, chosen, tail, moment), as_json)
        return
    if follow_logs(job_store, job, chosen, tail, moment, as_json) is not None:
        raise typer.Exit(1)  # the job never ended: its driver is gone (said on stderr)


@app.command()
@reports_errors
def watch(
    job: str = JobArgument,
    store: str | None = StoreOption,
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per line: each new status, progress report and epoch, then the end."
    ),
) -> None:
    """Follow a job from another shell: status, attempt, progress bar with ETA, metrics, LR, pending commands.

    Ends when the job ends, with its final status (exit 0 if it SUCCEEDED, 7 if STOPPED, 1 if FAILED).
    """
    exit_for(follow_job(open_store(store), validate_job_name(job), as_json).status)


@app.command()
@reports_errors
def delete(
    job: str = JobArgument,
    keep_snapshots: bool = typer.Option(
        False,
        "--keep-snapshots",
        help="Delete only a SUCCEEDED job's backups and Ray's run folder: its records, history, models and "
        "snapshots stay (export --epoch and resume --from-epoch still work).",
    ),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a job's files from the store: never a job that may still run (PENDING, RUNNING, RECOVERING,
    STOPPING), never another job's files."""
    from orchestrator import jobs

    job_store = open_store(store)
    emit(jobs.delete_job(job_store, validate_job_name(job), keep_snapshots=keep_snapshots), as_json)


@app.command()
@reports_errors
def prune(
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Jobs that ended this long ago (30d, 12h); else retention.finished_after in the config file.",
    ),
    keep_snapshots: bool | None = typer.Option(
        None,
        "--keep-snapshots/--whole",
        help="Only a SUCCEEDED job's backups (STOPPED, FAILED jobs stay), or whole jobs; else "
        "retention.keep_snapshots.",
    ),
    yes: bool = typer.Option(False, "--yes", help="Delete; without it, only show what would go."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete the jobs that ended long enough ago (--older-than, else the config file's retention.finished_after):
    a dry run unless --yes. Never a job that may still run, never another job's files."""
    from orchestrator import retention
    from orchestrator.user_config import load_config

    policy = load_config().retention
    emit(
        retention.prune(open_store(store), policy, older_than=older_than, keep_snapshots=keep_snapshots, apply=yes),
        as_json,
    )


@app.command()
@reports_errors
def snapshots(job: str = JobArgument, store: str | None = StoreOption, as_json: bool = JsonOption) -> None:
    """List a job's snapshots (kept every backup.snapshot_every_epochs): resume --from-epoch and export use them."""
    emit(api.Job(job, store=open_store(store)).snapshots(), as_json)


@app.command()
@reports_errors
def export(
    job: str = JobArgument,
    path: str = typer.Argument(..., help="Where to write the model: a .keras path or URL."),
    epoch: int | None = typer.Option(None, "--epoch", help="The snapshot after N epochs (default: final model)."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Write a job's model (final, or a snapshot's) as a Keras file, loadable with tf_keras.models.load_model."""
    emit(api.Job(job, store=open_store(store)).export(path, epoch), as_json)


@app.command()
@reports_errors
def plot(
    job: str = JobArgument,
    output: str | None = typer.Option(None, "-o", "--output", help="PNG path (default: JOB.png)."),
    metric: list[str] | None = typer.Option(None, "--metric", help="Metric to draw (repeat); default loss, accuracy."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Plot the whole run: train/val curves, LR on a second axis, markers at LR changes, stops and restarts."""
    from orchestrator import commands

    emit(commands.plot_run(open_store(store), validate_job_name(job), output, metric or None), as_json)


@app.command()
@reports_errors
def compare(
    jobs: list[str] = typer.Argument(..., help="Job names.", autocompletion=complete_job),
    figure: str | None = typer.Option(None, "-o", "--figure", help="Also write overlaid learning curves (PNG)."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Compare jobs: best validation accuracy/loss, test accuracy/loss, epochs run, training time."""
    from orchestrator import sweep as sweeps

    job_store = open_store(store)
    names = [validate_job_name(job) for job in jobs]
    result = sweeps.compare(job_store, names)
    if figure:
        write_figure(figure, "-o/--figure", lambda path: sweeps.learning_curves(job_store, names, path))
        result = result.model_copy(update={"figure": figure})
    emit(result, as_json)


@app.command()
@reports_errors
def tensorboard(
    jobs: list[str] = typer.Argument(..., help="Job names.", autocompletion=complete_job),
    port: int = typer.Option(6006, "--port", help="TensorBoard's port."),
    host: str = typer.Option("localhost", "--host", help="The address it listens on (0.0.0.0: every interface)."),
    sync_every: float = typer.Option(
        10.0, "--sync-every", min=1.0, help="Seconds between copies of new event data from an object store."
    ),
    store: str | None = StoreOption,
) -> None:
    """Start TensorBoard over the jobs' event files (one run per job, across every restart) until Ctrl+C, from a
    local mirror that fetches only new bytes (any store: a folder, gs://, s3://)."""
    import threading

    from orchestrator import board as boards

    job_store = open_store(store)
    names = [validate_job_name(job) for job in jobs]
    started = boards.start(job_store, names, host=host, port=port)
    stop = threading.Event()
    try:
        boards.wait_until_serving(started)
        console(stderr=True).print(
            f"TensorBoard at {started.url} ({', '.join(names)}: new epochs from {job_store.url} every "
            f"{sync_every:g} s); Ctrl+C stops it",
            markup=False,
        )
        code = started.poll(sync_every, stop)
    finally:
        stop.set()
        started.close()
    if code:
        raise typer.Exit(code)
