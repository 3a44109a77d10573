"""Commands to a job through the store: ``set-lr`` and ``stop``, checked here, applied by the running job.

A command is a file in ``jobs/<job>/commands/`` with the next sequence number (two racing writers both get
one, in order); the job's rank 0 reads it within a second and applies it at the agreed boundary, then records
where it took effect (``acks/``). Nothing here talks to Ray: it works against a local or a remote job alike.
Also here: the snapshots a job keeps, exporting one as a Keras model, and resuming from one.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator import lifecycle
from orchestrator.errors import CorruptBackupError, UsageError
from orchestrator.records import Command, CommandAck, JobState
from orchestrator.run_plot import run_plot_data
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.views import CommandOutput, CommandRow, ExportOutput, PlotOutput, SnapshotRow, SnapshotsOutput

ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RECOVERING)


def parse_learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"learning rate: got {text!r}, must be a positive number such as 1e-3") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"learning rate: got {text}, must be a positive finite number such as 1e-3")
    return value


def check_learning_rate(learning_rate: float) -> float:
    """A learning rate a job can take: a positive finite number (not a bool). ``set-lr`` and ``resume --lr``."""
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float):
        raise UsageError(f"learning rate: got {learning_rate!r}, must be a positive number such as 1e-3")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise UsageError(f"learning rate: got {learning_rate}, must be a positive finite number such as 1e-3")
    return float(learning_rate)


def set_lr(
    store: JobStore,
    job: str,
    learning_rate: float,
    *,
    now: bool,
    at_epoch: int | None,
    issued_by: str | None = None,
) -> CommandOutput:
    """Record a set-lr for ``job``: at the next epoch boundary, the next step (``now``) or after ``at_epoch``.
    ``issued_by`` names where it came from (``resume --lr``), after the user and host."""
    if now and at_epoch is not None:
        raise UsageError("set-lr: --now and --at-epoch are exclusive: choose one moment")
    learning_rate = check_learning_rate(learning_rate)
    if at_epoch is not None and (isinstance(at_epoch, bool) or not isinstance(at_epoch, int) or at_epoch < 1):
        raise UsageError(f"--at-epoch: got {at_epoch!r}, must be a number of epochs done (>= 1)")
    record = store.load_job(job)
    state = store.read_state(job)
    _refuse_finished(job, state, "set-lr")
    if at_epoch is not None:
        done = _epochs_done(store, job)
        if at_epoch > record.spec.epochs - 1:
            raise UsageError(
                f"--at-epoch: got {at_epoch}, but job '{job}' trains {record.spec.epochs} epochs: "
                f"a change must come after 1..{record.spec.epochs - 1} epochs"
            )
        if at_epoch < done or (at_epoch == done and _mid_epoch(store, job)):
            raise UsageError(
                f"--at-epoch: got {at_epoch}, in the past: job '{job}' has done {done} epochs"
                + (" and is inside the next one" if at_epoch == done else ""),
                hint=f"use --at-epoch {done + 1} or later, or --now",
            )
    when = "now" if now else ("at_epoch" if at_epoch is not None else "epoch")
    command = store.add_command(
        job,
        Command(
            seq=1,
            kind="set_lr",
            learning_rate=learning_rate,
            when=when,
            at_epoch=at_epoch,
            issued_by=_who() + (f" ({issued_by})" if issued_by else ""),
        ),
    )
    return CommandOutput(name=job, command=command, status=state.status, effect=_effect(command, state.status))


def request_stop(store: JobStore, job: str, *, at_epoch_end: bool, issued_by: str | None = None) -> CommandOutput:
    """Record a stop: the job backs up at the next step boundary (or the epoch's end) and ends STOPPED.

    The job's driver owns its status: a stop asks, through a command the workers apply. Only when that driver is
    known to be gone (``lifecycle.driver_gone``: it ended, its process no longer runs, or its heartbeat is stale)
    is the job recorded STOPPED here, at once: nothing would ever apply the command.
    ``issued_by`` names where it came from (``Ctrl+C``), after the user and host.
    """
    store.load_job(job)
    state = store.read_state(job)
    gone = lifecycle.driver_gone(store.read_driver(job)) if state.status.is_active() else None
    if state.status not in ACTIVE and gone is None:
        raise UsageError(
            f"job '{job}' is {state.status}; only a PENDING, RUNNING or RECOVERING job can be stopped",
            hint=f"see: orchestrator status {job}",
        )
    pending = [c for c in pending_commands(store, job) if c.kind == "stop"]
    if pending and gone is None:
        raise UsageError(f"job '{job}' already has a stop pending (command #{pending[0].seq})")
    if gone is not None:
        return _stop_without_driver(store, job, state, gone, issued_by)
    command = store.add_command(
        job,
        Command(
            seq=1,
            kind="stop",
            when="epoch_end" if at_epoch_end else "now",
            issued_by=_who() + (f" ({issued_by})" if issued_by else ""),
        ),
    )
    return CommandOutput(name=job, command=command, status=state.status, effect=_effect(command, state.status))


def _stop_without_driver(store: JobStore, job: str, state: JobState, gone: str, issued_by: str | None) -> CommandOutput:
    """A stop for a job whose driver is known gone: recorded as a command (void: no worker applies it) and the
    job recorded STOPPED now, by this process, in its driver's stead."""
    command = store.add_command(
        job, Command(seq=1, kind="stop", when="now", issued_by=_who() + (f" ({issued_by})" if issued_by else ""))
    )
    reason = f"stopped by stop #{command.seq}: its driver is gone ({gone})"
    progress = store.read_progress(job)
    at = {"epoch": progress.epoch, "step": progress.step, "attempt": progress.attempt} if progress else {}
    void = f"its driver is gone ({gone}): the stop recorded the job STOPPED itself"
    store.write_ack(
        job,
        CommandAck.model_validate(
            {"epoch": 0, "step": 0, "attempt": state.attempt, **at, "seq": command.seq, "void": void}
        ),
    )
    ended = lifecycle.end_for_gone_driver(store, job, JobStatus.STOPPED, reason)
    store.append_log(job, "driver.log", f"orchestrator stop: {reason}\n")
    effect = f"recorded it STOPPED at once: its driver is gone ({gone}); `orchestrator resume {job}` continues it"
    return CommandOutput(name=job, command=command, status=ended.status, effect=effect)


def pending_commands(store: JobStore, job: str) -> list[Command]:
    acks = store.read_acks(job)
    return [c for c in store.read_commands(job) if c.seq not in acks]


def command_rows(store: JobStore, job: str) -> list[CommandRow]:
    acks: dict[int, CommandAck] = store.read_acks(job)
    return [CommandRow(command=c, ack=acks.get(c.seq)) for c in store.read_commands(job)]


def snapshots(store: JobStore, job: str) -> SnapshotsOutput:
    store.load_job(job)
    branches = store.read_branches(job)
    rows = []
    for manifest in store.snapshot_manifests(job):
        branch = manifest.control.branch if manifest.control else 0
        superseded = any(b.branch > branch and manifest.epoch > b.from_epoch for b in branches)
        damaged = store.backup_problem(job, manifest.name, folder="snapshots", checksums=True)
        if damaged is None and not store.fs.exists(store.path(job, "snapshots", manifest.name, "model.keras")):
            damaged = "model.keras is missing"
        rows.append(
            SnapshotRow(
                name=manifest.name,
                epoch=manifest.epoch,
                branch=branch,
                learning_rate=manifest.learning_rate,
                created_at=manifest.created_at,
                superseded=superseded,
                size_bytes=sum(f.size for f in manifest.files.values()),
                damaged=damaged,
            )
        )
    return SnapshotsOutput(name=job, snapshots=rows)


def find_snapshot(store: JobStore, job: str, epoch: int) -> str:
    """The live snapshot taken after ``epoch`` epochs (the newest branch's, if several).

    Raises:
        UsageError: there is no such snapshot.
        CorruptBackupError: it is damaged (its files do not match its manifest): never exported or resumed from.
    """
    live = [row for row in snapshots(store, job).snapshots if not row.superseded]
    rows = [row for row in live if row.epoch == epoch]
    if not rows:
        have = sorted({row.epoch for row in live})
        spec = store.load_job(job).spec
        how = (
            f"it takes one every {spec.backup.snapshot_every_epochs} epochs"
            if spec.backup.snapshot_every_epochs
            else "its spec has no backup.snapshot_every_epochs"
        )
        raise UsageError(
            f"--epoch/--from-epoch: got {epoch}, but job '{job}' has no snapshot after epoch {epoch} ({how})",
            hint=f"snapshots after epochs: {', '.join(map(str, have))}" if have else "see: orchestrator snapshots",
        )
    chosen = max(rows, key=lambda row: row.branch)
    if chosen.damaged:
        intact = sorted({row.epoch for row in live if not row.damaged})
        raise CorruptBackupError(
            f"job '{job}': the snapshot after epoch {epoch} ({chosen.name}) is damaged: {chosen.damaged}",
            hint=f"intact snapshots after epochs: {', '.join(map(str, intact))}" if intact else "it has no intact one",
        )
    return chosen.name


def export_model(store: JobStore, job: str, epoch: int | None, destination: str) -> ExportOutput:
    """Copy the Keras model of the snapshot after ``epoch`` (or the final model) to ``destination``."""
    store.load_job(job)
    if epoch is None:
        source = store.path(job, "model", "final.keras")
        if not store.fs.exists(source):
            raise UsageError(f"job '{job}' has no final model yet", hint="give --epoch N to export a snapshot")
        what = "final model"
    else:
        name = find_snapshot(store, job, epoch)
        source = store.path(job, "snapshots", name, "model.keras")
        what = f"snapshot {name}"
    if not destination.endswith(".keras"):
        raise UsageError(f"export path: got {destination!r}, must end with .keras (tf_keras' model format)")
    import fsspec

    with tempfile.TemporaryDirectory(prefix="orchestrator-export-") as scratch:
        local = os.path.join(scratch, "model.keras")
        try:
            store.fs.get_file(source, local)
        except FileNotFoundError:
            raise CorruptBackupError(
                f"job '{job}': the {what} has no model file (model.keras): it is incomplete or damaged",
                hint=f"export another snapshot (see: orchestrator snapshots {job})",
            ) from None
        size = os.path.getsize(local)
        try:
            fs, path = fsspec.core.url_to_fs(destination)
            if "://" not in destination:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            fs.put_file(local, path)
        except (OSError, ValueError, ImportError) as exc:
            raise UsageError(
                f"export path: cannot write {destination} ({type(exc).__name__}: {exc})",
                hint="give a writable local path or a URL this machine has credentials for",
            ) from None
    return ExportOutput(name=job, source=what, destination=destination, size_bytes=size)


def write_figure(target: str, option: str, write: Callable[[str], None]) -> None:
    """Write a PNG through ``write``; a folder that does not exist or cannot be written is the user's to fix."""
    folder = Path(target).parent
    if not folder.is_dir():
        raise UsageError(
            f"{option}: got {target}, but the folder {folder} does not exist",
            hint="create it first, or write into an existing folder",
        )
    try:
        write(target)
    except OSError as exc:
        raise UsageError(f"{option}: cannot write {target} ({exc.strerror or exc})") from None


def _refuse_finished(job: str, state: JobState, verb: str) -> None:
    if state.status is JobStatus.SUCCEEDED:
        raise UsageError(
            f"job '{job}' is SUCCEEDED: it trained to the end, so there is nothing to {verb}",
            hint="start another run with: orchestrator run SPEC --name NEW",
        )


def _epochs_done(store: JobStore, job: str) -> int:
    progress = store.read_progress(job)
    history = store.read_history(job)
    done = len(history)
    if progress is not None and progress.step >= progress.steps_per_epoch:
        done = max(done, progress.epoch + 1)
    return done


def _mid_epoch(store: JobStore, job: str) -> bool:
    progress = store.read_progress(job)
    return progress is not None and 0 < progress.step < progress.steps_per_epoch


def _effect(command: Command, status: JobStatus) -> str:
    if command.kind == "stop":
        when = "at the end of the current epoch" if command.when == "epoch_end" else "at the next step boundary"
    elif command.when == "now":
        when = "at the next step boundary (within about a second)"
    elif command.when == "at_epoch":
        when = f"once {command.at_epoch} epochs are done"
    else:
        when = "at the next epoch boundary"
    if status not in ACTIVE:
        return f"recorded; the job is {status}: it applies {when} after `orchestrator resume`"
    return f"recorded; the job applies it {when}"


def _who() -> str:
    return f"{os.environ.get('USER', 'user')}@{socket.gethostname()} pid {os.getpid()}"


def plot_run(store: JobStore, job: str, output: str | None, metrics: list[str] | None) -> PlotOutput:
    """Draw the whole run (every branch, stop, LR change and restart) as a PNG; see ``orchestrator.plot``."""
    from orchestrator import plot

    data = run_plot_data(store, job, metrics)
    target = output or f"{job}.png"
    write_figure(target, "-o/--output", lambda path: plot.render(data, path))
    epochs = len(next(iter(data.lines.values()))[0]) if data.lines else 0
    return PlotOutput(name=job, path=target, epochs=epochs, markers=len(data.markers))
