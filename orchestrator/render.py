"""How the output models of :mod:`orchestrator.views` look as rich text: the status colours, times as "ago", a
command or a resize in one line, and the layouts too big to sit in a model's ``render()``: ``status``'s grid,
``config``, and the live display of ``run``. The tables (``list``, ``history``, ``snapshots``, ``compare``) are in
:mod:`orchestrator.tables`.

Only presentation: every figure shown is a field of the model (``--json`` has the same), or derived from fields
by the pure ``recovery`` rules. Nothing here reads the store.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.records import Command, CommandAck, EpochRecord, ResizeRecord, utc_now
from orchestrator.recovery import WarmStart, time_to_resume, warm_starts
from orchestrator.status import JobStatus

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec
    from orchestrator.views import (
        ConfigOutput,
        LiveSnapshot,
        StatusOutput,
    )

STATUS_STYLE = {
    JobStatus.PENDING: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.RECOVERING: "magenta",
    JobStatus.STOPPING: "yellow",
    JobStatus.STOPPED: "blue",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
}


# ------------------------------------------------------------------------------------------------ pieces


def learning_rates(record: EpochRecord) -> str:
    """The LR an epoch trained with, or its first and last where they differ (a change inside the epoch)."""
    if record.end_learning_rate is None:
        return f"{record.learning_rate:.3g}"
    return f"{record.learning_rate:.3g}→{record.end_learning_rate:.3g}"


def status_text(status: JobStatus) -> Text:
    return Text(status.value, style=f"bold {STATUS_STYLE[status]}")


def metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key, value in metrics.items())


def epoch_line(name: str, record: EpochRecord, epochs: int) -> str:
    """The plain line printed per epoch when the output is not a terminal (CI logs, pipes)."""
    return (
        f"{name}: epoch {record.epoch + 1}/{epochs} lr {learning_rates(record)} "
        f"{metrics_text(record.metrics)} ({record.seconds:.1f} s)"
    )


def ago(moment: datetime | None, *, short: bool = False) -> str:
    if moment is None:
        return "-"
    elapsed = max(0, int((utc_now() - moment).total_seconds()))
    if not short:
        return f"{timedelta(seconds=elapsed)} ago"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if elapsed >= size:
            return f"{elapsed // size}{unit} ago"
    return f"{elapsed}s ago"


def describe_command(command: Command, ack: CommandAck | None) -> str:
    """A command and what became of it: ``#3 set-lr 0.001 --now: applied at epoch 4, step 120 (attempt 1)``."""
    c = command
    what = f"set-lr {c.learning_rate:g}" if c.kind == "set_lr" else "stop"
    flags = {"now": " --now", "at_epoch": f" --at-epoch {c.at_epoch}", "epoch_end": " --at-epoch-end"}
    when = "" if c.kind == "stop" and c.when == "now" else flags.get(c.when, "")  # a stop's default is now
    if ack is None:
        return f"#{c.seq} {what}{when}: pending (issued {ago(c.issued_at)})"
    if ack.void is not None:
        return f"#{c.seq} {what}{when}: not applied ({ack.void})"
    where = f"at epoch {ack.epoch + 1}, step {ack.step}" if ack.step else f"after epoch {ack.epoch}"
    note = f"; {ack.note}" if ack.note else ""
    return f"#{c.seq} {what}{when}: applied {where} (attempt {ack.attempt}){note}"


def describe_resize(resize: ResizeRecord) -> str:
    when = resize.at.astimezone().strftime("%H:%M:%S")
    source = f" (from backup {resize.backup})" if resize.backup else ""
    return f"{resize.from_workers} -> {resize.to_workers} worker(s) at {when}{source}: {resize.reason}"


# ------------------------------------------------------------------------------------------------ status


def status_grid(output: StatusOutput) -> Table:
    """``status``: one row a fact, in the order a person asks about a job (what it does, how it got here, where
    it is, what it is)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("job", f"{output.name} ({output.id})")
    grid.add_row("status", status_text(output.state.status))
    if output.state.reason:
        grid.add_row("reason", Text(output.state.reason, style=STATUS_STYLE[output.state.status]))
    if output.driver_gone is not None:  # nothing will record this job's end
        grid.add_row("driver", Text(f"gone: {output.driver_gone}", style="red"))
    warm = {start.attempt: start for start in warm_starts(output.failures, output.attempts)}
    _attempt_rows(grid, output, warm)
    _failure_and_backup_rows(grid, output)
    _accounting_rows(grid, output, warm)
    _cost_rows(grid, output)
    for row in output.commands:
        grid.add_row("command" if row is output.commands[0] else "", row.describe())
    _position_rows(grid, output)
    grid.add_row("what", output.summary)
    grid.add_row("started", str(output.state.started_at or "-"))
    grid.add_row("ended", str(output.state.ended_at or "-"))
    grid.add_row("store", output.store)
    if output.state.status in (JobStatus.STOPPED, JobStatus.FAILED):
        grid.add_row("next", f"orchestrator resume {output.name}  (continues from the latest backup)")
    if output.driver_gone is not None:
        grid.add_row("next", f"orchestrator resume {output.name}  (takes the job over from its newest backup)")
    return grid


def _attempt_rows(grid: Table, output: StatusOutput, warm: dict[int, WarmStart]) -> None:
    """Each restart: where it started, from which backup, how long after its failure, how warm; the resizes."""
    grid.add_row("attempt", str(len(output.attempts)) if output.attempts else "-")
    gaps = time_to_resume(output.failures, output.attempts)
    for attempt in output.attempts[1:]:
        after = f", {gaps[attempt.attempt]:.1f} s after a failure" if attempt.attempt in gaps else ""
        if attempt.attempt in warm:
            after += f", {warm[attempt.attempt].warm}/{warm[attempt.attempt].workers} workers warm"
        if output.resizes and attempt.workers:
            after += f", on {len(attempt.workers)} worker(s)"
        grid.add_row(
            "",
            f"attempt {attempt.attempt} started at epoch {attempt.start_epoch + 1} from backup "
            f"{attempt.restored_from or '(none)'}{after}",
        )
    for resize in output.resizes:
        grid.add_row("resize" if resize is output.resizes[0] else "", describe_resize(resize))


def _failure_and_backup_rows(grid: Table, output: StatusOutput) -> None:
    if output.failures:
        grid.add_row(
            "failures",
            f"{len(output.failures)}; last: {output.failures[-1].reasons[0][:100]}"
            if output.failures[-1].reasons
            else str(len(output.failures)),
        )
    damaged = output.damaged_backups
    listed = [f"{b} (DAMAGED: {damaged[b]})" if b in damaged else b for b in output.backups]
    grid.add_row("backups", Text(", ".join(listed) or "-", style="red" if damaged else ""))


def _accounting_rows(grid: Table, output: StatusOutput, warm: dict[int, WarmStart]) -> None:
    """Where the wall time went (goodput, restarts, lost steps) and what the backups cost."""
    if output.accounting is not None and output.attempts:
        a = output.accounting
        goodput = f"{a.goodput:.1%}" if a.goodput is not None else "-"
        lost = "-" if a.lost_steps is None else str(a.lost_steps)
        time = f"wall {a.wall_seconds:.1f} s, training {a.training_seconds:.1f} s, goodput {goodput}"
        restarted = sum(start.workers for start in warm.values())
        hits = f", warm {sum(start.warm for start in warm.values())}/{restarted} workers" if restarted else ""
        grid.add_row(
            "accounting", f"{time}; restarts {a.restarts} ({a.preemptions} preempted{hits}), lost steps {lost}"
        )
    if output.checkpoints:
        blocked = sum(r.blocking_seconds for r in output.checkpoints)
        share = (
            f" ({blocked / output.accounting.training_seconds:.1%} of training)"
            if output.accounting and output.accounting.training_seconds
            else ""
        )
        grid.add_row(
            "checkpoints",
            f"{len(output.checkpoints)} backups; training blocked {blocked:.2f} s{share}, "
            f"uploads {sum(r.upload_seconds for r in output.checkpoints):.2f} s in the background, "
            f"last {output.checkpoints[-1].size_bytes / 1e6:.2f} MB",
        )


def money(currency: str, amount: float) -> str:
    """``$1.23``; ``$0.0042`` for an amount under a cent (a short test run); ``$1,234`` from 1,000 on."""
    if amount >= 1000:
        return f"{currency}{amount:,.0f}"
    return f"{currency}{amount:.2f}" if amount >= 0.01 or amount == 0 else f"{currency}{amount:.2g}"


def unit_hours(value: float) -> str:
    """``0.333``, ``13.5``, ``1,234``: GPU- or worker-hours, to three figures (whole ones from 1,000 on)."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _cost_rows(grid: Table, output: StatusOutput) -> None:
    """What the job cost (held hours at the spot price), the same on demand, and what its restarts cost; no rows
    without a price (docs/watching.md, "Cost")."""
    c = output.cost
    if c is None:
        return
    unit, held, restarting = f"{c.unit}-hours", unit_hours(c.held_hours), unit_hours(c.restart_hours)
    rows: list[str] = []
    so_far = " so far" if output.state.status.is_active() else ""
    if c.cost is not None and c.spot_per_hour is not None:
        rows.append(
            f"{money(c.currency, c.cost)}{so_far}: {held} {unit} at {money(c.currency, c.spot_per_hour)}/h (spot)"
        )
    else:
        rows.append(f"{held} {unit} held{so_far} (no spot price)")
    if c.on_demand_cost is not None and c.uninterrupted_cost is not None:
        rows.append(
            f"on demand {money(c.currency, c.on_demand_cost)} for the same hours, "
            f"{money(c.currency, c.uninterrupted_cost)} uninterrupted"
        )
    if c.interruption_cost is not None and (c.restart_hours or c.lost_work_hours != 0):
        lost = "lost work unknown" if c.lost_work_hours is None else f"{unit_hours(c.lost_work_hours)} re-done"
        rows.append(f"restarts {money(c.currency, c.interruption_cost)}: {restarting} {unit} restarting, {lost}")
    for index, row in enumerate(rows):
        grid.add_row("cost" if index == 0 else "", row)


def devices_text(spec: JobSpec) -> str:
    """`` x 4 GPUs = 8 replicas``, `` x 2 CPU replicas (testing) = 4 replicas``, precision and XLA; empty for
    a plain CPU job (one replica per worker, float32)."""
    scaling = spec.scaling
    text = ""
    if scaling.gpus_per_worker:
        text = f" x {scaling.gpus_per_worker} GPU(s) = {scaling.replicas} replicas"
    elif scaling.cpu_replicas_per_worker > 1:
        text = f" x {scaling.cpu_replicas_per_worker} CPU replicas (testing) = {scaling.replicas} replicas"
    if spec.precision != "float32":
        text += f", {spec.precision}"
    return text + (", XLA" if spec.jit_compile else "")


def throughput(samples_per_second: float, replicas: int | None) -> str:
    """Samples/s of the current epoch, and per replica where the replicas are known."""
    if not replicas:
        return f"{samples_per_second:.1f} samples/s"
    return (
        f"{samples_per_second:.1f} samples/s on {replicas} replica(s), {samples_per_second / replicas:.1f} per replica"
    )


def _position_rows(grid: Table, output: StatusOutput) -> None:
    grid.add_row("epochs done", f"{output.epochs_done}/{output.epochs}")
    progress = output.progress
    if progress is not None:
        grid.add_row(
            "position",
            f"epoch {progress.epoch + 1}, step {progress.step}/{progress.steps_per_epoch} ({ago(progress.updated_at)})",
        )
        grid.add_row("learning rate", f"{progress.learning_rate:.6g}")
        if progress.samples_per_second:
            grid.add_row("throughput", throughput(progress.samples_per_second, progress.replicas))
        if progress.metrics:
            grid.add_row("metrics", metrics_text(progress.metrics))


# ------------------------------------------------------------------------------------------------ config, run


def config_lines(output: ConfigOutput) -> RenderableType:
    where = "none ($ORCHESTRATOR_CONFIG is empty)" if output.path is None else output.path
    lines = [Text(f"config file: {where}" + ("" if output.exists or output.path is None else " (none there)"))]
    width = max(len(row.key) for row in output.settings)
    for row in output.settings:
        value = row.value if row.value is not None else "-"
        lines.append(
            Text.assemble(
                (row.key.ljust(width), "bold"), f"  {value}  ", (f"({row.source}; {row.option}, ${row.env})", "dim")
            )
        )
    lines.append(
        Text("precedence: the option, else its environment variable, else the config file, else the built-in default")
    )
    return Group(*lines)


def live_display(snapshot: LiveSnapshot) -> RenderableType:
    """What ``orchestrator run`` shows while the job trains: the status, the epoch's progress bar and ETA, the LR
    and metrics, the last epoch, and the commands still pending."""
    head = Text.assemble(
        (snapshot.name, "bold"),
        "  ",
        status_text(snapshot.state.status),
        f"  attempt {snapshot.progress.attempt if snapshot.progress else max(1, snapshot.state.attempt)}",
    )
    progress = snapshot.progress
    if progress is None:
        return Group(head, Text("starting workers...", style="dim"))
    done = progress.epoch * progress.steps_per_epoch + progress.step
    total = progress.epochs * progress.steps_per_epoch
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        f"epoch {progress.epoch + 1}/{progress.epochs}",
        ProgressBar(total=progress.steps_per_epoch, completed=progress.step, width=30),
        f"{progress.step}/{progress.steps_per_epoch} steps",
        f"ETA {_eta(snapshot, total - done)}",
    )
    lines: list[RenderableType] = [
        head,
        bar,
        Text(f"lr {progress.learning_rate:.4g}  " + metrics_text(progress.metrics)),
    ]
    if snapshot.history:
        last = snapshot.history[-1]
        lines.append(Text(f"epoch {last.epoch + 1}: {metrics_text(last.metrics)}", style="dim"))
    for command in snapshot.pending:
        lines.append(Text(f"pending: {describe_command(command, None)}", style="yellow"))
    return Group(*lines)


def _eta(snapshot: LiveSnapshot, steps_left: int) -> str:
    if not snapshot.progress or not snapshot.progress.samples_per_second:
        return "-"
    left = steps_left * snapshot.batch_size / snapshot.progress.samples_per_second
    return str(timedelta(seconds=int(left)))
