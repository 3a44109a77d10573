from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import matplotlib.image
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation

from orchestrator.plot import SUPERSEDED_ALPHA, EpochPoint, Marker, PlotData, figure, plot_data, render
from orchestrator.records import (
    AttemptRecord,
    BranchRecord,
    Command,
    CommandAck,
    EpochRecord,
    FailureRecord,
    Progress,
)
from orchestrator.run_plot import run_plot_data
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(epoch: int, offset: float = 0.0) -> dict[str, float]:
    return {
        "loss": 2.0 / (epoch + 1) + offset,
        "val_loss": 2.2 / (epoch + 1) + offset,
        "accuracy": 0.5 + 0.04 * epoch - offset,
        "val_accuracy": 0.45 + 0.04 * epoch - offset,
        "auc": 0.6 + 0.03 * epoch,
        "val_auc": 0.55 + 0.03 * epoch,
    }


def _run() -> tuple[list[EpochPoint], list[Marker]]:
    """12 epochs: stopped after epoch 4 and resumed; epochs 5-6 trained, then a preemption and a resume from the
    backup after epoch 4 (the newer one damaged), which supersedes them; the LR drops 0.1 -> 0.01 at epoch 9."""
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics=_metrics(e), segment=0) for e in range(4)]
    points += [
        EpochPoint(epoch=e, learning_rate=0.1, metrics=_metrics(e, 0.3), superseded=True, segment=1) for e in (4, 5)
    ]
    points += [
        EpochPoint(epoch=e, learning_rate=0.1 if e < 8 else 0.01, metrics=_metrics(e), segment=2) for e in range(4, 12)
    ]
    markers = [
        Marker(epoch=4, kind="stop", label="stopped"),
        Marker(epoch=4, kind="resume", label="resumed"),
        Marker(epoch=6.5, kind="preemption", label="preempted"),
        Marker(epoch=4, kind="resume", label="resumed from e00004"),
    ]
    return points, markers


def _live(points: list[EpochPoint], name: str) -> list[float]:
    return [p.metrics[name] for p in sorted(points, key=lambda p: p.epoch) if not p.superseded]


def _line(fig: Figure, label: str) -> Line2D:
    found = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == label]
    assert len(found) == 1, f"{label!r}: {len(found)} lines"
    return found[0]


def _xy(line: Line2D) -> tuple[list[float], list[float]]:
    x: list[float] = np.asarray(line.get_xdata(), dtype=float).tolist()
    y: list[float] = np.asarray(line.get_ydata(), dtype=float).tolist()
    return x, y


def _panels(fig: Figure) -> list[Axes]:
    """The metric panels: not the events strip above them, not the LR twin axis."""
    return [ax for ax in fig.axes if ax.get_label() != "events" and ax.get_ylabel() != "learning rate"]


def _curve_labels(ax: Axes) -> list[str]:
    return [str(line.get_label()) for line in ax.get_lines() if not str(line.get_gid()).startswith("marker:")]


@pytest.fixture
def data() -> PlotData:
    points, markers = _run()
    return plot_data("resnet-spot", points, markers)


def test_default_curves_are_loss_and_accuracy_with_their_validation() -> None:
    points, markers = _run()
    data = plot_data("job", points, markers)
    assert list(data.lines) == ["loss", "val_loss", "accuracy", "val_accuracy"]
    assert list(data.superseded) == ["loss", "val_loss", "accuracy", "val_accuracy"]


def test_live_and_superseded_curves_hold_the_history_values(data: PlotData) -> None:
    points, _ = _run()
    assert data.lines["val_loss"] == ([float(x) for x in range(1, 13)], _live(points, "val_loss"))
    assert data.superseded["loss"] == ([5.0, 6.0], [_metrics(4, 0.3)["loss"], _metrics(5, 0.3)["loss"]])


def test_learning_rate_is_one_value_per_live_epoch(data: PlotData) -> None:
    assert data.learning_rate == ([float(x) for x in range(1, 13)], [0.1] * 8 + [0.01] * 4)


def test_lr_change_marker_is_derived_and_merged_in_x_order(data: PlotData) -> None:
    assert [(m.epoch, m.kind, m.label) for m in data.markers] == [
        (4, "stop", "stopped"),
        (4, "resume", "resumed"),
        (4, "resume", "resumed from e00004"),
        (6.5, "preemption", "preempted"),
        (8, "lr", "lr 0.1→0.01"),
    ]


def test_a_given_lr_marker_replaces_the_derived_one() -> None:
    points, _ = _run()
    given = Marker(epoch=8, kind="lr", label="ReduceLROnPlateau: lr 0.1→0.01")
    assert plot_data("job", points, [given]).markers == [given]


def test_another_event_at_the_lr_change_keeps_the_lr_marker() -> None:
    points, _ = _run()
    stop = Marker(epoch=8, kind="stop", label="stopped")
    assert [m.kind for m in plot_data("job", points, [stop]).markers] == ["stop", "lr"]


def test_phase_switch_gets_a_marker() -> None:
    points = [
        EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 1.0}, phase="head" if e < 3 else "all")
        for e in range(5)
    ]
    markers = plot_data("job", points, []).markers
    assert [(m.epoch, m.kind, m.label) for m in markers] == [(3, "phase", "phase head→all")]


def _abandoned(segment: int, epochs: tuple[int, ...]) -> list[EpochPoint]:
    return [
        EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 10.0 * segment + e}, superseded=True, segment=segment)
        for e in epochs
    ]


def test_two_abandoned_branches_over_the_same_epochs_are_not_joined() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": float(e)}) for e in range(6)]
    points += _abandoned(1, (2, 3)) + _abandoned(2, (3, 4))
    x, y = plot_data("job", points, []).superseded["loss"]
    assert x[:2] == [3.0, 4.0] and math.isnan(x[2]) and x[3:] == [4.0, 5.0]
    assert y[:2] == [12.0, 13.0] and math.isnan(y[2]) and y[3:] == [23.0, 24.0]


def test_an_abandoned_branch_that_spans_two_segments_stays_one_line() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": float(e)}) for e in range(6)]
    points += _abandoned(1, (2, 3)) + _abandoned(2, (4,))
    assert plot_data("job", points, []).superseded["loss"] == ([3.0, 4.0, 5.0], [12.0, 13.0, 24.0])


def test_a_gap_in_an_abandoned_branch_breaks_its_line() -> None:
    x, _ = plot_data("job", _abandoned(1, (2, 4)), []).superseded["loss"]
    assert x[0] == 3.0 and math.isnan(x[1]) and x[2] == 5.0


def test_unknown_metric_names_the_available_ones() -> None:
    points, markers = _run()
    with pytest.raises(ValueError, match="unknown metric 'f1'; available: accuracy, auc, loss, val_accuracy, val_auc"):
        plot_data("job", points, markers, metrics=["f1"])


def test_two_live_points_for_one_epoch_are_refused() -> None:
    points = [EpochPoint(epoch=3, learning_rate=0.1, metrics={"loss": 1.0})] * 2
    with pytest.raises(ValueError, match="two live history points for epoch 3"):
        plot_data("job", points, [])


def test_marker_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="Received: kind='reboot'"):
        Marker(epoch=1, kind="reboot", label="x")  # type: ignore[arg-type]


def test_figure_lines_carry_the_history(data: PlotData) -> None:
    fig = figure(data)
    for name, (x, y) in data.lines.items():
        line = _line(fig, name)
        assert _xy(line) == (x, y)
    faint = _line(fig, "val_accuracy (superseded)")
    assert _xy(faint) == data.superseded["val_accuracy"]


def test_losses_and_accuracies_get_their_own_panels_on_one_x_axis(data: PlotData) -> None:
    fig = figure(data)
    losses, others = _panels(fig)
    assert _curve_labels(losses) == ["loss", "loss (superseded)", "val_loss", "val_loss (superseded)"]
    assert _curve_labels(others)[::2] == ["accuracy", "val_accuracy"]
    assert losses.get_shared_x_axes().joined(losses, others)


def test_superseded_branch_is_drawn_faintly(data: PlotData) -> None:
    fig = figure(data)
    faint, live = _line(fig, "loss (superseded)"), _line(fig, "loss")
    alpha = faint.get_alpha()
    assert alpha is not None and alpha < 1
    assert faint.get_linestyle() == "--" and live.get_linestyle() == "-"
    assert live.get_alpha() in (None, 1)
    assert faint.get_color() == live.get_color()


def test_learning_rate_is_a_log_step_line_on_a_twin_axis(data: PlotData) -> None:
    fig = figure(data)
    (twin,) = (ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    (line,) = twin.get_lines()
    assert _xy(line) == data.learning_rate
    assert line.get_drawstyle() == "steps-pre"
    assert twin.get_yscale() == "log"
    assert twin.get_shared_x_axes().joined(twin, fig.axes[0])


def test_markers_are_vertical_lines_at_their_x_on_every_panel(data: PlotData) -> None:
    fig = figure(data)
    expected = [
        ("marker:lr", 8.0),
        ("marker:preemption", 6.5),
        ("marker:resume", 4.0),
        ("marker:resume", 4.0),
        ("marker:stop", 4.0),
    ]
    for ax in fig.axes[:3]:  # the events strip and both panels
        vertical = [line for line in ax.get_lines() if str(line.get_gid()).startswith("marker:")]
        assert sorted((str(line.get_gid()), _xy(line)[0][0]) for line in vertical) == expected
        assert all(_xy(line)[0][0] == _xy(line)[0][1] for line in vertical)
    labels = [(_label_x(text), text.get_text()) for text in _event_labels(fig)]
    assert labels == [(4, "stopped\nresumed\nresumed from e00004"), (6.5, "preempted"), (8, "lr 0.1→0.01")]


def _event_labels(fig: Figure) -> list[Annotation]:
    return [text for ax in fig.axes for text in ax.texts if isinstance(text, Annotation)]


def _label_x(text: Annotation) -> float:
    return float(text.xy[0])


def test_event_labels_are_horizontal_readable_and_above_the_curves(data: PlotData) -> None:
    fig = figure(data)
    texts = _event_labels(fig)
    assert texts and all(t.get_rotation() == 0 and t.get_fontsize() >= 9 for t in texts)
    (events,) = [ax for ax in fig.axes if ax.get_label() == "events"]
    assert all(t.axes is events for t in texts)  # in the strip above the panels, never over a curve
    assert not any(ax.texts for ax in _panels(fig))
    assert events.get_position().y0 >= max(ax.get_position().y1 for ax in _panels(fig)) - 1e-9


def test_events_at_one_epoch_share_one_label_and_close_ones_are_staggered() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 1.0}) for e in range(20)]
    markers = [
        Marker(epoch=5, kind="stop", label="stopped"),
        Marker(epoch=5, kind="resume", label="resumed (attempt 2)"),
        Marker(epoch=5.3, kind="preemption", label="preempted"),
        Marker(epoch=15, kind="failure", label="worker failed"),
    ]
    fig = figure(plot_data("job", points, markers))
    texts = _event_labels(fig)
    assert [t.get_text() for t in texts] == ["stopped\nresumed (attempt 2)", "preempted", "worker failed"]
    fig.canvas.draw()  # type: ignore[no-untyped-call]
    boxes = [t.get_window_extent() for t in texts]
    assert not boxes[0].overlaps(boxes[1])  # 0.3 epochs apart: the second one goes on another row
    assert boxes[2].y1 == pytest.approx(boxes[0].y1)  # far apart: both on the top row


def test_superseded_events_are_drawn_faintly() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 1.0}) for e in range(10)]
    markers = [
        Marker(epoch=7, kind="stop", label="stopped", superseded=True),
        Marker(epoch=7, kind="resume", label="resumed (attempt 2)", superseded=True),
        Marker(epoch=7, kind="failure", label="worker failed"),
    ]
    fig = figure(plot_data("job", points, markers))
    for ax in fig.axes[:2]:
        alphas = {str(line.get_gid()): line.get_alpha() for line in ax.get_lines() if line.get_gid()}
        assert alphas["marker:stop"] == alphas["marker:resume"] == pytest.approx(SUPERSEDED_ALPHA)
        assert alphas["marker:failure"] in (None, 1)
    faint, live = sorted(_event_labels(fig), key=lambda t: t.get_alpha() or 1)
    assert faint.get_text() == "stopped\nresumed (attempt 2)" and (faint.get_alpha() or 1) < 1
    assert live.get_text() == "worker failed" and live.get_alpha() in (None, 1)


def test_an_early_loss_spike_puts_the_loss_on_a_log_axis_and_says_so() -> None:
    losses = [30.0, 1.8, 1.2, 0.9, 0.7, 0.6]
    points = [
        EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": v, "accuracy": 0.5}) for e, v in enumerate(losses)
    ]
    loss_panel, accuracy_panel = _panels(figure(plot_data("job", points, [])))
    assert loss_panel.get_yscale() == "log" and "log" in loss_panel.get_ylabel()
    assert accuracy_panel.get_yscale() == "linear"


def test_a_loss_without_a_spike_stays_linear(data: PlotData) -> None:
    loss_panel = _panels(figure(data))[0]
    assert loss_panel.get_yscale() == "linear" and loss_panel.get_ylabel() == "loss"


def test_a_negative_loss_stays_linear() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": v}) for e, v in enumerate([50.0, 1.0, -0.5])]
    assert _panels(figure(plot_data("job", points, [])))[0].get_yscale() == "linear"


def test_the_lr_change_after_a_change_inside_an_epoch_names_the_rate_in_force_at_its_end() -> None:
    """A --now change inside epoch 4 (0.1→0.02), then resume --from-epoch 5 --lr 0.005: the old rate is 0.02."""
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 1.0}) for e in range(4)]
    points.append(EpochPoint(epoch=4, learning_rate=0.1, end_learning_rate=0.02, metrics={"loss": 1.0}))
    points += [EpochPoint(epoch=e, learning_rate=0.005, metrics={"loss": 1.0}) for e in range(5, 8)]
    data = plot_data("job", points, [Marker(epoch=4.4, kind="lr", label="set-lr --now 0.1→0.02")])
    assert [(m.epoch, m.label) for m in data.markers] == [(4.4, "set-lr --now 0.1→0.02"), (5, "lr 0.02→0.005")]
    x, y = data.learning_rate
    assert (x[4:7], y[4:7]) == ([4.4, 5.0, 6.0], [0.1, 0.02, 0.005])  # the step line steps at the --now change


def test_metrics_auc_draws_auc_and_its_validation_only() -> None:
    points, markers = _run()
    data = plot_data("job", points, markers, metrics=["auc"])
    assert list(data.lines) == ["auc", "val_auc"]
    fig = figure(data)
    curves = [label for ax in fig.axes for label in _curve_labels(ax) if label != "learning rate"]
    assert sorted(curves) == ["auc", "auc (superseded)", "val_auc", "val_auc (superseded)"]
    assert _xy(_line(fig, "auc"))[1][-1] == pytest.approx(0.6 + 0.03 * 11)


def test_render_writes_a_png_to_a_path_and_a_file_object(data: PlotData, tmp_path: Path) -> None:
    from matplotlib import pyplot

    open_before = pyplot.get_fignums()
    path = tmp_path / "run.png"
    render(data, path)
    buffer = io.BytesIO()
    render(data, buffer)
    assert path.read_bytes()[:8] == PNG_MAGIC and buffer.getvalue()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 0 and width > 0
    assert pyplot.get_fignums() == open_before


def test_an_empty_history_still_renders(tmp_path: Path) -> None:
    render(plot_data("new-job", [], []), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_a_diverged_run_draws_its_finite_part_and_the_rest_as_a_gap(tmp_path: Path) -> None:
    metrics = [
        {"loss": 1.0, "val_loss": 1.1},
        {"loss": 0.8, "val_loss": math.inf},
        {"loss": math.nan, "val_loss": -math.inf},
    ]
    points = [EpochPoint(epoch=e, learning_rate=10.0, metrics=m) for e, m in enumerate(metrics)]
    data = plot_data("diverged", points, [])
    x, y = data.lines["loss"]
    assert x == [1.0, 2.0, 3.0] and y[:2] == [1.0, 0.8] and math.isnan(y[2])
    _, val = data.lines["val_loss"]
    assert val[0] == 1.1 and all(math.isnan(v) for v in val[1:])  # an infinity would wreck the axis: a gap
    fig = figure(data)
    bottom, top = fig.axes[0].get_ylim()
    assert math.isfinite(bottom) and math.isfinite(top) and top < 10
    render(data, tmp_path / "diverged.png")
    assert (tmp_path / "diverged.png").read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------ a whole run, from the store
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
STEPS = 100


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _run_metrics(epoch: int, branch: int) -> dict[str, float]:
    """A loss that spikes in epoch 0 (warm-up gone wrong) and then falls; branch 1 ends a little better."""
    better = 1 - math.exp(-0.3 * (epoch - 9)) if branch else 0.0
    loss = 30.0 if epoch == 0 else 0.3 + 1.8 * math.exp(-0.22 * epoch) - 0.12 * better
    accuracy = 0.1 if epoch == 0 else 0.93 - 0.4 * math.exp(-0.22 * epoch) + 0.03 * better
    return {"loss": loss, "val_loss": loss * 1.1 + 0.05, "accuracy": accuracy, "val_accuracy": accuracy - 0.03}


def _epoch(
    epoch: int, ended: float, lr: float, *, attempt: int, branch: int = 0, end_lr: float | None = None
) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        attempt=attempt,
        learning_rate=lr,
        end_learning_rate=end_lr,
        metrics=_run_metrics(epoch, branch),
        seconds=60.0,
        branch=branch,
        segment=branch,
        ended_at=_at(ended),
    )


def _store_run(store: JobStore, name: str = "resnet-spot") -> None:
    """24 epochs at 100 steps: a planned LR drop 0.1→0.05 at epoch 6; a worker killed in epoch 3 (restart from
    the backup after epoch 3); `set-lr --now 0.02` 40 steps into epoch 9; a preemption 60 steps into epoch 11
    (restart from its notice backup); a stop after epoch 13 and a resume; a stop after epoch 18; then
    `resume --from-epoch 10 --lr 0.005`, which supersedes epochs 10-17 of branch 0 (LR 0.02 at the fork,
    after the --now change) and trains 10-23 again, with a ReduceLROnPlateau drop to 0.001 at epoch 18."""
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))
    store.write_progress(
        name, Progress(attempt=5, epoch=23, epochs=24, step=STEPS, steps_per_epoch=STEPS, learning_rate=1e-3)
    )

    def attempt(number: int, minutes: float, epoch: int, step: int = 0) -> None:
        record = AttemptRecord(attempt=number, started_at=_at(minutes), start_epoch=epoch, start_step=step)
        store._append_line(store.path(name, "attempts.jsonl"), record)

    def command(
        kind: Literal["set_lr", "stop"],
        when: Literal["now", "epoch_end"],
        minutes: float,
        epoch: int,
        step: int,
        lr: float | None = None,
        branch: int = 0,
    ) -> None:
        seq = store.add_command(
            name, Command(seq=1, kind=kind, learning_rate=lr, when=when, issued_at=_at(minutes))
        ).seq
        ack = CommandAck(
            seq=seq, epoch=epoch, step=step, attempt=1, branch=branch, learning_rate=lr, applied_at=_at(minutes)
        )
        store.write_ack(name, ack)

    attempt(1, 0, 0)
    for e in range(3):
        store.append_history(name, _epoch(e, e + 1, 0.1, attempt=1))
    store.append_failure(
        name,
        FailureRecord(
            failed_at=_at(3.5),
            reasons=["worker rank 1 exited (SIGKILL)"],
            kind="failure",
            epoch=3,
            step=40,
            steps_per_epoch=STEPS,
        ),
    )
    attempt(2, 3.6, 3)
    for e in range(3, 9):
        store.append_history(name, _epoch(e, e + 1.6, 0.1 if e < 6 else 0.05, attempt=2))
    command("set_lr", "now", 10.0, 9, 40, lr=0.02)
    store.append_history(name, _epoch(9, 10.6, 0.05, attempt=2, end_lr=0.02))
    store.append_history(name, _epoch(10, 11.6, 0.02, attempt=2))
    store.append_failure(
        name,
        FailureRecord(
            failed_at=_at(12.2),
            reasons=["the node running rank 0 was drained"],
            kind="preemption",
            epoch=11,
            step=60,
            steps_per_epoch=STEPS,
        ),
    )
    attempt(3, 12.5, 11, 60)
    for e in (11, 12):
        store.append_history(name, _epoch(e, e + 2, 0.02, attempt=3))
    command("stop", "epoch_end", 14.5, 13, 0)
    attempt(4, 20, 13)
    for e in range(13, 18):
        store.append_history(name, _epoch(e, e + 8, 0.02, attempt=4))
    command("stop", "epoch_end", 25.5, 18, 0)
    store._append_line(
        store.path(name, "branches.jsonl"), BranchRecord(branch=1, from_epoch=10, snapshot="e00010", created_at=_at(30))
    )
    attempt(5, 30.2, 10)
    for e in range(10, 24):
        store.append_history(name, _epoch(e, e + 21, 0.005 if e < 18 else 0.001, attempt=5, branch=1))


@pytest.fixture
def whole_run(tmp_path: Path) -> PlotData:
    store = JobStore(str(tmp_path / "store"))
    _store_run(store)
    return run_plot_data(store, "resnet-spot", None)


def test_run_plot_data_places_every_event_and_fades_the_superseded_branch(whole_run: PlotData) -> None:
    assert [(m.epoch, m.kind, m.label, m.superseded) for m in whole_run.markers] == [
        (3.0, "resume", "restarted (attempt 2)", False),
        (3.4, "failure", "worker failed", False),
        (6, "lr", "lr 0.1→0.05", False),
        (9.4, "lr", "set-lr --now 0.05→0.02", False),
        (10.0, "resume", "resume --from-epoch 10 (branch 1)", False),
        (10, "lr", "lr 0.02→0.005", False),  # the rate in force at the fork: after the --now change
        (11.6, "resume", "restarted (attempt 3)", True),  # branch 0, past the fork: superseded
        (11.6, "preemption", "preempted", True),
        (13.0, "resume", "resumed (attempt 4)", True),
        (13.0, "stop", "stopped", True),
        (18.0, "stop", "stopped", True),
        (18, "lr", "lr 0.005→0.001", False),
    ]


def test_run_plot_data_takes_the_failure_kind_from_the_record(tmp_path: Path) -> None:
    """Not from the reason text: "drained" says nothing of preemption, and "preempt" may name a plain failure."""
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "kinds"}))
    for epoch, (kind, reason) in enumerate(
        [("preemption", "node drained"), ("notice", "SIGTERM"), ("failure", "PreemptionError in user code")]
    ):
        store.append_failure("kinds", FailureRecord(reasons=[reason], kind=kind, epoch=epoch, step=0))  # type: ignore[arg-type]
    markers = run_plot_data(store, "kinds", None).markers
    assert [(m.kind, m.label) for m in markers] == [
        ("preemption", "preempted"),
        ("preemption", "preempted (notice)"),
        ("failure", "worker failed"),
    ]


def test_the_whole_run_renders_with_a_log_loss_axis_and_faint_superseded_labels(
    whole_run: PlotData, tmp_path: Path
) -> None:
    fig = figure(whole_run)
    assert _panels(fig)[0].get_yscale() == "log"  # the loss of 30 in epoch 1 would flatten the rest
    faint = [t.get_text() for t in _event_labels(fig) if (t.get_alpha() or 1) < 1]
    assert faint == ["restarted (attempt 3)\npreempted", "resumed (attempt 4)\nstopped", "stopped"]
    render(whole_run, tmp_path / "run.png")


def test_a_set_lr_at_an_epoch_boundary_names_the_rate_it_replaced(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "boundary"}))
    for e in range(4):
        store.append_history("boundary", _epoch(e, e + 1, 0.1 if e < 2 else 0.03, attempt=1))
    seq = store.add_command("boundary", Command(seq=1, kind="set_lr", learning_rate=0.03, when="epoch")).seq
    store.write_ack(
        "boundary", CommandAck(seq=seq, epoch=2, step=0, attempt=1, learning_rate=0.03, applied_at=_at(2.5))
    )
    (marker,) = run_plot_data(store, "boundary", None).markers
    assert (marker.epoch, marker.label) == (2.0, "set-lr 0.1→0.03")  # replaces the derived "lr 0.1→0.03"
