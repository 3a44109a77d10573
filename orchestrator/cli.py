"""The ``orchestrator`` command. Only wiring: each command calls the module that owns the work, gets an output
model back, and renders it as rich text or ``--json``. The only place that prints or exits (with its live
output, ``cli_live``, which prints and never exits).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.text import Text
from typer.core import TyperGroup

from orchestrator import api
from orchestrator.cli_live import console as _console
from orchestrator.cli_live import drive_with_display, follow_job, follow_logs
from orchestrator.commands import write_figure
from orchestrator.errors import (
    STOPPED_EXIT_CODE,
    InterruptedByUserError,
    OrchestratorError,
    SpecError,
    TrainingFailedError,
    UsageError,
)
from orchestrator.handle import history_of, status_of
from orchestrator.handle import open_store as handle_store
from orchestrator.spec import JobSpec
from orchestrator.spec_loader import load_spec, parse_yaml, read_spec_text
from orchestrator.status import JobStatus
from orchestrator.store import STORE_ENV, JobStore, default_store_url, validate_job_name
from orchestrator.user_config import setting
from orchestrator.views import (
    ErrorDetail,
    ErrorOutput,
    RunOutput,
    ValidateOutput,
    describe_spec,
)

# gcsfs logs each retry's traceback on its way to giving up; the store turns the final failure into one line.
logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def _print_error(error: ErrorDetail, as_json: bool) -> None:
    """``error[code]: message``, the excerpt and the hint on stderr; with ``--json``, ``{"error": {...}}`` on
    stdout instead (where the result would have been), so a script reads one JSON document either way."""
    if as_json:
        sys.stdout.write(ErrorOutput(error=error).model_dump_json(indent=2) + "\n")
        return
    console = _console(stderr=True)
    console.print(Text.assemble((f"error[{error.code}]", "bold red"), f": {error.message}"))
    if error.excerpt:
        console.print(error.excerpt.rstrip("\n"), markup=False, style="dim")
    if error.hint:
        console.print(f"hint: {error.hint}", markup=False)


class _JsonErrorsGroup(TyperGroup):
    """Under ``--json``, click's own argument errors (an unknown option, a value of the wrong type, a missing
    argument) are a JSON error object too, with click's exit code (2)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as error:  # typer's click: every argument error
            _print_error(ErrorDetail(code="usage", message=error.format_message(), exit_code=error.exit_code), True)
            sys.exit(error.exit_code)
        except typer.Abort:
            _print_error(ErrorDetail(code="interrupted", message="interrupted", exit_code=130), True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="orchestrator",
    help="Distributed TensorFlow training on preemptible Ray clusters: jobs that resume by themselves.",
    epilog="Each default comes from the option, else its environment variable (shown with the option), else the "
    "config file ($ORCHESTRATOR_CONFIG, else ~/.config/orchestrator/config.toml: store, address, jobs_address, "
    "k8s_image), else the built-in default. `orchestrator config` shows each and where it comes from.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_JsonErrorsGroup,
)

StoreOption = typer.Option(
    None,
    "--store",
    envvar=STORE_ENV,
    help="Store URL (folder, file://, gs://, s3://); else `store` in the config file, else ~/.orchestrator/store.",
)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")


def open_store(option: str | None) -> JobStore:
    """The store a command reads and writes (``--store``, else the defaults), checked reachable first: a gs://
    store that cannot be reached is one line in seconds, not gcsfs's half a minute of retries."""
    return handle_store(option)


def _outcome(job: api.Job) -> RunOutput:
    """What a run or resume the command waited for ended with."""
    if job.result is None:  # run and resume set it when they wait, as the command's always do
        raise RuntimeError(f"job '{job.name}': no result after waiting for it")
    return job.result


def _complete_job(ctx: typer.Context, incomplete: str) -> list[str]:
    """Tab completion of a job name: those in the store the command would use (none if it cannot be read)."""
    try:
        names = open_store(ctx.params.get("store")).job_names()
    except OrchestratorError:
        return []
    return [name for name in names if name.startswith(incomplete)]


JobArgument = typer.Argument(..., help="Job name.", autocompletion=_complete_job)
SetOption = typer.Option(
    None, "--set", help="Override a field: KEY=VALUE (YAML value, dotted key), e.g. --set epochs=2. Repeatable."
)
AddressOption = typer.Option(
    None,
    "--address",
    envvar="RAY_ADDRESS",
    help="Ray cluster; else `address` in the config file, else an embedded Ray.",
)

P = ParamSpec("P")
R = TypeVar("R")


class _WarningPrinter(logging.Handler):
    """Prints what the store and the runner warn about (a damaged line left out, Ctrl+C backing up) and what a
    connection waits for (an address that does not answer yet) on stderr, once per command."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            _console(stderr=True).print(Text.assemble(("warning", "bold yellow"), f": {message}"))


@contextlib.contextmanager
def _store_warnings() -> Iterator[None]:
    printer = _WarningPrinter()
    loggers = [logging.getLogger(f"orchestrator.{name}") for name in ("store", "runner", "reach", "k8s")]
    propagates = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(printer)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, propagates, strict=True):
            logger.removeHandler(printer)
            logger.propagate = propagate


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A user's mistake ends in one message with a hint and a non-zero exit code, never a traceback; under
    ``--json``, in a JSON error object with the same exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = kwargs.get("as_json") is True
        try:
            with _store_warnings():
                return command(*args, **kwargs)
        except OrchestratorError as error:
            problems = error.problems if isinstance(error, SpecError) else []
            detail = ErrorDetail(
                code=error.code,
                message=error.message,
                hint=error.hint,
                exit_code=error.exit_code,
                problems=problems,
                excerpt=error.excerpt,
            )
            _print_error(detail, as_json)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            if as_json:
                _print_error(ErrorDetail(code="interrupted", message="interrupted", exit_code=130), True)
            else:
                _console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from orchestrator import DISTRIBUTION, __version__

        sys.stdout.write(f"orchestrator {__version__} ({DISTRIBUTION}, Python {sys.version.split()[0]})\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Distributed TensorFlow training on preemptible Ray clusters: jobs that resume by themselves."""


def _emit(output: BaseModel, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(output.model_dump_json(indent=2) + "\n")
    else:
        _console().print(output.render())  # type: ignore[attr-defined]


@app.command()
@reports_errors
def run(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the spec's name)."),
    store: str | None = StoreOption,
    address: str | None = AddressOption,
    or_resume: bool = typer.Option(
        False, "--or-resume", help="If the job exists, continue it from its latest backup (for RayJob retries)."
    ),
    overrides: list[str] | None = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Train SPEC in the foreground on local Ray (or the cluster in $RAY_ADDRESS), showing live progress."""
    if name is not None:
        validate_job_name(name)
    job_store = open_store(store)
    result = drive_with_display(
        lambda on_update: _outcome(
            api.run(
                spec,
                store=job_store,
                name=name,
                address=setting(address, "address"),
                or_resume=or_resume,
                overrides=overrides,
                on_update=on_update,
            )
        ),
        as_json,
    )
    _emit(result, as_json)
    _exit_for(result.status)


@app.command()
@reports_errors
def submit(
    spec: Path = typer.Argument(..., help="Job spec (YAML); its folder is shipped to the cluster."),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the spec's name)."),
    store: str | None = StoreOption,
    address: str | None = typer.Option(
        None,
        "--address",
        envvar="RAY_ADDRESS",
        help="The cluster's Jobs API, http://HEAD:8265; else `jobs_address` in the config file, else the local "
        "head of `orchestrator up`, started if needed.",
    ),
    or_resume: bool = typer.Option(False, "--or-resume", help="If the job exists, continue it from its backup."),
    follow: bool = typer.Option(
        False,
        "-f",
        "--follow",
        help="Then show its progress as `watch` does until it ends, exiting with its status (0, 7, 1); Ctrl+C "
        "detaches (the job keeps running). With --json: one JSON object per line.",
    ),
    overrides: list[str] | None = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Run SPEC on a Ray cluster through the Ray Jobs API; returns once the job is recorded in the store (the job
    runs on without this shell), or with --follow once it ends."""
    if name is not None:
        validate_job_name(name)
    job_store = open_store(store)
    submitted = api.submit(
        spec,
        store=job_store,
        name=name,
        overrides=overrides,
        address=setting(address, "jobs_address"),
        or_resume=or_resume,
    ).submission
    if submitted is None:  # never, for a submit that returned
        raise RuntimeError("submit returned without its submission")
    if not follow:
        _emit(submitted, as_json)
        return
    from orchestrator.cli_live import json_line
    from orchestrator.views import WatchEvent

    if as_json:
        json_line(WatchEvent(event="submitted", job=submitted.name, submission=submitted))
    else:
        _emit(submitted, as_json)
    try:
        final = follow_job(job_store, submitted.name, as_json)
    except KeyboardInterrupt:
        raise InterruptedByUserError(
            f"detached from job '{submitted.name}': it keeps running on {submitted.address}",
            hint=f"follow it again: orchestrator watch {submitted.name}{submitted.store_option()}",
        ) from None
    _exit_for(final.status)


@app.command()
@reports_errors
def cancel(
    job: str = JobArgument,
    store: str | None = StoreOption,
    address: str | None = typer.Option(
        None,
        "--address",
        envvar="RAY_ADDRESS",
        help="The cluster's Jobs API; else `jobs_address` in the config file, else the local head.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Cancel a submitted job: it backs up and stops (resumable), then its Ray job is stopped."""
    from orchestrator import submission

    job_store = open_store(store)
    _emit(submission.cancel(validate_job_name(job), store=job_store, address=setting(address, "jobs_address")), as_json)


@app.command()
@reports_errors
def up(
    port: int = typer.Option(6379, "--port", help="The head's GCS port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="The Jobs API / dashboard port."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs the head offers (default: all)."),
    as_json: bool = JsonOption,
) -> None:
    """Start a local Ray head in the background (token authentication on) for submit; reuses a running one."""
    from orchestrator import local_head

    _emit(local_head.up(port=port, dashboard_port=dashboard_port, num_cpus=num_cpus), as_json)


@app.command()
@reports_errors
def down(as_json: bool = JsonOption) -> None:
    """Stop the local Ray head that `orchestrator up` started (and the jobs running on it)."""
    from orchestrator import local_head

    _emit(local_head.down(), as_json)


@app.command()
@reports_errors
def resume(
    job: str = JobArgument,
    lr: str | None = typer.Option(None, "--lr", help="Continue with this learning rate (e.g. 1e-3)."),
    from_epoch: int | None = typer.Option(
        None, "--from-epoch", help="Restart from the snapshot after N epochs (later epochs become superseded)."
    ),
    store: str | None = StoreOption,
    address: str | None = AddressOption,
    as_json: bool = JsonOption,
) -> None:
    """Continue a STOPPED or FAILED job from its latest backup (or a snapshot), with live progress."""
    from orchestrator.commands import parse_learning_rate

    handle = api.job(job, store=open_store(store))
    learning_rate = parse_learning_rate(lr) if lr is not None else None
    result = drive_with_display(
        lambda on_update: _outcome(
            handle.resume(
                learning_rate, from_epoch=from_epoch, address=setting(address, "address"), on_update=on_update
            )
        ),
        as_json,
    )
    _emit(result, as_json)
    _exit_for(result.status)


def _exit_for(status: JobStatus) -> None:
    """0 for SUCCEEDED, 7 for STOPPED (a person's stop, resumable), 1 for anything else (FAILED)."""
    if status is JobStatus.STOPPED:
        raise typer.Exit(STOPPED_EXIT_CODE)
    if status is not JobStatus.SUCCEEDED:
        raise typer.Exit(TrainingFailedError.exit_code)


@app.command()
@reports_errors
def validate(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    overrides: list[str] | None = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Check SPEC (a job spec, or a sweep file: its base and every variant) without running it: every problem on
    its own line, with the YAML line and path (a sweep's, under the variant's name)."""
    from orchestrator import sweep as sweeps
    from orchestrator.spec_loader import is_sweep, parse_yaml

    raw = _quiet_yaml(spec, parse_yaml) if spec.is_file() else None
    if isinstance(raw, dict) and is_sweep(raw):
        specs = sweeps.load_sweep(spec, overrides)
        summary = f"{len(specs)} jobs: " + ", ".join(
            f"{s.name} ({s.optimizer.name} {s.optimizer.learning_rate:g})" for s in specs
        )
        _emit(ValidateOutput(spec_path=str(spec), name=str(raw["sweep"]), summary=summary, kind="sweep"), as_json)
        return
    job = load_spec(spec, overrides=overrides)
    _emit(ValidateOutput(spec_path=str(spec), name=job.name, summary=describe_spec(job)), as_json)


def _quiet_yaml(path: Path, parse: Callable[[str, str], tuple[object, object]]) -> object:
    """The file's YAML if it parses, else None (load_spec then reports why, with the line)."""
    try:
        return parse(path.read_text(encoding="utf-8"), str(path))[0]
    except (OrchestratorError, OSError, UnicodeDecodeError):
        return None


@app.command()
@reports_errors
def config(as_json: bool = JsonOption) -> None:
    """Show the config file's path and each default (store, cluster addresses, k8s image) with where it comes
    from: the environment, the config file, or the built-in default."""
    from orchestrator import user_config
    from orchestrator.views import ConfigOutput, SettingRow

    path = user_config.config_path()
    rows = [
        SettingRow(
            key=key, value=value, source=source, option=user_config.SETTINGS[key][0], env=user_config.SETTINGS[key][1]
        )
        for key, value, source in user_config.effective()
    ]
    exists = path is not None and path.is_file()
    _emit(ConfigOutput(path=str(path) if path else None, exists=exists, settings=rows), as_json)


@app.command()
def schema() -> None:
    """Print the job spec's JSON Schema (for editors: yaml-language-server)."""
    sys.stdout.write(json.dumps(JobSpec.model_json_schema(), indent=2) + "\n")


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
    _emit(jobs.list_jobs(open_store(store), wanted, limit), as_json)


@app.command()
@reports_errors
def status(
    job: str = JobArgument,
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a job's status, position, learning rate and latest metrics."""
    _emit(status_of(open_store(store), validate_job_name(job)), as_json)


@app.command()
@reports_errors
def history(
    job: str = JobArgument,
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one row per finished epoch: learning rate, metrics and time."""
    _emit(history_of(open_store(store), validate_job_name(job)), as_json)


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
    _emit(sync_job(open_store(store), name, tracking_uri=tracking_uri, experiment=experiment), as_json)


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
    its source; with --json, one JSON object per line)."""
    from orchestrator import jobs
    from orchestrator.log_times import parse_since

    moment = parse_since(since) if since is not None else None
    job_store = open_store(store)
    chosen = jobs.parse_sources(sources)
    validate_job_name(job)
    if not follow:
        _emit(jobs.read_logs(job_store, job, chosen, tail, moment), as_json)
        return
    follow_logs(job_store, job, chosen, tail, moment, as_json)


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
    _exit_for(follow_job(open_store(store), validate_job_name(job), as_json).status)


@app.command("set-lr", context_settings={"ignore_unknown_options": True})  # so "-1e-3" reaches the check
@reports_errors
def set_lr(
    job: str = JobArgument,
    lr: str = typer.Argument(..., help="New learning rate, e.g. 1e-3."),
    now: bool = typer.Option(False, "--now", help="At the next step boundary instead of the next epoch."),
    at_epoch: int | None = typer.Option(None, "--at-epoch", help="Once N epochs are done."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Change a job's learning rate while it runs (at the next epoch by default); status shows when it applied."""
    from orchestrator import commands

    handle = api.Job(job, store=open_store(store))
    _emit(handle.set_lr(commands.parse_learning_rate(lr), now=now, at_epoch=at_epoch), as_json)


@app.command()
@reports_errors
def stop(
    job: str = JobArgument,
    at_epoch_end: bool = typer.Option(False, "--at-epoch-end", help="Finish the current epoch first."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Stop a running job: it takes a backup at the next step boundary and ends STOPPED (resumable)."""
    _emit(api.Job(job, store=open_store(store)).stop(at_epoch_end=at_epoch_end), as_json)


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
    _emit(jobs.delete_job(job_store, validate_job_name(job), keep_snapshots=keep_snapshots), as_json)


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
    _emit(
        retention.prune(open_store(store), policy, older_than=older_than, keep_snapshots=keep_snapshots, apply=yes),
        as_json,
    )


@app.command()
@reports_errors
def snapshots(job: str = JobArgument, store: str | None = StoreOption, as_json: bool = JsonOption) -> None:
    """List a job's snapshots (kept every backup.snapshot_every_epochs): resume --from-epoch and export use them."""
    _emit(api.Job(job, store=open_store(store)).snapshots(), as_json)


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
    _emit(api.Job(job, store=open_store(store)).export(path, epoch), as_json)


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

    _emit(commands.plot_run(open_store(store), validate_job_name(job), output, metric or None), as_json)


@app.command()
@reports_errors
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec (YAML): sweep, base, variants."),
    overrides: list[str] | None = SetOption,
    store: str | None = StoreOption,
    address: str | None = AddressOption,
    figure: str | None = typer.Option(None, "-o", "--figure", help="Learning curves PNG (default: SWEEP.png)."),
    as_json: bool = JsonOption,
) -> None:
    """Run one job per variant (each to its end; a finished one is kept), then print the comparison table."""
    from orchestrator import sweep as sweeps

    console = _console(stderr=as_json)

    def say(line: str, failed: bool) -> None:
        console.print(line, markup=False, style="red" if failed else None)

    result = sweeps.run_sweep(
        spec,
        store=store,
        address=setting(address, "address"),
        overrides=overrides,
        figure=figure,
        say=say,
        drive=lambda run: drive_with_display(run, as_json),
    )
    _emit(result, as_json)


@app.command()
@reports_errors
def compare(
    jobs: list[str] = typer.Argument(..., help="Job names.", autocompletion=_complete_job),
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
    _emit(result, as_json)


@app.command()
@reports_errors
def tensorboard(
    jobs: list[str] = typer.Argument(..., help="Job names.", autocompletion=_complete_job),
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
        _console(stderr=True).print(
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


k8s_app = typer.Typer(help="Kubernetes (KubeRay) manifests for a job spec.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
@reports_errors
def k8s_render(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    store: str | None = typer.Option(
        None, "--store", envvar=STORE_ENV, help="Shared store (gs:// or s3://); else `store` in the config file."
    ),
    image: str | None = typer.Option(
        None,
        "--image",
        envvar="ORCHESTRATOR_K8S_IMAGE",
        help="Container image with orchestrator installed (k8s/Dockerfile); else `k8s_image` in the config file.",
    ),
    namespace: str = typer.Option("default", "--namespace", help="Kubernetes namespace."),
    cluster: str = typer.Option(
        "gke-spot-gpu",
        "--cluster",
        help="Cluster profile: gke-spot-gpu, gke-compute-class, eks-spot-gpu, aks-spot-gpu, cpu-test.",
    ),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the spec's name)."),
    deadline: str = typer.Option(
        "3d", "--deadline", help="Most the RayJob may take (activeDeadlineSeconds): 1800, 90m, 36h, 3d, or none."
    ),
    start_deadline: str = typer.Option(
        "30m",
        "--start-deadline",
        help="Most the head and the first workers may take to run (preRunningDeadlineSeconds), or none.",
    ),
    queue: str | None = typer.Option(
        None, "--queue", help="Kueue LocalQueue: the RayJob is created suspended, for Kueue to admit (default: none)."
    ),
) -> None:
    """Print the ConfigMap and RayJob that run SPEC on a KubeRay cluster (kubectl apply -f -)."""
    from orchestrator import k8s

    text = read_spec_text(spec)  # a missing, unreadable or non-UTF-8 spec is reported as every command does
    job = name or _spec_name(text, str(spec))
    image = setting(image, "k8s_image")
    if image is None:
        raise UsageError(
            "--image: missing: the container image the pods run (k8s/Dockerfile builds one)",
            hint="give it with --image, $ORCHESTRATOR_K8S_IMAGE or k8s_image in the config file",
        )
    docs = k8s.render_rayjob(
        text,
        job,
        store_url=default_store_url(store),
        image=image,
        namespace=namespace,
        cluster=cluster,
        source=str(spec),
        deadline_s=k8s.parse_duration(deadline, "--deadline"),
        start_deadline_s=k8s.parse_duration(start_deadline, "--start-deadline"),
        queue=queue,
    )
    sys.stdout.write(k8s.dump_manifests(docs))


def _spec_name(text: str, source: str) -> str:
    """The name a spec gives itself (its files are not looked for here: on Kubernetes they are in the image)."""
    raw, _ = parse_yaml(text, source)
    name = raw.get("name")
    if not isinstance(name, str):
        raise SpecError(source, [f"name: got {name!r}, must be the job's name"], hint="or give it with --name NAME")
    return name


def main() -> None:
    app()
