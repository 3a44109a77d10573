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
from orchestrator.cli_live import drive_with_display
from orchestrator.errors import (
    STOPPED_EXIT_CODE,
    OrchestratorError,
    SpecError,
    TrainingFailedError,
)
from orchestrator.handle import open_store as handle_store
from orchestrator.spec import JobSpec
from orchestrator.spec_loader import load_spec, parse_yaml
from orchestrator.status import JobStatus
from orchestrator.store import STORE_ENV, JobStore, validate_job_name
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


# The order `orchestrator --help` lists the commands in: running a job, then reading and tidying the store.
HELP_ORDER = (
    "run submit cancel up down resume validate config schema list status history mlflow-sync logs watch set-lr stop "
    "delete prune snapshots export plot sweep compare tensorboard k8s"
)


class _JsonErrorsGroup(TyperGroup):
    """Under ``--json``, click's own argument errors (an unknown option, a value of the wrong type, a missing
    argument) are a JSON error object too, with click's exit code (2)."""

    def list_commands(self, ctx: Any) -> list[str]:
        """The commands in ``HELP_ORDER`` (the command modules register theirs after this module's), any other last."""
        order = HELP_ORDER.split()
        return sorted(super().list_commands(ctx), key=lambda name: order.index(name) if name in order else len(order))

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


def complete_job(ctx: typer.Context, incomplete: str) -> list[str]:
    """Tab completion of a job name: those in the store the command would use (none if it cannot be read)."""
    try:
        names = open_store(ctx.params.get("store")).job_names()
    except OrchestratorError:
        return []
    return [name for name in names if name.startswith(incomplete)]


JobArgument = typer.Argument(..., help="Job name.", autocompletion=complete_job)
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


def emit(output: BaseModel, as_json: bool) -> None:
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
    emit(result, as_json)
    exit_for(result.status)


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
    emit(result, as_json)
    exit_for(result.status)


def exit_for(status: JobStatus) -> None:
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
    from orchestrator.spec_loader import is_sweep

    raw = _quiet_yaml(spec, parse_yaml) if spec.is_file() else None
    if isinstance(raw, dict) and is_sweep(raw):
        specs = sweeps.load_sweep(spec, overrides)
        summary = f"{len(specs)} jobs: " + ", ".join(
            f"{s.name} ({s.optimizer.name} {s.optimizer.learning_rate:g})" for s in specs
        )
        emit(ValidateOutput(spec_path=str(spec), name=str(raw["sweep"]), summary=summary, kind="sweep"), as_json)
        return
    job = load_spec(spec, overrides=overrides)
    emit(ValidateOutput(spec_path=str(spec), name=job.name, summary=describe_spec(job)), as_json)


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
    emit(ConfigOutput(path=str(path) if path else None, exists=exists, settings=rows), as_json)


@app.command()
def schema() -> None:
    """Print the job spec's JSON Schema (for editors: yaml-language-server)."""
    sys.stdout.write(json.dumps(JobSpec.model_json_schema(), indent=2) + "\n")


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
    emit(handle.set_lr(commands.parse_learning_rate(lr), now=now, at_epoch=at_epoch), as_json)


@app.command()
@reports_errors
def stop(
    job: str = JobArgument,
    at_epoch_end: bool = typer.Option(False, "--at-epoch-end", help="Finish the current epoch first."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Stop a running job: it takes a backup at the next step boundary and ends STOPPED (resumable)."""
    emit(api.Job(job, store=open_store(store)).stop(at_epoch_end=at_epoch_end), as_json)


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
    emit(result, as_json)


def main() -> None:
    app()


# The other commands, registered on `app` by importing their modules (after everything above they import).
from orchestrator import cli_cluster, cli_jobs  # noqa: E402, F401
